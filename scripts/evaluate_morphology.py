"""Issue 8 target: semi-supervised training with the curriculum against supervised training on the same 10 %
of labels, at the same compute, scored by macro-F1 on a held-out set from the shifted (survey) domain; DAT
beside the convolutional baseline.

    .venv/bin/python scripts/evaluate_morphology.py --out outputs/morphology_eval            (make evaluate-morphology)

Renders the sets once (``morphology make-cutouts``: 600 labelled galaxies from the labelled domain, 5,400
unlabelled and 1,500 test galaxies from the survey domain, 64 px), then trains every (network, recipe) with
the same ``morphology.budget_images`` and scores the test set. Writes ``results.json`` and ``results.md``.
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


def test_scores(model_dir: str, test_path: str) -> dict:
    """Macro-F1 and accuracy on the test table, predicted in this process (the Spark path is tested apart)."""
    import pyarrow.dataset as pds

    from lsst_spark_ml.inference.morphology import MorphologyPredictor
    from lsst_spark_ml.morphology.cutouts import check_cutout_table, decode_cutouts
    from lsst_spark_ml.pipelines.morphology import classification_metrics
    pred = MorphologyPredictor.load(model_dir)
    info = check_cutout_table(test_path)
    table = pds.dataset(test_path, format="parquet").to_table(columns=["cutout", "cutout_shape", "cutout_dtype",
                                                                      "label"])
    bands, flags = decode_cutouts(table.column("cutout"), table.column("cutout_shape"),
                                  table.column("cutout_dtype"), tuple(info.shape))
    res = pred.predict(bands, flags)
    y = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    ok = res["flags"] == 0
    m = classification_metrics(y[ok], res["class_id"][ok], pred.classes)
    m["n_flagged"] = int((~ok).sum())
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/morphology_eval")
    ap.add_argument("--networks", default="dat,cnn")
    ap.add_argument("--recipes", default="supervised,semi+curriculum,semi")
    ap.add_argument("--budget", type=int, default=400_000, help="images through the network per run")
    ap.add_argument("--seeds", default="8")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="extra config overrides")
    args = ap.parse_args(argv)

    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.pipelines import morphology
    out = Path(args.out)
    data = out / "data"
    cfg = load_config([ROOT / "conf" / "morphology.yaml"], args.overrides)
    if not (data / "_SUCCESS").is_file():
        t = time.time()
        paths = morphology.make_cutouts(cfg, str(data))
        (data / "_SUCCESS").write_text(json.dumps(paths) + "\n")
        print(f"[eval] rendered the sets in {time.time() - t:.0f} s", file=sys.stderr)
    paths = json.loads((data / "_SUCCESS").read_text())

    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for net in args.networks.split(","):
        for recipe in args.recipes.split(","):
            for seed in args.seeds.split(","):
                key = f"{net}/{recipe}/seed{seed}"
                if key in results:
                    continue
                over = {**RECIPES[recipe], "network": net, "budget_images": args.budget, "seed": int(seed)}
                rcfg = load_config([ROOT / "conf" / "morphology.yaml"],
                                   args.overrides + [f"morphology.{k}={v}" for k, v in over.items()])
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
