"""Labelled out-of-distribution (LOOD) evaluation set: synthetic stars, quasars and high-z galaxies.

Lee & Shin (2022) evaluate the DCP score on labelled objects that are not training-like galaxies. No such
photometry ships offline, so it is synthesised here through the LSST total-throughput curves (speclite
``lsst2023-*``) in the cosmoDC2 layout of ``io.datasets.dc2_paths()``:

* ``star``: Planck blackbodies, Teff 3,000-30,000 K. No stellar spectral library is installed (galsim is not
  in the environment, speclite and pz-rail-base ship none), so molecular bands of M dwarfs and the Balmer jump
  of A stars are missing: the synthetic locus is smoother than the real one.
* ``quasar``: f_nu ~ nu^alpha, alpha ~ N(-0.5, 0.3), plus the six strongest broad lines of the Vanden Berk
  et al. (2001, AJ 122, 549; table 2) SDSS composite, Gaussian, FWHM 4,000 km/s, z uniform in 0.3-4.0.
* ``highz_galaxy``: CWW/COSMOS templates of pz-rail-base at z 3.1-5.0, beyond the 0.02-3.03 of cosmoDC2.

Quasars and galaxies get the mean IGM transmission of Inoue et al. (2014) (``bayes.igm``). The true i-band
magnitude is drawn from the cosmoDC2 validation galaxies' i distribution, so brightness is no tell; the errors
follow Ivezic et al. (2019) and non-detections use the DESC sentinel 99.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from ..bayes import igm
from ..bayes.templates import build_model_grid, load_filters
from ..config import BayesSettings

BANDS = ("u", "g", "r", "i", "z", "y")
KINDS = ("star", "quasar", "highz_galaxy")
FILTER_PREFIX = "lsst2023"
NONDETECT_MAG = 99.0          # DESC/RAIL sentinel, as in the cosmoDC2 files
SIGMA_SYS = 0.005             # systematic floor in magnitudes, in quadrature (Ivezic et al. 2019, sect. 3.2.1)
SNR_DETECT = 1.0              # below this the features module treats a band as undetected anyway

# Ivezic et al. 2019 (ApJ 873, 111): gamma from table 2; 10-year coadded 5-sigma depths from table 1.
GAMMA = {"u": 0.038, "g": 0.039, "r": 0.039, "i": 0.039, "z": 0.039, "y": 0.039}
M5_10YR = {"u": 26.1, "g": 27.4, "r": 27.5, "i": 26.8, "z": 26.1, "y": 24.9}
# The same error model fitted (least squares on log error, gamma fixed, err < 0.3) to the cosmoDC2
# validation file: its errors are shallower than the design depths, most in u (0.9 mag) and g/r (0.45 mag).
# error_model="dc2" uses these so that the errors of the LOOD set cannot tell it apart from the ID galaxies.
M5_DC2 = {"u": 25.21, "g": 26.93, "r": 27.05, "i": 26.65, "z": 26.01, "y": 25.08}
M5_MODELS = {"ivezic": M5_10YR, "dc2": M5_DC2}

# Rough shares of spectral classes among faint high-latitude field stars: halo/thick-disk turn-off F/G stars
# and disk M dwarfs dominate the counts (Juric et al. 2008, ApJ 673, 864, fig. colour distributions); hot
# stars are rare. Log-uniform in Teff inside each range. An approximation, not a fitted Galaxy model.
STAR_TEFF_MIX = ((3000.0, 3900.0, 0.35), (3900.0, 5300.0, 0.25), (5300.0, 7300.0, 0.34),
                 (7300.0, 10000.0, 0.05), (10000.0, 30000.0, 0.01))

# Vanden Berk et al. 2001 table 2: rest wavelength (A) and rest-frame equivalent width (A).
QSO_LINES = (("Lya", 1215.67, 92.91), ("CIV", 1549.06, 23.78), ("CIII]", 1908.73, 21.19),
             ("MgII", 2798.75, 32.28), ("Hbeta", 4862.68, 46.21), ("Halpha", 6564.61, 194.52))
QSO_FWHM_KMS = 4000.0
QSO_EW_SCATTER_DEX = 0.2      # object-to-object line-strength scatter (the composite is a mean)
QSO_ALPHA = (-0.5, 0.3)
QSO_Z = (0.3, 4.0)
QSO_ALPHA_GRID = np.linspace(-2.0, 1.0, 31)
QSO_DZ = 0.005

HIGHZ_Z = (3.1, 5.0)
# Galaxies bright enough for LSST at z > 3 are mostly star-forming (Lyman-break) galaxies.
HIGHZ_STARFORMING = ("Sbc_B2004a", "Scd_B2004a", "Im_B2004a", "SB3_B2004a", "SB2_B2004a",
                     "Sc_A_0", "Sc_A_1", "Sc_A_2", "Sd_A_0", "Sd_A_1", "Sd_A_2", "Sdm_A_0",
                     *(f"SB{k}_A_0" for k in range(12)))
HIGHZ_EARLY = ("El_B2004a", "Ell1_A_0", "Ell3_A_0", "Ell5_A_0", "S0_A_0", "Sa_A_0", "Sb_A_0")
HIGHZ_EARLY_FRACTION = 0.15

# ids far above the cosmoDC2 ids (~8e9) so LOOD rows never collide with catalog rows.
ID_OFFSET = 10 ** 15
_C_KMS = 299792.458
_H_C_OVER_K = 1.438777e8      # hc/k in Angstrom Kelvin


@lru_cache(maxsize=1)
def _filters() -> tuple[np.ndarray, np.ndarray]:
    """(wave (L,), weights (L, B)): f_lambda @ weights is the band's photon-weighted mean f_nu (up to c)."""
    wave, resp = load_filters(FILTER_PREFIX, list(BANDS))
    dl = np.gradient(wave)
    return wave, (resp * wave * dl).T / (resp / wave * dl).sum(axis=1)


