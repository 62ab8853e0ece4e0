"""Re-score the models of ``scripts/evaluate_morphology.py`` runs on a fresh survey-domain test set.

    .venv/bin/python scripts/confirm_morphology.py --evals outputs/morphology_eval_ema,outputs/morphology_eval_teach

Why: the recipes of issue 8 were chosen over several sessions by their macro-F1 on one 1,000-galaxy test set,
so the best recipe's score on that set is biased upwards (selection on the test set). This script renders
another test set from the same survey-domain distribution with a render seed no run has seen (only the test
table: no labelled or unlabelled rows), scores every saved model of the given evaluation directories on it
and prints the paired gain of each recipe over the supervised run with the same settings apart from the
semi-supervised ones (same network, seed, budget, augmentations). The models are not retrained; the new set
is larger (3,000 by default), so the standard errors are smaller too.
Writes ``<out>/results.json`` and ``<out>/results.md``.
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
sys.path.insert(0, str(ROOT / "scripts"))


# Settings only a semi-supervised run reads: a supervised run that matches a semi run on every other setting
# (network, seed, budget, augmentations, EMA, ...) is its baseline.
SEMI_ONLY = {"mode", "curriculum", "curriculum_start", "curriculum_ramp", "unlabelled_ratio", "threshold",
             "unlabelled_weight", "relative_threshold", "distribution_alignment", "warmup_fraction",
             "pseudo_labels", "teacher_decay", "colour_shift_unlabelled"}


def baseline_key(settings: dict) -> str:
    return json.dumps({k: v for k, v in settings.items() if k not in SEMI_ONLY}, sort_keys=True)


def paired_table(results: dict, base_recipe: str = "supervised") -> list[str]:
    """Markdown lines: per (eval dir, network, recipe) the seeds' macro-F1, mean +- sd and the paired gain
    (standard error) over the ``base_recipe`` run with the same settings apart from ``SEMI_ONLY``."""
    base: dict = {}
    for r in results.values():
        if r["recipe"] == base_recipe:
            k = r["baseline_key"]
            if k in base:
                raise SystemExit(f"two {base_recipe} runs with the same settings: {r['model_dir']}")
            base[k] = r["macro_f1"]
    groups: dict = {}
    for r in results.values():
        groups.setdefault((r["eval"], r["network"], r["recipe"]), []).append(r)
    lines = ["| eval dir | network | recipe | macro-F1 by seed | mean +- sd | paired gain (se) |",
             "|---|---|---|---|---:|---:|"]
    for (ev, net, recipe), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        f1 = np.array([r["macro_f1"] for r in rs])
        sd = f" +- {f1.std(ddof=1):.3f}" if len(rs) > 1 else ""
        gain = ""
        d = np.array([r["macro_f1"] - base[r["baseline_key"]] for r in rs if r["baseline_key"] in base])
        if recipe != base_recipe and len(d):
            se = f" ({100 * d.std(ddof=1) / np.sqrt(len(d)):.1f})" if len(d) > 1 else ""
            gain = f"{100 * d.mean():+.1f}{se}"
        seeds = " / ".join(f"{r['seed']}: {r['macro_f1']:.3f}" for r in rs)
        lines.append(f"| {ev} | {net} | {recipe} | {seeds} | {f1.mean():.3f}{sd} | {gain} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--evals", required=True, help="comma-separated evaluate_morphology output directories")
    ap.add_argument("--out", default="outputs/morphology_confirm")
    ap.add_argument("--render-seed", type=int, default=2026, help="must differ from the runs' (2022)")
    ap.add_argument("--n-test", type=int, default=3000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)

    from evaluate_morphology import test_scores, warm_mask_cache

    from lsst_spark_ml.morphology.cutouts import make_sets
    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        t = time.time()
        make_sets(str(data), 0, 0, args.n_test, size=args.size, seed=args.render_seed)
        print(f"[confirm] rendered {args.n_test} survey-domain test galaxies in {time.time() - t:.0f} s",
              file=sys.stderr)
    test = str(data / "test")
    warm_mask_cache([test], args.size)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for ev in args.evals.split(","):
        runs = json.loads((Path(ev) / "results.json").read_text())
        for key, run in runs.items():
            rkey = f"{Path(ev).name}/{key}"
            if rkey in results:
                continue
            training = json.loads((Path(run["model_dir"]) / "manifest.json").read_text())["training"]
            sets = json.loads((Path(training["labelled"]).parent / "manifest.json").read_text())
            if sets["seed"] == args.render_seed:
                raise SystemExit(f"{run['model_dir']} was trained on sets of render seed {args.render_seed}")
            scores = test_scores(run["model_dir"], test)
            results[rkey] = {"eval": Path(ev).name, "network": run["network"], "recipe": run["recipe"],
                             "seed": run["seed"], "model_dir": run["model_dir"],
                             "baseline_key": baseline_key(training["settings"]),
                             "macro_f1_first_test": run["macro_f1"], **scores}
            print(f"[confirm] {rkey}: macro-F1 {scores['macro_f1']:.3f} (first test set {run['macro_f1']:.3f})",
                  file=sys.stderr)
            results_file.write_text(json.dumps(results, indent=1) + "\n")
    lines = paired_table(results)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
