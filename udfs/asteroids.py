"""The asteroid taxonomy model as a pandas UDF: per-band magnitudes in, class, probabilities and flags out.

Thin like ``udfs.photoz``: the posterior, the flags and the class names come from the fitted
``pyspark.ml`` model itself (``estimators.asteroids``: its ``classify_arrays`` and ``arrow_columns``, which its
own transform uses), so the function answers exactly what ``PipelineModel.transform`` answers. The model
directory is read once on the driver (``load_spec``); what travels to the workers is its JSON (a few kB:
mixture, classes, params), and each Python worker rebuilds the model once, in the per-worker cache keyed by
the sha256 of that JSON.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from lsst_spark_ml.errors import CatalogError

FEATURES, ERRORS = "refl_mag", "refl_err"
# The estimator's output columns, under its default names; the struct keeps those names so that
# ``asteroid_class(...).max_probability`` means what the ``max_probability`` column of a transform means.
MODEL_COLUMNS = ("probability", "prediction", "asteroid_class", "asteroid_complex", "max_probability",
                 "log_likelihood", "unusual_score", "asteroid_flags")
STRUCT_DDL = ("asteroid_class STRING, asteroid_complex STRING, max_probability DOUBLE, probability ARRAY<DOUBLE>, "
              "log_likelihood DOUBLE, unusual_score DOUBLE, unusual BOOLEAN, asteroid_flags BIGINT, "
              "model_sha256 STRING")


def is_asteroid_model(model_dir: str) -> bool:
    """An ``asteroids fit`` directory, or one of its pipelines (``semisupervised/``, ``clustering/``)."""
    from lsst_spark_ml.pipelines.asteroids import META_FILE
    p = Path(model_dir)
    return (p / META_FILE).is_file() or ((p / "metadata").is_dir() and (p / "stages").is_dir()
                                         and not (p / "manifest.json").exists())


def load_spec(spark, model_dir: str) -> dict:
    """Read the model on the driver; a fit directory serves its semi-supervised (seven-class) pipeline."""
    from pyspark.ml import PipelineModel

    from lsst_spark_ml.estimators.asteroids import (AsteroidClusteringModel, ReflectanceFeatures,
                                                    SemiSupervisedAsteroidGMMModel)
    from lsst_spark_ml.pipelines.asteroids import META_FILE
    path = Path(model_dir)
    if (path / META_FILE).is_file():
        path = path / "semisupervised"
    try:
        pipe = PipelineModel.load(str(path))
    except Exception as exc:  # noqa: BLE001 - Spark raises several kinds for an unreadable model
        raise CatalogError(f"{model_dir}: not an asteroid model written by 'asteroids fit' "
                           f"({str(exc).splitlines()[0]})") from None
    stages = pipe.stages
    if len(stages) != 2 or not isinstance(stages[0], ReflectanceFeatures) \
            or not isinstance(stages[1], (SemiSupervisedAsteroidGMMModel, AsteroidClusteringModel)):
        raise CatalogError(f"{path}: expected the pipeline [ReflectanceFeatures, asteroid mixture model], got "
                           f"{[type(s).__name__ for s in stages]}")
    feats, model = stages
    bands = list(feats.getOrDefault(feats.bands))
    if bands != list(model.getOrDefault(model.bands)):
        raise CatalogError(f"{path}: features are built in band order {bands} but the model reads "
                           f"{model.getOrDefault(model.bands)}")
    params = {p.name: v for p, v in model.extractParamMap().items()}
    params.update(featuresCol=FEATURES, errorsCol=ERRORS)
    params.update({p: c for p, c in zip(("probabilityCol", "predictionCol", "classCol", "complexCol",
                                         "maxProbabilityCol", "logLikelihoodCol", "unusualScoreCol", "flagsCol"),
                                        MODEL_COLUMNS)})
    spec = {"model_class": f"{type(model).__module__}.{type(model).__name__}", "params": params,
            "mixture": model.mixture.to_dict(), "classes": model.getClasses(), "bands": bands,
            "system": feats.getOrDefault(feats.system)}
    spec["sha256"] = hashlib.sha256(json.dumps(spec, sort_keys=True, default=float).encode()).hexdigest()
    return spec


def arguments(spec: dict) -> list[str]:
    """The SQL function's parameters: (magnitude, error) per band, in the model's band order."""
    return [f"{b}_{k}" for b in spec["bands"] for k in ("mag", "err")]


def _classifier(spec: dict):
    """(the rebuilt model, solar magnitudes), once per Python worker and model."""
    from lsst_spark_ml.inference import cache

    def load():
        import importlib

        from lsst_spark_ml.asteroids.colours import solar_mags
        module, name = spec["model_class"].rsplit(".", 1)
        model = getattr(importlib.import_module(module), name)(mixture=spec["mixture"], classes=spec["classes"])
        model._set(**spec["params"])
        return model, solar_mags(spec["bands"], spec["system"])
    return cache.get_or_load((spec["sha256"], "asteroids"), load)


def reflectance(mags: np.ndarray, errs: np.ndarray, sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``ReflectanceFeatures`` computes, on arrays: a null, NaN or sentinel (|m| >= 90) magnitude is NaN
    (the band is marginalised), a null error NaN."""
    m = np.asarray(mags, dtype=np.float64)
    bad = ~np.isfinite(m) | (np.abs(m) >= 90)
    return np.where(bad, np.nan, m - sun), np.asarray(errs, dtype=np.float64)


def classify_arrays(spec: dict, mags: np.ndarray, errs: np.ndarray):
    """(N, B) magnitudes and errors -> an Arrow RecordBatch of the struct's fields (one row per input row)."""
    import pyarrow as pa

    from lsst_spark_ml.estimators.asteroids import UNUSUAL, arrow_columns
    model, sun = _classifier(spec)
    col = arrow_columns(model.classify_arrays(*reflectance(mags, errs, sun)))
    score = col["unusual_score"]
    flags = col["asteroid_flags"].to_numpy(zero_copy_only=False)
    unusual = pa.array((flags & UNUSUAL) != 0, mask=np.asarray(score.is_null().to_numpy(zero_copy_only=False)))
    return pa.RecordBatch.from_arrays(
        [col["asteroid_class"], col["asteroid_complex"], col["max_probability"], col["probability"],
         col["log_likelihood"], score, unusual, col["asteroid_flags"],
         pa.array([spec["sha256"]] * len(flags), pa.string())],
        names=["asteroid_class", "asteroid_complex", "max_probability", "probability", "log_likelihood",
               "unusual_score", "unusual", "asteroid_flags", "model_sha256"])


def asteroid_pandas_udf(spec: dict):
    """An iterator pandas UDF returning the struct of ``STRUCT_DDL``; call it on ``arguments(spec)``."""
    from pyspark.sql.functions import pandas_udf
    n_args = 2 * len(spec["bands"])

    @pandas_udf(f"struct<{STRUCT_DDL}>")
    def asteroid_class(it: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        for series in it:
            # SQL registration checks the count at analysis time; this guards direct DataFrame calls.
            if len(series) != n_args:
                raise TypeError(f"asteroid_class takes {n_args} arguments ({', '.join(arguments(spec))}), "
                                f"got {len(series)}")
            cols = [pd.to_numeric(s, errors="coerce").to_numpy(np.float64, na_value=np.nan) for s in series]
            mags, errs = np.column_stack(cols[0::2]), np.column_stack(cols[1::2])
            yield classify_arrays(spec, mags, errs).to_pandas()
    return asteroid_class
