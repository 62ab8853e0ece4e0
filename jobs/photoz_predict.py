"""spark-submit entry point: photo-z for every row of a catalog.

    spark-submit --master yarn jobs/photoz_predict.py --catalog s3://.../object --model models/mbrnn \
        --out s3://.../photoz --conf conf/cluster.yaml

Same arguments as ``lsst-spark-ml photoz predict``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["photoz", "predict", *sys.argv[1:]]))
