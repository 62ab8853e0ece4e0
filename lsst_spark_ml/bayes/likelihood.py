"""Catalog photometry -> fluxes with errors, and the Gaussian flux likelihood with the amplitude integrated out.

Why fluxes: a non-detection is a measured flux near zero with a known error, which a Gaussian in flux space
treats correctly (it penalises models brighter than the limit), while a magnitude of 99 is not a measurement.
DESC magnitudes (99 or NaN for non-detections, as in cosmoDC2) become F = 0 +- the band's 1-sigma limiting
flux; a band with no value at all (NaN flux, NaN magnitude with no error) gets zero weight.

Likelihood of fluxes F_b (errors s_b) for a model m_b(z, t) scaled by an amplitude A >= 0 with a flat prior
(A is the prior band's flux, since the model is normalised there):
    p(F | z, t) = int_0^inf exp(-chi2(A)/2) dA = exp(-(c - b^2/a)/2) sqrt(2 pi / a) Phi(b / sqrt(a)),
    a = sum m^2/s^2, b = sum F m/s^2, c = sum F^2/s^2.
Integrating A exactly keeps the sampled space two-dimensional (z, t), which both samplers and the grid share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..features.photometry import AB_ZEROPOINT_NJY, MAG_ERR_PER_FRAC, SENTINEL_MAG


@dataclass
class FluxData:
    flux: np.ndarray        # (N, B) nJy, 0 for a non-detection
    weight: np.ndarray      # (N, B) 1/sigma^2, 0 where the band is missing
    m0: np.ndarray          # (N,) prior-band magnitude (its limit when not detected)
    n_used: np.ndarray      # (N,) bands with weight

    @property
    def ok(self) -> np.ndarray:
        return self.n_used > 0


def mag_to_njy(m):
    return 10.0 ** (-0.4 * (np.asarray(m, dtype=np.float64) - AB_ZEROPOINT_NJY))


def to_fluxes(values, errors, kind: str, bands: list[str], limits: dict[str, float], prior_band: str,
              err_floor: float = 0.0) -> FluxData:
    values = np.asarray(values, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    lim_flux = mag_to_njy([limits[b] for b in bands])[None, :]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if kind == "mag":
            nondet = np.isfinite(values) & (np.abs(values) >= SENTINEL_MAG)
            good = np.isfinite(values) & ~nondet & np.isfinite(errors) & (errors > 0)
            f = np.where(good, mag_to_njy(values), 0.0)
            s = np.where(good, f * errors / MAG_ERR_PER_FRAC, np.where(nondet, lim_flux, np.inf))
        elif kind == "flux":
            good = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
            f = np.where(good, values, 0.0)
            s = np.where(good, errors, np.inf)
        else:
            raise ValueError(f"photometry kind must be 'flux' or 'mag', got {kind!r}")
        s = np.sqrt(s ** 2 + (err_floor * np.maximum(f, 0.0)) ** 2)
        w = np.where(np.isfinite(s) & (s > 0), 1.0 / s ** 2, 0.0)
        r = bands.index(prior_band)
        fr, sr = f[:, r], s[:, r]
        detected = (w[:, r] > 0) & (fr > sr)
        m0 = np.where(detected, AB_ZEROPOINT_NJY - 2.5 * np.log10(np.where(detected, fr, 1.0)), limits[prior_band])
    return FluxData(f, w, m0, (w > 0).sum(axis=1))


def log_like_abc(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    a = torch.clamp(a, min=1e-300)
    return -0.5 * (c - b * b / a) + 0.5 * torch.log(2 * math.pi / a) + torch.special.log_ndtr(b / torch.sqrt(a))


def log_like(model: torch.Tensor, flux: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """model (N, P, B), flux and weight (N, B) -> log p(F | z, t) (N, P)."""
    w = weight[:, None, :]
    a = (w * model * model).sum(-1)
    b = ((w * flux[:, None, :]) * model).sum(-1)
    c = (weight * flux * flux).sum(-1, keepdim=True)
    return log_like_abc(a, b, c)
