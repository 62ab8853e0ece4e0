import pytest

from lsst_spark_ml.config import load_config, parse_override
from lsst_spark_ml.errors import ConfigError


def test_defaults_validate():
    cfg = load_config()
    assert cfg.model.n_bins == 64 and cfg.catalog.bands == list("ugrizy")


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("catalog:\n  bands: [g, r, i, z, y]\nfeatures:\n  reference_band: r\n")
    cfg = load_config([p], ["inference.batch_size=123", "spark.conf.spark.sql.shuffle.partitions=7"])
    assert cfg.catalog.bands == list("grizy")
    assert cfg.features.reference_band == "r"
    assert cfg.inference.batch_size == 123
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "7"}


@pytest.mark.parametrize("override, fragment", [
    ("catalog.bandz=[g]", "bandz"),
    ("inference.batch_size=abc", "inference.batch_size"),
    ("features.reference_band=q", "reference_band"),
    ("inference.device=tpu", "inference.device"),
    ("catalog.bands=[g]", "two bands"),
])
def test_bad_config_names_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=[override])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config([tmp_path / "nope.yaml"])


def test_parse_override_yaml_values():
    assert parse_override("model.gammas=[0, 2]") == {"model": {"gammas": [0, 2]}}
    assert parse_override("catalog.truth_col=null") == {"catalog": {"truth_col": None}}
