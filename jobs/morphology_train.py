"""spark-submit entry point: galaxy morphology, train.

    spark-submit --master yarn jobs/morphology_train.py --labelled s3://.../labelled --unlabelled s3://.../survey \\
        --out models/morphology --conf conf/morphology.yaml --set train.backend=torch-distributor

Same arguments as ``lsst-spark-ml morphology train``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["morphology", "train", *sys.argv[1:]]))
