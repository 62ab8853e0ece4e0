"""Photo-z end to end: train from a catalog, predict a catalog into HATS/Parquet, evaluate predictions."""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import CatalogError
from ..io.readers import filesystem, read_catalog, read_catalog_counted, read_table
from ..io.hats_writer import write_catalog, write_text

META_FILE = "_photoz_meta.json"   # leading underscore: Spark and pyarrow skip it as data


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


def train(spark, cfg: Config, catalog_path: str, out_dir: str) -> dict:
    from ..training.photoz import TrainingSet, train_photoz
    if cfg.catalog.truth_col is None:
        raise CatalogError("training needs catalog.truth_col (the spectroscopic redshift column)")
    if cfg.features.use_ebv and not cfg.catalog.ebv_col:
        raise CatalogError("features.use_ebv is set but catalog.ebv_col names no E(B-V) column")
    df, cols = read_catalog(spark, catalog_path, cfg.catalog, need_truth=True)
    if cfg.train.data_loader == "parquet":
        # Too large for every process to hold: features on the executors, then each rank streams its share.
        from ..training import photoz_spark
        from ..training.photoz import train_ensemble
        t0 = time.time()
        cache_dir = cfg.train.cache_dir or str(Path(out_dir).resolve().parent / f".{Path(out_dir).name}.cache")
        parts = photoz_spark.prepare(spark, df, cols, cfg, str(catalog_path), cache_dir)
        return train_ensemble(*parts, cfg, out_dir, _log, t0)
    wanted = cols.values + cols.errors + [cols.truth_col] + ([cols.ebv_col] if cols.ebv_col else [])
    # Spectroscopic training sets are usually small (10^4-10^6 rows): every process holds them in memory.
    pdf = df.select(*wanted).toPandas()
    data = TrainingSet(pdf[cols.values].to_numpy(np.float64), pdf[cols.errors].to_numpy(np.float64),
                       cols.photometry, pdf[cols.truth_col].to_numpy(np.float64),
                       pdf[cols.ebv_col].to_numpy(np.float64) if cols.ebv_col else None, source=str(catalog_path))
    return train_photoz(data, cfg, out_dir, log=_log)


def model_catalog_settings(cfg: Config, manifest: dict):
    """The model's own band set wins: a model trained on ugrizy cannot be fed grizy."""
    cat = copy.deepcopy(cfg.catalog)
    if list(cat.bands) != list(manifest["bands"]):
        _log(f"using the model's bands {manifest['bands']} (configuration said {cat.bands})")
        cat.bands = list(manifest["bands"])
    return cat


def _bf16_verdict(pred, requested: str) -> tuple[bool | None, str]:
    """The bfloat16 accuracy gate, run once on the driver for ``precision: auto`` (cached per model sha256;
    inference.accuracy). The verdict travels to the executors, which use bfloat16 only if it passed and
    their own hardware runs bfloat16 natively. Returns (verdict or None, a line for the log)."""
    if requested != "auto":
        return None, f"{requested} (set in conf)"
    from ..inference.accuracy import bf16_gate
    gate = bf16_gate(pred)
    if gate.passed:
        return True, (f"auto: bfloat16 where the executor's hardware has it (accuracy gate passed on {gate.n} "
                      f"cosmoDC2 objects, PDF TV p99 {gate.tv_p99:.4f}), else float32")
    _log(f"bfloat16 fails the accuracy gate for this model ({gate.reason}): float32 everywhere")
    return False, f"auto: float32 (bfloat16 failed the accuracy gate: {gate.reason})"


