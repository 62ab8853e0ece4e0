"""Photometry in, posterior summaries out, for any method: the one entry point the Spark stage, the benchmark
and the evaluation use. Objects are processed in batches of ``batch_size``; an object with no usable band gets
NaN summaries, an empty PDF and the NO_DATA flag instead of an exception.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import BayesSettings
from . import summaries as S
from .grid import grid_posterior
from .likelihood import to_fluxes
from .mcmc import run_mcmc
from .posterior import BatchPosterior, Model
from .vi import run_vi

NO_DATA = 1             # every band missing: no posterior
NOT_CONVERGED = 2       # MCMC: R-hat or ESS failed; VI: non-finite ELBO
METHODS = ("grid", "mcmc", "vi")


@dataclass
class FitResult:
    columns: dict[str, np.ndarray]          # summaries, pdf (N, K), flags, rhat, ess, elbo
    seconds: float = 0.0
    n_fitted: int = 0
    # log-posterior evaluations per object (n_evals) and refined objects (n_refined); with keep_raw also the raw
    # output kept for evaluation (cdf, samples), which costs more than the fit for amortised VI
    extra: dict = field(default_factory=dict)


def empty_columns(n: int, n_bins: int) -> dict[str, np.ndarray]:
    out = {c: np.full(n, np.nan) for c in S.COLUMNS}
    out["pdf"] = np.full((n, n_bins), np.nan, dtype=np.float32)
    out["flags"] = np.zeros(n, dtype=np.int64)
    for c in ("rhat", "ess", "elbo"):
        out[c] = np.full(n, np.nan)
    return out


def fit(model: Model, values, errors, kind: str, bands: list[str], limits: dict[str, float], method: str,
        edges: np.ndarray, keep_raw: bool = False, seed: int | None = None, vi_mode: str | None = None) -> FitResult:
    """``vi_mode``: iterative | amortised | semi-amortised (vi.py); None: ``bayes.vi_mode`` where the settings
    have it, else iterative."""
    s: BayesSettings = model.settings
    vi_mode = vi_mode or getattr(s, "vi_mode", None) or "iterative"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if list(bands) != model.grid.bands:
        raise ValueError(f"photometry bands {bands} differ from the model grid's {model.grid.bands}")
    t0 = time.perf_counter()
    data = to_fluxes(values, errors, kind, list(bands), limits, s.prior_band, s.flux_err_floor)
    n = len(data.flux)
    out = empty_columns(n, len(edges) - 1)
    out["flags"][~data.ok] |= NO_DATA
    idx_ok = np.flatnonzero(data.ok)
    gen = torch.Generator().manual_seed(s.seed if seed is None else seed)
    zg = model.grid.z
    raw: dict = {"index": idx_ok, "cdf": [], "samples": []}
    batch = getattr(s, "vi_amortised_batch_size", s.batch_size) if method == "vi" and vi_mode == "amortised" \
        else s.batch_size
    for start in range(0, len(idx_ok), batch):
        rows = idx_ok[start:start + batch]
        sub = type(data)(data.flux[rows], data.weight[rows], data.m0[rows], data.n_used[rows])
        post = BatchPosterior(model, sub)
        with torch.no_grad() if method != "vi" else torch.enable_grad():
            if method == "grid":
                res = S.from_density(zg, grid_posterior(post, s.n_interp), edges)
                if keep_raw:
                    raw["cdf"].append(res["cdf"])
            elif method == "vi":
                r = run_vi(post, s.vi_components, s.vi_steps, s.vi_samples, s.vi_lr, gen, vi_mode)
                res = S.from_logit_mixture(r.mu_z, r.sd_z, r.log_pi, model.z0, model.z_max, edges,
                                           zg if keep_raw else None)
                out["elbo"][rows] = r.elbo
                out["flags"][rows[~np.isfinite(r.elbo)]] |= NOT_CONVERGED
                raw["n_evals"] = (raw.get("n_evals", 0.0) * start + r.n_evals * len(rows)) / (start + len(rows))
                raw["n_refined"] = raw.get("n_refined", 0) + r.n_refined
                if keep_raw:
                    raw["cdf"].append(res["cdf"])
            else:
                r = run_mcmc(post, s.mcmc_walkers, s.mcmc_burn, s.mcmc_steps, gen)
                res = S.from_samples(r.z, zg, edges)
                out["rhat"][rows] = r.rhat
                out["ess"][rows] = r.ess
                bad = ~(r.rhat <= s.mcmc_rhat_max) | ~(r.ess >= s.mcmc_min_ess)
                out["flags"][rows[bad]] |= NOT_CONVERGED
                raw["n_evals"] = r.n_evals
                if keep_raw:
                    raw["samples"].append(r.z)
        for c in S.COLUMNS:
            out[c][rows] = res[c]
        out["pdf"][rows] = res["pdf"]
    if not keep_raw:
        raw = {k: raw[k] for k in ("n_evals", "n_refined") if k in raw}
    return FitResult(out, time.perf_counter() - t0, len(idx_ok), raw)
