"""Labelled OOD set: cosmoDC2 layout, determinism, LSST error model, and the astrophysical loci of each kind."""
from __future__ import annotations

import time

import h5py
import numpy as np
import pandas as pd
import pytest

from lsst_spark_ml.io.datasets import dc2_paths
from lsst_spark_ml.ood import labelled_ood as L

BANDS = "ugrizy"
N = 20_000


@pytest.fixture(scope="module")
def sets():
    return {k: L.generate(k, N, seed=11) for k in L.KINDS}


@pytest.fixture(scope="module")
def dc2():
    with h5py.File(dc2_paths()["validation"], "r") as f:
        g = f["photometry"]
        return {k: g[k][:] for k in g.keys()}


def colour(df, a, b):
    return df[f"mag_{a}_lsst"].to_numpy(np.float64) - df[f"mag_{b}_lsst"].to_numpy(np.float64)


def detected(df, *bands):
    return np.all([df[f"mag_{b}_lsst"].to_numpy() < 90 for b in bands], axis=0)


def test_layout_matches_cosmodc2(sets, dc2):
    for kind, df in sets.items():
        assert set(df.columns) == set(dc2) | {"kind"}
        for b in BANDS:
            assert df[f"mag_{b}_lsst"].dtype == dc2[f"mag_{b}_lsst"].dtype
            assert df[f"mag_err_{b}_lsst"].dtype == dc2[f"mag_err_{b}_lsst"].dtype
        assert (df["kind"] == kind).all() and len(df) == N
        assert df["id"].is_unique and df["id"].min() > dc2["id"].max()
    assert (sets["star"]["redshift"] == 0).all()
    zq, zh = sets["quasar"]["redshift"], sets["highz_galaxy"]["redshift"]
    assert zq.min() >= 0.3 and zq.max() <= 4.0
    assert zh.min() > dc2["redshift"].max() and zh.max() <= 5.0   # beyond the training range


def test_deterministic_per_seed(sets):
    a = L.generate("quasar", 300, seed=5)
    pd.testing.assert_frame_equal(a, L.generate("quasar", 300, seed=5))
    assert not np.allclose(a["mag_r_lsst"], L.generate("quasar", 300, seed=6)["mag_r_lsst"])
    both = L.generate_all(300, seed=5)
    assert len(both) == 900 and set(both["kind"]) == set(L.KINDS)
    pd.testing.assert_frame_equal(both[both["kind"] == "quasar"].reset_index(drop=True), a)
    assert len(L.generate("star", 0, seed=1)) == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        L.generate("galaxy", 10, 0)
    with pytest.raises(ValueError, match="error_model"):
        L.generate("star", 10, 0, error_model="sdss")


def test_detections_finite_and_nondetections_flagged(sets):
    nd_err = L.nondetection_err()
    for df in sets.values():
        for b in BANDS:
            m, e = df[f"mag_{b}_lsst"].to_numpy(), df[f"mag_err_{b}_lsst"].to_numpy()
            det = m < 90
            assert np.all(np.isfinite(m) & np.isfinite(e))
            assert np.all((m[det] > 10) & (m[det] < 32))
            # S/N >= 1 for every detection: the features module would drop anything noisier anyway.
            assert np.all((e[det] >= 0.005) & (e[det] <= 2.5 / np.log(10) + 1e-4))
            assert np.all(m[~det] == L.NONDETECT_MAG)
            assert np.allclose(e[~det], nd_err[b])
        assert detected(df, "i").all()           # i is drawn from the DC2 range (i < 25.3)
    # r is only lost where the Lyman break has moved through it (z > ~4.6 galaxies).
    for kind in ("star", "quasar"):
        assert detected(sets[kind], "r").all()


def test_errors_follow_ivezic_formula(sets):
    """Reported errors = Ivezic et al. 2019 eq. 5 plus the 0.005 floor, at the observed magnitude."""
    for df in sets.values():
        for b in "gri":
            m = df[f"mag_{b}_lsst"].to_numpy(np.float64)
            det = m < 90
            x = 10 ** (0.4 * (m[det] - L.M5_10YR[b]))
            g = L.GAMMA[b]
            expect = np.sqrt((0.04 - g) * x + g * x * x + 0.005 ** 2)
            np.testing.assert_allclose(df[f"mag_err_{b}_lsst"].to_numpy()[det], expect, rtol=1e-4)
    # Hand check: a source at the 5-sigma depth has S/N ~ 5, i.e. an error of ~0.2 mag.
    x, g = 1.0, L.GAMMA["i"]
    assert abs(np.sqrt((0.04 - g) * x + g * x * x + 0.005 ** 2) - 0.2) < 0.002


def test_noise_amplitude_matches_reported_error():
    df = L.generate("star", 20_000, seed=2, i_mags=np.full(5, 24.0))
    i = df["mag_i_lsst"].to_numpy(np.float64)
    assert abs(np.median(i) - 24.0) < 0.005
    assert np.std(i) == pytest.approx(np.median(df["mag_err_i_lsst"]), rel=0.05)


def test_i_magnitudes_follow_cosmodc2(sets, dc2):
    q = [5, 25, 50, 75, 95]
    ref = np.percentile(dc2["mag_i_lsst"], q)
    for df in sets.values():
        np.testing.assert_allclose(np.percentile(df["mag_i_lsst"], q), ref, atol=0.1)


