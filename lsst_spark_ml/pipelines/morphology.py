"""Galaxy morphology end to end: render cutout tables, train, predict on Spark, evaluate.

``predict`` writes the input rows (without the cutout bytes unless ``morphology.keep_cutout``) plus
morph_class, morph_class_id, morph_confidence, morph_probs (one per class, manifest order), morph_flags
(``morphology.inputs`` flag bits; 0 = classified) and morph_model_sha256, as a HATS catalog. Every input row
comes out once; the row counts are checked.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import CatalogError

META_FILE = "_morphology_meta.json"


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


def make_cutouts(cfg: Config, out_dir: str, n_labelled: int | None = None, n_unlabelled: int | None = None,
                 n_test: int | None = None, size: int | None = None, rows_per_group: int | None = None) -> dict:
    """Rendered labelled (labelled domain), unlabelled and test (survey domain) cutout tables."""
    from ..morphology.cutouts import make_sets
    ms = cfg.morphology
    t0 = time.time()
    paths = make_sets(out_dir, n_labelled or ms.n_labelled, n_unlabelled or ms.n_unlabelled, n_test or ms.n_test,
                      size=size or ms.image_size, seed=ms.render_seed, rows_per_group=rows_per_group)
    _log(f"cutout tables under {out_dir} in {time.time() - t0:.0f} s")
    return {k: str(v) for k, v in paths.items()}


def train(spark, cfg: Config, labelled: str, unlabelled: str | None, out_dir: str, monitor=None) -> dict:
    """Train (``spark`` is used by the torch-distributor backend; the local backend does not need it);
    ``monitor``: ``training.morphology.train_morphology``'s per-epoch hook."""
    from ..training.morphology import train_morphology
    return train_morphology(labelled, unlabelled, cfg, out_dir, monitor=monitor)


