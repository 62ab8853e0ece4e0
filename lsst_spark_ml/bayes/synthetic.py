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
    z = np.clip(z, model.z0, model.z_max)
    t = np.clip(t, 0, model.t_max)
    shape = model.model_flux(torch.as_tensor(z), torch.as_tensor(t)).numpy()          # unit prior-band flux
    true = shape * mag_to_njy(m0)[:, None]
    sigma = mag_to_njy([DEPTH_5SIGMA.get(b, 25.0) for b in bands])[None, :] / 5.0
    sigma = np.sqrt(sigma ** 2 + (0.01 * true) ** 2)
    flux = true + rng.normal(size=true.shape) * sigma
    return flux, np.broadcast_to(sigma, flux.shape).copy(), z, t
