"""The Spark inference path: one output row per input row, flags for bad rows, one model load per worker."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as Fn

from helpers import BANDS, load_dc2
from lsst_spark_ml.config import CatalogSettings, InferenceSettings
from lsst_spark_ml.errors import CatalogError
from lsst_spark_ml.features import flags as F
from lsst_spark_ml.inference import cache
from lsst_spark_ml.inference.photoz import PhotozPredictor
from lsst_spark_ml.io.columns import resolve_columns, spark_schema_dict
from udfs.photoz import (broadcast_model, check_no_collision, output_schema, photoz_arrow_mapper,
                         photoz_pandas_udf)


def damaged_frame(n=3000):
    v, e, z, ids = load_dc2("validation", n)
    pdf = pd.DataFrame({"id": ids})
    for k, b in enumerate(BANDS):
        pdf[f"mag_{b}_lsst"] = v[:, k]
        pdf[f"mag_err_{b}_lsst"] = e[:, k]
    pdf["redshift"] = z
    pdf.loc[0, "mag_g_lsst"] = np.nan
    pdf.loc[1, "mag_r_lsst"] = np.inf
    pdf.loc[2, "mag_i_lsst"] = -np.inf
    pdf.loc[3, "mag_err_z_lsst"] = np.nan
    pdf.loc[4, "mag_u_lsst"] = 99.0
    pdf.loc[5, [f"mag_{b}_lsst" for b in BANDS]] = np.nan   # nothing usable: NO_ESTIMATE
    pdf.loc[6, "mag_y_lsst"] = -99.0
    return pdf


@pytest.fixture(scope="module")
def damaged(spark):
    pdf = damaged_frame()
    df = spark.createDataFrame(pdf).repartition(3)
    cols = resolve_columns(spark_schema_dict(df), CatalogSettings(truth_col="redshift"))
    return pdf, df, cols


def run_mapper(df, cols, model, inf=InferenceSettings()):
    path, _ = model
    bc = broadcast_model(df.sparkSession, str(path))
    return df.mapInArrow(photoz_arrow_mapper(bc, cols, inf), output_schema(df.schema))


def test_every_row_comes_out_once_with_flags(damaged, tiny_model):
    pdf, df, cols = damaged
    out = run_mapper(df, cols, tiny_model).toPandas().set_index("id").loc[pdf["id"]]
    assert len(out) == len(pdf) and out.index.is_unique
    assert set(out.index) == set(pdf["id"])
    ids = pdf["id"].to_numpy()
    fl = out["flags"].to_numpy()
    assert fl[0] & (1 << (F.MISSING_SHIFT + 1))      # g NaN
    assert fl[1] & (1 << (F.MISSING_SHIFT + 2))      # r inf
    assert fl[2] & (1 << (F.MISSING_SHIFT + 3))      # i -inf
    assert fl[3] & (1 << (F.BAD_ERROR_SHIFT + 4))    # z error NaN
    assert fl[4] & (1 << (F.NONDETECT_SHIFT + 0))    # u = 99
    assert fl[6] & (1 << (F.NONDETECT_SHIFT + 5))    # y = -99
    assert fl[5] & F.NO_ESTIMATE
    row5 = out.loc[ids[5]]
    assert row5["pdf"] is None and np.isnan(row5["z_mean"])
    ok = out.drop(index=ids[5])
    assert ok[["z_mean", "z_mode", "z_median", "z_std", "z_lo68", "z_hi68"]].notna().all().all()
    assert (out["model_sha256"] == tiny_model[1]).all()


def test_spark_path_equals_plain_predictor(damaged, tiny_model):
    pdf, df, cols = damaged
    # Same precision on both sides (the default, auto, may pick bfloat16 on this hardware).
    out = run_mapper(df, cols, tiny_model, InferenceSettings(precision="float32")).toPandas().set_index("id")
    out = out.loc[pdf["id"]]
    pred = PhotozPredictor.load(tiny_model[0], precision="float32")
    ref = pred.predict(pdf[cols.values].to_numpy(), pdf[cols.errors].to_numpy(), "mag")
    np.testing.assert_allclose(out["z_mean"].to_numpy(), ref["z_mean"], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(out["flags"].to_numpy(), ref["flags"])
    got_pdf = np.stack([p for p in out["pdf"].iloc[10:20]])
    np.testing.assert_allclose(got_pdf, ref["pdf"][10:20], rtol=1e-6)


def test_model_loaded_once_per_worker_not_per_batch(spark, tiny_model, tmp_path):
    log = tmp_path / "loads.log"
    v, e, z, ids = load_dc2("validation", 20000)
    pdf = pd.DataFrame(np.column_stack([v, e]), columns=[f"mag_{b}_lsst" for b in BANDS]
                       + [f"mag_err_{b}_lsst" for b in BANDS])
    pdf["id"] = ids
    df = spark.createDataFrame(pdf).repartition(8)
    cols = resolve_columns(spark_schema_dict(df), CatalogSettings())
    # A fresh (never cached) key: a different precision setting makes the cache load this model anew.
    inf = InferenceSettings(precision="bfloat16")
    spark.sparkContext.environment[cache.LOAD_LOG_ENV] = str(log)
    old = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "500")
    try:
        out = run_mapper(df, cols, tiny_model, inf)
        n = out.count()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", old)
        del spark.sparkContext.environment[cache.LOAD_LOG_ENV]
    assert n == 20000
    pids = [l.split()[0] for l in log.read_text().splitlines()]
    # 20,000 rows in batches of 500 = 40+ batches over 8 tasks; each Python worker loads the model once.
    assert len(pids) == len(set(pids)), f"a worker loaded the model twice: {pids}"
    assert 1 <= len(pids) <= 4, f"{len(pids)} loads for 40 batches"


def test_pandas_udf_struct_matches_mapper(damaged, tiny_model):
    pdf, df, cols = damaged
    path, _ = tiny_model
    udf = photoz_pandas_udf(broadcast_model(df.sparkSession, str(path)), cols, InferenceSettings())
    a = (df.withColumn("pz", udf(*[Fn.col(c) for c in cols.inputs])).select("id", "pz.z_median", "pz.flags")
         .toPandas().set_index("id").sort_index())
    b = run_mapper(df, cols, tiny_model).select("id", "z_median", "flags").toPandas().set_index("id").sort_index()
    pd.testing.assert_frame_equal(a, b)


def test_output_column_collision_is_refused(spark):
    df = spark.createDataFrame(pd.DataFrame({"z_mean": [1.0], "flags": [0]}))
    with pytest.raises(CatalogError, match="z_mean"):
        check_no_collision(df.schema)
