"""The labelled set: real space-classy reflectance spectra -> synthetic LSST/SDSS reflectance magnitudes.

Source: space-classy 0.8.8 (MIT; Mahlke et al. 2022, A&A 665, A26), installed as a data package.
``classy/data/mixnorm/neighbours.csv`` holds 2,983 spectra (linear reflectance on a 0.45-2.45 um grid,
~1 at 0.55 um) joined on ``path_file`` with ``classy/data/classy/classy_data.csv`` for the labels
(``class_`` Mahlke class, ``class_previous`` literature class, ``pV``).

Band reflectance: ``R_b = int R(l) F_sun(l) T_b(l) l dl / int F_sun(l) T_b(l) l dl`` (photon-counting
filters), so ``-2.5 log10 R_b`` *is* the reflectance magnitude (asteroid minus solar). speclite carries
no solar spectrum; F_sun is a 5778 K blackbody (see ``colours.py`` for why that is adequate).

Coverage: the spectra start at 0.45 um or later and end anywhere from 0.97 to 2.45 um; LSST g reaches
down to 0.40 um and y up to 1.08 um. A band is synthesised when the part of its solar-weighted response
outside the spectrum is at most ``max_uncovered`` (default 0.30: g from a spectrum starting at 0.45 um
misses 24 %, y from one ending at 1.0 um misses 23 %); the reflectance there is extrapolated linearly
from the last 0.1 um of data (clipped to >= 0.05) and the band gets an extra error of
``extrap_err * uncovered / max_uncovered`` mag. Otherwise the band is missing (NaN) and the mixture
marginalises it. Interior gaps are bridged by linear interpolation.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CatalogError
from .colours import SPECLITE_FAMILY, lsst_mag_error, solar_mags
from .labels import to_complex, to_seven

T_SUN = 5778.0
GEO_TYPICAL = 5 * np.log10(2.65 * 1.75) + 0.04 * 13.5


def classy_data_dir() -> Path:
    spec = importlib.util.find_spec("classy")
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError("the labelled asteroid set needs space-classy: pip install --no-deps space-classy==0.8.8")
    d = Path(spec.submodule_search_locations[0]) / "data"
    for f in ("mixnorm/neighbours.csv", "classy/classy_data.csv"):
        if not (d / f).is_file():
            raise CatalogError(f"space-classy is installed but {d / f} is missing")
    return d


def load_classy_spectra(label_col: str = "class_") -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(metadata frame, wavelength grid in um (W,), reflectance (N, W) with NaN outside each spectrum)."""
    d = classy_data_dir()
    spec = pd.read_csv(d / "mixnorm" / "neighbours.csv")
    meta = pd.read_csv(d / "classy" / "classy_data.csv", usecols=["path_file", "class_", "class_previous", "pV"])
    if label_col not in meta.columns:
        raise CatalogError(f"label column {label_col!r} not in classy_data.csv; use class_ or class_previous")
    wcols = [c for c in spec.columns if _is_float(c)]
    merged = spec.merge(meta, on="path_file", how="inner", validate="one_to_one")
    wave = np.array([float(c) for c in wcols])
    refl = merged[wcols].to_numpy(np.float64)
    refl[refl <= 0] = np.nan
    out = merged[["name", "number", "path_file", "class_", "class_previous", "pV"]].copy()
    out["label"] = merged[label_col]
    out["class7"] = [to_seven(x) for x in out["label"]]
    out["complex"] = [to_complex(x) for x in out["label"]]
    return out.reset_index(drop=True), wave, refl


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _planck_photons(um: np.ndarray) -> np.ndarray:
    lam = um * 1e-6
    return 1.0 / lam ** 5 / np.expm1(6.62607015e-34 * 2.99792458e8 / (lam * 1.380649e-23 * T_SUN))


@dataclass
class BandSynthesis:
    refl_mag: np.ndarray       # (N, B) reflectance magnitudes -2.5 log10 R_b; NaN where not synthesised
    uncovered: np.ndarray      # (N, B) uncovered solar-weighted fraction of each band
    extra_err: np.ndarray      # (N, B) extrapolation error added in quadrature (mag)


