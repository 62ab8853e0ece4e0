"""spark-submit entry point: Bayesian photo-z posteriors for the flagged rows of a predicted catalog.

    spark-submit --master yarn jobs/bayes_followup.py --catalog s3://.../photoz --out s3://.../photoz_bayes \
        --conf conf/bayes.yaml --conf conf/cluster.yaml [--method mcmc] [--where "ood_flag"]

Same arguments as ``lsst-spark-ml bayes run``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["bayes", "run", *sys.argv[1:]]))
