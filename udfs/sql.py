"""Served models as Spark SQL functions (the photo-z one for now; other capabilities add theirs here).

    from udfs.sql import register
    register(spark)                      # photoz_mbrnn(...) with the shipped model, nJy fluxes
    spark.sql("SELECT objectId, photoz_mbrnn(u_cModelFlux, u_cModelFluxErr, ..., y_cModelFluxErr).z_median "
              "FROM object")

Arguments are (value, error) pairs in the model's band order; the function returns the photo-z struct of
``lsst_spark_ml.inference.schema``. The same per-worker model cache serves SQL, the UDFs and the jobs.
"""
from __future__ import annotations

from lsst_spark_ml.config import InferenceSettings
from lsst_spark_ml.io.columns import ResolvedColumns

from .photoz import broadcast_model, photoz_pandas_udf


def register(spark, models: dict[str, str] | None = None, photometry: str = "flux",
             inference: InferenceSettings | None = None) -> dict[str, list[str]]:
    """Register each ``{sql_name: model_dir}`` (default ``photoz_mbrnn``: the shipped model).

    ``photometry`` says what the arguments hold: "flux" (nJy) or "mag" (AB). Returns, per function, the
    argument order it expects.
    """
    from lsst_spark_ml.artefacts import read_manifest
    from lsst_spark_ml.cli import default_model_dir
    if photometry not in ("flux", "mag"):
        raise ValueError(f"photometry must be 'flux' or 'mag', got {photometry!r}")
    models = models or {"photoz_mbrnn": str(default_model_dir())}
    signatures = {}
    for name, model_dir in models.items():
        bands = read_manifest(model_dir)[0]["bands"]
        cols = ResolvedColumns(photometry, list(bands), [f"{b}_value" for b in bands],
                               [f"{b}_error" for b in bands])
        udf = photoz_pandas_udf(broadcast_model(spark, model_dir), cols, inference or InferenceSettings())
        spark.udf.register(name, udf)
        signatures[name] = cols.inputs
    return signatures
