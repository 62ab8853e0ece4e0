"""Photo-z metrics: numpy reference against brute force and known values, Spark against the reference."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from lsst_spark_ml.errors import CatalogError
from lsst_spark_ml.metrics import reference as ref
from lsst_spark_ml.metrics.photoz import pdf_metrics, plot_inputs, point_metrics

N = 20_000
EDGES = np.linspace(-0.0001, 3.02, 65)        # MBRNN-like 64 bins, not aligned with the Brier grid on purpose


def gaussian_pdfs(mu, sigma, edges):
    """Bin masses of N(mu, sigma) truncated to the bin range, normalised to sum 1."""
    cdf = stats.norm.cdf((edges[None, :] - mu[:, None]) / sigma[:, None])
    p = np.diff(cdf, axis=1)
    return p / p.sum(axis=1, keepdims=True)


def synthetic(n=N, seed=1, outliers=0.04):
    """Realistic photo-z: scatter 0.02-0.06 (1+z), a small bias, 4% catastrophic outliers, float32 PDFs."""
    rng = np.random.default_rng(seed)
    z_true = np.clip(rng.gamma(2.0, 0.35, n), 0.01, 2.99)
    sig = rng.uniform(0.02, 0.06, n) * (1 + z_true)
    z_mean = z_true + 0.004 * (1 + z_true) + sig * rng.standard_normal(n)
    bad = rng.random(n) < outliers
    z_mean[bad] = rng.uniform(0.05, 2.9, bad.sum())
    z_mean = np.clip(z_mean, 0.0, 3.0)
    pdf = gaussian_pdfs(z_mean, sig, EDGES).astype(np.float32)
    return {"z_mean": z_mean, "redshift": z_true, "pdf": pdf}


def to_spark(spark, d, null_pdf=(), null_truth=(), nan_truth=(), null_z=()):
    """DataFrame (z_mean double, redshift double, pdf array<float>) with the given rows nulled."""
    n, k = d["pdf"].shape
    mask = lambda rows: np.isin(np.arange(n), rows)                         # noqa: E731
    truth = d["redshift"].copy()
    truth[list(nan_truth)] = np.nan
    pdf = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * k),
                                   pa.array(d["pdf"].ravel()), mask=pa.array(mask(null_pdf)))
    table = pa.table({"z_mean": pa.array(d["z_mean"], mask=mask(null_z)),
                      "redshift": pa.array(truth, mask=mask(null_truth)), "pdf": pdf})
    return spark.createDataFrame(table)


def nulled_arrays(d, null_pdf, null_truth, nan_truth, null_z):
    """The numpy view the reference gets of the same rows: every kind of missing value is NaN."""
    z, t, p = d["z_mean"].copy(), d["redshift"].copy(), d["pdf"].astype(np.float64)
    z[list(null_z)] = np.nan
    t[list(null_truth) + list(nan_truth)] = np.nan
    p[list(null_pdf)] = np.nan
    return z, t, p


BAD = {"null_pdf": [3, 50, 777], "null_truth": [10, 11], "nan_truth": [20, 50], "null_z": [5, 6, 7, 10]}


@pytest.fixture(scope="module")
def data(spark):
    d = synthetic()
    z, t, p = nulled_arrays(d, **BAD)
    df = to_spark(spark, d, **BAD).cache()
    yield {"df": df, "z": z, "t": t, "p": p}
    df.unpersist()


# ---------------------------------------------------------------- reference kernels (no Spark)

def test_kernels_match_brute_force():
    """Each vectorised kernel against a direct per-row computation, on uneven bins and out-of-range truths."""
    rng = np.random.default_rng(7)
    edges = np.cumsum(np.r_[0.1, rng.uniform(0.02, 0.2, 30)])
    p = rng.dirichlet(np.full(30, 0.3), 200)
    t = rng.uniform(edges[0] - 0.2, edges[-1] + 0.2, 200)
    w = np.diff(edges)
    grid = (0.0, 3.0, 0.01)
    g = ref.brier_edges(grid)
    pit, crps = ref.pit_values(p, edges, t), ref.crps_values(p, edges, t)
    brier = ref.brier_values(p, edges, t, grid)
    sq, at = ref.cde_terms(p, edges, t)
    for i in range(len(p)):
        cdf = np.r_[0.0, np.cumsum(p[i])]
        ti = np.clip(t[i], edges[0], edges[-1])
        assert pit[i] == pytest.approx(np.interp(ti, edges, cdf), abs=1e-12)
        # (F - H)^2 is quadratic between knots, so Simpson's rule on each knot interval is exact
        knots = np.unique(np.r_[edges, ti])
        a, b = knots[:-1], knots[1:]
        mid = 0.5 * (a + b)
        f = lambda z: (np.interp(z, edges, cdf) - (mid >= ti)) ** 2               # noqa: E731  H per interval
        simpson = np.sum((b - a) / 6 * (f(a) + 4 * f(mid) + f(b)))
        assert crps[i] == pytest.approx(simpson, rel=1e-9)
        q = np.diff(np.interp(g, edges, cdf))
        y = np.zeros_like(q)
        y[min(int(np.clip(t[i], 0, 3) / 0.01 + 1e-9), len(q) - 1)] = 1
        assert brier[i] == pytest.approx(np.sum((q - y) ** 2), rel=1e-9)
        k = min(np.searchsorted(edges, ti, side="right") - 1, len(w) - 1)
        assert at[i] == pytest.approx(p[i, k] / w[k], rel=1e-12)
        assert sq[i] == pytest.approx(np.sum(p[i] ** 2 / w), rel=1e-12)


def test_reference_known_values():
    edges = np.linspace(0.0, 3.0, 301)
    flat = np.where((edges[:-1] >= 1.0 - 1e-9) & (edges[1:] <= 2.0 + 1e-9), 0.01, 0.0)[None, :]   # U(1, 2)
    t = np.array([1.5])
    assert ref.crps_values(flat, edges, t)[0] == pytest.approx(1 / 12, rel=1e-12)    # (b - a) / 12
    assert ref.brier_values(flat, edges, t)[0] == pytest.approx(1 - 1 / 100, rel=1e-12)   # 1 - 1/M, M cells
    sq, at = ref.cde_terms(flat, edges, t)
    assert sq[0] - 2 * at[0] == pytest.approx(-1.0, rel=1e-12)
    assert ref.pit_values(flat, edges, np.array([1.25, -5.0, 9.0])) == pytest.approx([0.25, 0.0, 1.0])
    m = ref.point_metrics([0.5, 1.0, 2.0], [0.5, 1.0, 2.0])
    assert m["point_bias"] == m["point_outlier_rate"] == m["catastrophic_fraction"] == m["sigma_nmad"] == 0


def test_anderson_darling_matches_scipy():
    u = np.r_[np.random.default_rng(3).beta(1.2, 1.0, 3000), 1e-30, 1.0]     # two PIT outliers, clipped
    clipped = np.clip(u, ref.PIT_OUTLIER_EPS, 1 - ref.PIT_OUTLIER_EPS)
    expected = stats.goodness_of_fit(stats.uniform, clipped, known_params={"loc": 0, "scale": 1},
                                     statistic="ad", n_mc_samples=1, rng=0).statistic
    assert ref.anderson_darling_uniform(u) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- Spark against the reference

def test_point_metrics_match_reference(data):
    got = point_metrics(data["df"])
    exp = ref.point_metrics(data["z"], data["t"])
    assert (got["n"], got["n_invalid"]) == (exp["n"], exp["n_invalid"]) == (N - 7, 7)
    # percentile_approx at accuracy 1e5 >= n returns an order statistic next to numpy's interpolation
    # point; neighbouring order statistics of ez near these quantiles are ~1e-5 apart, so 1e-4 allows a
    # few ranks while the values themselves are 4e-3 to 6e-2.
    for key in ("point_bias", "point_stats_iqr", "point_stats_sigma_mad", "sigma_nmad"):
        assert got[key] == pytest.approx(exp[key], abs=1e-4), key
    # rates: a threshold moved by ~1e-5 can flip at most a couple of rows
    for key in ("point_outlier_rate", "catastrophic_fraction"):
        assert got[key] == pytest.approx(exp[key], abs=3 / N), key
    # exact aggregates, only the summation order differs
    for key in ("mean_bias", "sigma"):
        assert got[key] == pytest.approx(exp[key], rel=1e-9), key
    assert 0.02 < exp["point_outlier_rate"] < 0.1 and exp["catastrophic_fraction"] > 0.02   # outliers present


def test_perfect_point_estimates(spark):
    z = np.array([0.1, 0.5, 1.0, 2.0, np.nan, 2.5])
    df = spark.createDataFrame([(float(v), float(v)) for v in z], "z_mean double, redshift double")
    m = point_metrics(df)
    assert (m["n"], m["n_invalid"]) == (5, 1)
    for key in ("point_bias", "point_stats_iqr", "point_stats_sigma_mad", "point_outlier_rate",
                "sigma_nmad", "catastrophic_fraction", "mean_bias", "sigma"):
        assert m[key] == 0, key


def test_pdf_metrics_match_reference(data):
    got = pdf_metrics(data["df"], bin_edges=EDGES)
    exp = ref.pdf_metrics(data["p"], data["t"], EDGES)
    assert (got["n"], got["n_invalid"]) == (exp["n"], exp["n_invalid"]) == (N - 6, 6)
    # same per-row kernel, Spark only changes the summation order
    for key in ("crps", "brier", "cde_loss"):
        assert got[key] == pytest.approx(exp[key], rel=1e-9), key
    assert got["pit_outlier_rate"] == exp["pit_outlier_rate"] > 0.01
    # KS from 1e4 PIT bins of width h: midpoint of bounds h apart, error <= h/2
    assert got["pit_ks"] == pytest.approx(exp["pit_ks"], abs=5e-5)
    # CvM, AD: mean rank per bin; bounds h sum(c^2)/(2n) ~ 6e-4 and ~3e-3 here (module docstring of photoz)
    assert got["pit_cvm"] == pytest.approx(exp["pit_cvm"], abs=1e-3)
    assert got["pit_ad"] == pytest.approx(exp["pit_ad"], abs=5e-3)
    # the 100-bin histogram is summed from the 1e4 fine bins; floating point at a bin edge may move a value
    assert sum(got["pit_hist"]) == exp["n"]
    assert np.abs(np.subtract(got["pit_hist"], exp["pit_hist"])).sum() <= 2


def test_pit_of_calibrated_pdfs_is_uniform(spark):
    """Truths drawn from the PDFs: KS below its 0.1% critical value; a 2x overconfident set fails."""
    rng = np.random.default_rng(11)
    mu = rng.uniform(0.1, 2.8, N)
    sig = rng.uniform(0.03, 0.08, N) * (1 + mu)
    a, b = (EDGES[0] - mu) / sig, (EDGES[-1] - mu) / sig
    truth = stats.truncnorm.rvs(a, b, loc=mu, scale=sig, random_state=rng)
    edges = np.linspace(EDGES[0], EDGES[-1], 301)   # fine bins: piecewise-linear CDF error ~1e-3 at most
    ks_crit = 1.949 / np.sqrt(N)                      # Kolmogorov 0.1% critical value
    good = pdf_metrics(to_spark(spark, {"z_mean": mu, "redshift": truth,
                                        "pdf": gaussian_pdfs(mu, sig, edges)}), bin_edges=edges)
    assert good["pit_ks"] < ks_crit
    assert good["pit_cvm"] < 1.168 and good["pit_ad"] < 6.0          # 0.1% critical values of W^2, A^2
    assert good["pit_outlier_rate"] < 1e-3
    bad = pdf_metrics(to_spark(spark, {"z_mean": mu, "redshift": truth,
                                       "pdf": gaussian_pdfs(mu, sig / 2, edges)}), bin_edges=edges)
    assert bad["pit_ks"] > 5 * ks_crit and bad["pit_ad"] > 100
    assert bad["crps"] > good["crps"]


def test_pdf_known_values(spark):
    edges = np.linspace(0.0, 3.0, 301)
    flat = np.where((edges[:-1] >= 1.0 - 1e-9) & (edges[1:] <= 2.0 + 1e-9), 0.01, 0.0)   # U(1, 2)
    df = spark.createDataFrame([(flat.tolist(), 1.5), (flat.tolist(), 1.5), (None, 1.0)],
                               "pdf array<double>, redshift double")
    m = pdf_metrics(df, bin_edges=edges)
    assert (m["n"], m["n_invalid"]) == (2, 1)
    assert m["crps"] == pytest.approx(1 / 12, rel=1e-12)
    assert m["brier"] == pytest.approx(0.99, rel=1e-12)
    assert m["cde_loss"] == pytest.approx(-1.0, rel=1e-12)
    assert m["pit_hist"][50] == 2 and m["pit_outlier_rate"] == 0


def test_bad_inputs_are_named(spark, data):
    df = spark.createDataFrame([([0.5, 0.5], 1.0)], "pdf array<double>, redshift double")
    with pytest.raises(CatalogError, match="2 probabilities|64 probabilities"):
        pdf_metrics(df, bin_edges=EDGES)
    with pytest.raises(CatalogError, match="zspec"):
        point_metrics(data["df"], truth_col="zspec")


# ---------------------------------------------------------------- plot inputs and figures

def test_plot_inputs_and_figures(data, tmp_path):
    from lsst_spark_ml.plots.photoz import write_evaluation_plots
    inp = plot_inputs(data["df"], bin_edges=EDGES, n_examples=6)
    z, t, p = data["z"], data["t"], data["p"]
    pn, ok = ref.normalise_pdfs(p)                               # float32 rows sum to 1 only to ~1e-7
    assert inp["nz_pdf"] == pytest.approx(pn[ok].sum(axis=0), rel=1e-9)
    assert np.array_equal(inp["nz_true"], np.histogram(t[np.isfinite(t)], EDGES)[0])
    assert np.array_equal(inp["nz_zmean"], np.histogram(z[np.isfinite(z)], EDGES)[0])
    assert np.array_equal(inp["pit_hist"], ref.pdf_metrics(p, t, EDGES)["pit_hist"])
    zmax = inp["zmax"]
    both = np.isfinite(z) & np.isfinite(t) & (z >= 0) & (z <= zmax) & (t >= 0) & (t <= zmax)
    assert inp["hist2d"].sum() == both.sum()
    h2, _, _ = np.histogram2d(t[both], z[both], bins=150, range=[[0, zmax], [0, zmax]])
    assert np.abs(inp["hist2d"] - h2).sum() <= 4                # floor(z n / zmax) vs numpy's edges
    assert inp["example_pdfs"].shape == (6, 64) and np.isfinite(inp["example_truth"]).all()

    paths = write_evaluation_plots(inp, EDGES, tmp_path, metrics=ref.pdf_metrics(p, t, EDGES))
    assert sorted(x.name for x in paths) == ["example_pdfs.png", "nz.png", "pit.png", "zphot_vs_zspec.png"]
    for x in paths:
        assert x.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and x.stat().st_size > 10_000


PLOTS_PROBE = """
import sys

