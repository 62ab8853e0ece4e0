"""spark-submit entry point: DCP out-of-distribution score.

    spark-submit jobs/ood_score.py --help

Same arguments as ``lsst-spark-ml ood score``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import main

if __name__ == "__main__":
    sys.exit(main(["ood", "score", *sys.argv[1:]]))
