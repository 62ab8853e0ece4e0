"""spark-submit entry point: DCP out-of-distribution score.

    spark-submit jobs/ood_score.py --help

Same arguments as ``lsst-spark-ml ood score``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["ood", "score", *sys.argv[1:]]))
