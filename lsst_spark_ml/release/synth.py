"""A synthetic release input of any size: an LSST-like Object catalog as a multi-pixel HATS catalog.

Rows are generated on the executors (``io.synthetic``: cosmoDC2 parents re-observed with the LSST 10-year
error model, and its damaged rows), then a share of them is replaced by other kinds of object, each observed
through the same error model so that nothing but the colours tells them apart:

* ``star``: blackbodies of ``ood.labelled_ood`` (Teff 3,000-30,000 K), redshift 0;
* ``quasar``: power law + broad lines + IGM of ``ood.labelled_ood``, z 0.3-4;
* ``nondetection``: no source at all (pure noise in every band: forced photometry of an empty position).

``true_class`` and ``redshift`` are kept as truth columns. Deterministic in (rows, seed); written with
``io.hats_writer.write_hats`` at the chosen HEALPix order. Asteroid observations are not generated: the
release job has no asteroid stage yet (see release/settings.py).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import synthetic

MIX = {"star": 0.06, "quasar": 0.02, "nondetection": 0.02}     # the rest are galaxies


def _replace(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    from ..ood.labelled_ood import _draw_quasars, _draw_stars
    n = len(df)
    u = rng.random(n)
    kind = np.full(n, "galaxy", dtype=object)
    edge = 0.0
    for k, frac in MIX.items():
        kind[(u >= edge) & (u < edge + frac)] = k
        edge += frac
    df["true_class"] = kind
    i_mag = 31.4 - 2.5 * np.log10(np.clip(df["i_cModelFlux"].to_numpy(np.float64), 1.0, None))
    i_mag = np.clip(i_mag, 17.0, 25.5)
    for k, draw in (("star", _draw_stars), ("quasar", _draw_quasars), ("nondetection", None)):
        rows = np.flatnonzero(kind == k)
        if not len(rows):
            continue
        if draw is None:
            rel, z = np.zeros((len(rows), len(synthetic.BANDS))), np.full(len(rows), np.nan)
            mag_for_err = np.array([synthetic.LSST_M5_10YR[b] + 2.0 for b in synthetic.BANDS])[None, :] + \
                np.zeros((len(rows), 1))
        else:
            rel, z = draw(rng, len(rows))
            mag_for_err = None
        f_i = 10.0 ** (-0.4 * (i_mag[rows] - 31.4))
        for j, b in enumerate(synthetic.BANDS):
            true = rel[:, j] * f_i
            m = mag_for_err[:, j] if mag_for_err is not None else 31.4 - 2.5 * np.log10(np.clip(true, 1e-3, None))
            sigma = 10.0 ** (-0.4 * (m - 31.4)) * synthetic.mag_error(m, b) / 1.0857362
            df.loc[df.index[rows], f"{b}_cModelFlux"] = (true + rng.standard_normal(len(rows)) * sigma
                                                         ).astype(np.float32)
            df.loc[df.index[rows], f"{b}_cModelFluxErr"] = sigma.astype(np.float32)
        df.loc[df.index[rows], "redshift"] = np.where(k == "star", 0.0, z)
    return df


def schema():
    from pyspark.sql import types as T
    return T.StructType(list(synthetic.schema().fields) + [T.StructField("true_class", T.StringType())])


def synthetic_release_frame(spark, n_rows: int, seed: int = 2026, n_partitions: int | None = None):
    parents = synthetic.load_parents()
    n_partitions = n_partitions or max(2, n_rows // 250_000)

    def gen(batches):
        for pdf in batches:
            ids = pdf["id"].to_numpy()
            out = synthetic._generate(ids, parents, seed)
            rng = np.random.default_rng([seed, 7, int(ids[0]) if len(ids) else 0])
            yield _replace(out, rng)
    return spark.range(0, n_rows, numPartitions=n_partitions).mapInPandas(gen, schema())


def write_synthetic_release(spark, n_rows: int, out: str, order: int = 3, seed: int = 2026) -> dict:
    from ..io.hats_writer import write_hats
    df = synthetic_release_frame(spark, n_rows, seed)
    return write_hats(df, out, "coord_ra", "coord_dec", order, mode="error", name="synthetic_release_objects")
