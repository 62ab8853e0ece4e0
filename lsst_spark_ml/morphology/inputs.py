"""From 5 band cutouts (g r i z y) to the 11-channel morphology input, with per-row flags.

Channel order of ``build_input``: the 5 normalised bands, the object mask, the 5 NaN masks (Kang et al.
2022). Masks are taken from the raw bands (see ``masks``), then the bands are normalised and their missing
pixels set to 0, so the network sees "no data" only through the NaN masks.

Normalisation (``normalise``): ``arcsinh(x / sigma)`` per band, with sigma a robust estimate of the pixel
noise: 1.4826 x the median absolute deviation of horizontal first differences / sqrt(2), over ~64 evenly
spaced rows. Differencing
removes smooth galaxy light, so the estimate is set by the sky even when the galaxy fills the stamp, where
the MAD of the pixels themselves would not be. The stretch is linear (noise ~ unit variance) up to a few
sigma and logarithmic above, so a 10^4-sigma core becomes ~10: the high dynamic range fits a float input and
faint arms stay visible; dividing by each stamp's own noise also removes most of the depth difference
between the labelled and survey domains. Cutouts are taken to be sky-subtracted (as LSST cutouts are); a
known residual background can be passed as ``background``. No sigma (constant band, < 2 finite neighbours):
the std of the finite pixels, else 1.

Flags (``build_inputs``; bits, OR-ed):

* ``BAD_SHAPE`` (1): not (5, S, S) with S the expected size (or the size of the first good row), not
  square, or not convertible to float.
* ``MISSING_BAND`` (2): the row, or one of its bands, is absent (None / null), or it has fewer than 5 bands.
* ``ALL_NAN_BAND`` (4): a band has no finite pixel.
* ``NO_OBJECT`` (8): the object mask is empty (nothing above the background near the centre).
* ``BAD_DTYPE`` (16): the stored dtype is not float16/float32 (set by ``cutouts.decode_cutouts``).

Rows with any of ``BAD_ROW`` = BAD_SHAPE | MISSING_BAND | ALL_NAN_BAND | BAD_DTYPE get an all-zero tensor.
``NO_OBJECT`` is informational: the tensor is still built (a faint galaxy can still be classified, and a
caller may drop or keep it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .masks import nan_masks, object_mask, object_masks_batch

N_BANDS = 5
N_CHANNELS = 11
BAD_SHAPE = 1
MISSING_BAND = 2
ALL_NAN_BAND = 4
NO_OBJECT = 8
BAD_DTYPE = 16
BAD_ROW = BAD_SHAPE | MISSING_BAND | ALL_NAN_BAND | BAD_DTYPE
INPUT_FLAGS = {"BAD_SHAPE": BAD_SHAPE, "MISSING_BAND": MISSING_BAND, "ALL_NAN_BAND": ALL_NAN_BAND,
               "NO_OBJECT": NO_OBJECT, "BAD_DTYPE": BAD_DTYPE}
MASK_SEED = 0


def describe_flags(flags: int) -> list[str]:
    """Names of the bits set in ``flags``."""
    return [name for name, bit in INPUT_FLAGS.items() if int(flags) & bit]


def noise_sigma(band: np.ndarray) -> float:
    """Robust per-pixel noise of one band from horizontal first differences (see the module docstring)."""
    step = max(1, band.shape[0] // 64)   # ~64 rows of differences are plenty for a median, at any size
    d = np.diff(band[::step], axis=-1).ravel()
    d = d[np.isfinite(d)]
    if d.size >= 2:
        mad = float(np.median(np.abs(d - np.median(d))))
        if mad > 0:
            return 1.4826 * mad / np.sqrt(2.0)
    v = band[np.isfinite(band)]
    sd = float(v.std()) if v.size >= 2 else 0.0
    return sd if sd > 0 else 1.0


def normalise(bands: np.ndarray, background: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """float32 (B, H, W): ``arcsinh((x - background) / sigma)`` per band, missing pixels (NaN, inf) -> 0."""
    x = np.asarray(bands, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    for b in range(x.shape[0]):
        band = np.where(np.isfinite(x[b]), x[b], np.float32(np.nan))
        if background is not None:
            band = band - np.float32(background[b])
        sigma = np.float32(noise_sigma(band))
        y = np.arcsinh(band / sigma)
        out[b] = np.where(np.isfinite(y), y, np.float32(0.0))
    return out


def build_input(bands: np.ndarray, mask: np.ndarray | None = None, rng=MASK_SEED) -> np.ndarray:
    """float32 (11, H, W) from a good (5, H, W) cutout: 5 normalised bands, object mask, 5 NaN masks.

    ``mask`` skips the object-mask fit (e.g. one cached from an earlier epoch); ``rng`` seeds the mixture
    fits, a fixed seed by default so a cutout always gets the same mask wherever it is processed.
    """
    x = np.asarray(bands, dtype=np.float32)
    nans = nan_masks(x)
    obj = object_mask(np.where(nans > 0, np.float32(np.nan), x), rng=rng) if mask is None else np.asarray(mask, bool)
    out = np.empty((N_CHANNELS,) + x.shape[1:], dtype=np.float32)
    out[:N_BANDS] = normalise(x)
    out[N_BANDS] = obj
    out[N_BANDS + 1:] = nans
    return out


def _as_row(row, size: int | None) -> tuple[np.ndarray | None, int]:
    """(float32 (5, S, S) array or None, flags) for one row; never raises."""
    if row is None:
        return None, MISSING_BAND
    if isinstance(row, (list, tuple)):
        if len(row) < N_BANDS or any(b is None for b in row):
            return None, MISSING_BAND
        if len(row) > N_BANDS:
            return None, BAD_SHAPE
        try:
            parts = [np.asarray(b, dtype=np.float32) for b in row]
        except (TypeError, ValueError):
            return None, BAD_SHAPE
        if any(p.shape != parts[0].shape or p.ndim != 2 for p in parts):
            return None, BAD_SHAPE
        arr = np.stack(parts)
    else:
        try:
            arr = np.asarray(row, dtype=np.float32)
        except (TypeError, ValueError):
            return None, BAD_SHAPE
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or (size is not None and arr.shape[1] != size):
        return None, BAD_SHAPE
    if arr.shape[0] != N_BANDS:
        return None, MISSING_BAND if arr.shape[0] < N_BANDS else BAD_SHAPE
    return arr, 0


def build_inputs(batch, expected_size: int | None = None, masks: np.ndarray | None = None,
                 flags_in: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (n, 11, S, S), int32 flags (n,)) for a batch; never raises on a bad row.

    ``batch``: an array (n, 5, S, S), or a sequence whose rows are None, an array, or a sequence of 5 band
    arrays (any of them None). ``expected_size`` S; None takes the size of the first well-formed row (and
    (n, 11, 0, 0) if there is none). ``masks`` (n, S, S), optional: precomputed object masks.
    ``flags_in`` (n,), optional: flags from decoding, OR-ed in; rows already bad are not processed.
    """
    rows = list(batch) if not isinstance(batch, np.ndarray) else batch
    n = len(rows)
    flags = np.zeros(n, dtype=np.int32) if flags_in is None else np.asarray(flags_in, np.int32).copy()
    size = expected_size
    parsed: list[np.ndarray | None] = []
    for i in range(n):
        if flags[i] & BAD_ROW:
            parsed.append(None)
            continue
        arr, f = _as_row(rows[i], size)
        flags[i] |= f
        parsed.append(arr)
        if arr is not None and size is None:
            size = arr.shape[1]
    size = 0 if size is None else int(size)
    out = np.zeros((n, N_CHANNELS, size, size), dtype=np.float32)
    good = []
    for i, arr in enumerate(parsed):
        if arr is None or flags[i] & BAD_ROW:
            continue
        finite_any = np.isfinite(arr).reshape(N_BANDS, -1).any(axis=1)
        if not finite_any.all():
            flags[i] |= ALL_NAN_BAND
            continue
        good.append(i)
    if masks is None and good:
        # One batched fit for all rows, the masks build_input would make one by one (MASK_SEED per row).
        masks = dict(zip(good, object_masks_batch(np.stack([parsed[i] for i in good]), rng=MASK_SEED)))
    for i in good:
        x = build_input(parsed[i], mask=None if masks is None else masks[i])
        if not x[N_BANDS].any():
            flags[i] |= NO_OBJECT
        out[i] = x
    return out, flags


def object_masks(batch: np.ndarray) -> np.ndarray:
    """bool (n, S, S) object masks of a good batch (n, 5, S, S), to cache across epochs: the mixture fits
    are most of the cost of ``build_inputs``."""
    return object_masks_batch(np.asarray(batch, np.float32), rng=MASK_SEED) if len(batch) \
        else np.zeros((0,) + tuple(np.shape(batch)[2:]), dtype=bool)


__all__ = ["ALL_NAN_BAND", "BAD_DTYPE", "BAD_ROW", "BAD_SHAPE", "INPUT_FLAGS", "MISSING_BAND", "NO_OBJECT",
           "build_input", "build_inputs", "describe_flags", "noise_sigma", "normalise", "object_masks"]
