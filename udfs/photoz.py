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


def _predictor(model, inf: InferenceSettings, bf16_verified: bool | None = None):
    """``model``: a Broadcast of an artefacts.Payload. Loaded once per Python worker, keyed by sha256.

    ``bf16_verified``: the bfloat16 accuracy gate's verdict from the driver (precision auto); None: the
    worker runs the gate itself if its hardware would pick bfloat16 (inference.accuracy, cached)."""
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
                                             precision=inf.precision, bf16_verified=bf16_verified)
    return cache.get_or_load((payload.sha256, device, inf.precision, bf16_verified), load)


def _photometry(get, cols: ResolvedColumns):
    values = np.column_stack([np.asarray(get(c), dtype=np.float64) for c in cols.values])
    errors = np.column_stack([np.asarray(get(c), dtype=np.float64) for c in cols.errors])
    ebv = np.asarray(get(cols.ebv_col), dtype=np.float64) if cols.ebv_col else None
    return values, errors, ebv


def check_arity(func: str, names: list[str], args) -> None:
    """A pandas UDF called from the DataFrame API has no SQL signature in front of it: say what it takes.

    ``args``: what an iterator pandas UDF gets per batch (a tuple of Series, or one Series for one argument)."""
    n = len(args) if isinstance(args, tuple) else 1
    if n != len(names):
        raise TypeError(f"{func} takes {len(names)} arguments ({', '.join(names)}), got {n}")


def _column_getter_arrow(batch: pa.RecordBatch):
    def get(name: str) -> np.ndarray:
        col = batch.column(name)
        if col.null_count:
            # Nulls become NaN so that they take the MISSING path of the non-detection policy.
            col = col.cast(pa.float64()).fill_null(float("nan"))
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    return get


def photoz_arrow_mapper(model, cols: ResolvedColumns, inf: InferenceSettings, with_pdf: bool = True,
                        bf16_verified: bool | None = None):
    """A function for ``DataFrame.mapInArrow``: every input row comes out once, with the outputs appended.

    ``model`` is the Broadcast returned by ``broadcast_model``. The default path of the jobs: Arrow record
    batches in and out, no pandas; the band columns become numpy arrays without a copy where Arrow allows
    it (float64, no nulls) and the features reach torch through ``torch.from_numpy`` (benchmarks/
    inference_paths.py measures it against mapInPandas, the pandas UDF and predict_batch_udf).
    """
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pred = _predictor(model, inf, bf16_verified)
        sha256 = pred.sha256
        for batch in batches:
            values, errors, ebv = _photometry(_column_getter_arrow(batch), cols)
            res = pred.predict(values, errors, cols.photometry, ebv, batch_size=network_batch(inf, pred.device))
            out = arrow_columns(res, sha256, pred.n_bins, with_pdf, inf.pdf_format)
            arrays = list(batch.columns) + list(out.values())
            names = list(batch.schema.names) + list(out.keys())
            yield pa.RecordBatch.from_arrays(arrays, names=names)
    return run


def output_schema(input_schema, with_pdf: bool = True, pdf_format: str = "float32"):
    from pyspark.sql.types import StructType
    fields = [f for f in spark_fields(pdf_format) if with_pdf or f.name != "pdf"]
    return StructType(list(input_schema.fields) + fields)


_TYPE_BYTES = {"double": 8, "bigint": 8, "timestamp": 8, "float": 4, "int": 4, "smallint": 2, "tinyint": 1,
               "boolean": 1, "date": 4}


def row_bytes(input_schema, n_bins: int, with_pdf: bool = True, pdf_format: str = "float32") -> int:
    """Bytes of one output row in Arrow (input columns + photo-z columns); strings/binaries count 32."""
    from lsst_spark_ml.inference.compact_pdf import bytes_per_object
    width = sum(_TYPE_BYTES.get(f.dataType.simpleString(), 32) for f in input_schema.fields)
    width += 8 * 6 + 8 + 64 + 4                     # point estimates, flags, model_sha256 (hex) + offset
    if with_pdf:
        width += bytes_per_object(pdf_format, n_bins) + 4
    return width


def arrow_batch_rows(input_schema, n_bins: int, inf: InferenceSettings, with_pdf: bool = True,
                     default: int = 10000) -> int:
    """``spark.sql.execution.arrow.maxRecordsPerBatch`` for a target of ``inf.batch_mb`` MB per Arrow batch.

    The batch is what a Python worker holds at once (in and out, plus the features and PDFs as numpy):
    sizing it by bytes keeps the worker's memory flat whatever the catalog's width, while batches of a few
    MB amortise the per-batch cost of the JVM-Python exchange. Rounded to a multiple of the network's own
    batch (``inf.batch_size``) so that no network call runs on a short tail."""
    if inf.batch_mb is None:
        return default
    rows = int(inf.batch_mb * (1 << 20) / row_bytes(input_schema, n_bins, with_pdf, inf.pdf_format))
    step = max(1, inf.batch_size)
    return max(step, rows // step * step)


def check_no_collision(input_schema) -> None:
    from lsst_spark_ml.errors import CatalogError
    clash = [c for c in OUTPUT_COLUMNS if c in input_schema.names]
    if clash:
        raise CatalogError(f"the catalog already has column(s) {clash} that photo-z would write; "
                           "rename or drop them first")


def inference_resource_profile(spark, inf: InferenceSettings, force: bool = False):
    """A stage-level ``ResourceProfile`` for the photo-z stage only (``mapInArrow(..., profile=...)``).

    With ``inference.device: cuda`` only the photo-z stage asks for GPUs: the reading, shuffling and
    writing stages keep the default profile and run on plain CPU executors. ``inference.tasks_per_gpu``
    tasks share each GPU (``udfs.resources.gpu_profile``). None on CPU and in local mode."""
    from udfs.resources import gpu_profile
    return gpu_profile(spark, inf.device, inf.tasks_per_gpu, force=force)


def network_batch(inf: InferenceSettings, device) -> int:
    """Rows per network call: ``batch_size`` (sized for a CPU's cache) or ``gpu_batch_size`` on a GPU."""
    return inf.gpu_batch_size if getattr(device, "type", str(device)).startswith("cuda") else inf.batch_size


def photoz_pandas_udf(model, cols: ResolvedColumns, inf: InferenceSettings):
    """An iterator pandas UDF returning the photo-z struct; call it on ``cols.inputs`` columns.

    ``df.withColumn("photoz", udf(*[F.col(c) for c in cols.inputs]))`` or from SQL once registered.
    ``model`` is the Broadcast returned by ``broadcast_model``.
    """
    from pyspark.sql.functions import pandas_udf
    names = cols.inputs

    @pandas_udf(spark_struct(inf.pdf_format))
    def photoz(it: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        pred = _predictor(model, inf)
        sha256 = pred.sha256
        for series in it:
            check_arity("photoz", names, series)
            frame = dict(zip(names, series))
            values, errors, ebv = _photometry(lambda c: frame[c].astype("float64").to_numpy(), cols)
            res = pred.predict(values, errors, cols.photometry, ebv, batch_size=network_batch(inf, pred.device))
            out = arrow_columns(res, sha256, pred.n_bins, pdf_format=inf.pdf_format)
            yield pa.table(out).to_pandas()
    return photoz
