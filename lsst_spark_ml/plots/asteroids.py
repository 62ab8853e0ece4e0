"""Asteroid taxonomy figures: colour-colour diagrams by class or cluster, class-probability histogram.

Inputs are small driver-side arrays (the labelled set is ~3,000 rows; for a survey-sized table pass a
sample). Agg canvas, no pyplot (``plots.canvas``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .canvas import figure, save

COLOURS = {"C": "tab:blue", "D": "tab:brown", "K": "tab:olive", "L": "tab:pink", "S": "tab:red", "V": "tab:purple",
           "X": "tab:gray", "unassigned": "black"}


def colour_colour(refl: np.ndarray, bands: list[str], groups: np.ndarray, path, title: str,
                  pairs=(("g", "r", "r", "i"), ("r", "i", "i", "z"), ("i", "z", "z", "y"))) -> Path:
    """Scatter of reflectance colours (rows with both colours finite), one colour per group."""
    pairs = [p for p in pairs if all(b in bands for b in p)]
    fig = figure(figsize=(4.6 * max(len(pairs), 1), 4.4))
    groups = np.asarray(groups, dtype=object)
    names = [g for g in dict.fromkeys(groups.tolist()) if g is not None]
    for j, (a, b, c, d) in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), j + 1)
        x = refl[:, bands.index(a)] - refl[:, bands.index(b)]
        y = refl[:, bands.index(c)] - refl[:, bands.index(d)]
        ok = np.isfinite(x) & np.isfinite(y)
        for g in sorted(names, key=str):
            m = ok & (groups == g)
            if m.any():
                ax.scatter(x[m], y[m], s=5, alpha=0.6, color=COLOURS.get(g), label=f"{g} ({m.sum()})")
        ax.set_xlabel(f"{a} - {b} (reflectance)")
        ax.set_ylabel(f"{c} - {d} (reflectance)")
        if j == 0:
            ax.legend(fontsize=7, markerscale=2)
    fig.suptitle(title)
    return save(fig, path)


def probability_histogram(pmax: np.ndarray, path, threshold: float | None = None) -> Path:
    fig = figure(figsize=(5, 3.8))
    ax = fig.add_subplot()
    p = np.asarray(pmax, float)
    ax.hist(p[np.isfinite(p)], bins=np.linspace(0, 1, 41), color="tab:blue")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"min probability {threshold}")
        ax.legend(fontsize=8)
    ax.set_xlabel("largest class probability")
    ax.set_ylabel("asteroids")
    return save(fig, path)


def confusion(matrix: np.ndarray, rows: list[str], cols: list[str], path, title: str) -> Path:
    """Counts, shaded by the fraction of each true class (row)."""
    m = np.asarray(matrix, float)
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig = figure(figsize=(0.7 * len(cols) + 2.5, 0.7 * len(rows) + 2))
    ax = fig.add_subplot()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save(fig, path)
