"""spark-submit entry point of the main job (``lsst-spark-ml demo``)."""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["demo", *sys.argv[1:]]))
