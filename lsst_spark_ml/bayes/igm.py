"""Mean intergalactic HI transmission of Inoue et al. (2014, MNRAS 442, 1805), eqs. 20-29.

Vectorised over a redshift grid: the model-flux grid needs T(lambda_obs, z) for ~10^3 redshifts at once.
The coefficient tables ship in resources/igm (copied from eazy, MIT).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

_DATA = Path(__file__).resolve().parent.parent / "resources" / "igm"
LYMAN_LIMIT = 911.8     # Angstrom
Z1_LAF, Z2_LAF, Z1_DLA = 1.2, 4.7, 2.0


@lru_cache(maxsize=1)
def _coefficients():
    laf = np.loadtxt(_DATA / "LAFcoeff.txt")
    dla = np.loadtxt(_DATA / "DLAcoeff.txt")
    return laf[:, 1], laf[:, 2:5], dla[:, 2:4]


def _lyman_series(z: np.ndarray, lobs: np.ndarray) -> np.ndarray:
    lam, a_laf, a_dla = _coefficients()
    tau = np.zeros(np.broadcast_shapes(z.shape, lobs.shape))
    for j, lj in enumerate(lam):
        # A line absorbs only between its rest wavelength and the source's redshifted wavelength.
        x0 = lobs < lj * (1.0 + z)
        r = lobs / lj
        laf = np.where(lobs < lj * (1 + Z1_LAF), a_laf[j, 0] * r ** 1.2,
                       np.where(lobs < lj * (1 + Z2_LAF), a_laf[j, 1] * r ** 3.7, a_laf[j, 2] * r ** 5.5))
        dla = np.where(lobs < lj * (1 + Z1_DLA), a_dla[j, 0] * r ** 2, a_dla[j, 1] * r ** 3)
        tau += np.where(x0, laf + dla, 0.0)
    return tau


def _lyman_continuum(z: np.ndarray, lobs: np.ndarray) -> np.ndarray:
    zp = 1.0 + z
    x = lobs / LYMAN_LIMIT
    below = lobs < LYMAN_LIMIT * zp
    # LAF part (eq. 25-27)
    laf_lo = 0.3248 * (x ** 1.2 - zp ** -0.9 * x ** 2.1)
    laf_mid = np.where(lobs >= LYMAN_LIMIT * (1 + Z1_LAF),
                       2.545e-2 * (zp ** 1.6 * x ** 2.1 - x ** 3.7),
                       2.545e-2 * zp ** 1.6 * x ** 2.1 + 0.3248 * x ** 1.2 - 0.2496 * x ** 2.1)
    laf_hi = np.where(lobs > LYMAN_LIMIT * (1 + Z2_LAF),
                      5.221e-4 * (zp ** 3.4 * x ** 2.1 - x ** 5.5),
                      np.where(lobs >= LYMAN_LIMIT * (1 + Z1_LAF),
                               5.221e-4 * zp ** 3.4 * x ** 2.1 + 0.2182 * x ** 2.1 - 2.545e-2 * x ** 3.7,
                               5.221e-4 * zp ** 3.4 * x ** 2.1 + 0.3248 * x ** 1.2 - 3.140e-2 * x ** 2.1))
    laf = np.where(z < Z1_LAF, laf_lo, np.where(z < Z2_LAF, laf_mid, laf_hi))
    # DLA part (eq. 28-29)
    dla_lo = 0.2113 * zp ** 2 - 0.07661 * zp ** 2.3 * x ** -0.3 - 0.1347 * x ** 2
    dla_hi = np.where(lobs >= LYMAN_LIMIT * (1 + Z1_DLA),
                      0.04696 * zp ** 3 - 0.01779 * zp ** 3.3 * x ** -0.3 - 0.02916 * x ** 3,
                      0.6340 + 0.04696 * zp ** 3 - 0.01779 * zp ** 3.3 * x ** -0.3 - 0.1347 * x ** 2
                      - 0.2905 * x ** -0.3)
    dla = np.where(z < Z1_DLA, dla_lo, dla_hi)
    return np.where(below, laf + dla, 0.0)


def transmission(z, lobs) -> np.ndarray:
    """exp(-tau_IGM) at observed wavelengths ``lobs`` (Angstrom) for sources at ``z`` (broadcast together)."""
    z = np.asarray(z, dtype=np.float64)
    lobs = np.asarray(lobs, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        tau = _lyman_series(z, lobs) + _lyman_continuum(z, lobs)
    return np.exp(-np.clip(tau, 0.0, 700.0))
