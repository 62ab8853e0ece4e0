"""Reflectance magnitudes from photometry: solar colours, repeated epochs combined robustly, LSST noise model.

Reflectance colour = asteroid colour - solar colour. The Sun's AB magnitudes per band are Willmer 2018
(ApJS 236, 47), Table 3 (absolute AB magnitudes; only their differences matter here). speclite carries
no solar spectrum, so the labelled set (``spectra.py``) weights reflectance spectra by a 5778 K
blackbody instead; both sides of the comparison are "relative to the Sun", so the approximation only
enters through the shape of the solar spectrum *within* a band (< 0.01 mag for smooth reflectances).

Epochs: LSST measures each band at different times, distances and phase angles. Each observation is
reduced to unit distances (``m - 5 log10(r Delta)``) and corrected with one linear phase slope shared by
all bands (default 0.04 mag/deg, typical of the H,G phase curves near 10-20 deg). Shared slopes cancel in
colours only if applied, because bands are observed at different phase angles. Phase reddening (a
band-dependent slope, ~0.001 mag/deg) is ignored. Per band, observations beyond 3 robust sigma of the
median are clipped (lightcurve extremes, bad measurements), then combined by inverse-variance mean; its
error is the larger of the formal error and the clipped scatter / sqrt(n) (rotation lightcurves make the
scatter dominate for bright objects). The number of epochs kept is returned per band.
"""
from __future__ import annotations

import numpy as np

from ..errors import CatalogError

# Willmer 2018, Table 3, absolute magnitudes of the Sun (AB).
SOLAR_AB = {
    "lsst": {"u": 6.27, "g": 5.06, "r": 4.64, "i": 4.52, "z": 4.51, "y": 4.50},
    "sdss": {"u": 6.39, "g": 5.11, "r": 4.65, "i": 4.53, "z": 4.50},
}
# speclite filter families for the labelled set.
SPECLITE_FAMILY = {"lsst": "lsst2023", "sdss": "sdss2010"}

# Ivezic et al. 2019 (ApJ 873, 111), Table 2: single-visit 5-sigma depths and gamma.
LSST_M5_SINGLE = {"u": 23.9, "g": 25.0, "r": 24.7, "i": 24.0, "z": 23.3, "y": 22.1}
LSST_GAMMA = {"u": 0.038, "g": 0.039, "r": 0.039, "i": 0.039, "z": 0.039, "y": 0.039}
LSST_SIGMA_SYS = 0.005


def solar_mags(bands: list[str], system: str) -> np.ndarray:
    if system not in SOLAR_AB:
        raise CatalogError(f"unknown photometric system {system!r}; known: {sorted(SOLAR_AB)}")
    missing = [b for b in bands if b not in SOLAR_AB[system]]
    if missing:
        raise CatalogError(f"no solar magnitude for band(s) {missing} of the {system} system")
    return np.array([SOLAR_AB[system][b] for b in bands])


def lsst_mag_error(mag: np.ndarray, band: str) -> np.ndarray:
    """Single-visit LSST point-source magnitude error (Ivezic et al. 2019, eq. 5 plus systematics)."""
    x = 10.0 ** (0.4 * (np.asarray(mag) - LSST_M5_SINGLE[band]))
    g = LSST_GAMMA[band]
    return np.sqrt((0.04 - g) * x + g * x * x + LSST_SIGMA_SYS ** 2)


def combine_observations(df, id_col: str, band_col: str, mag_col: str, err_col: str, bands: list[str],
                         r_col: str | None = None, delta_col: str | None = None, phase_col: str | None = None,
                         phase_slope: float = 0.04, clip_sigma: float = 3.0):
    """Long table of observations (one row per asteroid, band, epoch) -> one row per asteroid.

    Output columns: ``id_col``, then per band ``mag_<b>``, ``err_<b>``, ``nobs_<b>`` (null mag when the band
    has no usable epoch). Runs as Spark SQL (windows + one groupBy): nothing is collected.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    need = [id_col, band_col, mag_col, err_col] + [c for c in (r_col, delta_col, phase_col) if c]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise CatalogError(f"observation table lacks column(s) {missing}; it has {df.columns}")
    m = F.col(mag_col).cast("double")
    if r_col and delta_col:
        m = m - 5.0 * F.log10(F.col(r_col).cast("double") * F.col(delta_col).cast("double"))
    if phase_col:
        m = m - F.lit(float(phase_slope)) * F.col(phase_col).cast("double")
    e = F.col(err_col).cast("double")
    obs = (df.select(F.col(id_col), F.col(band_col).cast("string").alias("_band"), m.alias("_m"), e.alias("_e"))
           .where(F.col("_band").isin(list(bands)) & ~F.isnan("_m") & F.col("_m").isNotNull()
                  & ~F.isnan("_e") & (F.col("_e") > 0) & (F.abs(F.col("_m")) < 90)))
    w = Window.partitionBy(id_col, "_band")
    obs = obs.withColumn("_med", F.median("_m").over(w))
    obs = obs.withColumn("_mad", F.median(F.abs(F.col("_m") - F.col("_med"))).over(w))
    # 1.4826 MAD is a robust sigma; never clip tighter than the measurement error itself.
    width = F.greatest(F.lit(1.4826) * F.col("_mad"), F.col("_e"))
    kept = obs.where(F.abs(F.col("_m") - F.col("_med")) <= F.lit(clip_sigma) * width)
    kept = kept.withColumn("_w", 1.0 / (F.col("_e") * F.col("_e")))
    agg = kept.groupBy(id_col, "_band").agg(
        (F.sum(F.col("_w") * F.col("_m")) / F.sum("_w")).alias("_mean"),
        F.sum("_w").alias("_sw"), F.count("*").alias("_n"), F.stddev_samp("_m").alias("_sd"))
    scatter = F.coalesce(F.col("_sd") / F.sqrt(F.col("_n")), F.lit(0.0))
    agg = agg.select(id_col, "_band", "_mean", "_n",
                     F.greatest(F.sqrt(1.0 / F.col("_sw")), scatter).alias("_err"))
    wide = agg.groupBy(id_col).pivot("_band", list(bands)).agg(
        F.first("_mean").alias("mag"), F.first("_err").alias("err"), F.first("_n").alias("nobs"))
    ids = df.select(id_col).distinct()      # an asteroid whose every epoch is unusable still gets a row
    out = ids.join(wide, on=id_col, how="left")
    cols = [F.col(id_col)]
    for b in bands:
        cols += [F.col(f"{b}_mag").alias(f"mag_{b}"), F.col(f"{b}_err").alias(f"err_{b}"),
                 F.coalesce(F.col(f"{b}_nobs"), F.lit(0)).cast("int").alias(f"nobs_{b}")]
    return out.select(*cols)
