"""spark-submit entry point: DCP out-of-distribution fit.

    spark-submit jobs/ood_fit.py --help

Same arguments as ``lsst-spark-ml ood fit``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import main

if __name__ == "__main__":
    sys.exit(main(["ood", "fit", *sys.argv[1:]]))
