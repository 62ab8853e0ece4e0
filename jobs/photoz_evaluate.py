"""spark-submit entry point: metrics and plots of photo-z predictions (``lsst-spark-ml photoz evaluate``)."""
import sys

from lsst_spark_ml.cli import main

if __name__ == "__main__":
    sys.exit(main(["photoz", "evaluate", *sys.argv[1:]]))
