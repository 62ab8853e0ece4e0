import numpy as np

from lsst_spark_ml.config import FeatureSettings
from lsst_spark_ml.features import flags as F
from lsst_spark_ml.features.photometry import build_features, to_magnitudes
from lsst_spark_ml.features.scaling import MinMaxScaler

BANDS = list("ugrizy")
FS = FeatureSettings()


def test_flux_to_magnitude_and_error():
    flux = np.full((1, 6), 10 ** (-0.4 * (20 - 31.4)))  # 20 AB mag in nJy
    err = flux * 0.01
    p = to_magnitudes(flux, err, "flux", BANDS, FS)
    np.testing.assert_allclose(p.mag, 20.0, atol=1e-9)
    np.testing.assert_allclose(p.mag_err, 2.5 / np.log(10) * 0.01, rtol=1e-9)
    assert p.flags[0] == 0


def test_colours_and_errors_match_hand_computation():
    mag = np.array([[22.0, 21.5, 21.0, 20.8, 20.7, 20.6]])
    err = np.array([[0.1, 0.05, 0.03, 0.03, 0.04, 0.08]])
    X, flags, _ = build_features(mag, err, "mag", BANDS, FS)
    np.testing.assert_allclose(X[0, :5], [0.5, 0.5, 0.2, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(X[0, 5], np.log10(np.hypot(0.1, 0.05)), rtol=1e-6)
    assert X[0, -1] == np.float32(20.8)
    assert flags[0] == 0


def test_nondetection_policy_sets_bits_and_never_produces_nan():
    flux = np.full((6, 6), 1000.0)
    err = np.full((6, 6), 10.0)
    flux[0, 0] = -5.0          # negative flux: non-detection in u
    flux[1, 2] = np.nan        # missing r
    flux[2, 3] = np.inf        # missing i
    err[3, 1] = np.nan         # bad error in g
    flux[4, :] = np.nan        # nothing measured
    flux[5, 5] = 1.0           # S/N 0.1 in y: non-detection
    X, flags, _ = build_features(flux, err, "flux", BANDS, FS)
    assert np.isfinite(X).all()
    assert flags[0] == 1 << (F.NONDETECT_SHIFT + 0)
    assert flags[1] == 1 << (F.MISSING_SHIFT + 2)
    assert flags[2] == 1 << (F.MISSING_SHIFT + 3)
    assert flags[3] == 1 << (F.BAD_ERROR_SHIFT + 1)
    assert flags[4] & F.NO_ESTIMATE
    assert flags[5] == 1 << (F.NONDETECT_SHIFT + 5)
    assert F.describe(int(flags[0]), BANDS) == ["NONDETECT_u"]


def test_sentinel_magnitudes_become_limits():
    mag = np.array([[99.0, 24.0, 23.5, 23.0, 22.9, 22.8]])
    err = np.array([[26.6, 0.1, 0.05, 0.05, 0.06, 0.1]])
    p = to_magnitudes(mag, err, "mag", BANDS, FS)
    assert p.mag[0, 0] == FS.nondetect_limits["u"]
    assert p.mag_err[0, 0] == FS.nondetect_mag_err
    assert p.flags[0] == 1


def test_scaler_maps_training_range_to_unit_interval_and_flags_outliers():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    s = MinMaxScaler.fit(X)
    Z, out = s.transform(X)
    # the 0.5-99.5 percentile span maps to [-1, 1]; nothing in a normal sample lies beyond [-2, 2]
    np.testing.assert_allclose(np.percentile(Z, [0.5, 99.5], axis=0), [[-1] * 4, [1] * 4], atol=1e-5)
    assert not out.any()
    Z2, out2 = s.transform(X[:2] + 100)
    assert out2.all() and Z2.max() == 2.0   # far outside: flagged and clipped
    s2 = MinMaxScaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(s2.transform(X)[0], Z)