def predict(spark, cfg: Config, catalog_path: str, model_dir: str, out_path: str) -> dict:
    from udfs.photoz import (arrow_batch_rows, check_no_collision, inference_resource_profile, output_schema,
                             photoz_arrow_mapper)
    from ..artefacts import artefact_from_payload, read_payload
    from ..inference.photoz import PhotozPredictor
    t0 = time.time()
    payload = read_payload(model_dir)           # refuse a tampered model before any Spark job
    # Building the predictor here catches a model the workers could not use, before any task runs.
    pred = PhotozPredictor.from_artefact(artefact_from_payload(payload))
    manifest, sha = pred.manifest, pred.sha256
    cat = model_catalog_settings(cfg, manifest)
    df, cols, n_in = read_catalog_counted(spark, catalog_path, cat)
    check_no_collision(df.schema)
    if pred.features.use_ebv and not cols.ebv_col:
        raise CatalogError("the model uses E(B-V) (features.use_ebv) but catalog.ebv_col is not set")
    inf = cfg.inference
    verdict, precision_note = _bf16_verdict(pred, inf.precision)
    mapper = photoz_arrow_mapper(spark.sparkContext.broadcast(payload), cols, inf, cfg.output.write_pdf,
                                 bf16_verified=verdict)
    # GPU executors: only this stage asks for GPUs (None on CPU and in local mode).
    profile = inference_resource_profile(spark, inf)
    out = df.mapInArrow(mapper, output_schema(df.schema, cfg.output.write_pdf, inf.pdf_format), profile=profile)
    batch_rows = arrow_batch_rows(df.schema, pred.n_bins, inf, cfg.output.write_pdf,
                                  default=int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")))
    _log(f"photo-z for {catalog_path} with model {sha[:16]}... -> {out_path} (precision: {precision_note}; "
         f"Arrow batches of {batch_rows} rows, PDFs as {inf.pdf_format})")
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old_rows = spark.conf.get(key)
    spark.conf.set(key, str(batch_rows))
    try:
        written = write_catalog(out, out_path, cols, cfg.output, n_in, str(catalog_path))
    finally:
        spark.conf.set(key, old_rows)
    meta = {"model_dir": str(model_dir), "model_sha256": sha, "bins": manifest["bins"], "bands": cat.bands,
            "catalog": str(catalog_path), "truth_col": cols.truth_col, "id_col": cols.id_col,
            "spark_master": spark.sparkContext.master,
            "rows_in": n_in, "rows_written": written.get("n_rows"),
            "layout": "hats" if cols.has_coordinates else "parquet",
            "precision": precision_note, "pdf_format": inf.pdf_format,
            "seconds": round(time.time() - t0, 1)}
    fs, p = filesystem(out_path)
    write_text(fs, f"{p.rstrip('/')}/{META_FILE}", json.dumps(meta, indent=2) + "\n")
    return meta


def decode_pdf_column(df, n_bins: int, col: str = "pdf"):
    """A compact (uint8, binary) PDF column back to array<float> probabilities; null stays null."""
    import pyarrow as pa
    from pyspark.sql import types as T

    from ..inference.compact_pdf import codes_from_binary, decode_uint8
    schema = T.StructType([f if f.name != col else T.StructField(col, T.ArrayType(T.FloatType(), False), True)
                           for f in df.schema.fields])

    def run(batches):
        for b in batches:
            codes = codes_from_binary(b.column(col), n_bins)
            valid = ~np.asarray(b.column(col).is_null().to_numpy(zero_copy_only=False), dtype=bool)
            p = decode_uint8(codes)
            offsets = pa.array(np.arange(0, (len(p) + 1) * n_bins, n_bins, dtype=np.int32))
            arr = pa.ListArray.from_arrays(offsets, pa.array(p.ravel(), pa.float32()), mask=pa.array(~valid))
            i = b.schema.get_field_index(col)
            yield b.set_column(i, col, arr)
    return df.mapInArrow(run, schema)


def evaluate(spark, predictions: str, truth_col: str, out_dir: str, bins: dict | None = None,
             z_col: str = "z_median") -> dict:
    from ..metrics.photoz import pdf_metrics, plot_inputs, point_metrics
    from ..plots.photoz import write_evaluation_plots
    if bins is None:
        fs, p = filesystem(predictions)
        try:
            with fs.open_input_stream(f"{p.rstrip('/')}/{META_FILE}") as f:
                bins = json.loads(f.read())["bins"]
        except (FileNotFoundError, OSError):
            raise CatalogError(f"{predictions} has no {META_FILE}; pass the model's bins (--model DIR)") from None
    df = read_table(spark, predictions)
    for c in (truth_col, z_col, "pdf"):
        if c not in df.columns:
            raise CatalogError(f"predictions at {predictions} have no column {c!r}")
    for c in (truth_col, z_col):
        kind = df.schema[c].dataType.simpleString()
        if not kind.startswith(("double", "float", "int", "bigint", "smallint", "decimal")):
            raise CatalogError(f"column {c!r} of {predictions} must be numeric, but its type is {kind}")
    edges = np.linspace(bins["z_min"], bins["z_max"], bins["n_bins"] + 1)
    df = df.select(truth_col, "z_mean", "z_mode", "z_median", "pdf", "flags")
    if df.schema["pdf"].dataType.simpleString() == "binary":     # inference.pdf_format: uint8
        df = decode_pdf_column(df, bins["n_bins"])
    df = df.cache()
    try:
        result = {"predictions": str(predictions), "truth_col": truth_col}
        for est in ("z_mean", "z_mode", "z_median"):
            result[est] = point_metrics(df, est, truth_col)
        # The Brier grid spans the model's own range (RAIL's 0-3 would drop the mass above z = 3).
        result["pdf"] = pdf_metrics(df, "pdf", truth_col, edges, brier_grid=(bins["z_min"], bins["z_max"], 0.01))
        inputs = plot_inputs(df, z_col, truth_col, "pdf", edges)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        result["plots"] = [str(p) for p in write_evaluation_plots(inputs, edges, out_dir, result["pdf"],
                                                                  point_label=z_col)]
    finally:
        df.unpersist()
    (Path(out_dir) / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result