def predict(spark, cfg: Config, cutouts: str, model_dir: str, out_path: str) -> dict:
    """Class probabilities for every row of a cutout table (module docstring)."""
    from ..artefacts import read_payload
    from ..inference.morphology import KIND
    from ..io.hats_writer import write_hats, write_parquet, write_text
    from ..io.readers import filesystem
    from ..morphology.cutouts import check_cutout_table, rows_per_batch
    from udfs.morphology import morphology_arrow_mapper, output_schema
    ms = cfg.morphology
    t0 = time.time()
    payload = read_payload(model_dir)                       # verified before any Spark job
    manifest = json.loads(payload.manifest_bytes)          # the weights are only deserialised on the workers
    if manifest.get("kind") != KIND:
        raise CatalogError(f"{model_dir}: a {manifest.get('kind')!r} model, not a morphology model")
    info = check_cutout_table(cutouts)                      # footers only: bad metadata fails here
    if list(info.bands) != list(manifest["bands"]):
        raise CatalogError(f"{cutouts}: bands {list(info.bands)}, the model needs {manifest['bands']}")
    if tuple(info.shape[1:]) != (manifest["image_size"],) * 2:
        raise CatalogError(f"{cutouts}: cutouts are {tuple(info.shape)}, the model takes "
                           f"{manifest['image_size']} x {manifest['image_size']} pixels")
    df = spark.read.parquet(str(cutouts))
    mapper = morphology_arrow_mapper(spark.sparkContext.broadcast(payload), ms, ms.keep_cutout)
    # GPU executors: only this stage asks for GPUs, shared by morphology.tasks_per_gpu tasks each
    from udfs.resources import gpu_profile
    profile = gpu_profile(spark, ms.device, ms.tasks_per_gpu)
    out = df.mapInArrow(mapper, output_schema(df.schema, ms.attention, ms.keep_cutout), profile=profile)
    rows = rows_per_batch(tuple(info.shape), info.dtype, target_mb=ms.batch_mb)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, str(rows))
    _log(f"morphology for {cutouts} ({info.n_rows} cutouts {tuple(info.shape)} {info.dtype}) with model "
         f"{payload.sha256[:16]}... -> {out_path} (Arrow batches of {rows} rows, {ms.precision})")
    try:
        if "ra" in out.columns and "dec" in out.columns:
            written = write_hats(out, out_path, "ra", "dec", cfg.output.hats_order, cfg.output.mode)
        else:
            written = write_parquet(out, out_path, cfg.output.mode)
    finally:
        spark.conf.set(key, old)
    if written["n_rows"] != info.n_rows:
        raise RuntimeError(f"morphology wrote {written['n_rows']} rows for {info.n_rows} input rows")
    meta = {"model_dir": str(model_dir), "model_sha256": payload.sha256, "cutouts": str(cutouts),
            "rows_in": info.n_rows, "rows_written": written["n_rows"], "classes": manifest["classes"],
            "arrow_batch_rows": rows, "precision": ms.precision, "seconds": round(time.time() - t0, 1)}
    fs, p = filesystem(out_path)
    write_text(fs, f"{p.rstrip('/')}/{META_FILE}", json.dumps(meta, indent=2) + "\n")
    return meta


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Macro-F1, accuracy, per-class F1 and the confusion matrix (rows: truth) over the classified rows."""
    from sklearn.metrics import confusion_matrix, f1_score
    labels = list(range(len(classes)))
    return {"n": int(len(y_true)), "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                                               zero_division=0)),
            "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
            "f1": dict(zip(classes, map(float, f1_score(y_true, y_pred, labels=labels, average=None,
                                                         zero_division=0)))),
            "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist()}


def evaluate(spark, predictions: str, out_dir: str, label_col: str = "label", cutouts: str | None = None,
             model_dir: str | None = None, examples_per_class: int = 2) -> dict:
    """Metrics of a prediction table against its labels; with ``cutouts`` and ``model_dir`` also the
    attention-map PNG (the last layer's attention over the r band, examples of each class)."""
    from pyspark.sql import functions as F

    from ..io.readers import read_table
    df = read_table(spark, str(predictions))
    if label_col not in df.columns:
        raise CatalogError(f"{predictions}: no label column {label_col!r}; has {df.columns}")
    classes = json.loads((Path(predictions) / META_FILE).read_text())["classes"] \
        if (Path(predictions) / META_FILE).is_file() else None
    rows = (df.where(F.col(label_col).isNotNull())
              .select(F.col(label_col).cast("int").alias("y"), "morph_class_id", "morph_flags").toPandas())
    if classes is None:
        from ..morphology.render import CLASSES
        classes = list(CLASSES)
    ok = rows["morph_flags"].to_numpy() == 0
    res = classification_metrics(rows["y"].to_numpy()[ok], rows["morph_class_id"].to_numpy()[ok], classes)
    res.update({"predictions": str(predictions), "n_labelled_rows": int(len(rows)), "n_flagged": int((~ok).sum())})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ..plots.asteroids import confusion          # the generic confusion-matrix figure
    res["confusion_png"] = str(confusion(np.asarray(res["confusion"]), classes, classes, out / "confusion.png",
                                         f"morphology: macro-F1 {res['macro_f1']:.3f}"))
    if cutouts and model_dir:
        res["attention_png"] = str(attention_examples(cutouts, model_dir, out / "attention_maps.png",
                                                      label_col, examples_per_class))
    (out / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def attention_examples(cutouts: str, model_dir: str, path, label_col: str = "label", per_class: int = 2):
    """PNG of the model's last-layer attention over the r band for ``per_class`` galaxies of each class."""
    import pyarrow.dataset as pds

    from ..inference.morphology import MorphologyPredictor
    from ..morphology.cutouts import check_cutout_table, decode_cutouts
    from ..plots.morphology import attention_grid
    pred = MorphologyPredictor.load(model_dir)
    info = check_cutout_table(cutouts)
    table = pds.dataset(str(cutouts), format="parquet").head(2000, columns=["cutout", "cutout_shape",
                                                                          "cutout_dtype", label_col])
    labels = np.asarray(table.column(label_col).fill_null(-1).to_numpy(), dtype=np.int64)
    pick = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(pred.classes))])
    if not len(pick):
        raise CatalogError(f"{cutouts}: no labelled rows among the first 2000 to draw attention maps for")
    sub = table.take(pick)
    bands, flags = decode_cutouts(sub.column("cutout"), sub.column("cutout_shape"), sub.column("cutout_dtype"),
                                  tuple(info.shape))
    res = pred.predict(bands, flags, attention=True)
    r = list(info.bands).index("r")
    titles = [f"true {pred.classes[t]} / pred {pred.classes[p] if p >= 0 else 'flagged'}"
              for t, p in zip(labels[pick], res["class_id"])]
    return attention_grid(np.nan_to_num(bands[:, r]), res["attention"], titles, path)
