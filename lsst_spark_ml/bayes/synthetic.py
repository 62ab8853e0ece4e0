"""Objects drawn from the Bayesian model itself (prior, templates, noise): the truth the samplers are tested on.

Magnitudes in the prior band are uniform in [mag_min, mag_max]; (z, t) come from the BPZ prior at that
magnitude (the continuous template coordinate included); fluxes get Gaussian noise with a constant 5-sigma
depth per band, LSST-10-year-like, so faint bands include true non-detections measured as ~0 +- sigma.
"""
from __future__ import annotations

import numpy as np
import torch

from .likelihood import mag_to_njy
from .posterior import Model

# 5-sigma point-source depths (LSST 10-year, Ivezic et al. 2019), mag AB.
DEPTH_5SIGMA = {"u": 25.6, "g": 26.9, "r": 26.9, "i": 26.4, "z": 25.6, "y": 24.8}


def draw_objects(model: Model, n: int, seed: int = 0, mag_min: float = 20.0, mag_max: float = 24.5):
    """-> (fluxes (n, B) nJy, errors (n, B), true z (n,), true t (n,))."""
    rng = np.random.default_rng(seed)
    bands = model.grid.bands
    m0 = rng.uniform(mag_min, mag_max, n)
    z, t, true = _draw_truth(model, m0, rng, seed)
    sigma = mag_to_njy([DEPTH_5SIGMA.get(b, 25.0) for b in bands])[None, :] / 5.0
    sigma = np.sqrt(sigma ** 2 + (0.01 * true) ** 2)
    flux = true + rng.normal(size=true.shape) * sigma
    return flux, np.broadcast_to(sigma, flux.shape).copy(), z, t


def draw_training(model: Model, n: int, seed: int, mag_min: float = 19.0, mag_max: float = 25.5,
                  depth_jitter: float = 0.5, p_missing: float = 0.03, err_floor: float | None = None):
    """Objects for training the amortised VI network: as ``draw_objects`` over a wider magnitude range, with each
    object's 5-sigma depths moved by N(0, depth_jitter) mag per band and each band missing (NaN) with
    probability ``p_missing`` (never all of them), so the network sees the variety of real catalogs' errors; the
    noise includes the model's fractional error floor (bayes.flux_err_floor), the reported errors do not.
    -> (fluxes, errors, true z, true t)."""
    rng = np.random.default_rng(seed)
    bands = model.grid.bands
    err_floor = model.settings.flux_err_floor if err_floor is None else err_floor
    m0 = rng.uniform(mag_min, mag_max, n)
    z, t, true = _draw_prior_exact(model, m0, rng)
    depth = np.array([DEPTH_5SIGMA.get(b, 25.0) for b in bands])[None, :] + rng.normal(0, depth_jitter, true.shape)
    sigma = np.sqrt((mag_to_njy(depth) / 5.0) ** 2 + (0.01 * true) ** 2)
    # The noise the model's likelihood assumes: the reported error plus the error floor it adds (likelihood.py),
    # so that the simulator's posterior is (nearly) the model's and the network's first stage learns the latter.
    noise = np.sqrt(sigma ** 2 + (err_floor * true) ** 2)
    flux = true + rng.normal(size=true.shape) * noise
    missing = rng.uniform(size=true.shape) < p_missing
    missing[missing.all(axis=1)] = False
    return np.where(missing, np.nan, flux), np.where(missing, np.nan, sigma), z, t


def _draw_truth(model: Model, m0: np.ndarray, rng: np.random.Generator, seed: int):
    n = len(m0)
    # Rejection sampling of p(z, t | m0) against a uniform box, vectorised over objects.
    prior = model.prior
    terms = prior.object_terms(m0)
    zg = torch.as_tensor(model.grid.z[::5])
    tg = torch.linspace(0, model.t_max, 4 * model.nt, dtype=torch.float64)
    zz, tt = torch.meshgrid(zg, tg, indexing="ij")
    lp = prior.log_prob(terms, zz.reshape(1, -1).expand(n, -1).contiguous(),
                        tt.reshape(1, -1).expand(n, -1).contiguous())
    cell = torch.multinomial(torch.softmax(lp, 1), 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    z = (zz.reshape(-1)[cell]).numpy() + rng.uniform(-0.5, 0.5, n) * float(zg[1] - zg[0])
    t = (tt.reshape(-1)[cell]).numpy() + rng.uniform(-0.5, 0.5, n) * float(tg[1] - tg[0])
    return _with_fluxes(model, z, t, m0)


def _draw_prior_exact(model: Model, m0: np.ndarray, rng: np.random.Generator):
    """(z, t) drawn exactly from the continuous prior p(z, t | m0) (no cells), fast enough for 10^5 objects.

    On segment j the prior is (1 - w) P_j p_j(z) + w P_{j+1} p_{j+1}(z), w = t - j (prior.py): a mixture of
    "template j, t density 2(1 - w)" with mass P_j / 2 and "template j + 1, t density 2w" with mass P_{j+1} / 2,
    with z from that template's class density (inverse CDF on the prior's normalisation grid)."""
    n, prior = len(m0), model.prior
    if prior.kind == "flat":
        z = rng.uniform(model.z0, model.z_max, n)
        t = rng.uniform(0, model.t_max, n)
    else:
        terms = prior.object_terms(m0)
        pt = torch.exp(terms["log_pt"]).numpy()
        w = np.concatenate([pt[:, :-1], pt[:, 1:]], axis=1)
        cum = np.cumsum(w / w.sum(1, keepdims=True), axis=1)
        choice = np.minimum((cum < rng.uniform(size=(n, 1))).sum(1), cum.shape[1] - 1)
        seg, right = choice % (model.nt - 1), choice >= model.nt - 1
        u = np.sqrt(rng.uniform(size=n))
        t = seg + np.where(right, u, 1.0 - u)
        cls = prior.cls_index.numpy()[seg + right]
        a = prior.alpha.numpy()[cls][:, None]
        zm = terms["zm"].numpy()[np.arange(n), cls][:, None]
        zn = prior._zn.numpy()[::4]
        cdf = np.cumsum(np.exp(a * np.log(zn[None]) - (zn[None] / zm) ** a), axis=1)
        cdf /= cdf[:, -1:]
        q = rng.uniform(size=(n, 1))
        k = np.clip((cdf < q).sum(1), 1, len(zn) - 1)
        c0, c1 = cdf[np.arange(n), k - 1], cdf[np.arange(n), k]
        f = np.clip((q[:, 0] - c0) / np.maximum(c1 - c0, 1e-300), 0, 1)
        z = zn[k - 1] + f * (zn[k] - zn[k - 1])
    return _with_fluxes(model, z, t, m0)


def _with_fluxes(model: Model, z: np.ndarray, t: np.ndarray, m0: np.ndarray):
    """(z, t) clipped into the model's support -> (z, t, true fluxes at prior-band magnitude m0)."""
    z = np.clip(z, model.z0, model.z_max)
    t = np.clip(t, 0, model.t_max)
    shape = model.model_flux(torch.as_tensor(z), torch.as_tensor(t)).numpy()          # unit prior-band flux
    return z, t, shape * mag_to_njy(m0)[:, None]
