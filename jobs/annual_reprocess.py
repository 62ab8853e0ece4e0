"""spark-submit entry point: the annual data-release reprocessing job (issue 9).

    spark-submit jobs/annual_reprocess.py --conf conf/release.yaml [--dry-run]

Same arguments as ``lsst-spark-ml release run``; the master comes from spark-submit. Resubmitting the same
command after a failure resumes the release where it stopped.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["release", "run", *sys.argv[1:]]))
