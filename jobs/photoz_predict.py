"""spark-submit entry point: photo-z for every row of a catalog.

    spark-submit --master yarn jobs/photoz_predict.py --catalog s3://.../object --model models/mbrnn \
        --out s3://.../photoz --conf conf/cluster.yaml

Same arguments as ``lsst-spark-ml photoz predict``; the master comes from spark-submit.
"""
import sys

from lsst_spark_ml.cli import main

if __name__ == "__main__":
    sys.exit(main(["photoz", "predict", *sys.argv[1:]]))
