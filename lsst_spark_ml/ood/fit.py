"""Fit a DCP model from Spark DataFrames: labelled galaxies plus an unlabelled sky region of any size.

What reaches the driver is bounded: the labelled spectroscopic set (10^4-10^6 rows, as for photo-z training),
``ood.unlabelled_val_rows`` unlabelled rows for the TS2 gap check, and counts. The unlabelled training rows are
sampled, featurised and scaled on the executors and written once to the Parquet cache that each training
process streams (``training.loader``); they are never collected.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from ..artefacts import save_artefact
from ..config import Config
from ..errors import CatalogError
from ..features import flags as F
from ..features.photometry import build_features, feature_names
from ..features.scaling import MinMaxScaler
from ..inference.dcp import KIND, DCPPredictor, pair_from_tensors
from ..io.columns import ResolvedColumns, resolve_columns, spark_schema_dict
from ..metrics.reference import point_metrics
from ..training import backends
from ..training.dcp import ParquetStream, id_thresholds, train_dcp
from ..training.loader import materialize, plan_key
from ..training.photoz import to_bin


def resolve_both(labelled, unlabelled, cfg: Config) -> tuple[ResolvedColumns, ResolvedColumns]:
    """Both DataFrames must carry the same bands with the same kind of photometry; checked before any job."""
    lab = resolve_columns(spark_schema_dict(labelled), cfg.catalog, need_truth=True, source="labelled DataFrame")
    try:
        ul = resolve_columns(spark_schema_dict(unlabelled), cfg.catalog, source="unlabelled DataFrame")
    except CatalogError as exc:
        raise CatalogError(f"the unlabelled data does not match the labelled data's bands {lab.bands} "
                           f"({lab.photometry} columns {lab.values}): {exc}") from None
    if ul.photometry != lab.photometry or ul.values != lab.values:
        raise CatalogError(f"the unlabelled data has {ul.photometry} columns {ul.values}, the labelled data "
                           f"{lab.photometry} columns {lab.values}: give both the same photometry")
    return lab, ul


def _scaled_features_fn(cols: ResolvedColumns, cfg: Config, scaler: MinMaxScaler):
    bands, fs = list(cfg.catalog.bands), cfg.features

    def scaled(batches):
        for pdf in batches:
            ebv = pdf[cols.ebv_col].to_numpy(np.float64) if cols.ebv_col else None
            X, flags, _ = build_features(pdf[cols.values].to_numpy(np.float64),
                                         pdf[cols.errors].to_numpy(np.float64), cols.photometry, bands, fs, ebv)
            yield pd.DataFrame({"x": list(scaler.transform(X)[0])})
    return scaled


def _labelled_arrays(labelled, cols: ResolvedColumns, cfg: Config, log):
    wanted = cols.values + cols.errors + [cols.truth_col] + ([cols.ebv_col] if cols.ebv_col else [])
    pdf = labelled.select(*wanted).toPandas()
    ebv = pdf[cols.ebv_col].to_numpy(np.float64) if cols.ebv_col else None
    X, flags, _ = build_features(pdf[cols.values].to_numpy(np.float64), pdf[cols.errors].to_numpy(np.float64),
                                 cols.photometry, list(cfg.catalog.bands), cfg.features, ebv)
    z = pdf[cols.truth_col].to_numpy(np.float64)
    usable = ((flags & F.NO_ESTIMATE) == 0) & np.isfinite(z) & (z >= 0)
    idx = np.flatnonzero(usable)
    if len(idx) < 10:
        raise CatalogError(f"the labelled DataFrame has {len(idx)} usable rows (of {len(z)}); need at least 10")
    np.random.default_rng(cfg.train.seed).shuffle(idx)
    n_val = max(1, int(round(cfg.ood.val_fraction * len(idx))))
    val, tr = np.sort(idx[:n_val]), np.sort(idx[n_val:])
    log(f"[dcp] labelled: {len(tr)} training, {len(val)} validation, {len(z) - len(idx)} unusable rows")
    return X, z, tr, val, len(z) - len(idx)


def fit_dcp(spark, labelled, unlabelled, cfg: Config, out_dir: str, log=None) -> dict:
    """Train both stages' network pairs and write the model directory (safetensors + manifest with sha256)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.time()
    o, ts = cfg.ood, cfg.train
    cols, ul_cols = resolve_both(labelled, unlabelled, cfg)
    # Not count(): an empty region is found after one partition, not after a scan of the whole catalog.
    if not unlabelled.take(1):
        raise CatalogError("the unlabelled DataFrame is empty: DCP needs unlabelled objects of the region to "
                           "score (training would otherwise wait forever for an unlabelled batch)")
    X, z, tr, val, n_unusable = _labelled_arrays(labelled, cols, cfg, log)
    scaler = MinMaxScaler.fit(X[tr])
    X_tr, X_val = (torch.from_numpy(scaler.transform(X[i])[0]) for i in (tr, val))
    y_tr, y_val = to_bin(z[tr], cfg), to_bin(z[val], cfg)

    n_ul = unlabelled.count()
    frac = min(1.0, (o.max_unlabelled_rows + o.unlabelled_val_rows) / n_ul)
    ul_cols_needed = ul_cols.values + ul_cols.errors + ([ul_cols.ebv_col] if ul_cols.ebv_col else [])
    feats = (unlabelled.select(*ul_cols_needed).sample(False, frac, seed=ts.seed)
             .mapInPandas(_scaled_features_fn(ul_cols, cfg, scaler), "x array<float>"))
    # A small region keeps most of its rows for training: at most a fifth goes to the gap check.
    n_gap = int(min(o.unlabelled_val_rows, max(1, 0.2 * n_ul * frac)))
    held, rest = feats.randomSplit([float(n_gap), max(1.0, n_ul * frac - n_gap)], seed=ts.seed)
    held_rows = held.limit(n_gap).toPandas()["x"].to_numpy()
    if len(held_rows) == 0:
        raise CatalogError("no unlabelled rows were left for the TS2 gap check; lower ood.unlabelled_val_rows")
    X_ul_val = torch.from_numpy(np.stack(held_rows).astype(np.float32))
    cache_root = o.cache_dir or os.path.join(tempfile.gettempdir(), "lsst_spark_ml-dcp-cache")
    per_proc = max(1, ts.num_processes if ts.backend != "local" else 1)
    rows_per_group = int(min(50_000, max(o.unlabelled_batch_size, n_ul * frac / (8 * per_proc))))
    cache = materialize(rest, os.path.join(cache_root, plan_key(unlabelled)[:12] + "-" + scaler_key(scaler)),
                        rows_per_group=rows_per_group)
    if cache.num_rows < o.unlabelled_batch_size:
        raise CatalogError(f"{cache.num_rows} unlabelled training rows, fewer than one batch of "
                           f"{o.unlabelled_batch_size} (ood.unlabelled_batch_size)")
    log(f"[dcp] unlabelled: {n_ul} rows in the DataFrame, {cache.num_rows} sampled for training in {cache.path}, "
        f"{len(X_ul_val)} held out for the gap check")

    res = backends.run(ts.backend, train_dcp, X_tr, y_tr, X_val, y_val, ParquetStream(cache.path), X_ul_val, cfg,
                       options={"num_processes": ts.num_processes, "use_gpu": ts.use_gpu,
                                "local_mode": ts.local_mode})
    return save_dcp(out_dir, res, scaler, X_val, z[val], cfg, {
        "labelled_n_rows": int(len(z)), "labelled_n_train": int(len(tr)), "labelled_n_val": int(len(val)),
        "labelled_n_unusable": int(n_unusable), "unlabelled_n_rows": int(n_ul),
        "unlabelled_n_train": int(cache.num_rows), "unlabelled_n_gap_check": int(len(X_ul_val))}, log, t0)


