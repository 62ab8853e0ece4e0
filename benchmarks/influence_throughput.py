"""Influence at scale: N training rows x Q queries on Spark against plain torch on the same cores.

    flock /tmp/lsm-heavy.lock .venv/bin/python benchmarks/influence_throughput.py --train-rows 10000 --queries 1000

The model has the shipped architecture (4 members, 1.39 M parameters each) and ``--snapshots`` snapshots per
member (the shipped recipe with train.snapshot_every=10 keeps about 10). For each method (influence functions,
TracIn), three ways to the same numbers (self-influence of every training row, top-k per query):

* Spark:          ``lsst_spark_ml.pipelines.influence.run`` on local[cores] (partitions, broadcast queries,
                  top-k reduced without the matrix), everything written;
* one process:    the same library code on numpy blocks, no Spark (what the partitions run);
* plain torch:    the textbook way: dense per-sample gradients from ``torch.func`` (vmap of grad), the whole
                  (N, Q) matrix, top-k by sorting.

The cost for a million training rows comes from the one-process per-row and per-pair times.
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


def flat(gm, g: torch.Tensor) -> torch.Tensor:
    """torch.func returns [weight (K x H), bias (K)]; the Hessian's order is (k, a) with the bias as a = H."""
    k, hdim = gm.tail[-1].out_features, gm.tail[-1].in_features
    return torch.cat([g[:, :k * hdim].reshape(-1, k, hdim), g[:, k * hdim:].reshape(-1, k, 1)], 2).reshape(len(g), -1)


def plain_torch(scorer: InfluenceScorer, X: np.ndarray, y: np.ndarray, Xq: np.ndarray, yq: np.ndarray, k: int,
                hinvs: dict | None, chunk: int = 2048):
    """The textbook way in one process: dense per-sample output-layer gradients from torch.func, the whole
    (N, Q) matrix, top-k by sorting. ``hinvs``: influence functions (H^-1 per member), else TracIn."""
    S = np.zeros((len(X), len(Xq)))
    si = np.zeros(len(X))
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for m in scorer.models:
        g0 = m.g if hinvs is not None else m
        w = 1.0 if hinvs is not None else m.snap.lr
        pre = torch.as_tensor(hinvs[g0.snap.member]) if hinvs is not None else None
        gq = flat(g0, g0.dense_gradients(g0._features(torch.from_numpy(Xq)), torch.from_numpy(yq))) * w ** 0.5
        if pre is not None:
            gq = gq @ pre
        for s in range(0, len(X), chunk):
            g = flat(g0, g0.dense_gradients(g0._features(xt[s:s + chunk]), yt[s:s + chunk])) * w ** 0.5
            S[s:s + chunk] += (g @ gq.T).double().numpy()
            si[s:s + chunk] += ((g @ pre) * g if pre is not None else g ** 2).sum(1).double().numpy()
    return si, np.argsort(-S, axis=0)[:k]


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

    from lsst_spark_ml.influence.checkpoints import Snapshot
    from lsst_spark_ml.influence.gradients import GradientModel, fisher_hessian_sum, invert_hessian
    from lsst_spark_ml.pipelines import influence
    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", app_name="influence-bench", progress=False,
                                    conf={"spark.sql.shuffle.partitions": str(args.cores * 2)}))
    results = {}
    for method in ("influence-function", "tracin"):
        # One process, the same factorised code the partitions run (TracIn) / the same dense products (IF).
        t0 = time.time()
        if method == "tracin":
            sc_m, hinvs = scorer, None
        else:
            gammas = [m["gamma"] for m in pred.manifest["members"]]
            hinvs = {}
            for i, g in enumerate(gammas):
                gm = GradientModel(Snapshot(i, g, 0, 1.0, pred.ensemble.members[i]))
                hinvs[i] = invert_hessian(fisher_hessian_sum(gm, torch.from_numpy(tp.X)), n, 0.01)[0].float()
            sc_m = InfluenceScorer.influence_function(pred, hinvs)
        t_hess = time.time() - t0
        qf = all_factors(sc_m.models, qp.X, qp.y, query=True)
        topk = RunningTopK(q, args.top_k)
        t_grad = t_score = 0.0
        for s in range(0, n, 4096):
            t1 = time.time()
            f = all_factors(sc_m.models, tp.X[s:s + 4096], tp.y[s:s + 4096])
            self_influence(f)
            t2 = time.time()
            topk.update(tracin_scores(f, qf), np.arange(s, min(s + 4096, n)))
            t_grad += t2 - t1
            t_score += time.time() - t2
        t_one = time.time() - t0
        t0 = time.time()
        _, top_dense = plain_torch(sc_m, tp.X, tp.y, qp.X, qp.y, args.top_k, hinvs)
        t_dense = time.time() - t0 + t_hess      # plain torch needs the same Hessian
        agree = float(np.mean([set(top_dense[:, j]) == set(topk.pos_i[:, j]) for j in range(q)]))
        cfg = load_config(overrides={"influence": {"top_k": args.top_k, "method": method},
                                     "catalog": {"truth_col": "redshift"}})
        influence.run(spark, cfg, model, str(work / "train.parquet"), str(work / "q.parquet"), str(work / "warm"))
        t0 = time.time()
        meta = influence.run(spark, cfg, model, str(work / "train.parquet"), str(work / "q.parquet"),
                             str(work / "out"))
        t_spark = time.time() - t0
        per_row, per_pair = t_grad / n, t_score / (n * q)
        big_n = 1_000_000
        results[method] = {
            "spark_seconds": round(t_spark, 1), "spark_map_seconds": meta["seconds_map"],
            "one_process_seconds": round(t_one, 1), "hessian_seconds": round(t_hess, 1),
            "plain_torch_func_seconds": round(t_dense, 1), "spark_vs_plain_torch": round(t_dense / t_spark, 2),
            "top_k_agreement_with_plain_torch": agree, "models": len(sc_m.models),
            "per_row_gradient_us": round(per_row * 1e6, 1), "per_pair_scoring_ns": round(per_pair * 1e9, 2),
            "cost_1M_rows_core_hours": round((per_row * big_n + per_pair * big_n * q) * args.cores / 3600, 2)}
        print(json.dumps({method: results[method]}), flush=True)
    spark.stop()
    print(json.dumps({"train_rows": n, "queries": q, "cores": args.cores, "tracin_snapshots": len(snaps),
                      **results}, indent=1))
    print(f"\n{n:,} training rows x {q:,} queries on {args.cores} cores (seconds):")
    print(f"{'method':<20}{'Spark':>8}{'one process':>13}{'torch.func dense':>18}{'same top-k':>12}"
          f"{'1M rows core-h':>16}")
    for mth, r in results.items():
        print(f"{mth:<20}{r['spark_seconds']:>8.1f}{r['one_process_seconds']:>13.1f}"
              f"{r['plain_torch_func_seconds']:>18.1f}{100 * r['top_k_agreement_with_plain_torch']:>11.1f}%"
              f"{r['cost_1M_rows_core_hours']:>16.2f}")
    os.system(f"rm -rf {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
