"""Served models as Spark SQL functions.

    from udfs.sql import register
    register(spark)        # photoz_mbrnn(...) and ood_dcp(...) with the shipped models, nJy fluxes
    spark.sql("SELECT objectId, photoz_mbrnn(u_cModelFlux, u_cModelFluxErr, ..., y_cModelFluxErr).z_median, "
              "ood_dcp(u_cModelFlux, ..., y_cModelFluxErr).ood_flag FROM object")

Arguments are (value, error) pairs in the model's band order. A photo-z model returns the struct of
``lsst_spark_ml.inference.schema``; a DCP model returns ood_score, ood_flag, ood_tercile and the same photo-z
fields. The function kind follows the model directory's manifest. The same per-worker model cache serves SQL,
the UDFs and the jobs.

An asteroid taxonomy model (a directory written by ``asteroids fit``: the shipped one is registered as
``asteroid_class``) takes AB magnitudes, whatever ``photometry`` says, as named and typed parameters
(``udfs.asteroids.arguments``; for the shipped model, bands g r i z y)::

    asteroid_class(g_mag, g_err, r_mag, r_err, i_mag, i_err, z_mag, z_err, y_mag, y_err)
      -> STRUCT<asteroid_class STRING, asteroid_complex STRING, max_probability DOUBLE,
                probability ARRAY<DOUBLE>, log_likelihood DOUBLE, unusual_score DOUBLE, unusual BOOLEAN,
                asteroid_flags BIGINT, model_sha256 STRING>

Apparent, reduced or absolute magnitudes all work (only colours enter); a NULL, NaN or |m| >= 90 magnitude
or a NULL/non-positive error marks the band missing (its bit in ``asteroid_flags``), and a row with fewer than
two usable bands comes back with a null class and the NO_COLOUR bit, never dropped. ``probability`` follows
the model's class order (C D K L S V X), ``unusual`` is the UNUSUAL bit; the bits are those of
``lsst_spark_ml.estimators.asteroids``. A wrong number of arguments fails at analysis, before any job, naming
the function and the count given (Spark 4.3 prints the expected count of a 10+ parameter function as its
digits: "requires [1, 0] parameters").
"""
from __future__ import annotations

from lsst_spark_ml.config import InferenceSettings
from lsst_spark_ml.io.columns import ResolvedColumns

from .asteroids import arguments, asteroid_pandas_udf, is_asteroid_model, load_spec, sql_function_ddl
from .dcp import dcp_pandas_udf
from .photoz import broadcast_model, photoz_pandas_udf

_UDF_BY_KIND = {"mbrnn-ensemble": photoz_pandas_udf, "dcp-ood": dcp_pandas_udf}


def register(spark, models: dict[str, str] | None = None, photometry: str = "flux",
             inference: InferenceSettings | None = None) -> dict[str, list[str]]:
    """Register each ``{sql_name: model_dir}`` (default: ``photoz_mbrnn``, ``ood_dcp`` and, when the package
    ships it, ``asteroid_class``: the shipped models).

    ``photometry`` says what the photo-z and DCP arguments hold: "flux" (nJy) or "mag" (AB); asteroid
    models always take magnitudes. Returns, per function, the argument order it expects.
    """
    from lsst_spark_ml.artefacts import read_manifest
    from lsst_spark_ml.cli import default_asteroid_dir, default_dcp_dir, default_model_dir
    if photometry not in ("flux", "mag"):
        raise ValueError(f"photometry must be 'flux' or 'mag', got {photometry!r}")
    if not models:
        models = {"photoz_mbrnn": str(default_model_dir()), "ood_dcp": str(default_dcp_dir())}
        if (default_asteroid_dir() / "semisupervised").is_dir():
            models["asteroid_class"] = str(default_asteroid_dir())
    signatures = {}
    for name, model_dir in models.items():
        if is_asteroid_model(model_dir):
            signatures[name] = _register_asteroids(spark, name, model_dir)
            continue
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


def _register_asteroids(spark, name: str, model_dir: str) -> list[str]:
    spec = load_spec(spark, model_dir)
    # The pandas UDF under an internal name; the SQL function in front of it checks the arguments.
    impl = f"{name}__udf"
    spark.udf.register(impl, asteroid_pandas_udf(spec))
    spark.sql(sql_function_ddl(name, impl, spec))
    return arguments(spec)
