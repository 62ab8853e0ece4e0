"""Photo-z metrics in plain numpy/scipy: the definitions that the Spark versions in :mod:`.photoz` follow.

Conventions (RAIL names where RAIL has the metric; ez = (z_phot - z_true) / (1 + z_true)):

* A PDF is a row of probabilities over ``len(bin_edges) - 1`` bins, piecewise constant density within a
  bin, so its CDF is piecewise linear. Rows are renormalised to sum 1 (float32 model outputs sum to
  1 only to ~1e-6); a row that is not finite or does not have a positive sum is invalid.
* A true redshift outside ``[bin_edges[0], bin_edges[-1]]`` is clipped to the nearest edge: the
  PDF says nothing beyond its range, and clipping keeps PIT in [0, 1] (such objects become PIT
  outliers instead of disappearing from the statistics).
* Invalid rows (non-finite z or truth, invalid PDF) are excluded and counted in ``n_invalid``.

The row-wise kernels (``pit_values``, ``crps_values``, ``brier_values``, ``cde_terms``) are vectorised
over rows and are also what the Spark implementation runs on each Arrow batch.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

OUTLIER_CUT = 0.15                 # catastrophic outlier: |ez| > 0.15
POINT_OUTLIER_FLOOR = 0.06         # RAIL point_outlier_rate: |ez| > max(0.06, 3 sigma_IQR)
PIT_OUTLIER_EPS = 1e-4             # RAIL/qp PIT outlier: PIT < eps or PIT > 1 - eps
PIT_HIST_BINS = 100                # RAIL evaluates PIT on a 100-point grid
BRIER_GRID = (0.0, 3.0, 0.01)      # RAIL Brier grid: zmin, zmax, step
NMAD = 1.4826                      # MAD -> sigma for a Gaussian
IQR_TO_SIGMA = 1.349               # IQR -> sigma for a Gaussian
POINT_KEYS = ("point_bias", "point_stats_iqr", "point_stats_sigma_mad", "point_outlier_rate",
              "sigma_nmad", "catastrophic_fraction", "mean_bias", "sigma")
PDF_KEYS = ("pit_ks", "pit_cvm", "pit_ad", "pit_outlier_rate", "crps", "brier", "cde_loss")


def check_edges(bin_edges) -> np.ndarray:
    from ..errors import ConfigError
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ConfigError("bin_edges must be a 1-D, finite, strictly increasing array of at least 2 values")
    return edges


def brier_edges(grid=BRIER_GRID) -> np.ndarray:
    zmin, zmax, dz = grid
    return np.linspace(zmin, zmax, int(round((zmax - zmin) / dz)) + 1)


# ---------------------------------------------------------------- point estimates

def photoz_errors(z_phot, z_true) -> np.ndarray:
    z_phot, z_true = np.asarray(z_phot, float), np.asarray(z_true, float)
    return (z_phot - z_true) / (1.0 + z_true)


def point_metrics(z_phot, z_true) -> dict:
    ez = photoz_errors(z_phot, z_true)
    ok = np.isfinite(ez)
    ez = ez[ok]
    out = {"n": int(ez.size), "n_invalid": int((~ok).sum())}
    if ez.size == 0:
        return out | dict.fromkeys(POINT_KEYS, float("nan"))
    q25, med, q75 = np.percentile(ez, [25, 50, 75])
    sigma_iqr = (q75 - q25) / IQR_TO_SIGMA
    return out | {
        "point_bias": float(med),
        "point_stats_iqr": float(sigma_iqr),
        "point_stats_sigma_mad": float(NMAD * np.median(np.abs(ez - med))),
        "point_outlier_rate": float(np.mean(np.abs(ez) > max(POINT_OUTLIER_FLOOR, 3 * sigma_iqr))),
        "sigma_nmad": float(NMAD * np.median(np.abs(ez))),
        "catastrophic_fraction": float(np.mean(np.abs(ez) > OUTLIER_CUT)),
        "mean_bias": float(ez.mean()),
        "sigma": float(ez.std()),
    }


# ---------------------------------------------------------------- row-wise PDF kernels

def normalise_pdfs(pdfs) -> tuple[np.ndarray, np.ndarray]:
    """(rows renormalised to sum 1, validity mask); invalid rows are left as they are."""
    p = np.asarray(pdfs, dtype=np.float64)
    s = p.sum(axis=1)
    ok = np.isfinite(s) & (s > 0) & np.all(p >= 0, axis=1)
    p = p.copy()
    p[ok] /= s[ok, None]
    return p, ok


def _locate(edges, z):
    """Bin index and fractional position in it of each z (clipped to the bin range)."""
    z = np.clip(z, edges[0], edges[-1])
    k = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, edges.size - 2)
    return k, (z - edges[k]) / (edges[k + 1] - edges[k])


def cdf_at(p, edges, z) -> np.ndarray:
    """CDF of each row of p at the points z: one point per row (z shape (n,)) -> (n,)."""
    k, frac = _locate(edges, z)
    rows = np.arange(p.shape[0])
    below = np.cumsum(p, axis=1)[rows, k] - p[rows, k]
    return np.clip(below + p[rows, k] * frac, 0.0, 1.0)


def cdf_on_grid(p, edges, grid) -> np.ndarray:
    """CDF of each row of p at the shared points ``grid`` -> (n, len(grid)); 0 below, 1 above the range."""
    k, frac = _locate(edges, np.asarray(grid, float))   # clipping gives 0 below and 1 above the range
    return np.cumsum(p, axis=1)[:, k] - p[:, k] * (1.0 - frac)


def pit_values(p, edges, truth) -> np.ndarray:
    """PIT_i = CDF_i(z_true,i)."""
    return cdf_at(p, edges, truth)


def crps_values(p, edges, truth) -> np.ndarray:
    """integral over the bin range of (CDF(z) - H(z - z_true))^2, exact for the piecewise-linear CDF.

    In bin k the CDF is linear from F_lo to F_hi; splitting the bin at z_true (position s in [0, 1])
    leaves two linear pieces, and the integral of a squared linear function g over width L is
    L (g0^2 + g0 g1 + g1^2) / 3.
    """
    w = np.diff(edges)
    t = np.clip(truth, edges[0], edges[-1])[:, None]
    f_hi = np.cumsum(p, axis=1)
    f_lo = f_hi - p
    s = np.clip((t - edges[:-1]) / w, 0.0, 1.0)
    f_s = f_lo + s * p
    g_s, g_hi = f_s - 1.0, f_hi - 1.0
    left = s * (f_lo ** 2 + f_lo * f_s + f_s ** 2)
    right = (1.0 - s) * (g_s ** 2 + g_s * g_hi + g_hi ** 2)
    return (w * (left + right)).sum(axis=1) / 3.0


def brier_values(p, edges, truth, grid=BRIER_GRID) -> np.ndarray:
    """sum over the cells of the Brier grid of (probability in the cell - one-hot truth)^2."""
    g = brier_edges(grid)
    q = np.diff(cdf_on_grid(p, edges, g), axis=1)
    t = np.clip(truth, g[0], g[-1])
    j = np.clip(np.searchsorted(g, t, side="right") - 1, 0, g.size - 2)
    return (q ** 2).sum(axis=1) - 2.0 * q[np.arange(q.shape[0]), j] + 1.0


def cde_terms(p, edges, truth) -> tuple[np.ndarray, np.ndarray]:
    """(integral of the density squared, density at z_true) per row: CDE loss = mean(a) - 2 mean(b)."""
    w = np.diff(edges)
    k, _ = _locate(edges, truth)
    return (p ** 2 / w).sum(axis=1), p[np.arange(p.shape[0]), k] / w[k]


# ---------------------------------------------------------------- PIT statistics

def anderson_darling_uniform(u, eps=PIT_OUTLIER_EPS) -> float:
    """One-sample A^2 against U(0, 1) of the values clipped to [eps, 1 - eps].

    Unclipped, A^2 is dominated by the exact value of PITs like 1e-30 (catastrophic outliers), which
    is numerical noise; clipping at the PIT-outlier threshold makes it a stable statistic (the
    outliers are reported separately in ``pit_outlier_rate``).
    """
    u = np.sort(np.clip(u, eps, 1.0 - eps))
    n = u.size
    i = np.arange(1, n + 1)
    return float(-n - np.sum((2 * i - 1) * (np.log(u) + np.log1p(-u[::-1]))) / n)


def pit_statistics(pit) -> dict:
    pit = np.asarray(pit, float)
    return {
        "pit_ks": float(stats.kstest(pit, "uniform").statistic),
        "pit_cvm": float(stats.cramervonmises(pit, "uniform").statistic),
        "pit_ad": anderson_darling_uniform(pit),
        "pit_outlier_rate": float(np.mean((pit < PIT_OUTLIER_EPS) | (pit > 1.0 - PIT_OUTLIER_EPS))),
        "pit_hist": np.histogram(pit, bins=PIT_HIST_BINS, range=(0.0, 1.0))[0].tolist(),
    }


def pdf_metrics(pdfs, truth, bin_edges, brier_grid=BRIER_GRID) -> dict:
    """All PDF metrics; a row of ``pdfs`` that is NaN stands for a null PDF."""
    edges = check_edges(bin_edges)
    p, ok = normalise_pdfs(pdfs)
    truth = np.asarray(truth, float)
    ok &= np.isfinite(truth)
    p, t = p[ok], truth[ok]
    if t.size == 0:
        return ({"n": 0, "n_invalid": int(ok.size)} | dict.fromkeys(PDF_KEYS, float("nan"))
                | {"pit_hist": [0] * PIT_HIST_BINS})
    sq, at = cde_terms(p, edges, t)
    return {"n": int(ok.sum()), "n_invalid": int((~ok).sum())} | pit_statistics(pit_values(p, edges, t)) | {
        "crps": float(crps_values(p, edges, t).mean()),
        "brier": float(brier_values(p, edges, t, brier_grid).mean()),
        "cde_loss": float(sq.mean() - 2.0 * at.mean()),
    }