import matplotlib

matplotlib.use("svg")       # stands for a notebook's inline backend: anything but Agg
import numpy as np

from lsst_spark_ml.plots.influence import influence_colour_space, targets_colour_space
from lsst_spark_ml.plots.ood import score_histograms

out = sys.argv[1]
rng = np.random.default_rng(0)
mag = rng.normal(22, 1, (300, 6))
bands = list("ugrizy")
score_histograms({"galaxy": rng.gamma(2, 0.3, 500), "star": rng.gamma(4, 0.5, 200)},
                 {"tercile_1": 0.4, "tercile_2": 0.8, "flag": 1.5}, f"{out}/ood.png")
influence_colour_space(mag, rng.uniform(0, 3, 300), bands, rng.random(300) < 0.05,
                       {"mag": mag[0], "helpful": rng.random(300) < 0.03, "harmful": rng.random(300) < 0.03,
                        "id": 7}, f"{out}/influence.png")
targets_colour_space(mag[:100], mag[100:], mag[:10], bands, f"{out}/targets.png")
assert matplotlib.get_backend() == "svg", f"a plot switched the backend to {matplotlib.get_backend()}"
assert "matplotlib.pyplot" not in sys.modules, "a plot imported pyplot"
print("probe ok")
"""


def test_plots_leave_pyplot_and_the_backend_alone(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", PLOTS_PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "probe ok" in proc.stdout, proc.stderr[-3000:]
    for name in ("ood.png", "influence.png", "targets.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
