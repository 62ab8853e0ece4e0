"""The curriculum's difficulty measure: a galaxy's signal-to-noise ratio inside its object mask.

Why S/N: the survey set differs from the labelled one by being fainter, smaller and blurrier, and all three
lower the S/N a classifier has to work with; the measure needs no model (so it cannot be fooled by a model's
own confident mistakes, the known failure of confidence-ordered self-training) and is computed once, where the
inputs are built. Difficulty is ``-log10(S/N)``: larger is harder.
"""
from __future__ import annotations

import numpy as np

from .colours import mask_photometry


def image_snr(bands: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """S/N of the summed flux of all bands inside the object mask.

    ``bands`` (n, B, H, W) in any linear flux unit (NaN = missing), ``object_mask`` (n, H, W) bool-like. Noise
    per band: 1.4826 x the median absolute deviation of the finite pixels outside the mask. An empty mask, or
    an image with no usable pixels, gives S/N 0 (the hardest).
    """
    return snr_from_photometry(*mask_photometry(bands, object_mask))


def snr_from_photometry(flux: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``image_snr`` from ``colours.mask_photometry``'s (flux, variance): the bands it could measure, summed."""
    ok = np.isfinite(flux)
    signal = np.where(ok, flux, 0.0).sum(1)
    noise_var = np.where(ok, var, 0.0).sum(1)
    return np.where(noise_var > 0, signal / np.sqrt(np.where(noise_var > 0, noise_var, 1.0)), 0.0)


def difficulty(snr: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(np.asarray(snr, dtype=np.float64), 1e-3, None))
