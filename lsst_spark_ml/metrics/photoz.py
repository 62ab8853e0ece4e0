"""Photo-z metrics as Spark aggregations: only aggregates (a few numbers, histograms) reach the driver.

Definitions, names and conventions are those of :mod:`.reference` (RAIL's where RAIL has the metric).
How the Spark versions differ from the exact ones, and by how much:

* Quantiles come from ``percentile_approx`` with ``accuracy`` (default 1e5): the returned value is a
  data value whose rank is within n/accuracy of the exact one, where numpy interpolates between the
  two neighbouring values. Statistics that need the median (sigma_MAD, outlier rate) take a second pass.
* PIT statistics come from PIT values grouped into ``n_pit_bins`` (default 1e4) bins of width h,
  with per-bin count, min, max and sums. KS is the midpoint of bounds that bracket the exact value
  (error <= h/2). CvM and AD are the exact rank-weighted sums except that each value's rank is
  replaced by its bin's mean rank; the error is at most h sum(c_k^2) / (2n) for CvM and
  (1/(2n)) sum c_k^2 (dln u_k + dln(1-u_k)) for AD (dln: spread of the log within bin k), i.e.
  ~1e-4 and ~1e-3 for 2e4 values in 1e4 bins. The sums are kept small (offsets from bin centres)
  so a billion rows lose no precision.
* CRPS, Brier and the CDE terms are computed per row with the reference kernels in ``mapInArrow``
  and summed by Spark: they agree with the reference to rounding.

Each function scans ``df`` once per pass (point_metrics: 2, pdf_metrics: 1, plot_inputs: 3);
cache ``df`` first when it is expensive to recompute (e.g. the output of model inference).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, functions as F
from pyspark.sql.types import ArrayType

from ..errors import CatalogError, ConfigError
from . import reference as ref

PERCENTILE_ACCURACY = 100_000
PIT_BINS = 10_000
_INF = float("inf")


def _require(df: DataFrame, *cols: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise CatalogError(f"column(s) {missing} not in the DataFrame (it has {df.columns})")


def _require_pdf(df: DataFrame, pdf_col: str) -> None:
    _require(df, pdf_col)
    if not isinstance(df.schema[pdf_col].dataType, ArrayType):
        raise CatalogError(f"column {pdf_col!r} must be an array of bin probabilities, "
                           f"not {df.schema[pdf_col].dataType.simpleString()}")


def _finite(col):
    # null, NaN (larger than any number in Spark) and +-inf all fail this test
    return F.abs(col) < _INF


# ---------------------------------------------------------------- point metrics

def point_metrics(df: DataFrame, z_col: str = "z_mean", truth_col: str = "redshift",
                  accuracy: int = PERCENTILE_ACCURACY) -> dict:
    """RAIL point-estimate metrics plus sigma_NMAD, catastrophic fraction, mean bias and std of ez."""
    _require(df, z_col, truth_col)
    z, t = F.col(z_col).cast("double"), F.col(truth_col).cast("double")
    # t > -1 keeps 1 + t away from zero (ANSI mode would fail the job on a division by zero).
    d = df.select(F.when(_finite(z) & _finite(t) & (t > -1.0), (z - t) / (1.0 + t)).alias("ez"))
    ez, aez = F.col("ez"), F.abs("ez")
    r = d.agg(F.count(F.lit(1)).alias("total"), F.count(ez).alias("n"), F.avg(ez).alias("mean"),
              F.stddev_pop(ez).alias("std"),
              F.percentile_approx(ez, [0.25, 0.5, 0.75], accuracy).alias("q"),
              F.percentile_approx(aez, 0.5, accuracy).alias("med_abs"),
              F.count(F.when(aez > ref.OUTLIER_CUT, 1)).alias("n_cat")).first()
    out = {"n": r["n"], "n_invalid": r["total"] - r["n"]}
    if r["n"] == 0:
        return out | dict.fromkeys(ref.POINT_KEYS, float("nan"))
    q25, med, q75 = r["q"]
    sigma_iqr = (q75 - q25) / ref.IQR_TO_SIGMA
    cut = max(ref.POINT_OUTLIER_FLOOR, 3.0 * sigma_iqr)
    r2 = d.agg(F.percentile_approx(F.abs(ez - F.lit(med)), 0.5, accuracy).alias("mad"),
               F.count(F.when(aez > cut, 1)).alias("n_out")).first()
    return out | {
        "point_bias": med,
        "point_stats_iqr": sigma_iqr,
        "point_stats_sigma_mad": ref.NMAD * r2["mad"],
        "point_outlier_rate": r2["n_out"] / r["n"],
        "sigma_nmad": ref.NMAD * r["med_abs"],
        "catastrophic_fraction": r["n_cat"] / r["n"],
        "mean_bias": r["mean"],
        "sigma": r["std"],
    }


# ---------------------------------------------------------------- PDF metrics

def _pdf_matrix(arr: pa.Array, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows normalised to sum 1, valid mask, wrong-length mask) from an Arrow list column."""
    lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy()
    right = lengths == n_bins
    p = np.full((len(arr), n_bins), np.nan)
    if right.any():
        vals = pc.list_flatten(arr.filter(pa.array(right))).cast(pa.float64())
        p[right] = vals.to_numpy(zero_copy_only=False).reshape(-1, n_bins)   # null elements -> NaN
    p, ok = ref.normalise_pdfs(p)
    return p, ok, (lengths >= 0) & ~right


