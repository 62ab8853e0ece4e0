"""spark-submit entry point of the main job (``lsst-spark-ml demo``)."""
import sys

from lsst_spark_ml.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
