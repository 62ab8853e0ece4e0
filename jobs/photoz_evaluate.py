"""spark-submit entry point: metrics and plots of photo-z predictions (``lsst-spark-ml photoz evaluate``)."""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["photoz", "evaluate", *sys.argv[1:]]))