def _relative_flux(flux: np.ndarray) -> np.ndarray:
    """Band fluxes (..., B) -> fluxes relative to the i band (i = 1)."""
    return flux / flux[..., BANDS.index("i"), None]


# ---------------------------------------------------------------- stars
@lru_cache(maxsize=1)
def _blackbody_table() -> tuple[np.ndarray, np.ndarray]:
    wave, w = _filters()
    log_t = np.linspace(np.log(2900.0), np.log(31000.0), 400)
    with np.errstate(over="ignore"):
        f = wave ** -5.0 / np.expm1(_H_C_OVER_K / (wave[None, :] * np.exp(log_t)[:, None]))
    return log_t, _relative_flux(f @ w)


def blackbody_flux(teff: np.ndarray) -> np.ndarray:
    """Band fluxes relative to i (N, 6) of blackbodies, interpolated in log Teff on a 400-node table."""
    log_t, table = _blackbody_table()
    lt = np.log(np.asarray(teff, dtype=np.float64))
    return np.stack([np.interp(lt, log_t, table[:, b]) for b in range(len(BANDS))], axis=1)


def _draw_stars(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi, p = (np.array(c) for c in zip(*STAR_TEFF_MIX))
    k = rng.choice(len(p), size=n, p=p / p.sum())
    teff = np.exp(rng.uniform(np.log(lo[k]), np.log(hi[k])))
    return blackbody_flux(teff), np.zeros(n)


# ---------------------------------------------------------------- quasars
@lru_cache(maxsize=1)
def _quasar_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuum C[z, alpha, band] and unit-line L[z, line, band] band fluxes with IGM, on a z grid.

    The rest continuum is f_lambda = (lambda / 2500 A)^(-2 - alpha); a line of rest EW W adds
    W * f_cont(lambda_line) * gaussian, so L is tabulated per unit W * f_cont(lambda_line) and scaled per object.
    Everything is evaluated at rest = observed / (1 + z): the common 1/(1+z) factor drops out of the colours.
    """
    wave, w = _filters()
    z = np.arange(QSO_Z[0], QSO_Z[1] + QSO_DZ / 2, QSO_DZ)
    trans = igm.transmission(z[:, None], wave[None, :])
    rest = wave[None, :] / (1.0 + z[:, None])
    lr = np.log(rest / 2500.0)
    cont = np.stack([(np.exp((-2.0 - a) * lr) * trans) @ w for a in QSO_ALPHA_GRID], axis=1)
    lines = []
    for _, lam, _ in QSO_LINES:
        sig = lam * QSO_FWHM_KMS / _C_KMS / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        prof = np.exp(-0.5 * ((rest - lam) / sig) ** 2) / (np.sqrt(2.0 * np.pi) * sig)
        lines.append((prof * trans) @ w)
    return z, cont, np.stack(lines, axis=1)


def quasar_flux(z: np.ndarray, alpha: np.ndarray, ew: np.ndarray) -> np.ndarray:
    """Band fluxes relative to i (N, 6) for redshift, spectral index and rest EWs (N, n_lines)."""
    zg, cont, lines = _quasar_tables()
    z = np.asarray(z, dtype=np.float64)
    alpha = np.clip(np.asarray(alpha, dtype=np.float64), QSO_ALPHA_GRID[0], QSO_ALPHA_GRID[-1])
    ew = np.asarray(ew, dtype=np.float64)
    if np.any((z < zg[0] - 1e-9) | (z > zg[-1] + 1e-9)):
        raise ValueError(f"quasar redshifts must lie in {QSO_Z}")
    # Bilinear interpolation in (z, alpha): the tables are smooth on these steps (< 0.01 mag).
    iz = np.clip(np.searchsorted(zg, z) - 1, 0, len(zg) - 2)
    tz = ((z - zg[iz]) / (zg[iz + 1] - zg[iz]))[:, None]
    ia = np.clip(np.searchsorted(QSO_ALPHA_GRID, alpha) - 1, 0, len(QSO_ALPHA_GRID) - 2)
    ta = ((alpha - QSO_ALPHA_GRID[ia]) / (QSO_ALPHA_GRID[ia + 1] - QSO_ALPHA_GRID[ia]))[:, None]

    def at_z(table, i):
        return table[iz, i] * (1 - tz) + table[iz + 1, i] * tz

    flux = at_z(cont, ia) * (1 - ta) + at_z(cont, ia + 1) * ta
    lam = np.array([l[1] for l in QSO_LINES])
    f_line = ew * (lam[None, :] / 2500.0) ** (-2.0 - alpha[:, None])      # W * f_cont(lambda_line)
    for j in range(len(QSO_LINES)):
        flux = flux + f_line[:, j, None] * at_z(lines, j)
    return _relative_flux(flux)


def _draw_quasars(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    z = rng.uniform(*QSO_Z, size=n)
    alpha = rng.normal(*QSO_ALPHA, size=n)
    ew0 = np.array([l[2] for l in QSO_LINES])
    ew = ew0 * 10.0 ** rng.normal(0.0, QSO_EW_SCATTER_DEX, size=(n, len(ew0)))
    return quasar_flux(z, alpha, ew), z


# ---------------------------------------------------------------- high-z galaxies
@lru_cache(maxsize=1)
def _highz_grid():
    s = BayesSettings(templates=list(HIGHZ_STARFORMING + HIGHZ_EARLY), z_min=HIGHZ_Z[0], z_max=HIGHZ_Z[1],
                      dz=0.005, prior_band="i", filter_prefix=FILTER_PREFIX)
    return build_model_grid(s, list(BANDS))


def _draw_highz(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    grid = _highz_grid()
    n_sf = len(HIGHZ_STARFORMING)
    early = rng.random(n) < HIGHZ_EARLY_FRACTION
    t = np.where(early, n_sf + rng.integers(0, len(HIGHZ_EARLY), n), rng.integers(0, n_sf, n))
    z = rng.uniform(*HIGHZ_Z, size=n)
    iz = np.clip(np.searchsorted(grid.z, z) - 1, 0, len(grid.z) - 2)
    tz = ((z - grid.z[iz]) / (grid.z[iz + 1] - grid.z[iz]))[:, None]
    flux = grid.flux[iz, t] * (1 - tz) + grid.flux[iz + 1, t] * tz       # already unit flux in i
    return flux, z


# ---------------------------------------------------------------- magnitudes and errors
@lru_cache(maxsize=1)
def dc2_i_mags() -> np.ndarray:
    """Sorted i magnitudes of the cosmoDC2 validation galaxies (the brightness distribution to copy)."""
    import h5py

    from ..io.datasets import dc2_paths
    with h5py.File(dc2_paths()["validation"], "r") as f:
        i = np.asarray(f["photometry/mag_i_lsst"][:], dtype=np.float64)
    return np.sort(i[np.abs(i) < 90])


def _flux_sigma(f: np.ndarray, m5: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """1-sigma flux error (same units as f = 10^(-0.4 m)) of Ivezic et al. 2019 eq. 5 plus the floor.

    sigma_rand^2 = (0.04 - gamma) x + gamma x^2 (mag), x = 10^(0.4 (m - m5)), written in flux so that it stays
    finite for zero or negative fluxes: sigma_f^2 = k^2 [(0.04 - gamma) f5 f + gamma f5^2 + sigma_sys^2 f^2].
    """
    k = np.log(10.0) / 2.5
    f5 = 10.0 ** (-0.4 * m5)
    fp = np.maximum(f, 0.0)
    return k * np.sqrt((0.04 - gamma) * f5 * fp + gamma * f5 ** 2 + SIGMA_SYS ** 2 * fp ** 2)


def nondetection_err(m5: dict[str, float] | None = None) -> dict[str, float]:
    """mag_err stored for non-detections: the band's 1-sigma limiting magnitude (the cosmoDC2 files store a
    constant, 26.62 in u, near their u 1-sigma limit; ``features.photometry`` ignores it either way)."""
    m5 = m5 or M5_10YR
    return {b: float(-2.5 * np.log10(_flux_sigma(np.zeros(1), np.array(m5[b]), np.array(GAMMA[b]))[0]))
            for b in BANDS}


def observe(rel_flux: np.ndarray, i_mag: np.ndarray, rng: np.random.Generator,
            m5: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless fluxes relative to i (N, 6) and true i mags -> observed (mag, mag_err), non-detections 99.

    The noise is Gaussian in flux; the reported error is the model error at the observed flux, as a pipeline
    measures it, so S/N < 1 is exactly mag_err > 1.0857 and those bands become non-detections.
    """
    m5 = m5 or M5_10YR
    m5v = np.array([m5[b] for b in BANDS])
    gam = np.array([GAMMA[b] for b in BANDS])
    f_true = rel_flux * 10.0 ** (-0.4 * i_mag)[:, None]
    f_obs = f_true + _flux_sigma(f_true, m5v, gam) * rng.standard_normal(f_true.shape)
    sig_obs = _flux_sigma(f_obs, m5v, gam)
    detected = (f_obs > 0) & (f_obs >= SNR_DETECT * sig_obs)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(detected, -2.5 * np.log10(f_obs), NONDETECT_MAG)
        err = np.where(detected, 2.5 / np.log(10.0) * sig_obs / f_obs,
                       np.array([nondetection_err(m5)[b] for b in BANDS]))
    return mag, err


