"""One local SparkSession for the whole pytest run (a session costs ~5 s to start)."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def spark():
    from lsst_spark_ml.config import SparkSettings
    from lsst_spark_ml.session import get_spark
    s = get_spark(SparkSettings(master="local[2]", app_name="lsst_spark_ml-tests", progress=False,
                                conf={"spark.sql.shuffle.partitions": "4",
                                      "spark.default.parallelism": "2"}))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def dc2_paths():
    from lsst_spark_ml.io.datasets import dc2_paths as paths
    return paths()