def _as_float(arr: pa.Array) -> np.ndarray:
    return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)     # nulls -> NaN


_PDF_ROW_SCHEMA = ("bin int, pit double, d double, l1 double, l2 double, pit_out int, "
                   "crps double, brier double, cde_sq double, cde_at double")


def _pdf_rows(batches, edges, grid, n_pit_bins):
    """Per row: PIT bin (-1 invalid row, -2 PDF of the wrong length) and the terms pdf_metrics sums."""
    for b in batches:
        p, ok, wrong = _pdf_matrix(b.column(0), edges.size - 1)
        t = _as_float(b.column(1))
        ok &= np.isfinite(t)
        p, t = p[ok], t[ok]
        pit = ref.pit_values(p, edges, t)
        k = np.minimum((pit * n_pit_bins).astype(np.int32), n_pit_bins - 1)
        m = (k + 0.5) / n_pit_bins
        # offsets from the bin centre keep Spark's sums small (see the module docstring)
        uc = np.clip(pit, ref.PIT_OUTLIER_EPS, 1.0 - ref.PIT_OUTLIER_EPS)
        sq, at = ref.cde_terms(p, edges, t)
        cols = {"pit": pit, "d": pit - m, "l1": np.log(uc / m), "l2": np.log((1.0 - uc) / (1.0 - m)),
                "pit_out": ((pit < ref.PIT_OUTLIER_EPS) | (pit > 1.0 - ref.PIT_OUTLIER_EPS)).astype(np.int32),
                "crps": ref.crps_values(p, edges, t), "brier": ref.brier_values(p, edges, t, grid),
                "cde_sq": sq, "cde_at": at}
        bins = np.where(wrong, -2, -1).astype(np.int32)
        bins[ok] = k
        arrays = [pa.array(bins)]
        for name, v in cols.items():
            full = np.zeros(ok.size, dtype=v.dtype)
            full[ok] = v
            arrays.append(pa.array(full))
        yield pa.RecordBatch.from_arrays(arrays, names=["bin", *cols])


def pit_statistics_from_bins(c, sd, sdd, umin, umax, l1, l2) -> dict:
    """KS, CvM and AD of PIT values from per-bin aggregates over equal bins of [0, 1].

    Per bin: count c, sums of d = u - centre and d^2, min and max of u, and sums of log(u'/centre) and
    log((1 - u')/(1 - centre)) with u' = u clipped as in :func:`reference.anderson_darling_uniform`.
    """
    c = np.asarray(c, float)
    nb = c.size
    n = c.sum()
    m = (np.arange(nb) + 0.5) / nb
    cum = np.cumsum(c)
    before = cum - c
    has = c > 0
    # Within a bin the ranks run from before+1 to cum and the values from umin to umax: bounds on D.
    upper = max(np.max(cum[has] / n - umin[has]), np.max(umax[has] - before[has] / n))
    lower = max(np.max(cum[has] / n - umax[has]), np.max(umin[has] - before[has] / n))
    # CvM = 1/(12n) + sum_j (u_j - (2j-1)/(2n))^2, the ranks j of a bin replaced by their mean
    a = m - (2 * before + c) / (2 * n)
    cvm = 1 / (12 * n) + np.sum(sdd + 2 * a * sd + c * a ** 2 + c * (c ** 2 - 1) / (12 * n ** 2))
    # A^2 = -n - (1/n) sum_j [(2j-1) ln u_j + (2n-2j+1) ln(1-u_j)], same mean-rank replacement
    x = 2 * before + c
    ad = -n - (np.sum(x * (c * np.log(m) + l1)) + np.sum((2 * n - x) * (c * np.log1p(-m) + l2))) / n
    return {"pit_ks": float((upper + lower) / 2), "pit_cvm": float(cvm), "pit_ad": float(ad)}


