"""One local SparkSession for the whole pytest run (a session costs ~5 s to start)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A real MBRNN ensemble (2 members, 32x32 hidden) trained for 3 epochs on 3,000 DC2 galaxies."""
    from helpers import load_dc2, tiny_config
    from lsst_spark_ml.training.photoz import TrainingSet, train_photoz
    v, e, z, _ = load_dc2("train", 3000)
    out = tmp_path_factory.mktemp("models") / "tiny"
    res = train_photoz(TrainingSet(v, e, "mag", z, source="dc2-train[:3000]"), tiny_config(), str(out),
                       log=lambda m: None)
    return out, res["model_sha256"]
