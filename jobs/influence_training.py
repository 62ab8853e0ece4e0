"""spark-submit entry point: lsst-spark-ml influence.

    spark-submit jobs/influence_training.py --help

Same arguments as ``lsst-spark-ml influence``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["influence", *sys.argv[1:]]))
