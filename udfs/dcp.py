"""DCP out-of-distribution UDFs: catalog rows in, the same rows out with the OOD score (and photo-z) appended.

Thin like ``udfs.photoz``: the policy lives in ``lsst_spark_ml.inference.dcp``; this module moves Arrow
batches and keeps one predictor (both network pairs) per Python worker, keyed by the model's sha256.
"""
from __future__ import annotations

from typing import Iterator

import pandas as pd
import pyarrow as pa

from lsst_spark_ml.config import InferenceSettings
from lsst_spark_ml.inference import cache
from lsst_spark_ml.inference.dcp import OOD_COLUMNS
from lsst_spark_ml.inference.schema import OUTPUT_COLUMNS, arrow_columns, spark_fields
from lsst_spark_ml.io.columns import ResolvedColumns
from udfs.photoz import _column_getter_arrow, _photometry, broadcast_model, check_arity  # noqa: F401  (re-exported)
from udfs.photoz import network_batch


def _predictor(model, inf: InferenceSettings, bf16_verified: bool | None = None):
    """One DCPPredictor per Python worker; ``bf16_verified``: the driver's accuracy-gate verdict (None: the
    worker runs the gate itself where its hardware would pick bfloat16, cached per model)."""
    from lsst_spark_ml.inference.photoz import pick_device
    payload = model.value
    device = str(pick_device(inf.device))

    def load():
        import torch

        from lsst_spark_ml.artefacts import artefact_from_payload
        from lsst_spark_ml.inference.dcp import DCPPredictor
        from lsst_spark_ml.session import task_cores
        torch.set_num_threads(inf.threads or task_cores())
        return DCPPredictor.from_artefact(artefact_from_payload(payload), device=device, precision=inf.precision,
                                          bf16_verified=bf16_verified)
    return cache.get_or_load((payload.sha256, device, "dcp", inf.precision, bf16_verified), load)


def ood_arrow_columns(res: dict) -> dict[str, pa.Array]:
    return {"ood_score": pa.array(res["ood_score"], type=pa.float64()),
            "ood_flag": pa.array(res["ood_flag"], type=pa.bool_()),
            "ood_tercile": pa.array(res["ood_tercile"], type=pa.int32())}


def dcp_arrow_mapper(model, cols: ResolvedColumns, inf: InferenceSettings, with_photoz: bool = True,
                     with_pdf: bool = True, bf16_verified: bool | None = None):
    """A function for ``DataFrame.mapInArrow``; every input row comes out once with the outputs appended."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pred = _predictor(model, inf, bf16_verified)
        for batch in batches:
            values, errors, ebv = _photometry(_column_getter_arrow(batch), cols)
            res = pred.predict(values, errors, cols.photometry, ebv, batch_size=network_batch(inf, pred.device))
            out = ood_arrow_columns(res)
            if with_photoz:
                out.update(arrow_columns(res, pred.sha256, pred.n_bins, with_pdf))
            else:
                out["model_sha256"] = pa.array([pred.sha256] * len(res["ok"]), type=pa.string())
            yield pa.RecordBatch.from_arrays(list(batch.columns) + list(out.values()),
                                             names=list(batch.schema.names) + list(out.keys()))
    return run


def output_columns(with_photoz: bool = True, with_pdf: bool = True) -> list[str]:
    if not with_photoz:
        return list(OOD_COLUMNS) + ["model_sha256"]
    return list(OOD_COLUMNS) + [c for c in OUTPUT_COLUMNS if with_pdf or c != "pdf"]


def output_schema(input_schema, with_photoz: bool = True, with_pdf: bool = True):
    from pyspark.sql import types as T
    ood = [T.StructField("ood_score", T.DoubleType(), True), T.StructField("ood_flag", T.BooleanType(), True),
           T.StructField("ood_tercile", T.IntegerType(), True)]
    if with_photoz:
        rest = [f for f in spark_fields() if with_pdf or f.name != "pdf"]
    else:
        rest = [T.StructField("model_sha256", T.StringType(), True)]
    return T.StructType(list(input_schema.fields) + ood + rest)


def spark_struct(with_pdf: bool = True):
    from pyspark.sql import types as T
    return T.StructType([f for f in output_schema(T.StructType([]), True, with_pdf).fields])


def dcp_pandas_udf(model, cols: ResolvedColumns, inf: InferenceSettings, with_pdf: bool = True):
    """An iterator pandas UDF returning the OOD + photo-z struct; call it on ``cols.inputs`` columns."""
    from pyspark.sql.functions import pandas_udf
    names = cols.inputs

    @pandas_udf(spark_struct(with_pdf))
    def ood_dcp(it: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        pred = _predictor(model, inf)
        for series in it:
            check_arity("ood_dcp", names, series)
            frame = dict(zip(names, series))
            values, errors, ebv = _photometry(lambda c: frame[c].astype("float64").to_numpy(), cols)
            res = pred.predict(values, errors, cols.photometry, ebv, batch_size=network_batch(inf, pred.device))
            out = {**ood_arrow_columns(res), **arrow_columns(res, pred.sha256, pred.n_bins, with_pdf)}
            yield pa.table(out).to_pandas()
    return ood_dcp