def scaler_key(scaler: MinMaxScaler) -> str:
    import hashlib
    import json
    return hashlib.sha256(json.dumps(scaler.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def save_dcp(out_dir: str, res, scaler: MinMaxScaler, X_val: torch.Tensor, z_val: np.ndarray, cfg: Config,
             data_meta: dict, log, t0: float) -> dict:
    """Thresholds from the labelled validation scores, validation photo-z metrics, then the model directory."""
    ms = cfg.model
    arch = {"n_in": int(X_val.shape[1]), "hidden": list(ms.hidden), "n_bins": ms.n_bins}
    tensors = {**{f"ts2.{k}": v for k, v in res.ts2_state.items()}, **{f"ts3.{k}": v for k, v in res.ts3_state.items()}}
    ts2 = pair_from_tensors(tensors, "ts2.", arch)
    ts3 = pair_from_tensors(tensors, "ts3.", arch)
    edges = np.linspace(ms.z_min, ms.z_max, ms.n_bins + 1)
    probe = DCPPredictor(ts2, ts3, scaler, list(cfg.catalog.bands), cfg.features, edges, {}, "", {})
    scores, pdf = probe.score_and_pdf(X_val.numpy())
    thresholds = id_thresholds(scores, cfg.ood.flag_quantile)
    from ..inference.summaries import summarize
    summ = summarize(pdf, edges)
    metrics = {"split": "held-out labelled validation split",
               **{k: point_metrics(summ[k], z_val) for k in ("z_mean", "z_median", "z_mode")},
               "id_validation_score_median": float(np.median(scores))}
    manifest = {
        "kind": KIND,
        "architecture": {**arch, "networks": "TS2 (he, le) for the score, TS3 (he, le) for the photo-z",
                         "block": "Linear-BatchNorm1d-Softplus"},
        "bins": {"z_min": ms.z_min, "z_max": ms.z_max, "n_bins": ms.n_bins},
        "bands": list(cfg.catalog.bands),
        "features": dataclasses.asdict(cfg.features),
        "feature_names": feature_names(list(cfg.catalog.bands), cfg.features),
        "scaler": scaler.to_dict(),
        "thresholds": thresholds,
        "ood": dataclasses.asdict(cfg.ood),
        # The run's log lives in the manifest (two files make the whole model, which the Spark ML writer copies).
        "training": {**dataclasses.asdict(cfg.train), "world_size": res.world_size,
                     "stage_end_steps": res.stage_end_steps, "seconds": round(res.seconds, 1),
                     "rank_digests": res.rank_digests, "history": res.history},
        "training_data": data_meta,
        "metrics": metrics,
        "train_seconds": round(time.time() - t0, 1),
    }
    sha = save_artefact(out_dir, tensors, manifest)
    log(f"[dcp] wrote {out_dir} (sha256 {sha[:16]}...): stages end at steps {res.stage_end_steps}, flag threshold "
        f"{thresholds['flag']:.3f} (quantile {thresholds['flag_quantile']}), validation z_median sigma_NMAD "
        f"{metrics['z_median']['sigma_nmad']:.4f}")
    return {"model_dir": str(out_dir), "model_sha256": sha, **manifest}
