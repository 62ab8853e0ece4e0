"""The photo-z pipeline functions the CLI and jobs call, on the shared session."""
import json

import numpy as np
import pandas as pd
import pytest

from helpers import BANDS, load_dc2, tiny_config
from lsst_spark_ml.artefacts import verify
from lsst_spark_ml.errors import CatalogError
from lsst_spark_ml.pipelines import photoz


@pytest.fixture(scope="module")
def dc2_parquet(tmp_path_factory):
    v, e, z, ids = load_dc2("train", 2500)
    pdf = pd.DataFrame({"id": ids, "redshift": z})
    for k, b in enumerate(BANDS):
        pdf[f"mag_{b}_lsst"] = v[:, k]
        pdf[f"mag_err_{b}_lsst"] = e[:, k]
    path = tmp_path_factory.mktemp("cat") / "dc2.parquet"
    pdf.to_parquet(path)
    return path, pdf


def test_train_from_a_catalog_writes_a_verified_model(spark, dc2_parquet, tmp_path):
    path, pdf = dc2_parquet
    res = photoz.train(spark, tiny_config(), str(path), str(tmp_path / "m"))
    man, sha = verify(tmp_path / "m")
    assert sha == res["model_sha256"]
    assert man["training_data"]["n_rows"] == len(pdf)
    assert man["training_data"]["n_train"] + man["training_data"]["n_val"] == len(pdf)
    # every member trained and kept its best epoch
    assert all(1 <= m["best_epoch"] <= m["epochs_run"] for m in man["members"])


def test_train_needs_a_truth_column(spark, dc2_parquet, tmp_path):
    path, _ = dc2_parquet
    cfg = tiny_config(catalog={"truth_col": "zspec"})
    with pytest.raises(CatalogError, match="zspec"):
        photoz.train(spark, cfg, str(path), str(tmp_path / "m"))


def test_predict_then_evaluate_parquet(spark, dc2_parquet, tiny_model, tmp_path):
    path, pdf = dc2_parquet
    meta = photoz.predict(spark, tiny_config(), str(path), str(tiny_model[0]), str(tmp_path / "pz"))
    assert meta["rows_in"] == meta["rows_written"] == len(pdf) and meta["layout"] == "parquet"
    saved = json.loads((tmp_path / "pz" / photoz.META_FILE).read_text())
    assert saved["model_sha256"] == tiny_model[1]
    out = pd.read_parquet(tmp_path / "pz")
    assert sorted(out["id"]) == sorted(pdf["id"])
    res = photoz.evaluate(spark, str(tmp_path / "pz"), "redshift", str(tmp_path / "ev"))
    assert res["z_median"]["n"] == len(pdf)
    assert 0 < res["z_median"]["sigma_nmad"] < 1 and np.isfinite(res["pdf"]["crps"])
    assert {p.rsplit("/", 1)[-1] for p in res["plots"]} == {"zphot_vs_zspec.png", "pit.png", "nz.png",
                                                             "example_pdfs.png"}
