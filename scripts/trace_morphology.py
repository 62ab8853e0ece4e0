"""The survey-domain trajectory of one morphology run: macro-F1 on a labelled survey-domain table after every
epoch, beside the labelled validation loss that chooses the kept epoch.

    .venv/bin/python scripts/trace_morphology.py --eval outputs/morphology_eval --recipe semi+curriculum --seed 10 \\
        --budget 150000 --set morphology.colour_shift=true

Why: a semi-supervised run is judged on labelled-domain validation rows, which cannot see what the unlabelled
survey rows teach; when such a run keeps a warm-up checkpoint, it is either a selection failure (the later
epochs were better on the survey and were not chosen) or the unlabelled phase taught nothing. Only the
trajectory on labelled survey rows tells which. Trains exactly as ``scripts/evaluate_morphology.py`` (same
sets, recipes and conf; the monitor draws no random numbers, so the run is the same run) with
``training.morphology_monitor.SurveyMonitor`` on the test table, and prints per epoch: validation loss,
macro-F1, the mean entropy of the predictions, the fraction of rows predicted with at least FixMatch's
confidence threshold (how often those are right) and the predicted class mix. The summary compares the kept
epoch with the best epoch in hindsight, the end of the warm-up, the last epoch and the epoch a label-free
criterion (lowest prediction entropy on the survey rows) would choose. Writes ``<out>/<key>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def summary(history: list[dict], best_epoch: int, warmup: int) -> dict:
    f1 = {h["epoch"]: h["monitor_macro_f1"] for h in history}
    hindsight = max(f1, key=f1.get)
    min_entropy = min(history, key=lambda h: h["monitor_entropy"])["epoch"]
    out = {"kept": (best_epoch, f1[best_epoch]), "best_in_hindsight": (hindsight, f1[hindsight]),
           "last": (history[-1]["epoch"], f1[history[-1]["epoch"]]),
           "lowest_entropy": (min_entropy, f1[min_entropy])}
    if warmup:
        out["end_of_warmup"] = (warmup, f1[warmup])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", default="outputs/morphology_eval", help="an evaluate_morphology directory (its data/)")
    ap.add_argument("--out", default="outputs/morphology_trace")
    ap.add_argument("--network", default="dat")
    ap.add_argument("--recipe", default="semi+curriculum")
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--budget", type=int, default=150_000)
    ap.add_argument("--monitor", default=None, help="labelled survey-domain cutout table (default: <eval>/data/test)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="extra config overrides")
    args = ap.parse_args(argv)

    from evaluate_morphology import recipe_config

    from lsst_spark_ml.morphology.render import CLASSES
    from lsst_spark_ml.pipelines import morphology
    from lsst_spark_ml.training.morphology_monitor import SurveyMonitor
    data = Path(args.eval) / "data"
    if not (data / "manifest.json").is_file():
        raise SystemExit(f"{data}: no rendered sets; run scripts/evaluate_morphology.py --out {args.eval} first")
    cfg = recipe_config(args.recipe, args.network, args.budget, args.seed, args.overrides)
    key = f"{args.network}_{args.recipe}_seed{args.seed}"
    out = Path(args.out)
    monitor = SurveyMonitor(args.monitor or str(data / "test"), cfg.morphology.image_size, list(CLASSES),
                            threshold=cfg.morphology.threshold)
    t = time.time()
    res = morphology.train(None, cfg, str(data / "labelled"), str(data / "unlabelled"), str(out / "models" / key),
                           monitor=monitor)
    tr = res["manifest"]["training"]
    history = json.loads((Path(res["model_dir"]) / "training_log.json").read_text())["history"]
    lines = ["| epoch | validation loss | survey macro-F1 | survey entropy | confident (right) | predicted class mix |",
             "|---:|---:|---:|---:|---:|---|"]
    for h in history:
        mark = " (kept)" if h["epoch"] == tr["best_epoch"] else ""
        lines.append(f"| {h['epoch']}{mark} | {h['val_loss']:.4f} | {h['monitor_macro_f1']:.3f} | "
                     f"{h['monitor_entropy']:.3f} | {h['monitor_confident_fraction']:.2f} "
                     f"({h['monitor_confident_accuracy'] or float('nan'):.2f}) | "
                     f"{' '.join(f'{v:.2f}' for v in h['monitor_class_mix'])} |")
    s = summary(history, tr["best_epoch"], tr["warmup_epochs"])
    lines.append("")
    lines += [f"- {k.replace('_', ' ')}: epoch {e}, macro-F1 {f:.3f}" for k, (e, f) in s.items()]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{key}.json").write_text(json.dumps({"overrides": args.overrides, "settings": tr["settings"],
                                                 "summary": s, "history": history,
                                                 "seconds": round(time.time() - t)}, indent=1, default=float) + "\n")
    (out / f"{key}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
