"""Served models as Spark SQL functions.

    from udfs.sql import register
    register(spark)        # photoz_mbrnn(...) and ood_dcp(...) with the shipped models, nJy fluxes
    spark.sql("SELECT objectId, photoz_mbrnn(u_cModelFlux, u_cModelFluxErr, ..., y_cModelFluxErr).z_median, "
              "ood_dcp(u_cModelFlux, ..., y_cModelFluxErr).ood_flag FROM object")

Arguments are (value, error) pairs in the model's band order. A photo-z model returns the struct of
``lsst_spark_ml.inference.schema``; a DCP model returns ood_score, ood_flag, ood_tercile and the same photo-z
fields. The function kind follows the model directory's manifest. The same per-worker model cache serves SQL,
the UDFs and the jobs.
"""
from __future__ import annotations

from lsst_spark_ml.config import InferenceSettings
from lsst_spark_ml.io.columns import ResolvedColumns

from .dcp import dcp_pandas_udf
from .photoz import broadcast_model, photoz_pandas_udf

_UDF_BY_KIND = {"mbrnn-ensemble": photoz_pandas_udf, "dcp-ood": dcp_pandas_udf}


def register(spark, models: dict[str, str] | None = None, photometry: str = "flux",
             inference: InferenceSettings | None = None) -> dict[str, list[str]]:
    """Register each ``{sql_name: model_dir}`` (default: ``photoz_mbrnn`` and ``ood_dcp``, the shipped models).

    ``photometry`` says what the arguments hold: "flux" (nJy) or "mag" (AB). Returns, per function, the
    argument order it expects.
    """
    from lsst_spark_ml.artefacts import read_manifest
    from lsst_spark_ml.cli import default_dcp_dir, default_model_dir
    if photometry not in ("flux", "mag"):
        raise ValueError(f"photometry must be 'flux' or 'mag', got {photometry!r}")
    models = models or {"photoz_mbrnn": str(default_model_dir()), "ood_dcp": str(default_dcp_dir())}
    signatures = {}
    for name, model_dir in models.items():
        manifest = read_manifest(model_dir)[0]
        if manifest.get("kind") not in _UDF_BY_KIND:
            raise ValueError(f"{model_dir}: no SQL function for a {manifest.get('kind')!r} model")
        bands = manifest["bands"]
        cols = ResolvedColumns(photometry, list(bands), [f"{b}_value" for b in bands],
                               [f"{b}_error" for b in bands])
        make = _UDF_BY_KIND[manifest["kind"]]
        udf = make(broadcast_model(spark, model_dir), cols, inference or InferenceSettings())
        spark.udf.register(name, udf)
        signatures[name] = cols.inputs
    return signatures
