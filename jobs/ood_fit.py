"""spark-submit entry point: DCP out-of-distribution fit.

    spark-submit jobs/ood_fit.py --help

Same arguments as ``lsst-spark-ml ood fit``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["ood", "fit", *sys.argv[1:]]))
