"""Photo-z evaluation figures drawn from small aggregated arrays (see ``metrics.photoz.plot_inputs``).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (``plots.canvas``), never through
pyplot: no GUI backend is touched and no global figure state leaks between Spark driver threads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm

from ..metrics.reference import OUTLIER_CUT
from .canvas import figure, save


def plot_zphot_vs_zspec(hist2d, zmax: float, path, label: str = "z_phot") -> Path:
    """2-D histogram (axis 0 true z, axis 1 photo-z) over [0, zmax]^2 on a log colour scale."""
    h = np.asarray(hist2d, float)
    fig = figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    if h.sum() > 0:
        mesh = ax.pcolormesh(np.linspace(0, zmax, h.shape[0] + 1), np.linspace(0, zmax, h.shape[1] + 1),
                             np.ma.masked_equal(h.T, 0), norm=LogNorm(vmin=1, vmax=h.max()), cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="objects per cell")
    z = np.array([0.0, zmax])
    ax.plot(z, z, "k-", lw=0.8, label="1:1")
    for sign in (1, -1):
        ax.plot(z, z + sign * OUTLIER_CUT * (1 + z), "r--", lw=0.8,
                label=rf"$|\Delta z| = {OUTLIER_CUT}(1+z)$" if sign > 0 else None)
    ax.set(xlim=(0, zmax), ylim=(0, zmax), xlabel="z_spec (true)", ylabel=label, aspect="equal",
           title=f"{int(h.sum()):,} objects")
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def plot_pit(pit_hist, path, metrics: dict | None = None) -> Path:
    """PIT histogram as a density, with the uniform density of a calibrated sample."""
    c = np.asarray(pit_hist, float)
    edges = np.linspace(0, 1, c.size + 1)
    fig = figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.stairs(c * c.size / max(c.sum(), 1), edges, fill=True, alpha=0.6, label="PIT")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="uniform")
    ax.set(xlim=(0, 1), xlabel="PIT", ylabel="density")
    if metrics:
        names = {"pit_ks": "KS", "pit_cvm": "CvM", "pit_ad": "AD", "pit_outlier_rate": "outliers"}
        text = "\n".join(f"{name} = {metrics[key]:.4g}" for key, name in names.items() if key in metrics)
        ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def plot_nz(bin_edges, nz_true, nz_pdf, nz_zmean, path, point_label: str = "z_mean") -> Path:
    """Redshift distribution: true z histogram against the summed PDFs and the point-estimate histogram."""
    edges = np.asarray(bin_edges, float)
    w = np.diff(edges)
    fig = figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for counts, label, style in [(nz_true, "true z", {"color": "k", "lw": 1.5}),
                                 (nz_pdf, "sum of PDFs", {"color": "C0", "lw": 1.5}),
                                 (nz_zmean, f"histogram of {point_label}", {"color": "C1", "lw": 1, "ls": "--"})]:
        c = np.asarray(counts, float)
        ax.stairs(c / (max(c.sum(), 1e-300) * w), edges, label=label, **style)
    ax.set(xlim=(edges[0], edges[-1]), xlabel="z", ylabel="n(z) (normalised)")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_example_pdfs(bin_edges, pdfs, truth, path, z_point=None, ncols: int = 3,
                      point_label: str = "z_mean") -> Path:
    """A grid of PDFs (densities) with the true redshift and, when given, the point estimate."""
    edges = np.asarray(bin_edges, float)
    pdfs = np.atleast_2d(np.asarray(pdfs, float))
    n = max(len(pdfs), 1)
    nrows = -(-n // ncols)
    fig = figure(figsize=(3.2 * ncols, 2.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for i, ax in enumerate(axes.flat):
        if i >= len(pdfs):
            ax.set_axis_off()
            continue
        ax.stairs(pdfs[i] / pdfs[i].sum() / np.diff(edges), edges, fill=True, alpha=0.6)
        ax.axvline(truth[i], color="k", lw=1.2, label="true z")
        if z_point is not None and np.isfinite(z_point[i]):
            ax.axvline(z_point[i], color="C3", ls="--", lw=1, label=point_label)
        ax.set_title(f"z_true = {truth[i]:.3f}", fontsize=9)
        ax.set_xlim(edges[0], edges[-1])
    for ax in axes[-1]:
        ax.set_xlabel("z")
    if len(pdfs):
        axes[0, 0].legend(fontsize=7)
    fig.supylabel("p(z)")
    return save(fig, path)


def write_evaluation_plots(inputs: dict, bin_edges, out_dir, metrics: dict | None = None,
                           point_label: str = "z_mean") -> list[Path]:
    """The four evaluation figures from ``metrics.photoz.plot_inputs``; ``metrics`` annotates the PIT plot."""
    out = Path(out_dir)
    return [
        plot_zphot_vs_zspec(inputs["hist2d"], inputs["zmax"], out / "zphot_vs_zspec.png", label=point_label),
        plot_pit(inputs["pit_hist"], out / "pit.png", metrics),
        plot_nz(bin_edges, inputs["nz_true"], inputs["nz_pdf"], inputs["nz_zmean"], out / "nz.png", point_label),
        plot_example_pdfs(bin_edges, inputs["example_pdfs"], inputs["example_truth"],
                          out / "example_pdfs.png", inputs.get("example_z"), point_label=point_label),
    ]