def test_dc2_error_model_matches_dc2_galaxies(dc2):
    """error_model='dc2' gives errors like the ID galaxies' at the same magnitude (no error-based tell)."""
    df = L.generate("quasar", N, seed=3, error_model="dc2")
    for b in "ugri":
        for lo in (23.5, 24.5):
            a = (dc2[f"mag_{b}_lsst"] > lo) & (dc2[f"mag_{b}_lsst"] < lo + 0.5)
            s = (df[f"mag_{b}_lsst"] > lo) & (df[f"mag_{b}_lsst"] < lo + 0.5)
            assert np.median(df[f"mag_err_{b}_lsst"][s]) == pytest.approx(
                np.median(dc2[f"mag_err_{b}_lsst"][a]), rel=0.2)


def test_blackbody_colours_hand_checked():
    m = -2.5 * np.log10(L.blackbody_flux(np.array([3500.0, 5800.0, 10000.0, 30000.0])))
    gr, ri = m[:, 1] - m[:, 2], m[:, 2] - m[:, 3]
    # The Sun (5772 K) has g-r ~ 0.44, r-i ~ 0.11 (AB, Willmer 2018); a blackbody is close.
    assert 0.35 < gr[1] < 0.55 and 0.05 < ri[1] < 0.25
    assert np.all(np.diff(gr) < 0) and np.all(np.diff(ri) < 0)     # hotter is bluer
    assert gr[-1] < -0.3                                              # Rayleigh-Jeans tail limit ~ -0.4


def test_stars_on_blackbody_locus(sets):
    df = sets["star"]
    bright = df["mag_i_lsst"].to_numpy() < 22.5
    gr, ri = colour(df, "g", "r")[bright], colour(df, "r", "i")[bright]
    t = np.exp(np.linspace(np.log(3000), np.log(30000), 2000))
    track = -2.5 * np.log10(L.blackbody_flux(t))
    tgr, tri = track[:, 1] - track[:, 2], track[:, 2] - track[:, 3]
    dist = np.sqrt((gr[:, None] - tgr) ** 2 + (ri[:, None] - tri) ** 2).min(axis=1)
    assert bright.sum() > 1000 and np.quantile(dist, 0.95) < 0.05
    # A field population: mostly F/G/K/M stars, few hot ones.
    all_gr = colour(df, "g", "r")
    assert 0.8 < np.mean(all_gr > 0.25) < 0.97 and np.mean(all_gr < -0.2) < 0.03


def test_low_z_quasars_show_uv_excess(sets):
    q, s = sets["quasar"], sets["star"]
    low = (q["redshift"].to_numpy() < 2.2) & detected(q, "u", "g")
    assert np.mean(colour(q, "u", "g")[low] < 0.6) > 0.9
    # At the same g-r, quasars are bluer in u-g than stars (the classic UV-excess selection).
    qs = low & (colour(q, "g", "r") > 0) & (colour(q, "g", "r") < 0.4)
    ss = detected(s, "u", "g") & (colour(s, "g", "r") > 0) & (colour(s, "g", "r") < 0.4)
    assert np.median(colour(s, "u", "g")[ss]) - np.median(colour(q, "u", "g")[qs]) > 0.3


def test_lyman_break_dropouts(sets):
    def u_drop(df):
        return ~detected(df, "u") | (colour(df, "u", "g") > 1.5)

    def g_drop(df):
        return ~detected(df, "g") | (colour(df, "g", "r") > 0.8)

    q, h = sets["quasar"], sets["highz_galaxy"]
    zq, zh = q["redshift"].to_numpy(), h["redshift"].to_numpy()
    assert np.mean(u_drop(q)[zq > 3.7]) > 0.85 and np.mean(u_drop(q)[zq < 2.2]) < 0.01
    assert np.mean(g_drop(q)[zq > 3.8]) > 0.95
    assert np.mean(u_drop(h)[zh > 3.5]) > 0.8
    assert np.mean(g_drop(h)[zh > 4.0]) > 0.95


def test_quasar_line_and_igm_hand_checked():
    ew0 = np.array([[l[2] for l in L.QSO_LINES]])
    with_lines = -2.5 * np.log10(L.quasar_flux(np.array([0.3]), np.array([-0.5]), ew0))[0]
    no_halpha = ew0.copy()
    no_halpha[0, -1] = 0.0
    without = -2.5 * np.log10(L.quasar_flux(np.array([0.3]), np.array([-0.5]), no_halpha))[0]
    # H-alpha at z = 0.3 lies at 8534 A, in z; observed EW ~ 253 A against a ~1,000 A wide band: ~ -0.2 mag.
    dz_mag = (with_lines[4] - with_lines[3]) - (without[4] - without[3])
    assert -0.4 < dz_mag < -0.1
    # IGM: at z = 3.9 Ly-alpha sits at 5960 A; the u band (< 4100 A) sees only the Lyman continuum/forest.
    f = L.quasar_flux(np.array([3.9]), np.array([-0.5]), ew0)[0]
    assert f[0] < 0.05 and f[1] < 0.5


def test_generation_is_fast(sets):
    t0 = time.perf_counter()
    df = L.generate_all(34_000, seed=9)      # ~10^5 objects once the tables are built
    assert len(df) == 102_000
    assert time.perf_counter() - t0 < 5.0
