"""Issue 6 targets, measured on cosmoDC2 (the pz-rail-base training and validation files).

1. Label noise: 2 % of the training redshifts made catastrophically wrong (``corrupt_redshifts``), the
   shipped recipe (conf/photoz_train_dc2.yaml) trained with TracIn snapshots, then ``influence`` on Spark:
   ROC-AUC of self-influence for the corrupted rows, beside the final model's own loss as a baseline.
2. Campaign: a biased spectroscopic set (the brightest third of the training file, by i), the rest as the
   unlabelled pool; K objects added by our ranking (``targets`` on Spark), at random, and in magnitude
   order (brightest first, what a magnitude-limited follow-up does); retrained with several seeds and
   evaluated on the whole validation file (20,449 galaxies): sigma_NMAD and catastrophic fraction of
   z_median, mean and standard deviation over seeds.

    flock /tmp/lsm-heavy.lock .venv/bin/python scripts/evaluate_influence.py --out outputs/influence_eval
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsst_spark_ml.config import load_config                                  # noqa: E402
from lsst_spark_ml.inference.photoz import PhotozPredictor                     # noqa: E402
from lsst_spark_ml.influence.label_noise import corrupt_redshifts             # noqa: E402
from lsst_spark_ml.io.datasets import dc2_paths                               # noqa: E402
from lsst_spark_ml.metrics.ood import roc_auc                                 # noqa: E402
from lsst_spark_ml.metrics.reference import point_metrics                     # noqa: E402
from lsst_spark_ml.training.photoz import TrainingSet, train_photoz           # noqa: E402

BANDS = list("ugrizy")
ROOT = Path(__file__).resolve().parent.parent


def load(which: str) -> pd.DataFrame:
    with h5py.File(dc2_paths()[which], "r") as h:
        g = h["photometry"]
        cols = {"id": g["id"][()].astype(np.int64), "redshift": g["redshift"][()].astype(np.float64)}
        for b in BANDS:
            cols[f"mag_{b}_lsst"] = g[f"mag_{b}_lsst"][()].astype(np.float64)
            cols[f"mag_err_{b}_lsst"] = g[f"mag_err_{b}_lsst"][()].astype(np.float64)
    return pd.DataFrame(cols)


def arrays(df: pd.DataFrame):
    return (df[[f"mag_{b}_lsst" for b in BANDS]].to_numpy(), df[[f"mag_err_{b}_lsst" for b in BANDS]].to_numpy(),
            df["redshift"].to_numpy())


def train(df: pd.DataFrame, cfg, out: Path, label: str, reuse: bool = False) -> str:
    v, e, z = arrays(df)
    data = TrainingSet(v, e, "mag", z, source=label)
    if reuse and (out / "manifest.json").exists():
        man = json.loads((out / "manifest.json").read_text())
        if man["training_data"]["sha256"] == data.sha256() and man["training"]["snapshot_every"] == \
                cfg.train.snapshot_every and [m["gamma"] for m in man["members"]] == list(cfg.model.gammas):
            print(f"reusing {out} (same data and settings)", file=sys.stderr)
            return str(out)
    train_photoz(data, cfg, str(out), log=lambda m: None)
    return str(out)


def validation_metrics(model_dir: str, val: pd.DataFrame) -> dict:
    v, e, z = arrays(val)
    res = PhotozPredictor.load(model_dir).predict(v, e, "mag")
    m = point_metrics(res["z_median"], z)
    return {"sigma_nmad": float(m["sigma_nmad"]), "catastrophic_fraction": float(m["catastrophic_fraction"])}


def label_noise(spark, args, out: Path) -> dict:
    from lsst_spark_ml.influence.scoring import InfluenceScorer
    from lsst_spark_ml.pipelines import influence
    df = load("train")
    z_bad, bad = corrupt_redshifts(df.redshift.to_numpy(), args.noise_fraction, seed=args.seed)
    noisy = df.assign(redshift=z_bad)
    over = {"train": {"snapshot_every": args.snapshot_every}}
    if args.quick:
        over["model"] = {"gammas": [0.0, 5.0]}
        over["train"].update({"max_epochs": 40})
    cfg = load_config([ROOT / "conf/photoz_train_dc2.yaml"], over)
    t0 = time.time()
    model = train(noisy, cfg, out / "noise_model", f"dc2-train with {bad.sum()} corrupted redshifts", reuse=True)
    t_train = time.time() - t0
    path = out / "noise_train.parquet"
    noisy.to_parquet(path, index=False)
    by_method, seconds, metas = {}, {}, {}
    for method in ("influence-function", "tracin"):
        mcfg = load_config([ROOT / "conf/photoz_train_dc2.yaml"], {**over, "influence": {"method": method}})
        t0 = time.time()
        metas[method] = influence.run(spark, mcfg, model, str(path), None, str(out / f"noise_{method}"))
        seconds[method] = round(time.time() - t0, 1)
        si = pd.read_parquet(out / f"noise_{method}" / "self_influence").set_index("id").loc[df.id]
        by_method[method] = si.self_influence.to_numpy()
    s = by_method["influence-function"]
    # Baseline: the final ensemble's -log p at the (corrupted) label bin, the usual "high loss" heuristic.
    pred = PhotozPredictor.load(model)
    v, e, _ = arrays(noisy)
    scorer = InfluenceScorer(pred, [])
    prep = scorer.prepare(v, e, "mag", z_bad)
    probs = pred.probabilities(prep.X)
    loss = np.full(len(df), np.nan)
    loss[prep.usable] = -np.log(np.clip(probs[np.arange(len(prep.y)), prep.y], 1e-12, 1))
    ok = np.isfinite(s)
    order = np.argsort(-np.where(ok, s, -np.inf))
    t = by_method["tracin"]
    res = {"n_train": int(len(df)), "n_corrupted": int(bad.sum()), "fraction": args.noise_fraction,
           "snapshots": len(metas["tracin"]["snapshots"]), "hessian_rows": metas["influence-function"]["hessian_rows"],
           "roc_auc_influence_function": roc_auc(s[ok & ~bad], s[ok & bad]),
           "roc_auc_tracin": roc_auc(t[ok & ~bad], t[ok & bad]),
           "roc_auc_final_loss": roc_auc(loss[ok & ~bad], loss[ok & bad]),
           "corrupted_in_top_2pct": float(bad[order[:int(0.02 * len(df))]].mean()),
           "recall_in_top_5pct": float(bad[order[:int(0.05 * len(df))]].sum() / bad.sum()),
           "train_seconds": round(t_train, 1), "influence_seconds": seconds,
           "validation": validation_metrics(model, load("validation"))}
    print(json.dumps(res, indent=1), flush=True)
    return res


def campaign(spark, args, out: Path) -> dict:
    from lsst_spark_ml.pipelines import targets
    df, val = load("train"), load("validation")
    i_mag = df["mag_i_lsst"].to_numpy()
    order = np.argsort(i_mag)
    n_bright = len(df) // 3
    bright, pool = df.iloc[order[:n_bright]], df.iloc[order[n_bright:]]
    ks = [int(k) for k in args.ks.split(",")]
    # One member (gamma = 0) per model: 7 x seeds trainings must fit in minutes on 2 cores.
    over = {"model": {"gammas": [0.0]}}
    if args.quick:
        over["train"] = {"max_epochs": 40}
    seeds = [int(s) for s in args.seeds.split(",")]
    cfgs = {s: load_config([ROOT / "conf/photoz_train_dc2.yaml"], {**over, "train": {
        **over.get("train", {}), "seed": s}}) for s in seeds}
    base = train(bright, cfgs[seeds[0]], out / "campaign_base", "brightest third")
    bright.to_parquet(out / "labelled.parquet", index=False)
    pool.drop(columns=["redshift"]).to_parquet(out / "pool.parquet", index=False)
    t0 = time.time()
    tcfg = load_config([ROOT / "conf/photoz_train_dc2.yaml"], {"influence": {"n_targets": max(ks)}})
    targets.run(spark, tcfg, base, str(out / "pool.parquet"), str(out / "labelled.parquet"),
                str(out / "campaign_targets"))
    t_sel = time.time() - t0
    ours = pd.read_csv(out / "campaign_targets" / "targets.csv")["id"].to_numpy()
    rng = np.random.default_rng(args.seed)
    choice = {"ours": ours, "random": rng.permutation(pool.id.to_numpy()),
              "magnitude": pool.id.to_numpy()}          # pool is sorted by i already: brightest first
    results = {"n_labelled": int(len(bright)), "n_pool": int(len(pool)), "i_mag_cut": float(i_mag[order[n_bright]]),
               "selection_seconds": round(t_sel, 1), "runs": []}
    pool_by_id = pool.set_index("id")
    for k in [0] + ks:
        for strategy in (["none"] if k == 0 else ["ours", "random", "magnitude"]):
            for s in seeds:
                add = pool_by_id.loc[choice[strategy][:k]].reset_index() if k else pool.iloc[:0]
                tr = pd.concat([bright, add], ignore_index=True)
                mdir = out / f"campaign_{strategy}_{k}_{s}"
                train(tr, cfgs[s], mdir, f"{strategy} K={k}")
                m = validation_metrics(str(mdir), val)
                shutil.rmtree(mdir, ignore_errors=True)
                row = {"k": k, "strategy": strategy, "seed": s, **m,
                       "added_median_i": float(add["mag_i_lsst"].median()) if k else None}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    runs = pd.DataFrame(results["runs"])
    summary = runs.groupby(["k", "strategy"]).agg(
        sigma_nmad=("sigma_nmad", "mean"), sigma_nmad_std=("sigma_nmad", "std"),
        catastrophic=("catastrophic_fraction", "mean"), catastrophic_std=("catastrophic_fraction", "std"),
        added_median_i=("added_median_i", "first")).reset_index()
    results["summary"] = summary.to_dict(orient="records")
    print(summary.to_string(index=False), flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/influence_eval")
    ap.add_argument("--part", choices=("noise", "campaign", "all"), default="all")
    ap.add_argument("--noise-fraction", type=float, default=0.02)
    ap.add_argument("--snapshot-every", type=int, default=10)
    ap.add_argument("--ks", default="200,500")
    ap.add_argument("--seeds", default="1234,2345,3456")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer members/epochs (a smoke run, not the numbers)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from lsst_spark_ml.config import SparkSettings
    from lsst_spark_ml.session import get_spark
    spark = get_spark(SparkSettings(master="local[2]", app_name="evaluate_influence", progress=False))
    result = {}
    if args.part in ("noise", "all"):
        result["label_noise"] = label_noise(spark, args, out)
    if args.part in ("campaign", "all"):
        result["campaign"] = campaign(spark, args, out)
    (out / "influence_eval.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
