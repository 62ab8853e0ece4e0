"""spark-submit entry point: train the MBRNN photo-z ensemble.

    spark-submit jobs/photoz_train.py --catalog specz.parquet --out models/mbrnn --conf conf/photoz_train_dc2.yaml

Same arguments as ``lsst-spark-ml photoz train``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["photoz", "train", *sys.argv[1:]]))