_DRAW = {"star": _draw_stars, "quasar": _draw_quasars, "highz_galaxy": _draw_highz}


def generate(kind: str, n: int, seed: int, *, error_model: str = "ivezic",
             i_mags: np.ndarray | None = None) -> pd.DataFrame:
    """``n`` objects of one LOOD kind in the cosmoDC2 layout, deterministic in (kind, seed).

    ``error_model``: "ivezic" (10-year design depths) or "dc2" (depths fitted to the cosmoDC2 errors).
    ``i_mags``: reference i magnitudes to copy the distribution of (default: cosmoDC2 validation galaxies).
    """
    if kind not in _DRAW:
        raise ValueError(f"unknown LOOD kind {kind!r}; expected one of {KINDS}")
    if error_model not in M5_MODELS:
        raise ValueError(f"unknown error_model {error_model!r}; expected one of {tuple(M5_MODELS)}")
    n = int(n)
    if n < 0:
        raise ValueError("n must be >= 0")
    # One stream per kind, so generate_all and generate give the same rows for a kind and seed.
    rng = np.random.default_rng([int(seed), KINDS.index(kind)])
    rel_flux, z = _DRAW[kind](rng, n)
    ref = np.sort(np.asarray(i_mags, dtype=np.float64)) if i_mags is not None else dc2_i_mags()
    # Inverse-CDF draw with interpolation: the empirical distribution, without repeating exact values.
    i_true = np.interp(rng.random(n), np.linspace(0.0, 1.0, len(ref)), ref)
    mag, err = observe(rel_flux, i_true, rng, M5_MODELS[error_model])
    out = {"id": ID_OFFSET * (KINDS.index(kind) + 1) + np.arange(n, dtype=np.int64),
           "kind": np.full(n, kind, dtype=object), "redshift": z.astype(np.float64)}
    for j, b in enumerate(BANDS):
        out[f"mag_{b}_lsst"] = mag[:, j].astype(np.float32)
    for j, b in enumerate(BANDS):
        out[f"mag_err_{b}_lsst"] = err[:, j].astype(np.float32)
    return pd.DataFrame(out)


def generate_all(n_per_kind: int, seed: int, **kwargs) -> pd.DataFrame:
    """All three kinds, ``n_per_kind`` each, concatenated (same rows as ``generate`` per kind)."""
    return pd.concat([generate(k, n_per_kind, seed, **kwargs) for k in KINDS], ignore_index=True)
