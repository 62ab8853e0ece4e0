"""Photo-z training sets larger than one process: features computed on the executors and written once to the
Parquet cache that ``ParquetLoader`` shards over the training processes (``train.data_loader: parquet``).

Only small things reach the driver: the counts, a sample of at most ``SCALER_SAMPLE`` rows to fit the
feature scaler, and the validation split (``train.val_fraction``, chosen by a hash of each row's content so
the split is the same on every run and independent of partitioning).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..features import flags as F
from ..features.photometry import colour_features, to_magnitudes
from ..features.scaling import MinMaxScaler
from ..io.columns import ResolvedColumns
from .loader import materialize, plan_key
from .photoz import ParquetData, to_bin

SCALER_SAMPLE = 200_000
_HASH_BUCKETS = 10_000


def _features_fn(cols: ResolvedColumns, cfg: Config):
    bands, fs = list(cfg.catalog.bands), cfg.features

    def features(batches):
        for pdf in batches:
            phot = to_magnitudes(pdf[cols.values].to_numpy(np.float64), pdf[cols.errors].to_numpy(np.float64),
                                 cols.photometry, bands, fs)
            ebv = pdf[cols.ebv_col].to_numpy(np.float64) if cols.ebv_col else None
            X, flags = colour_features(phot, bands, fs, ebv)
            z = pdf[cols.truth_col].to_numpy(np.float64)
            usable = ((flags & F.NO_ESTIMATE) == 0) & np.isfinite(z) & (z >= 0)
            yield pd.DataFrame({"x": list(X.astype(np.float64)), "z": z, "usable": usable,
                                "val": pdf["_bucket"].to_numpy() < int(cfg.train.val_fraction * _HASH_BUCKETS)})
    return features


def _scaled_fn(scaler: MinMaxScaler, cfg: Config):
    def scaled(batches):
        for pdf in batches:
            X = scaler.transform(np.stack(pdf["x"].to_numpy()))[0]
            yield pd.DataFrame({"x": list(X), "y": to_bin(pdf["z"].to_numpy(), cfg).numpy()})
    return scaled


def prepare(spark, df, cols: ResolvedColumns, cfg: Config, source: str, cache_dir: str):
    """-> (ParquetData, X_val, z_val, scaler, data_meta) for ``training.photoz.train_ensemble``."""
    from pyspark.sql import functions as sf
    wanted = cols.values + cols.errors + [cols.truth_col] + ([cols.ebv_col] if cols.ebv_col else [])
    keyed = df.select(*wanted).withColumn(
        "_bucket", sf.pmod(sf.xxhash64(*wanted, sf.lit(cfg.train.seed)), sf.lit(_HASH_BUCKETS)))
    feats = keyed.mapInPandas(_features_fn(cols, cfg), "x array<double>, z double, usable boolean, val boolean")
    feats = feats.persist()
    counts = {(r["usable"], r["val"]): r["count"] for r in feats.groupBy("usable", "val").count().collect()}
    n_train, n_val = counts.get((True, False), 0), counts.get((True, True), 0)
    n_unusable = sum(v for (u, _), v in counts.items() if not u)
    if n_train < 10 or n_val < 1:
        raise ValueError(f"{source}: {n_train} usable training and {n_val} validation rows; need at least 10 "
                         f"and 1 ({n_unusable} rows without a usable label or photometry)")
    train = feats.filter("usable AND NOT val")
    sample = train.sample(False, min(1.0, SCALER_SAMPLE / n_train), seed=cfg.train.seed).select("x").toPandas()
    scaler = MinMaxScaler.fit(np.stack(sample["x"].to_numpy()))
    val = feats.filter("usable AND val").select("x", "z").toPandas()
    X_val = torch.from_numpy(scaler.transform(np.stack(val["x"].to_numpy()))[0])
    z_val = val["z"].to_numpy(np.float64)

    scaled = train.select("x", "z").mapInPandas(_scaled_fn(scaler, cfg), "x array<float>, y long")
    # The plan key cannot see inside the Python functions: key the cache by the scaler and settings too.
    key = hashlib.sha256(json.dumps({"plan": plan_key(df), "scaler": scaler.to_dict(), "bins": cfg.model.n_bins,
                                     "z": [cfg.model.z_min, cfg.model.z_max], "seed": cfg.train.seed,
                                     "val_fraction": cfg.train.val_fraction}, sort_keys=True).encode()).hexdigest()
    # Enough row groups that every process gets several, few enough that each is worth a read.
    rows_per_group = int(min(50_000, max(1_000, n_train // (8 * max(1, cfg.train.num_processes)))))
    cache = materialize(scaled, os.path.join(cache_dir, key[:16]), rows_per_group=rows_per_group)
    feats.unpersist()
    if cache.num_rows != n_train:
        raise RuntimeError(f"training cache {cache.path} holds {cache.num_rows} rows, expected {n_train}")
    meta = {"source": source, "sha256": key, "n_rows": int(n_train + n_val + n_unusable), "n_train": int(n_train),
            "n_val": int(n_val), "n_unusable": int(n_unusable), "loader": "parquet", "cache": cache.path}
    return ParquetData(cache.path, cache.num_rows), X_val, z_val, scaler, meta
