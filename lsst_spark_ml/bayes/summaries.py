"""Posterior summaries shared by all three methods: point estimates, 68%/95% intervals and the PDF on the
network's redshift bins (so the Bayesian and the network PDFs can be compared and merged bin for bin).

Grid and VI give a density on the fine grid; MCMC gives samples (exact sample quantiles, a lightly smoothed
histogram for the mode).
"""
from __future__ import annotations

import numpy as np
import torch

QUANTILES = (0.5, 0.158655, 0.841345, 0.02275, 0.97725)
COLUMNS = ("z_mean", "z_median", "z_mode", "z_std", "z_lo68", "z_hi68", "z_lo95", "z_hi95")
MODE_SMOOTH = 0.005     # Gaussian smoothing (in z) of the sample histogram before taking its peak


def _cdf(zg: np.ndarray, dens: np.ndarray) -> np.ndarray:
    inc = 0.5 * (dens[:, 1:] + dens[:, :-1]) * np.diff(zg)
    cdf = np.concatenate([np.zeros((len(dens), 1)), np.cumsum(inc, axis=1)], axis=1)
    return cdf / cdf[:, -1:]


def cdf_at(zg: np.ndarray, cdf: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each row's CDF at its own points x (N, M), linear between grid nodes."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    idx = np.clip(np.searchsorted(zg, x, side="right") - 1, 0, len(zg) - 2)
    w = np.clip((x - zg[idx]) / (zg[idx + 1] - zg[idx]), 0.0, 1.0)
    rows = np.arange(len(cdf))[:, None]
    out = (1 - w) * cdf[rows, idx] + w * cdf[rows, idx + 1]
    return np.where(x < zg[0], 0.0, np.where(x > zg[-1], 1.0, out))


def _quantiles(zg: np.ndarray, cdf: np.ndarray, qs) -> np.ndarray:
    c = torch.as_tensor(cdf)
    q = torch.tensor(qs, dtype=torch.float64).expand(len(cdf), -1).contiguous()
    hi = torch.clamp(torch.searchsorted(c, q), 1, len(zg) - 1).numpy()
    rows = np.arange(len(cdf))[:, None]
    c0, c1 = cdf[rows, hi - 1], cdf[rows, hi]
    w = np.where(c1 > c0, (np.asarray(qs)[None, :] - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.5)
    return zg[hi - 1] + np.clip(w, 0, 1) * (zg[hi] - zg[hi - 1])


def from_density(zg: np.ndarray, dens: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
    """dens (N, nz) on the fine grid zg -> summaries and the PDF (probability per bin of ``edges``)."""
    dens = np.asarray(dens, dtype=np.float64)
    norm = np.trapezoid(dens, zg, axis=1)[:, None]
    dens = dens / norm
    mean = np.trapezoid(dens * zg, zg, axis=1)
    var = np.trapezoid(dens * (zg - mean[:, None]) ** 2, zg, axis=1)
    cdf = _cdf(zg, dens)
    q = _quantiles(zg, cdf, QUANTILES)
    pdf = np.diff(cdf_at(zg, cdf, np.broadcast_to(edges, (len(dens), len(edges)))), axis=1)
    return {"z_mean": mean, "z_median": q[:, 0], "z_mode": zg[np.argmax(dens, axis=1)], "z_std": np.sqrt(var),
            "z_lo68": q[:, 1], "z_hi68": q[:, 2], "z_lo95": q[:, 3], "z_hi95": q[:, 4],
            "pdf": pdf.astype(np.float32), "cdf": cdf}


def from_samples(samples: np.ndarray, zg: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
    """samples (N, S) -> the same summaries; quantiles from the samples themselves."""
    s = np.asarray(samples, dtype=np.float64)
    q = np.quantile(s, QUANTILES, axis=1).T
    n = len(s)
    counts = np.zeros((n, len(edges) - 1))
    b = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
    np.add.at(counts, (np.repeat(np.arange(n), s.shape[1]), b.ravel()), 1.0)
    h = np.zeros((n, len(zg)))
    k = np.clip(np.rint((s - zg[0]) / (zg[1] - zg[0])).astype(int), 0, len(zg) - 1)
    np.add.at(h, (np.repeat(np.arange(n), s.shape[1]), k.ravel()), 1.0)
    half = int(np.ceil(4 * MODE_SMOOTH / (zg[1] - zg[0])))
    kern = np.exp(-0.5 * (np.arange(-half, half + 1) * (zg[1] - zg[0]) / MODE_SMOOTH) ** 2)
    sm = torch.nn.functional.conv1d(torch.as_tensor(h)[:, None], torch.as_tensor(kern)[None, None],
                                    padding=half)[:, 0].numpy()
    return {"z_mean": s.mean(1), "z_median": q[:, 0], "z_mode": zg[np.argmax(sm, axis=1)], "z_std": s.std(1),
            "z_lo68": q[:, 1], "z_hi68": q[:, 2], "z_lo95": q[:, 3], "z_hi95": q[:, 4],
            "pdf": (counts / s.shape[1]).astype(np.float32)}
