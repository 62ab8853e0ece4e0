"""Influence at scale: N training rows x Q queries on Spark against plain torch on the same cores.

    flock /tmp/lsm-heavy.lock .venv/bin/python benchmarks/influence_throughput.py --train-rows 10000 --queries 1000

The model has the shipped architecture (4 members, 1.39 M parameters each) and ``--snapshots`` snapshots per
member (the shipped recipe with train.snapshot_every=10 keeps 10). Three ways to get the same TracIn
numbers (self-influence of every training row and the top-k per query):

* spark:        ``lsst_spark_ml.pipelines.influence.run`` on local[cores] (factorised output-layer gradients,
                partitions, broadcast queries, top-k reduced without the matrix);
* torch.func:   the textbook way in one process: per-sample gradients of the output layer by
                ``vmap(grad(...))``, dense (N, D) and (Q, D) matrices, one matmul per snapshot;
* factorised:   the same factorisation as the Spark path, in one process (what the partitions run).

Then the cost model for a million training rows, from the measured per-row and per-pair costs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from lsst_spark_ml.config import SparkSettings, load_config                       # noqa: E402
from lsst_spark_ml.inference.photoz import PhotozPredictor                        # noqa: E402
from lsst_spark_ml.influence.checkpoints import load_snapshots                    # noqa: E402
from lsst_spark_ml.influence.gradients import all_factors, self_influence, tracin_scores  # noqa: E402
from lsst_spark_ml.influence.scoring import RunningTopK, InfluenceScorer              # noqa: E402
from lsst_spark_ml.session import get_spark                                       # noqa: E402
from lsst_spark_ml.training.photoz import TrainingSet, train_photoz               # noqa: E402
from evaluate_influence import BANDS, load                                          # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def frame(n: int, which: str, seed: int) -> pd.DataFrame:
    df = load(which)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(df), n, replace=n > len(df))
    out = df.iloc[idx].reset_index(drop=True)
    out["id"] = np.arange(n, dtype=np.int64) + (0 if which == "train" else 10**9)
    return out


def torch_func_baseline(scorer: InfluenceScorer, X: np.ndarray, y: np.ndarray, Xq: np.ndarray, yq: np.ndarray,
                        k: int, chunk: int = 2048):
    """Dense per-sample gradients of the output layer (torch.func) and the full matrix, top-k by sort."""
    S = np.zeros((len(X), len(Xq)))
    si = np.zeros(len(X))
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for m in scorer.models:
        gq = m.dense_gradients(m._features(torch.from_numpy(Xq)), torch.from_numpy(yq)) * m.snap.lr ** 0.5
        for s in range(0, len(X), chunk):
            g = m.dense_gradients(m._features(xt[s:s + chunk]), yt[s:s + chunk]) * m.snap.lr ** 0.5
            S[s:s + chunk] += (g @ gq.T).double().numpy()
            si[s:s + chunk] += (g ** 2).sum(1).double().numpy()
    top = np.argsort(-S, axis=0)[:k]
    return si, top


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--snapshots", type=int, default=10, help="per member")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--model", help="a model with TracIn snapshots (default: train one, few epochs)")
    args = ap.parse_args()
    torch.set_num_threads(args.cores)
    work = Path(tempfile.mkdtemp(prefix="influence-bench-"))
    model = args.model
    if model is None:
        # Training quality is irrelevant here, the shapes are what cost: the shipped architecture and
        # members, one snapshot per epoch for --snapshots epochs.
        cfg_t = load_config([ROOT / "conf/photoz_train_dc2.yaml"],
                            {"train": {"max_epochs": args.snapshots, "snapshot_every": 1}})
        tr = load("train")
        t0 = time.time()
        train_photoz(TrainingSet(tr[[f"mag_{b}_lsst" for b in BANDS]].to_numpy(),
                                 tr[[f"mag_err_{b}_lsst" for b in BANDS]].to_numpy(), "mag",
                                 tr.redshift.to_numpy(), source="bench"), cfg_t, str(work / "model"),
                     log=lambda m: None)
        print(f"trained the benchmark model in {time.time() - t0:.0f} s", file=sys.stderr)
        model = str(work / "model")
    pred = PhotozPredictor.load(model)
    snaps = load_snapshots(Path(model) / "tracin", pred.sha256, pred.manifest["architecture"])
    scorer = InfluenceScorer.tracin(pred, snaps)
    train_df, q_df = frame(args.train_rows, "train", 1), frame(args.queries, "validation", 2)
    train_df.to_parquet(work / "train.parquet", index=False)
    q_df.to_parquet(work / "q.parquet", index=False)

    def arrays(df):
        return (df[[f"mag_{b}_lsst" for b in BANDS]].to_numpy(), df[[f"mag_err_{b}_lsst" for b in BANDS]].to_numpy(),
                df.redshift.to_numpy())
    tp = scorer.prepare(*arrays(train_df)[:2], "mag", arrays(train_df)[2])
    qp = scorer.prepare(*arrays(q_df)[:2], "mag", arrays(q_df)[2], pseudo_labels=True)
    n, q = int(tp.usable.sum()), int(qp.usable.sum())

    # 1. factorised, one process
    t0 = time.time()
    qf = all_factors(scorer.models, qp.X, qp.y)
    t_q = time.time() - t0
    t0 = time.time()
    topk = RunningTopK(q, args.top_k)
    t_grad = t_score = 0.0
    for s in range(0, n, 4096):
        t1 = time.time()
        f = all_factors(scorer.models, tp.X[s:s + 4096], tp.y[s:s + 4096])
        self_influence(f)
        t2 = time.time()
        topk.update(tracin_scores(f, qf), np.arange(s, min(s + 4096, n)))
        t_grad += t2 - t1
        t_score += time.time() - t2
    t_fact = time.time() - t0 + t_q

    # 2. torch.func dense baseline
    t0 = time.time()
    si_dense, top_dense = torch_func_baseline(scorer, tp.X, tp.y, qp.X, qp.y, args.top_k)
    t_dense = time.time() - t0
    pos = np.sort(topk.pos_s, axis=0)[::-1]
    agree = float(np.mean([set(top_dense[:, j]) == set(topk.pos_i[:, j]) for j in range(q)]))

    # 3. Spark
    from lsst_spark_ml.pipelines import influence
    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", app_name="influence-bench", progress=False,
                                    conf={"spark.sql.shuffle.partitions": str(args.cores * 2)}))
    cfg = load_config(overrides={"influence": {"top_k": args.top_k}, "catalog": {"truth_col": "redshift"}})
    influence.run(spark, cfg, model, str(work / "train.parquet"), str(work / "q.parquet"), str(work / "warm"))
    t0 = time.time()
    meta = influence.run(spark, cfg, model, str(work / "train.parquet"), str(work / "q.parquet"), str(work / "out"))
    t_spark = time.time() - t0
    spark.stop()

    n_snap = len(snaps)
    per_row = t_grad / n                              # forward to the penultimate layer + factors, all snapshots
    per_pair = t_score / (n * q)                      # one (row, query) over all snapshots
    big_n = 1_000_000
    cost_1m = {"rows": big_n, "queries": q, "snapshots": n_snap,
               "gradient_core_hours": per_row * big_n * args.cores / 3600,
               "scoring_core_hours": per_pair * big_n * q * args.cores / 3600,
               "query_bytes_broadcast": int(sum(x.delta.numel() + x.h1.numel() for x in qf) * 4),
               "candidate_rows_per_partition": 2 * args.top_k * q}
    res = {"train_rows": n, "queries": q, "snapshots": n_snap, "cores": args.cores,
           "spark_seconds": round(t_spark, 1), "spark_map_seconds": meta["seconds_map"],
           "factorised_one_process_seconds": round(t_fact, 1),
           "torch_func_dense_seconds": round(t_dense, 1),
           "spark_vs_torch_func": round(t_dense / t_spark, 2),
           "top_k_agreement_dense_vs_factorised": agree,
           "max_top1_score": float(pos[0].max()),
           "per_row_gradient_us": round(per_row * 1e6, 1), "per_pair_scoring_ns": round(per_pair * 1e9, 2),
           "cost_model_1M": cost_1m}
    print(json.dumps(res, indent=1))
    print(f"\n{n:,} training rows x {q:,} queries x {n_snap} snapshots on {args.cores} cores:\n"
          f"  Spark pipeline (all outputs written)     {t_spark:7.1f} s\n"
          f"  factorised, one process (no Spark)       {t_fact:7.1f} s\n"
          f"  torch.func dense gradients (baseline)    {t_dense:7.1f} s   (same top-k for {100 * agree:.1f}% "
          f"of queries)\n"
          f"  cost for 1,000,000 training rows x {q:,} queries: "
          f"{cost_1m['gradient_core_hours'] + cost_1m['scoring_core_hours']:.2f} core-hours "
          f"({cost_1m['gradient_core_hours']:.2f} gradients + {cost_1m['scoring_core_hours']:.2f} scoring)")
    os.system(f"rm -rf {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