def synthesise_bands(wave: np.ndarray, refl: np.ndarray, bands: list[str], system: str = "lsst",
                     max_uncovered: float = 0.30, extrap_err: float = 0.03) -> BandSynthesis:
    import speclite.filters as sf
    family = SPECLITE_FAMILY[system]
    n, nb = len(refl), len(bands)
    mags = np.full((n, nb), np.nan)
    unc = np.ones((n, nb))
    for j, b in enumerate(bands):
        f = sf.load_filter(f"{family}-{b}")
        um = np.asarray(f.wavelength) / 1e4            # speclite: Angstrom
        wgt = np.asarray(f.response) * _planck_photons(um) * um
        wgt = wgt / np.trapezoid(wgt, um)
        for i in range(n):
            ok = np.isfinite(refl[i])
            if ok.sum() < 3:
                continue
            x, y = wave[ok], refl[i, ok]
            inside = (um >= x[0]) & (um <= x[-1])
            unc[i, j] = 1.0 - np.trapezoid(np.where(inside, wgt, 0.0), um)
            if unc[i, j] > max_uncovered:
                continue
            r = np.interp(um, x, y)
            lo, hi = x <= x[0] + 0.1, x >= x[-1] - 0.1
            if (um < x[0]).any():
                s = np.polyfit(x[lo], y[lo], 1) if lo.sum() >= 2 else (0.0, y[0])
                r = np.where(um < x[0], np.polyval(s, um), r)
            if (um > x[-1]).any():
                s = np.polyfit(x[hi], y[hi], 1) if hi.sum() >= 2 else (0.0, y[-1])
                r = np.where(um > x[-1], np.polyval(s, um), r)
            rb = np.trapezoid(np.maximum(r, 0.05) * wgt, um)
            mags[i, j] = -2.5 * np.log10(rb)
    extra = np.where(np.isfinite(mags), extrap_err * np.clip(unc, 0, None) / max(max_uncovered, 1e-9), np.nan)
    return BandSynthesis(mags, unc, extra)


def labelled_set(bands: list[str], system: str = "lsst", label_col: str = "class_",
                 max_uncovered: float = 0.30) -> pd.DataFrame:
    """One row per classy spectrum with a mapped class: labels, ``refl_<b>`` (NaN = band not synthesised),
    ``extra_err_<b>``; spectra whose label maps to no class are left out (listed in labels.py)."""
    meta, wave, refl = load_classy_spectra(label_col)
    syn = synthesise_bands(wave, refl, bands, system, max_uncovered)
    out = meta.copy()
    for j, b in enumerate(bands):
        out[f"refl_{b}"] = syn.refl_mag[:, j]
        out[f"extra_err_{b}"] = syn.extra_err[:, j]
    out["n_bands"] = np.isfinite(syn.refl_mag).sum(axis=1)
    return out[out["class7"].notna()].reset_index(drop=True)


def simulate_observations(table: pd.DataFrame, bands: list[str], rng: np.random.Generator,
                          r_range: tuple[float, float] = (18.0, 22.0), mean_epochs: float = 30.0,
                          max_amplitude: float = 0.15, id_col: str = "id", system: str = "lsst") -> pd.DataFrame:
    """LSST-like multi-epoch photometry (long table) of each labelled asteroid.

    Apparent r at opposition-like geometry uniform in ``r_range``; per band a Poisson number of epochs
    (mean ``mean_epochs``, at least 1 for a synthesised band); each epoch has a rotation lightcurve
    offset (sinusoid, amplitude uniform in [0, max_amplitude]) shared by all bands, a phase angle in
    [2, 25] deg with a 0.04 mag/deg phase slope, distances r, Delta, and single-visit LSST errors.
    """
    rows = []
    n = len(table)
    rmag = rng.uniform(*r_range, n)
    amp = rng.uniform(0, max_amplitude, n)
    refl = table[[f"refl_{b}" for b in bands]].to_numpy(float)
    extra = table[[f"extra_err_{b}" for b in bands]].to_numpy(float)
    # The object's mean reflectance magnitude over its bands sets the zero point of its colours.
    ref_r = np.nansum(refl, axis=1) / np.maximum(np.isfinite(refl).sum(axis=1), 1)
    sun = solar_mags(list(bands), system)
    ids = table[id_col].to_numpy() if id_col in table else np.arange(n)
    for j, b in enumerate(bands):
        k = np.maximum(rng.poisson(mean_epochs, n), 1)
        has = np.isfinite(refl[:, j])
        # Band magnitude at unit geometry and zero phase: the object's brightness plus its colour.
        base = rmag + (refl[:, j] - ref_r) + (sun[j] - sun[list(bands).index("r")] if "r" in bands else 0)
        # The extrapolation error is a per-object systematic: one draw, shared by all epochs of the band.
        base = base + rng.standard_normal(n) * np.nan_to_num(extra[:, j])
        idx = np.repeat(np.nonzero(has)[0], k[has])
        m_true = base[idx]
        phase = rng.uniform(2, 25, len(idx))
        rh = rng.uniform(2.0, 3.3, len(idx))
        delta = np.maximum(rh - 1.0 + rng.uniform(-0.1, 0.3, len(idx)), 0.9)
        light = amp[idx] * np.sin(rng.uniform(0, 2 * np.pi, len(idx)))
        geo = 5 * np.log10(rh * delta) + 0.04 * phase
        # Centre the geometry term so that apparent magnitudes, hence errors, follow ``r_range``.
        m_obs_true = m_true + geo - GEO_TYPICAL + light
        err = lsst_mag_error(m_obs_true, b)
        rows.append(pd.DataFrame({id_col: ids[idx], "band": b, "mag": m_obs_true + rng.standard_normal(len(idx)) * err,
                                  "mag_err": err, "r_au": rh, "delta_au": delta, "phase_deg": phase}))
    return pd.concat(rows, ignore_index=True)
