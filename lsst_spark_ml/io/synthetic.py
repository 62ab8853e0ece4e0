"""A synthetic LSST-like Object catalog of any size, generated on Spark (no row passes through the driver).

Each row takes a real cosmoDC2 galaxy as its parent (redshift and magnitudes from the DESC validation file),
shifts its brightness by U(-0.3, 0.3) mag, and observes it again with the LSST 10-year photometric error
model of Ivezic et al. (2019, ApJ 873, 111, eqs. 4-5; 10-year coadd 5-sigma depths of their Table 1):
fluxes in nJy with Gaussian noise, so faint bands go negative as they do in real Object tables.
Positions are uniform on the sphere inside a DC2-like footprint. A small fraction of rows is damaged on
purpose (NaN fluxes, infinite errors, all bands missing) to exercise the flag paths at scale.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

LSST_M5_10YR = {"u": 26.1, "g": 27.4, "r": 27.5, "i": 26.8, "z": 26.1, "y": 24.9}
LSST_GAMMA = {"u": 0.038, "g": 0.039, "r": 0.039, "i": 0.039, "z": 0.039, "y": 0.039}
SIGMA_SYS = 0.005
BANDS = ("u", "g", "r", "i", "z", "y")
FOOTPRINT = {"ra": (50.0, 75.0), "dec": (-45.0, -25.0)}
DAMAGE = {"nan_flux": 1e-3, "inf_err": 5e-4, "all_missing": 2e-4}


def load_parents() -> dict[str, np.ndarray]:
    import h5py

    from .datasets import dc2_paths
    with h5py.File(dc2_paths()["validation"], "r") as h:
        g = h["photometry"]
        mags = np.column_stack([g[f"mag_{b}_lsst"][:] for b in BANDS]).astype(np.float64)
        z = g["redshift"][:].astype(np.float64)
    # A non-detected parent band (99) becomes a source just below the 5-sigma depth.
    m5 = np.array([LSST_M5_10YR[b] for b in BANDS])
    mags = np.where(mags > 90, m5 + 0.5, mags)
    return {"mag": mags, "redshift": z}


def mag_error(mag: np.ndarray, band: str) -> np.ndarray:
    x = 10.0 ** (0.4 * (mag - LSST_M5_10YR[band]))
    g = LSST_GAMMA[band]
    return np.sqrt(SIGMA_SYS ** 2 + (0.04 - g) * x + g * x ** 2)


def _generate(ids: np.ndarray, parents: dict, seed: int) -> pd.DataFrame:
    # Seeded by the first id of the batch, so the catalog is the same on every run and every layout.
    rng = np.random.default_rng([seed, int(ids[0]) if len(ids) else 0])
    n = len(ids)
    pick = rng.integers(0, len(parents["redshift"]), n)
    mag = parents["mag"][pick] + rng.uniform(-0.3, 0.3, (n, 1))
    ra0, ra1 = FOOTPRINT["ra"]
    s0, s1 = np.sin(np.radians(FOOTPRINT["dec"]))
    out = {"objectId": ids.astype(np.int64),
           "coord_ra": rng.uniform(ra0, ra1, n),
           "coord_dec": np.degrees(np.arcsin(rng.uniform(s0, s1, n)))}
    nan_flux = rng.random(n) < DAMAGE["nan_flux"]
    inf_err = rng.random(n) < DAMAGE["inf_err"]
    all_missing = rng.random(n) < DAMAGE["all_missing"]
    bad_band = rng.integers(0, len(BANDS), n)
    for k, b in enumerate(BANDS):
        flux_true = 10.0 ** (-0.4 * (mag[:, k] - 31.4))
        sigma_f = flux_true * mag_error(mag[:, k], b) / 1.0857362
        flux = flux_true + rng.standard_normal(n) * sigma_f
        flux = np.where((nan_flux & (bad_band == k)) | all_missing, np.nan, flux)
        sigma_f = np.where(inf_err & (bad_band == k), np.inf, sigma_f)
        out[f"{b}_cModelFlux"] = flux.astype(np.float32)
        out[f"{b}_cModelFluxErr"] = sigma_f.astype(np.float32)
    out["redshift"] = parents["redshift"][pick]
    return pd.DataFrame(out)


def schema():
    from pyspark.sql import types as T
    fields = [T.StructField("objectId", T.LongType(), False), T.StructField("coord_ra", T.DoubleType()),
              T.StructField("coord_dec", T.DoubleType())]
    for b in BANDS:
        fields += [T.StructField(f"{b}_cModelFlux", T.FloatType()), T.StructField(f"{b}_cModelFluxErr", T.FloatType())]
    fields.append(T.StructField("redshift", T.DoubleType()))
    return T.StructType(fields)


def synthetic_catalog(spark, n_rows: int, n_partitions: int | None = None, seed: int = 2026):
    """A lazily generated DataFrame of ``n_rows`` LSST-like objects (Rubin Object-table naming)."""
    parents = load_parents()
    n_partitions = n_partitions or max(2, n_rows // 250_000)

    def gen(batches):
        for pdf in batches:
            yield _generate(pdf["id"].to_numpy(), parents, seed)
    return spark.range(0, n_rows, numPartitions=n_partitions).mapInPandas(gen, schema())
