"""Photo-z UDFs: the catalog rows in, the same rows out with the photo-z columns appended.

Thin by design: policy (features, flags, summaries) lives in lsst_spark_ml.inference; this module only
moves Arrow batches in and out of Spark and keeps one predictor per Python worker.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from lsst_spark_ml.config import InferenceSettings
from lsst_spark_ml.inference import cache
from lsst_spark_ml.inference.schema import OUTPUT_COLUMNS, arrow_columns, spark_fields, spark_struct
from lsst_spark_ml.io.columns import ResolvedColumns


def broadcast_model(spark, model_dir: str):
    """Verify the model on the driver and broadcast its bytes (22 MB for the shipped ensemble).

    Executors then never open the driver's path, which a cluster's workers do not have.
    """
    from lsst_spark_ml.artefacts import read_payload
    return spark.sparkContext.broadcast(read_payload(model_dir))


def _predictor(model, inf: InferenceSettings):
    """``model``: a Broadcast of an artefacts.Payload. Loaded once per Python worker, keyed by sha256."""
    from lsst_spark_ml.inference.photoz import pick_device
    payload = model.value
    # The device actually used is the key: a worker may serve tasks that Spark gave different GPUs.
    device = str(pick_device(inf.device))

    def load():
        import torch

        from lsst_spark_ml.artefacts import artefact_from_payload
        from lsst_spark_ml.inference.photoz import PhotozPredictor
        from lsst_spark_ml.session import task_cores
        # Spark sets OMP_NUM_THREADS=1 per task; match torch to the cores the task was given.
        torch.set_num_threads(inf.threads or task_cores())
        return PhotozPredictor.from_artefact(artefact_from_payload(payload), device=device,
                                             precision=inf.precision)
    return cache.get_or_load((payload.sha256, device, inf.precision), load)


def _photometry(get, cols: ResolvedColumns):
    values = np.column_stack([np.asarray(get(c), dtype=np.float64) for c in cols.values])
    errors = np.column_stack([np.asarray(get(c), dtype=np.float64) for c in cols.errors])
    ebv = np.asarray(get(cols.ebv_col), dtype=np.float64) if cols.ebv_col else None
    return values, errors, ebv


def _column_getter_arrow(batch: pa.RecordBatch):
    def get(name: str) -> np.ndarray:
        col = batch.column(name)
        if col.null_count:
            # Nulls become NaN so that they take the MISSING path of the non-detection policy.
            col = col.cast(pa.float64()).fill_null(float("nan"))
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    return get


def photoz_arrow_mapper(model, cols: ResolvedColumns, inf: InferenceSettings, with_pdf: bool = True):
    """A function for ``DataFrame.mapInArrow``: every input row comes out once, with the outputs appended.

    ``model`` is the Broadcast returned by ``broadcast_model``.
    """
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pred = _predictor(model, inf)
        sha256 = pred.sha256
        for batch in batches:
            values, errors, ebv = _photometry(_column_getter_arrow(batch), cols)
            res = pred.predict(values, errors, cols.photometry, ebv, batch_size=inf.batch_size)
            out = arrow_columns(res, sha256, pred.n_bins, with_pdf)
            arrays = list(batch.columns) + list(out.values())
            names = list(batch.schema.names) + list(out.keys())
            yield pa.RecordBatch.from_arrays(arrays, names=names)
    return run


def output_schema(input_schema, with_pdf: bool = True):
    from pyspark.sql.types import StructType
    fields = [f for f in spark_fields() if with_pdf or f.name != "pdf"]
    return StructType(list(input_schema.fields) + fields)


def check_no_collision(input_schema) -> None:
    from lsst_spark_ml.errors import CatalogError
    clash = [c for c in OUTPUT_COLUMNS if c in input_schema.names]
    if clash:
        raise CatalogError(f"the catalog already has column(s) {clash} that photo-z would write; "
                           "rename or drop them first")


def photoz_pandas_udf(model, cols: ResolvedColumns, inf: InferenceSettings):
    """An iterator pandas UDF returning the photo-z struct; call it on ``cols.inputs`` columns.

    ``df.withColumn("photoz", udf(*[F.col(c) for c in cols.inputs]))`` or from SQL once registered.
    ``model`` is the Broadcast returned by ``broadcast_model``.
    """
    from pyspark.sql.functions import pandas_udf
    names = cols.inputs

    @pandas_udf(spark_struct())
    def photoz(it: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        pred = _predictor(model, inf)
        sha256 = pred.sha256
        for series in it:
            frame = dict(zip(names, series))
            values, errors, ebv = _photometry(lambda c: frame[c].astype("float64").to_numpy(), cols)
            res = pred.predict(values, errors, cols.photometry, ebv, batch_size=inf.batch_size)
            out = arrow_columns(res, sha256, pred.n_bins)
            yield pa.table(out).to_pandas()
    return photoz