def pdf_metrics(df: DataFrame, pdf_col: str = "pdf", truth_col: str = "redshift", bin_edges=None,
                brier_grid=ref.BRIER_GRID, n_pit_bins: int = PIT_BINS) -> dict:
    """PIT statistics (KS, CvM, AD, outlier rate, 100-bin histogram), CRPS, Brier score and CDE loss.

    ``df[pdf_col]`` holds, per object, the probabilities of the ``len(bin_edges) - 1`` bins; a truth
    outside the bin range is clipped to its edges, as in :mod:`.reference`.
    Raises ``CatalogError`` if any PDF array has another length (the edges do not belong to the model).
    """
    if bin_edges is None:
        raise ConfigError("pdf_metrics needs the bin_edges of the PDFs")
    if n_pit_bins % ref.PIT_HIST_BINS:
        raise ConfigError(f"n_pit_bins must be a multiple of {ref.PIT_HIST_BINS}")
    edges = ref.check_edges(bin_edges)
    _require_pdf(df, pdf_col)
    _require(df, truth_col)
    rows = (df.select(pdf_col, F.col(truth_col).cast("double"))
            .mapInArrow(partial(_pdf_rows, edges=edges, grid=tuple(brier_grid), n_pit_bins=n_pit_bins),
                        _PDF_ROW_SCHEMA))
    sums = ["l1", "l2", "pit_out", "crps", "brier", "cde_sq", "cde_at"]
    agg = (rows.groupBy("bin")
           .agg(F.count(F.lit(1)).alias("c"), F.sum("d").alias("sd"), F.sum(F.col("d") ** 2).alias("sdd"),
                F.min("pit").alias("umin"), F.max("pit").alias("umax"), *[F.sum(s).alias(s) for s in sums])
           .toPandas().set_index("bin"))
    n_wrong = int(agg["c"].get(-2, 0))
    if n_wrong:
        raise CatalogError(f"{n_wrong} rows of {pdf_col!r} do not hold {edges.size - 1} probabilities, "
                           f"one per bin of bin_edges")
    n_invalid = int(agg["c"].get(-1, 0))
    g = agg[agg.index >= 0].reindex(range(n_pit_bins), fill_value=0)
    n = int(g["c"].sum())
    out = {"n": n, "n_invalid": n_invalid}
    if n == 0:
        return out | dict.fromkeys(ref.PDF_KEYS, float("nan")) | {"pit_hist": [0] * ref.PIT_HIST_BINS}
    v = {k: g[k].to_numpy(float) for k in g.columns}
    tot = {s: float(v[s].sum()) for s in sums}
    pit = pit_statistics_from_bins(*(v[k] for k in ("c", "sd", "sdd", "umin", "umax", "l1", "l2")))
    return out | pit | {
        "pit_outlier_rate": tot["pit_out"] / n,
        "pit_hist": g["c"].to_numpy().reshape(ref.PIT_HIST_BINS, -1).sum(axis=1).astype(int).tolist(),
        "crps": tot["crps"] / n,
        "brier": tot["brier"] / n,
        "cde_loss": (tot["cde_sq"] - 2.0 * tot["cde_at"]) / n,
    }


# ---------------------------------------------------------------- inputs of the evaluation plots

_HISTS = ("nz_pdf", "nz_true", "nz_zmean", "pit_hist")


