"""Per-object quality bits of the ``flags`` column. One documented policy, shared by training and inference.

Bit layout (int64), ``k`` the band's position in the model's band set (at most 8 bands):

===========  ==================  =====================================================================
bits         name                meaning
===========  ==================  =====================================================================
0 + k        NONDETECT           flux <= 0, magnitude sentinel (|m| >= 90, e.g. 99), or S/N < 1:
                                 the band is replaced by its 1-sigma limit with a large error
8 + k        MISSING             value NaN or inf (not measured): replaced like a non-detection
16 + k       BAD_ERROR           error NaN, inf or <= 0 with a usable value: error set to the cap
24           NO_ESTIMATE         fewer than ``min_detected_bands`` detected bands: outputs are null
25           OUT_OF_RANGE        a scaled feature lies beyond [-2, 2] (the training 0.5-99.5 percentile
                                 span maps to [-1, 1]); the feature is clipped there
26           BAD_EBV             E(B-V) NaN, inf or negative: set to 0
===========  ==================  =====================================================================
"""
from __future__ import annotations

import numpy as np

MAX_BANDS = 8
NONDETECT_SHIFT = 0
MISSING_SHIFT = 8
BAD_ERROR_SHIFT = 16
NO_ESTIMATE = np.int64(1 << 24)
OUT_OF_RANGE = np.int64(1 << 25)
BAD_EBV = np.int64(1 << 26)


def band_bits(mask: np.ndarray, shift: int) -> np.ndarray:
    """(N, B) boolean -> (N,) int64 with bit ``shift + k`` set where band k is True."""
    weights = np.left_shift(np.int64(1), np.arange(mask.shape[1], dtype=np.int64) + shift)
    return (mask.astype(np.int64) * weights).sum(axis=1)


def describe(value: int, bands: list[str]) -> list[str]:
    """Human-readable names of the bits set in one ``flags`` value."""
    out = []
    for k, b in enumerate(bands):
        for shift, name in ((NONDETECT_SHIFT, "NONDETECT"), (MISSING_SHIFT, "MISSING"), (BAD_ERROR_SHIFT, "BAD_ERROR")):
            if value >> (shift + k) & 1:
                out.append(f"{name}_{b}")
    for bit, name in ((NO_ESTIMATE, "NO_ESTIMATE"), (OUT_OF_RANGE, "OUT_OF_RANGE"), (BAD_EBV, "BAD_EBV")):
        if value & int(bit):
            out.append(name)
    return out
