"""Influence and target-selection figures in colour space (Agg canvas, no pyplot: ``plots.canvas``)."""
from __future__ import annotations

import numpy as np

from .canvas import figure, save


def _colour_axes(bands: list[str]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two adjacent colours that separate redshifts well for the bands present (g-r, r-i by default)."""
    pref = [("g", "r"), ("r", "i"), ("i", "z"), ("u", "g")]
    pairs = [(bands.index(a), bands.index(b)) for a, b in pref if a in bands and b in bands]
    if len(pairs) < 2:
        pairs = [(0, 1), (1, 2 % len(bands))]
    return pairs[0], pairs[1]


def _label(bands, pair):
    return f"{bands[pair[0]]} - {bands[pair[1]]}"


def influence_colour_space(mag: np.ndarray, z: np.ndarray, bands: list[str], top_self: np.ndarray,
                           query: dict | None, path: str) -> str:
    """Left: training set with the highest self-influence rows; right: one query with its most helpful and
    most harmful training rows. ``mag``: (N, B) of the training sample, ``top_self`` a bool mask over it,
    ``query``: {"mag": (B,), "helpful": mask, "harmful": mask, "id": ..} or None."""
    a, b = _colour_axes(bands)
    ca, cb = mag[:, a[0]] - mag[:, a[1]], mag[:, b[0]] - mag[:, b[1]]
    n_panels = 3 if query else 2
    fig = figure(figsize=(5.2 * n_panels, 4.4))
    axes = fig.subplots(1, n_panels)
    ax = axes[0]
    ax.scatter(ca[~top_self], cb[~top_self], s=2, c="0.75", lw=0, label="training galaxies")
    ax.scatter(ca[top_self], cb[top_self], s=9, c="crimson", lw=0, label=f"highest self-influence ({top_self.sum()})")
    ax.set_xlabel(_label(bands, a))
    ax.set_ylabel(_label(bands, b))
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title("Training rows the model keeps fighting")
    ax = axes[1]
    ax.scatter(z[~top_self], mag[~top_self, min(3, len(bands) - 1)], s=2, c="0.75", lw=0)
    ax.scatter(z[top_self], mag[top_self, min(3, len(bands) - 1)], s=9, c="crimson", lw=0)
    ax.set_xlabel("spectroscopic redshift (label)")
    ax.set_ylabel(f"{bands[min(3, len(bands) - 1)]} magnitude")
    ax.invert_yaxis()
    ax.set_title("Self-influence against label and magnitude")
    if query:
        ax = axes[2]
        ax.scatter(ca, cb, s=2, c="0.8", lw=0)
        for key, colour in (("helpful", "tab:blue"), ("harmful", "tab:orange")):
            m = query[key]
            ax.scatter(ca[m], cb[m], s=18, c=colour, lw=0, label=f"{key} ({m.sum()})")
        qm = query["mag"]
        ax.scatter([qm[a[0]] - qm[a[1]]], [qm[b[0]] - qm[b[1]]], marker="*", s=220, c="k", label="query")
        ax.set_xlabel(_label(bands, a))
        ax.set_ylabel(_label(bands, b))
        ax.legend(fontsize=8)
        ax.set_title(f"Query {query['id']}: most helpful / harmful training rows", fontsize=10)
    fig.tight_layout()
    return str(save(fig, path, dpi=110))


def targets_colour_space(train_mag: np.ndarray, pool_mag: np.ndarray, target_mag: np.ndarray, bands: list[str],
                         path: str) -> str:
    """Selected targets against the training set and the unlabelled pool: colours and magnitude."""
    a, b = _colour_axes(bands)
    ref = min(3, len(bands) - 1)
    fig = figure(figsize=(11, 4.4))
    axes = fig.subplots(1, 2)
    ax = axes[0]
    for m, c, s, lab in ((pool_mag, "0.8", 2, "unlabelled pool"), (train_mag, "tab:blue", 2, "training set"),
                         (target_mag, "crimson", 12, "selected targets")):
        ax.scatter(m[:, a[0]] - m[:, a[1]], m[:, b[0]] - m[:, b[1]], s=s, c=c, lw=0,
                   label=f"{lab} ({len(m):,})")
    ax.set_xlabel(_label(bands, a))
    ax.set_ylabel(_label(bands, b))
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title("Spectroscopic targets in colour space")
    ax = axes[1]
    lo = np.nanpercentile(np.concatenate([train_mag[:, ref], pool_mag[:, ref]]), 0.5)
    hi = np.nanpercentile(np.concatenate([train_mag[:, ref], pool_mag[:, ref]]), 99.5)
    bins = np.linspace(lo, hi, 40)
    for m, c, lab in ((pool_mag, "0.5", "unlabelled pool"), (train_mag, "tab:blue", "training set"),
                      (target_mag, "crimson", "selected targets")):
        ax.hist(m[:, ref], bins=bins, histtype="step", density=True, color=c, lw=1.6, label=lab)
    ax.set_xlabel(f"{bands[ref]} magnitude")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Magnitude distributions")
    fig.tight_layout()
    return str(save(fig, path, dpi=110))
