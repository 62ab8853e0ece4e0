"""Issue 8 target: semi-supervised training with the curriculum against supervised training on the same 10 %
of labels, at the same compute, scored by macro-F1 on a held-out set from the shifted (survey) domain; DAT
beside the convolutional baseline.

    .venv/bin/python scripts/evaluate_morphology.py --out outputs/morphology_eval --budget 150000

Renders the sets once (``morphology make-cutouts``: 400 labelled galaxies from the labelled domain, 3,600
unlabelled and 1,000 test galaxies from the survey domain, 64 px: labels on 10 % of the training set),
then trains every (network, recipe) with the same ``morphology.budget_images`` and scores the test set.
Writes ``results.json`` and ``results.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = {                       # name -> morphology overrides
    "supervised": {"mode": "supervised"},
    "semi+curriculum": {"mode": "semi", "curriculum": "snr"},
    "semi": {"mode": "semi", "curriculum": "none"},
}


def recipe_config(recipe: str, network: str, budget: int, seed: int, overrides: list[str]):
    """conf/morphology.yaml + ``overrides`` + the recipe's settings: the config of one evaluated run."""
    from lsst_spark_ml.config import load_config
    over = {**RECIPES[recipe], "network": network, "budget_images": budget, "seed": seed}
    return load_config([ROOT / "conf" / "morphology.yaml"],
                       overrides + [f"morphology.{k}={v}" for k, v in over.items()])


def test_scores(model_dir: str, test_path: str) -> dict:
    """Macro-F1 and accuracy on the test table, predicted in this process (the Spark path is tested apart);
    the inputs come through the training reader, whose object masks are cached across runs."""
    import torch

    from lsst_spark_ml.inference.morphology import MorphologyPredictor
    from lsst_spark_ml.pipelines.morphology import classification_metrics
    from lsst_spark_ml.training.morphology import default_mask_cache, read_cutout_set
    pred = MorphologyPredictor.load(model_dir)
    cs = read_cutout_set(test_path, pred.image_size, mask_cache=default_mask_cache())
    probs, _ = pred.forward(cs.x.to(torch.float32).numpy())
    m = classification_metrics(cs.labels, probs.argmax(1), pred.classes)
    m["n_flagged"] = cs.n_flagged
    return m


def _warm_masks(args):
    path, size, rank, world = args
    from lsst_spark_ml.training.morphology import default_mask_cache, read_cutout_set
    read_cutout_set(path, size, label_col=None, rank=rank, world=world, mask_cache=default_mask_cache())


def warm_mask_cache(paths: list[str], size: int, processes: int = 2) -> None:
    """Object masks of every table once, over ``processes`` cores (each run then reads them from the cache)."""
    import multiprocessing as mp

    from lsst_spark_ml.morphology.cutouts import check_cutout_table
    jobs = []
    for p in paths:
        world = min(processes, check_cutout_table(p).n_row_groups)     # a rank needs a whole row group
        jobs += [(p, size, r, world) for r in range(world)]
    with mp.get_context("spawn").Pool(processes) as pool:
        pool.map(_warm_masks, jobs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/morphology_eval")
    ap.add_argument("--networks", default="dat,cnn")
    ap.add_argument("--recipes", default="supervised,semi+curriculum,semi")
    ap.add_argument("--budget", type=int, default=400_000, help="images through the network per run")
    ap.add_argument("--seeds", default="8")
    # 10 % of the 4,000 training galaxies carry labels; the test set is drawn from the survey domain.
    ap.add_argument("--n-labelled", type=int, default=400)
    ap.add_argument("--n-unlabelled", type=int, default=3600)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="extra config overrides")
    args = ap.parse_args(argv)

    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.pipelines import morphology
    out = Path(args.out)
    data = out / "data"
    cfg = load_config([ROOT / "conf" / "morphology.yaml"], args.overrides)
    if not (data / "manifest.json").is_file():      # make_sets writes it last
        t = time.time()
        morphology.make_cutouts(cfg, str(data), args.n_labelled, args.n_unlabelled, args.n_test)
        print(f"[eval] rendered the sets in {time.time() - t:.0f} s", file=sys.stderr)
    paths = {k: str(data / k) for k in ("labelled", "unlabelled", "test")}

    t = time.time()
    warm_mask_cache([paths["labelled"], paths["unlabelled"], paths["test"]], cfg.morphology.image_size)
    print(f"[eval] object masks ready in {time.time() - t:.0f} s", file=sys.stderr)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for net in args.networks.split(","):
        for recipe in args.recipes.split(","):
            for seed in args.seeds.split(","):
                key = f"{net}/{recipe}/seed{seed}"
                if key in results:
                    continue
                rcfg = recipe_config(recipe, net, args.budget, int(seed), args.overrides)
                t = time.time()
                model_dir = out / "models" / key.replace("/", "_")
                res = morphology.train(None, rcfg, paths["labelled"], paths["unlabelled"], str(model_dir))
                seconds = time.time() - t
                scores = test_scores(str(model_dir), paths["test"])
                tr = res["manifest"]["training"]
                results[key] = {"network": net, "recipe": recipe, "seed": int(seed), "train_seconds": round(seconds),
                                "images_seen": tr["images_seen"], "best_epoch": tr["best_epoch"],
                                "epochs_run": tr["epochs_run"], "model_dir": str(model_dir), **scores}
                print(f"[eval] {key}: macro-F1 {scores['macro_f1']:.3f}, accuracy {scores['accuracy']:.3f} "
                      f"({seconds:.0f} s)", file=sys.stderr)
                results_file.write_text(json.dumps(results, indent=1) + "\n")

    lines = ["| network | recipe | seeds | macro-F1 (test, survey domain) | accuracy | train s | images |",
             "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in results.values():
        groups.setdefault((r["network"], r["recipe"]), []).append(r)
    for (net, recipe), rs in sorted(groups.items()):
        f1 = np.array([r["macro_f1"] for r in rs])
        acc = np.array([r["accuracy"] for r in rs])
        sd = f" +- {f1.std(ddof=1):.3f}" if len(rs) > 1 else ""
        lines.append(f"| {net} | {recipe} | {len(rs)} | {f1.mean():.3f}{sd} | {acc.mean():.3f} | "
                     f"{np.mean([r['train_seconds'] for r in rs]):.0f} | {rs[0]['images_seen']:,} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
