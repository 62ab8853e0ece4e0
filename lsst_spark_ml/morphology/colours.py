"""Galaxy colours measured on the cutouts, and the colour shift between the labelled set and the survey.

Why: the strong view's redshift colour shift (``augment.redshift_colours``) defaults to the mean k-correction
of the CWW templates between z = 0.07 and 0.30, which on the rendered sets is the truth itself (the renderer
draws its colours from the same templates). On survey data nobody knows the right vector in advance, but the
unlabelled table holds it: ``measured_shift`` compares the median colours of the labelled rows with those of
the survey rows, so the augmentation is calibrated on the unlabelled majority instead of on a model of it.
Medians, because survey galaxies are faint and their colours noisy; adjacent-band colours, because a colour
needs no absolute calibration beyond a common zero point (Rubin's catalogs are in nJy in every band). A
difference in class mix between the two sets also moves the medians: the measured shift is the whole colour
difference, redshift and population together.
"""
from __future__ import annotations

import numpy as np


def mask_photometry(bands: np.ndarray, object_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aperture photometry in the object mask: (flux, variance), each (n, B), from ``bands`` (n, B, H, W, linear
    flux, NaN = missing) and ``object_mask`` (n, H, W). Flux: the sky-subtracted sum inside the mask (sky = the
    median of the finite pixels outside it); variance: the pixels inside times the sky sigma squared (1.4826 x
    the MAD outside). NaN where the mask is empty or a band has fewer than 10 sky pixels. One pass serves both
    the colours here and the curriculum's S/N (``difficulty.image_snr``)."""
    bands = np.asarray(bands, dtype=np.float32)
    mask = np.asarray(object_mask) > 0.5
    n, nb = bands.shape[:2]
    flux, var = np.full((n, nb), np.nan), np.full((n, nb), np.nan)
    for i in range(n):
        m = mask[i]
        if not m.any():
            continue
        for b in range(nb):
            img = bands[i, b]
            finite = np.isfinite(img)
            sky, inside = img[finite & ~m], img[finite & m]
            if sky.size >= 10 and inside.size:
                sky_level = np.median(sky)
                flux[i, b] = float(inside.sum() - sky_level * inside.size)
                var[i, b] = inside.size * float(1.4826 * np.median(np.abs(sky - sky_level))) ** 2
    return flux, var


def mask_fluxes(bands: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """The flux half of ``mask_photometry``."""
    return mask_photometry(bands, object_mask)[0]


def median_colours(fluxes: np.ndarray) -> np.ndarray:
    """Median of each adjacent-band colour (mag), (B - 1,), over the rows where both fluxes are positive."""
    f = np.asarray(fluxes, dtype=np.float64)
    out = np.full(f.shape[1] - 1, np.nan)
    for k in range(f.shape[1] - 1):
        ok = (f[:, k] > 0) & (f[:, k + 1] > 0)
        if ok.any():
            out[k] = np.median(-2.5 * np.log10(f[ok, k] / f[ok, k + 1]))
    return out


def measured_shift(labelled_fluxes: np.ndarray, survey_fluxes: np.ndarray, fixed_band: int = 1,
                   min_rows: int = 20) -> tuple[float, ...]:
    """Per-band magnitude change (``fixed_band``, r, held at 0) that moves the labelled rows' median colours onto
    the survey rows'. Raises ValueError when either set has fewer than ``min_rows`` rows with usable fluxes."""
    for name, f in (("labelled", labelled_fluxes), ("survey", survey_fluxes)):
        usable = int((np.asarray(f) > 0).all(1).sum())
        if usable < min_rows:
            raise ValueError(f"{usable} {name} rows with a positive flux in every band, {min_rows} needed to "
                             "measure the colour shift")
    d_colour = median_colours(survey_fluxes) - median_colours(labelled_fluxes)   # colour k = m_k - m_(k+1)
    mags = np.zeros(len(d_colour) + 1)
    for k in range(fixed_band - 1, -1, -1):          # bluer bands: m_k = m_(k+1) + colour_k
        mags[k] = mags[k + 1] + d_colour[k]
    for k in range(fixed_band + 1, len(mags)):       # redder bands: m_k = m_(k-1) - colour_(k-1)
        mags[k] = mags[k - 1] - d_colour[k - 1]
    return tuple(float(round(v, 4)) for v in mags)
