"""spark-submit entry point: galaxy morphology, predict.

    spark-submit --master yarn jobs/morphology_predict.py --cutouts s3://.../cutouts --model models/morphology \\
        --out s3://.../morphology --conf conf/morphology.yaml

Same arguments as ``lsst-spark-ml morphology predict``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["morphology", "predict", *sys.argv[1:]]))
