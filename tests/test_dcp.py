"""DCP out-of-distribution scoring: the model maths, the Spark ML estimator and model, bad input."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import load_dc2
from lsst_spark_ml.errors import CatalogError, ModelIntegrityError
from lsst_spark_ml.models import dcp_score, discrepancy_loss

BANDS = "ugrizy"
TINY = dict(photometry="mag", hidden=[48, 48], nBins=32, margin=3.0, checkEvery=15, ts1Patience=2, ts2Patience=2,
            ts3Patience=2, maxChecksPerStage=3, batchSize=256, unlabelledBatchSize=256)


def _frame(which, n, with_z=True):
    v, e, z, ids = load_dc2(which, n)
    d = {f"mag_{b}_lsst": v[:, i] for i, b in enumerate(BANDS)}
    d.update({f"mag_err_{b}_lsst": e[:, i] for i, b in enumerate(BANDS)})
    d["id"] = ids
    if with_z:
        d["redshift"] = z
    return pd.DataFrame(d)


def _lood(n, seed):
    from lsst_spark_ml.ood.labelled_ood import generate_all
    return generate_all(n, seed, error_model="dc2")


@pytest.fixture(scope="module")
def frames():
    lab = _frame("train", 3000)
    region = pd.concat([_frame("validation", 3000, with_z=False),
                        _lood(400, seed=1).drop(columns=["kind", "redshift"])], ignore_index=True)
    return lab, region


@pytest.fixture(scope="module")
def dcp_model(spark, frames):
    from lsst_spark_ml.estimators.dcp import DCPEstimator
    lab, region = frames
    return DCPEstimator(**TINY).fit(spark.createDataFrame(lab), spark.createDataFrame(region))


def test_score_is_the_clamped_entropy_gap():
    flat, peaked = torch.zeros(3, 64), torch.full((3, 64), -30.0)
    peaked[:, 5] = 30.0
    s = dcp_score(flat, peaked)
    assert torch.allclose(s, torch.full((3,), math.log(64)), atol=1e-4)
    assert torch.all(dcp_score(peaked, flat) == 1e-5)          # LE flatter than HE: the floor, not negative
    assert discrepancy_loss(flat, peaked, 4.1) == 0            # the gap already exceeds the margin
    assert discrepancy_loss(peaked, peaked, 4.1) > 4.0


def test_model_scores_every_row_once_and_flags_what_it_cannot_use(spark, dcp_model, frames):
    _, region = frames
    bad = region.head(3).copy()
    bad.loc[0, [f"mag_{b}_lsst" for b in BANDS]] = np.nan        # every band missing
    bad.loc[1, ["mag_u_lsst", "mag_g_lsst"]] = 99.0               # non-detections
    bad["id"] = [-1, -2, -3]
    df = spark.createDataFrame(pd.concat([region, bad], ignore_index=True))
    out = dcp_model.transform(df).select("id", "ood_score", "ood_flag", "ood_tercile", "z_median", "flags").toPandas()
    assert len(out) == len(region) + 3 and sorted(out["id"]) == sorted(df.select("id").toPandas()["id"])
    assert out["ood_score"].notna().all() and out["ood_score"].between(0.99e-5, math.log(32) + 1e-6).all()
    row = out.set_index("id")
    assert row.loc[-1, "ood_flag"] and np.isnan(row.loc[-1, "z_median"]) and row.loc[-1, "flags"] & (1 << 24)
    assert np.isfinite(row.loc[-2, "z_median"]) and row.loc[-2, "flags"] & 0b11
    t = dcp_model.thresholds
    assert t["tercile_1"] <= t["tercile_2"] <= t["flag"]
    assert set(out["ood_tercile"]) <= {0, 1, 2}


def test_stars_and_quasars_score_above_galaxies(spark, dcp_model):
    from lsst_spark_ml.metrics.ood import roc_auc
    gal = _frame("validation", 6000, with_z=False).iloc[3000:]
    lood = _lood(500, seed=2)
    both = pd.concat([gal.assign(kind="galaxy"), lood.drop(columns=["redshift"])], ignore_index=True)
    s = dcp_model.transform(spark.createDataFrame(both)).select("kind", "ood_score").toPandas()
    auc = roc_auc(s[s.kind == "galaxy"].ood_score, s[s.kind.isin(["star", "quasar"])].ood_score)
    assert auc > 0.75, f"a 45-step DCP should already rank stars and quasars above galaxies (ROC-AUC {auc:.3f})"


def test_saved_model_loads_with_the_same_scores_and_refuses_tampering(spark, dcp_model, frames, tmp_path):
    from lsst_spark_ml.estimators.dcp import DCPModel
    df = spark.createDataFrame(frames[1].head(500))
    path = str(tmp_path / "dcp")
    dcp_model.write().overwrite().save(path)
    loaded = DCPModel.load(path)
    a = dcp_model.transform(df).select("ood_score", "z_median").toPandas()
    b = loaded.transform(df).select("ood_score", "z_median").toPandas()
    pd.testing.assert_frame_equal(a, b)
    assert loaded.thresholds == dcp_model.thresholds
    w = tmp_path / "dcp" / "model" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelIntegrityError):
        DCPModel.load(path)


def test_pipeline_fits_one_dataframe_with_null_labels_and_saves(spark, frames, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from lsst_spark_ml.estimators.dcp import DCPEstimator
    lab, region = frames
    df = spark.createDataFrame(pd.concat([lab.head(1500), region.head(1500).assign(redshift=np.nan)]
                                         ).replace({"redshift": {np.nan: None}}))
    tiny = {**TINY, "maxChecksPerStage": 1, "checkEvery": 5, "withPdf": False}
    pm = Pipeline(stages=[DCPEstimator(**tiny)]).fit(df)
    pm.write().overwrite().save(str(tmp_path / "pipe"))
    out = PipelineModel.load(str(tmp_path / "pipe")).transform(df)
    assert "pdf" not in out.columns and out.count() == 3000
    assert out.filter("ood_score IS NULL").count() == 0


def test_bad_unlabelled_data_fails_at_fit_with_a_clear_message(spark, frames):
    from lsst_spark_ml.estimators.dcp import DCPEstimator
    lab, region = frames
    est = DCPEstimator(**TINY)
    labelled = spark.createDataFrame(lab.head(300))
    with pytest.raises(CatalogError, match="unlabelled.*mag_y_lsst"):
        est.fit(labelled, spark.createDataFrame(region.head(300).drop(columns=["mag_y_lsst"])))
    flux = region.head(300).rename(columns={f"mag_{b}_lsst": f"{b}_cModelFlux" for b in BANDS})
    flux = flux.rename(columns={f"mag_err_{b}_lsst": f"{b}_cModelFluxErr" for b in BANDS})
    with pytest.raises(CatalogError, match="unlabelled"):
        DCPEstimator(**{**TINY, "photometry": "auto"}).fit(labelled, spark.createDataFrame(flux))
    empty = spark.createDataFrame(region.head(300)).limit(0)
    with pytest.raises(CatalogError, match="empty"):
        est.fit(labelled, empty)
    with pytest.raises(Exception, match="margin"):
        DCPEstimator(**{**TINY, "margin": 5.0}).fit(labelled, spark.createDataFrame(region.head(300)))


def test_dcp_from_sql_matches_the_model(spark, dcp_model, frames, tmp_path):
    from udfs.sql import register
    path = tmp_path / "dcp_sql"
    dcp_model.write().overwrite().save(str(path))
    region = frames[1].head(300)
    spark.createDataFrame(region).createOrReplaceTempView("region")
    register(spark, {"ood_test": str(path / "model")}, photometry="mag")
    args = ", ".join(f"mag_{b}_lsst, mag_err_{b}_lsst" for b in BANDS)
    got = spark.sql(f"SELECT id, ood_test({args}) AS o FROM region").select("id", "o.ood_score", "o.ood_flag",
                                                                            "o.z_median").toPandas()
    ref = dcp_model.transform(spark.createDataFrame(region)).select("id", "ood_score", "ood_flag",
                                                                    "z_median").toPandas()
    pd.testing.assert_frame_equal(got.sort_values("id").reset_index(drop=True),
                                  ref.sort_values("id").reset_index(drop=True))
