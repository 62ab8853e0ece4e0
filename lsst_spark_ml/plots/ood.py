"""OOD score histograms per kind, with the model's thresholds (Agg canvas, no pyplot: ``plots.canvas``)."""
from __future__ import annotations

import numpy as np

from .canvas import figure, save


def score_histograms(scores_by_kind: dict[str, np.ndarray], thresholds: dict, path: str) -> str:
    fig = figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    hi = max(float(np.nanmax(v)) for v in scores_by_kind.values() if len(v))
    bins = np.linspace(0, hi * 1.02, 60)
    for name, v in scores_by_kind.items():
        ax.hist(v, bins=bins, histtype="step", density=True, lw=1.6, label=f"{name} ({len(v):,})")
    for key, style in (("tercile_1", ":"), ("tercile_2", "--"), ("flag", "-")):
        if key in thresholds:
            ax.axvline(thresholds[key], color="k", ls=style, lw=1,
                       label=f"{key.replace('_', ' ')} {thresholds[key]:.2f}")
    ax.set_xlabel("DCP score  H(HE) - H(LE)  [nats]")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Out-of-distribution scores by kind")
    return str(save(fig, path))