def _hist_rows(batches, edges):
    """Per batch, the non-zero entries (histogram id, index, value) of partial sums of the 1-D plot inputs."""
    for b in batches:
        p, ok, _ = _pdf_matrix(b.column(0), edges.size - 1)
        t, z = _as_float(b.column(1)), _as_float(b.column(2))
        both = ok & np.isfinite(t)
        pit = ref.pit_values(p[both], edges, t[both])
        parts = [p[ok].sum(axis=0),
                 np.histogram(t[np.isfinite(t)], bins=edges)[0],
                 np.histogram(z[np.isfinite(z)], bins=edges)[0],
                 np.histogram(pit, bins=ref.PIT_HIST_BINS, range=(0, 1))[0]]
        h, i, v = zip(*[(np.full(nz.size, k, np.int32), nz.astype(np.int32), part[nz].astype(float))
                        for k, part in enumerate(parts) for nz in [np.flatnonzero(part)]])
        yield pa.RecordBatch.from_arrays([pa.array(np.concatenate(x)) for x in (h, i, v)],
                                         names=["h", "i", "v"])


def plot_inputs(df: DataFrame, z_col: str = "z_mean", truth_col: str = "redshift", pdf_col: str = "pdf",
                bin_edges=None, n_examples: int = 6, n_2d: int = 150, zmax: float | None = None) -> dict:
    """The small arrays the evaluation plots need, aggregated by Spark.

    Keys: ``hist2d`` (n_2d x n_2d counts over [0, zmax]^2, axis 0 true z, axis 1 z_col; values outside
    are left out), ``zmax``, ``pit_hist`` (100 bins), ``nz_true`` and ``nz_zmean`` (histograms on
    ``bin_edges`` of every finite truth / z_col value), ``nz_pdf`` (sum of the valid PDFs), and
    ``example_pdfs``, ``example_truth``, ``example_z`` (``n_examples`` sampled rows with a PDF and a truth,
    spread over the true redshift range).
    """
    if bin_edges is None:
        raise ConfigError("plot_inputs needs the bin_edges of the PDFs")
    edges = ref.check_edges(bin_edges)
    _require_pdf(df, pdf_col)
    _require(df, z_col, truth_col)
    zmax = float(edges[-1] if zmax is None else zmax)
    t, z = F.col(truth_col).cast("double"), F.col(z_col).cast("double")
    idx = lambda c: F.least(F.floor(c * (n_2d / zmax)), F.lit(n_2d - 1)).cast("int")   # noqa: E731
    inside = lambda c: (c >= 0) & (c <= zmax)              # noqa: E731  (fails for NaN: NaN > all in Spark)
    hist2d = np.zeros((n_2d, n_2d))
    cells = df.where(inside(t) & inside(z)).groupBy(idx(t).alias("i"), idx(z).alias("j")).count()
    for r in cells.collect():
        hist2d[r["i"], r["j"]] = r["count"]

    sums = (df.select(pdf_col, t, z).mapInArrow(partial(_hist_rows, edges=edges), "h int, i int, v double")
            .groupBy("h", "i").agg(F.sum("v").alias("v")).collect())
    k = edges.size - 1
    out = {"nz_pdf": np.zeros(k), "nz_true": np.zeros(k), "nz_zmean": np.zeros(k),
           "pit_hist": np.zeros(ref.PIT_HIST_BINS)}
    for r in sums:
        out[_HISTS[r["h"]]][r["i"]] = r["v"]

    # Catalogs are often sorted (by redshift, by position): the first rows would all look alike. A small
    # Bernoulli sample (no shuffle) of ~40 candidates per example, then evenly spaced in true redshift.
    valid = df.where(F.col(pdf_col).isNotNull() & _finite(t))
    n_valid = int(sum(out["nz_true"]))
    frac = min(1.0, 40.0 * n_examples / max(n_valid, 1))
    cand = (valid.sample(fraction=frac, seed=17).select(F.col(pdf_col), t.alias("t"), z.alias("z"))
            .limit(40 * n_examples).collect())
    cand.sort(key=lambda r: r["t"])
    pick = np.unique(np.linspace(0, len(cand) - 1, min(n_examples, len(cand))).round().astype(int)) if cand else []
    ex = [cand[i] for i in pick]
    return out | {
        "hist2d": hist2d, "zmax": zmax,
        "example_pdfs": np.array([r[0] for r in ex], dtype=float).reshape(len(ex), k),
        "example_truth": np.array([r["t"] for r in ex], dtype=float),
        "example_z": np.array([np.nan if r["z"] is None else r["z"] for r in ex], dtype=float),
    }
