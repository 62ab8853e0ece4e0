"""spark-submit entry point: lsst-spark-ml targets.

    spark-submit jobs/spectro_targets.py --help

Same arguments as ``lsst-spark-ml targets``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["targets", *sys.argv[1:]]))
