"""The curriculum's difficulty measure: a galaxy's signal-to-noise ratio inside its object mask.

Why S/N: the survey set differs from the labelled one by being fainter, smaller and blurrier, and all three
lower the S/N a classifier has to work with; the measure needs no model (so it cannot be fooled by a model's
own confident mistakes, the known failure of confidence-ordered self-training) and is computed once, where the
inputs are built. Difficulty is ``-log10(S/N)``: larger is harder.
"""
from __future__ import annotations

import numpy as np


def image_snr(bands: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """S/N of the summed flux of all bands inside the object mask.

    ``bands`` (n, B, H, W) in any linear flux unit (NaN = missing), ``object_mask`` (n, H, W) bool-like. Noise
    per band: 1.4826 x the median absolute deviation of the finite pixels outside the mask. An empty mask, or
    an image with no usable pixels, gives S/N 0 (the hardest).
    """
    bands = np.asarray(bands, dtype=np.float32)
    mask = np.asarray(object_mask) > 0.5
    n = bands.shape[0]
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        m = mask[i]
        if not m.any():
            continue
        signal, var = 0.0, 0.0
        for b in bands[i]:
            finite = np.isfinite(b)
            sky = b[finite & ~m]
            inside = b[finite & m]
            if sky.size < 10 or inside.size == 0:
                continue
            sigma = 1.4826 * np.median(np.abs(sky - np.median(sky)))
            signal += float(inside.sum() - np.median(sky) * inside.size)
            var += inside.size * float(sigma) ** 2
        out[i] = signal / np.sqrt(var) if var > 0 else 0.0
    return out


def difficulty(snr: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(np.asarray(snr, dtype=np.float64), 1e-3, None))
