"""spark-submit entry point: asteroid taxonomy (fit, classify or evaluate).

    spark-submit --master yarn jobs/asteroid_taxonomy.py classify --catalog s3://.../sso_colours \
        --model models/asteroids --out s3://.../taxonomy --conf conf/asteroids.yaml

Same arguments as ``lsst-spark-ml asteroids ...``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["asteroids", *sys.argv[1:]]))
