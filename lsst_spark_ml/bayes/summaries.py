"""Posterior summaries shared by all three methods: point estimates, 68%/95% intervals and the PDF on the
network's redshift bins (so the Bayesian and the network PDFs can be compared and merged bin for bin).

The grid gives a density on the fine grid; VI a Gaussian mixture in logit z, summarised in closed form
(``from_logit_mixture``); MCMC gives samples (exact sample quantiles, a lightly smoothed histogram for the mode).
"""
from __future__ import annotations

import functools
import math

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


GH_NODES = 128        # Gauss-Hermite nodes per component (mean, variance); fewer lose 1e-4 for wide components
BISECT_STEPS = 34     # bisection in logit z for the quantiles: 80 / 2^34 = 5e-9 in logit z
MODE_GRID = 96        # density scan per object for the mode (plus the component centres), then golden section
GOLDEN_STEPS = 14     # the bracket (two scan steps, 0.064 in z) shrinks to 0.064 x 0.618^14 = 8e-5


@functools.lru_cache(maxsize=1)
def _hermite_nodes() -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite nodes and weights for E[f(X)], X ~ N(0, 1)."""
    x, w = np.polynomial.hermite.hermgauss(GH_NODES)
    return torch.as_tensor(math.sqrt(2.0) * x), torch.as_tensor(w / math.sqrt(math.pi))


def from_logit_mixture(mu: np.ndarray, sd: np.ndarray, log_pi: np.ndarray, z0: float, z1: float,
                       edges: np.ndarray, zg: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The summaries of ``from_density`` for a mixture of Gaussians in u = logit((z - z0) / (z1 - z0)) (the
    marginal in z of the VI posterior), in closed form where one exists: the PDF on ``edges`` and the quantiles
    from the exact CDF sum_k pi_k Phi((u - mu_k) / sd_k) (bisection), mean and variance by Gauss-Hermite
    quadrature per component (to ~1e-6 in z; ~1e-4 for a component wider than ~3 in logit z), the mode by a
    density scan and golden-section refinement. Measured 3-4x faster than tabulating the density on the fine
    grid (dz = 0.002), and exact where that grid is not (a narrow peak, mass piled up at the grid's edge).
    ``zg``: also return the CDF on this grid (evaluation only). Arrays (N, K)."""
    mu_t, sd_t = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sd, dtype=torch.float64)
    w = torch.softmax(torch.as_tensor(log_pi, dtype=torch.float64), 1)
    span = z1 - z0
    n = len(mu_t)

    def u_of(z: torch.Tensor) -> torch.Tensor:
        p = ((z - z0) / span).clamp(1e-300, 1 - 1e-16)
        return torch.log(p) - torch.log1p(-p)

    def cdf_u(u: torch.Tensor) -> torch.Tensor:             # u (N, M) -> (N, M)
        return (w[:, :, None] * torch.special.ndtr((u[:, None, :] - mu_t[..., None]) / sd_t[..., None])).sum(1)

    def cdf_z(z: np.ndarray) -> np.ndarray:
        zt = torch.as_tensor(np.broadcast_to(z, (n, len(z))).copy(), dtype=torch.float64)
        c = cdf_u(u_of(zt))
        return torch.where(zt <= z0, 0.0, torch.where(zt >= z1, 1.0, c)).numpy()

    pdf = np.diff(cdf_z(np.asarray(edges, dtype=np.float64)), axis=1)
    # Quantiles: bisection in u, all objects and all quantiles at once (the CDF is monotone in u).
    q = torch.tensor(QUANTILES, dtype=torch.float64).expand(n, -1)
    lo = torch.full_like(q, -40.0)
    hi = torch.full_like(q, 40.0)
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        below = cdf_u(mid) < q
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    zq = (z0 + span * torch.sigmoid(0.5 * (lo + hi))).numpy()
    # Mean and variance: E[z^j] = sum_k pi_k E_k[z(u)^j], u ~ N(mu_k, sd_k^2), by Gauss-Hermite.
    x, gw_t = _hermite_nodes()
    u = mu_t[..., None] + sd_t[..., None] * x                                    # (N, K, G)
    zk = z0 + span * torch.sigmoid(u)
    m1 = (w[..., None] * gw_t * zk).sum((1, 2))
    m2 = (w[..., None] * gw_t * zk * zk).sum((1, 2))
    # Mode: the density in z on a scan, then golden-section search in the best cell's neighbourhood.
    zs = np.linspace(z0, z1, MODE_GRID + 1)[1:-1]

    def log_dens(z: torch.Tensor) -> torch.Tensor:         # log density in z, up to a constant (N, M)
        uu = u_of(z)
        t = (uu[:, None, :] - mu_t[..., None]) / sd_t[..., None]
        comp = torch.log(w)[..., None] - torch.log(sd_t)[..., None] - 0.5 * t * t
        return torch.logsumexp(comp, 1) - torch.log((z - z0) * (z1 - z))

    # The scan holds each component's centre too, so a peak narrower than the scan's step is not missed.
    centres = (z0 + span * torch.sigmoid(mu_t)).clamp(z0 + 1e-9, z1 - 1e-9)
    cand = torch.cat([torch.as_tensor(zs).expand(n, -1), centres], 1)
    best = cand.gather(1, log_dens(cand).argmax(1, keepdim=True))[:, 0]
    step = zs[1] - zs[0]
    a, b = best - step, best + step
    a, b = a.clamp(min=z0 + 1e-9), b.clamp(max=z1 - 1e-9)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(GOLDEN_STEPS):
        c, d = b - g * (b - a), a + g * (b - a)
        fc, fd = log_dens(torch.stack([c, d], 1)).unbind(1)
        left = fc > fd
        a, b = torch.where(left, a, c), torch.where(left, d, b)
    out = {"z_mean": m1.numpy(), "z_median": zq[:, 0], "z_mode": (0.5 * (a + b)).numpy(),
           "z_std": torch.sqrt((m2 - m1 * m1).clamp(min=0)).numpy(),
           "z_lo68": zq[:, 1], "z_hi68": zq[:, 2], "z_lo95": zq[:, 3], "z_hi95": zq[:, 4],
           "pdf": pdf.astype(np.float32)}
    if zg is not None:
        out["cdf"] = cdf_z(np.asarray(zg, dtype=np.float64))
    return out
