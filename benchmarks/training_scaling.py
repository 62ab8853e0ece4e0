"""Data-parallel training throughput, and the Parquet loader against raw pyarrow, in one run.

    .venv/bin/python benchmarks/training_scaling.py [--rows 8000] [--epochs 3] [--batch-size 1024]

Training: the shipped MBRNN architecture (1.4 M parameters, 64 bins) with the anchor loss on cosmoDC2 training
galaxies, under each backend with 1 and 2 processes (one torch thread each, as Spark tasks), plus the
``local`` backend (one process, 1 and 2 torch threads) as the plain-torch baseline. Samples per second are
the median over epochs after the first (start-up and warm-up excluded); scaling efficiency is
rate(2) / (2 * rate(1)) for the same backend.

Loader: rows per second through ``ParquetLoader`` (shuffle buffer, float32 tensors) against reading the same
Parquet with ``pyarrow.parquet.ParquetFile.iter_batches`` into numpy and then torch, no shuffle.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def training(rows: int, epochs: int, batch: int) -> list[dict]:
    import torch
    from helpers import load_dc2
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.features.photometry import colour_features, to_magnitudes
    from lsst_spark_ml.features.scaling import MinMaxScaler
    from lsst_spark_ml.training import backends
    from lsst_spark_ml.training.photoz import MemoryData, to_bin, train_member
    v, e, z, _ = load_dc2("train", rows)
    out = []
    runs = [("local", 1, 1), ("local", 1, 2), ("torch-distributor", 1, 1), ("torch-distributor", 2, 1),
            ("horovod", 1, 1), ("horovod", 2, 1)]
    for backend, procs, threads in runs:
        cfg = load_config(overrides={"train": {"max_epochs": epochs, "batch_size": batch, "early_stop_patience": None,
                                               "backend": backend, "num_processes": procs}})
        bands, fs = cfg.catalog.bands, cfg.features
        phot = to_magnitudes(v, e, "mag", bands, fs)
        X = colour_features(phot, bands, fs)[0]
        scaler = MinMaxScaler.fit(X)
        data = MemoryData(phot, None, to_bin(z, cfg), scaler)
        X_val = torch.from_numpy(scaler.transform(X[:2000])[0])
        torch.set_num_threads(threads)
        t = time.perf_counter()
        try:
            _, res = backends.run(backend, train_member, 2.0, data, X_val, to_bin(z[:2000], cfg), cfg, 1, "bench",
                                  options={"num_processes": procs})
        except Exception as exc:        # e.g. Horovod not built on this machine
            out.append({"backend": backend, "processes": procs, "error": str(exc)[:200]})
            continue
        rate = statistics.median(h["samples_per_s"] for h in res.history[1:])
        out.append({"backend": backend, "processes": procs, "torch_threads": threads if backend == "local" else 1,
                    "samples_per_s": round(rate), "wall_s": round(time.perf_counter() - t, 1)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    by = {(r["backend"], r["processes"], r.get("torch_threads")): r.get("samples_per_s") for r in out}
    for b in ("torch-distributor", "horovod"):
        one, two = by.get((b, 1, 1)), by.get((b, 2, 1))
        if one and two:
            out.append({"backend": b, "speedup_2_vs_1": round(two / one, 2),
                        "scaling_efficiency": round(two / (2 * one), 2)})
    return out


def loader(rows: int) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from lsst_spark_ml.training.loader import ParquetLoader
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 17)).astype(np.float32)
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 17),
                      "y": pa.array(rng.integers(0, 64, rows))})
    tmp = tempfile.mkdtemp()
    for i in range(8):       # 8 files as Spark would write them, several row groups each
        part = table.slice(i * rows // 8, rows // 8)
        pq.write_table(part, f"{tmp}/part-{i:05d}.parquet", row_group_size=50_000)
    res = []
    for rep in range(2):
        t = time.perf_counter()
        n = 0
        for f in sorted(Path(tmp).glob("*.parquet")):
            for b in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=["x", "y"]):
                xs = torch.from_numpy(b.column(0).values.to_numpy().reshape(-1, 17).copy())
                ys = torch.from_numpy(b.column(1).to_numpy())
                n += len(xs) + 0 * len(ys)
        raw = n / (time.perf_counter() - t)
        ld = ParquetLoader(tmp, ["x", "y"], 1024, seed=rep)
        t = time.perf_counter()
        m = sum(len(b["y"]) for b in ld.epoch(rep))
        ours = m / (time.perf_counter() - t)
        assert m == n == rows
        res.append({"pass": rep, "pyarrow_rows_per_s": round(raw), "loader_rows_per_s": round(ours),
                    "ratio": round(ours / raw, 2)})
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--loader-rows", type=int, default=2_000_000)
    p.add_argument("--skip-training", action="store_true")
    a = p.parse_args()
    from lsst_spark_ml.config import SparkSettings
    from lsst_spark_ml.session import get_spark
    spark = get_spark(SparkSettings(master="local[2]", progress=False))
    result = {"loader": loader(a.loader_rows)}
    if not a.skip_training:
        result["training"] = training(a.rows, a.epochs, a.batch_size)
    spark.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
