"""Photometry (nJy fluxes or AB magnitudes) -> photo-z features: adjacent colours with propagated errors,
an optional reference magnitude and E(B-V). Pure numpy: the same code runs in training and in every UDF.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import FeatureSettings
from . import flags as F

AB_ZEROPOINT_NJY = 31.4                 # m_AB = -2.5 log10(f / nJy) + 31.4
MAG_ERR_PER_FRAC = 2.5 / np.log(10.0)   # sigma_m = 1.0857 sigma_f / f
SENTINEL_MAG = 90.0                     # |m| >= 90 marks a non-detection (99 in DESC files)
SNR_DETECTED = 1.0


@dataclass
class Photometry:
    mag: np.ndarray      # (N, B) AB magnitudes after the non-detection policy
    mag_err: np.ndarray  # (N, B)
    flags: np.ndarray    # (N,) int64
    detected: np.ndarray  # (N, B) bool


def to_magnitudes(values: np.ndarray, errors: np.ndarray, kind: str, bands: list[str],
                  fs: FeatureSettings) -> Photometry:
    """Apply the non-detection policy of ``features.flags`` and return magnitudes with errors."""
    values = np.asarray(values, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        missing = ~np.isfinite(values)
        if kind == "flux":
            nondetect = ~missing & (values <= 0)
            mag = -2.5 * np.log10(np.where(values > 0, values, 1.0)) + AB_ZEROPOINT_NJY
            err = MAG_ERR_PER_FRAC * errors / np.where(values > 0, values, 1.0)
        elif kind == "mag":
            nondetect = ~missing & (np.abs(values) >= SENTINEL_MAG)
            mag, err = values.copy(), errors.copy()
        else:
            raise ValueError(f"photometry kind must be 'flux' or 'mag', got {kind!r}")
        bad_err = ~missing & ~nondetect & ~(np.isfinite(err) & (err > 0))
        # S/N < 1 carries no colour information worth more than the limit itself.
        low_snr = ~missing & ~nondetect & ~bad_err & (err > MAG_ERR_PER_FRAC / SNR_DETECTED)
        nondetect |= low_snr
    limits = np.array([fs.nondetect_limits[b] for b in bands], dtype=np.float64)
    replace = missing | nondetect
    mag = np.where(replace, limits, mag)
    # Fainter than the 1-sigma depth is not a measurement the network can use: clip to the limit.
    mag = np.minimum(mag, limits)
    err = np.where(replace, fs.nondetect_mag_err, np.where(bad_err, fs.max_mag_err, err))
    err = np.minimum(err, fs.max_mag_err)
    flags = (F.band_bits(nondetect, F.NONDETECT_SHIFT) | F.band_bits(missing, F.MISSING_SHIFT)
             | F.band_bits(bad_err, F.BAD_ERROR_SHIFT))
    detected = ~replace
    flags = np.where(detected.sum(axis=1) < fs.min_detected_bands, flags | F.NO_ESTIMATE, flags)
    return Photometry(mag, err, flags.astype(np.int64), detected)


def feature_names(bands: list[str], fs: FeatureSettings) -> list[str]:
    names = [f"{a}-{b}" for a, b in zip(bands[:-1], bands[1:])]
    names += [f"log10 err({a}-{b})" for a, b in zip(bands[:-1], bands[1:])]
    if fs.reference_band is not None:
        names.append(f"mag_{fs.reference_band}")
    if fs.use_ebv:
        names.append("ebv")
    return names


def colour_features(phot: Photometry, bands: list[str], fs: FeatureSettings,
                    ebv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (X float32 (N, F), flags (N,) int64) with the colour, error, reference-mag and E(B-V) features."""
    m, e = phot.mag, phot.mag_err
    # Colour errors span three decades (0.007 to 1.4 mag): their logarithm keeps them on one scale.
    cols = [m[:, :-1] - m[:, 1:], np.log10(np.sqrt(e[:, :-1] ** 2 + e[:, 1:] ** 2))]
    if fs.reference_band is not None:
        cols.append(m[:, [bands.index(fs.reference_band)]])
    flags = phot.flags.copy()
    if fs.use_ebv:
        if ebv is None:
            raise ValueError("features.use_ebv is set but no E(B-V) values were given")
        ebv = np.asarray(ebv, dtype=np.float64)
        bad = ~np.isfinite(ebv) | (ebv < 0)
        flags = np.where(bad, flags | F.BAD_EBV, flags)
        cols.append(np.where(bad, 0.0, ebv)[:, None])
    return np.concatenate(cols, axis=1).astype(np.float32), flags


def build_features(values, errors, kind: str, bands: list[str], fs: FeatureSettings,
                   ebv=None) -> tuple[np.ndarray, np.ndarray, Photometry]:
    phot = to_magnitudes(values, errors, kind, bands, fs)
    X, flags = colour_features(phot, bands, fs, ebv)
    return X, flags, phot
