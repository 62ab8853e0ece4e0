"""Served models as Spark SQL functions.

    from udfs.sql import register
    register(spark)        # photoz_mbrnn(...) and ood_dcp(...) with the shipped models, nJy fluxes
    spark.sql("SELECT objectId, photoz_mbrnn(u_cModelFlux, u_cModelFluxErr, ..., y_cModelFluxErr).z_median, "
              "ood_dcp(u_cModelFlux, ..., y_cModelFluxErr).ood_flag FROM object")

Arguments are (value, error) pairs in the model's band order, as named and typed parameters: with the default
``photometry="flux"``, ``u_flux, u_flux_err, g_flux, g_flux_err, ...`` (nJy); with ``"mag"``, ``u_mag, u_mag_err,
...`` (AB). ``register`` returns each function's parameter names in order, so named arguments work too
(``photoz_mbrnn(u_flux => u_cModelFlux, u_flux_err => u_cModelFluxErr, ...)``). A photo-z model returns the
struct of ``lsst_spark_ml.inference.schema``; a DCP model returns ood_score, ood_flag, ood_tercile and the same
photo-z fields. The function kind follows the model directory's manifest. The same per-worker model cache
serves SQL, the UDFs and the jobs. A wrong number of arguments fails at analysis, before any job, naming the
function and the count given (Spark 4.3 prints the expected count of a 10+ parameter function as its digits:
"requires [1, 2] parameters").

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
``lsst_spark_ml.estimators.asteroids``. A wrong number of arguments fails at analysis here too.

A morphology model (``morphology train``; the shipped one is registered as ``morphology_dat``) takes the
columns of a cutout table::

    morphology_dat(cutout BINARY, cutout_shape ARRAY<INT>, cutout_dtype STRING)
      -> STRUCT<morph_class STRING, morph_class_id INT, morph_confidence FLOAT, morph_probs ARRAY<FLOAT>,
                morph_flags INT, morph_model_sha256 STRING>

A damaged cutout (wrong shape, null, an all-NaN band) gives a null class and its ``morph_flags`` bits
(``lsst_spark_ml.morphology.inputs``), never an exception.
"""
from __future__ import annotations

from lsst_spark_ml.config import InferenceSettings
from lsst_spark_ml.io.columns import ResolvedColumns

from .asteroids import STRUCT_DDL, arguments, asteroid_pandas_udf, is_asteroid_model, load_spec
from .dcp import dcp_pandas_udf
from .photoz import broadcast_model, photoz_pandas_udf

_UDF_BY_KIND = {"mbrnn-ensemble": photoz_pandas_udf, "dcp-ood": dcp_pandas_udf}


def register(spark, models: dict[str, str] | None = None, photometry: str = "flux",
             inference: InferenceSettings | None = None) -> dict[str, list[str]]:
    """Register each ``{sql_name: model_dir}`` (default: ``photoz_mbrnn``, ``ood_dcp`` and, when the package
    ships it, ``asteroid_class``: the shipped models).

    ``photometry`` says what the photo-z and DCP arguments hold: "flux" (nJy) or "mag" (AB); asteroid
    models always take magnitudes. Returns, per function, its parameter names in the order it expects them.
    """
    from lsst_spark_ml.artefacts import read_manifest
    from lsst_spark_ml.cli import default_asteroid_dir, default_dcp_dir, default_model_dir, default_morphology_dir
    if photometry not in ("flux", "mag"):
        raise ValueError(f"photometry must be 'flux' or 'mag', got {photometry!r}")
    if not models:
        models = {"photoz_mbrnn": str(default_model_dir()), "ood_dcp": str(default_dcp_dir())}
        if (default_asteroid_dir() / "semisupervised").is_dir():
            models["asteroid_class"] = str(default_asteroid_dir())
        if (default_morphology_dir() / "manifest.json").is_file():
            models["morphology_dat"] = str(default_morphology_dir())
    signatures = {}
    for name, model_dir in models.items():
        if is_asteroid_model(model_dir):
            spec = load_spec(spark, model_dir)
            signatures[name] = register_function(spark, name, asteroid_pandas_udf(spec), arguments(spec),
                                                 f"STRUCT<{STRUCT_DDL}>")
            continue
        manifest = read_manifest(model_dir)[0]
        if manifest.get("kind") == "morphology-classifier":
            from lsst_spark_ml.config import MorphologySettings

            from .morphology import morphology_pandas_udf
            udf = morphology_pandas_udf(broadcast_model(spark, model_dir), MorphologySettings())
            signatures[name] = register_function(spark, name, udf, ["cutout", "cutout_shape", "cutout_dtype"],
                                                 types=["BINARY", "ARRAY<INT>", "STRING"])
            continue
        if manifest.get("kind") not in _UDF_BY_KIND:
            raise ValueError(f"{model_dir}: no SQL function for a {manifest.get('kind')!r} model")
        bands = manifest["bands"]
        # The pandas UDF reads its inputs by these names, which are also the SQL parameters.
        cols = ResolvedColumns(photometry, list(bands), [f"{b}_{photometry}" for b in bands],
                               [f"{b}_{photometry}_err" for b in bands])
        make = _UDF_BY_KIND[manifest["kind"]]
        udf = make(broadcast_model(spark, model_dir), cols, inference or InferenceSettings())
        # No RETURNS: a declared type would widen pdf to array<float> with nullable elements, while the
        # UDF's own type says every bin is set.
        signatures[name] = register_function(spark, name, udf, cols.inputs)
    return signatures


def sql_function_ddl(name: str, impl_name: str, params: list[str], returns: str | None = None,
                     types: list[str] | None = None) -> str:
    """A temporary SQL function with parameters ``params`` (DOUBLE unless ``types`` says otherwise) over the
    registered UDF ``impl_name``.

    Python UDFs take any number of arguments; the SQL function makes a wrong count an analysis error that
    names the function and its arity, and allows named arguments (``g_mag => ...``). ``returns``: the
    declared result type (DDL), or None for the UDF's own."""
    types = types or ["DOUBLE"] * len(params)
    returns_clause = f"RETURNS {returns} " if returns else ""
    return (f"CREATE OR REPLACE TEMPORARY FUNCTION {name}({', '.join(f'{a} {t}' for a, t in zip(params, types))}) "
            f"{returns_clause}RETURN {impl_name}({', '.join(params)})")


def register_function(spark, name: str, udf, params: list[str], returns: str | None = None,
                      types: list[str] | None = None) -> list[str]:
    """Register ``udf`` under an internal name and the checked SQL function ``name`` in front of it."""
    impl = f"{name}__udf"
    spark.udf.register(impl, udf)
    spark.sql(sql_function_ddl(name, impl, params, returns, types))
    return list(params)
