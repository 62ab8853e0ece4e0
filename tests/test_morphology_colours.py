"""Colours measured on cutouts and the colour shift between the labelled set and the survey
(lsst_spark_ml.morphology.colours), and how training uses it (morphology.colour_shift_source)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lsst_spark_ml.morphology import augment
from lsst_spark_ml.morphology.colours import mask_fluxes, measured_shift

FLUX = np.array([1.0, 2.0, 2.6, 3.0, 3.2])          # a red galaxy's grizy fluxes, r = 2


def _blobs(n, mags, rng, size=24, sky=5.0):
    """Gaussian galaxies with grizy fluxes FLUX x 10^(-0.4 mags) x a random brightness, on sky with noise."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    profile = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 2.0 ** 2)
    profile /= profile.sum()
    f = FLUX * 10 ** (-0.4 * np.asarray(mags))
    bright = rng.uniform(300, 3000, n)
    imgs = bright[:, None, None, None] * f[None, :, None, None] * profile + sky
    imgs += rng.normal(0, 0.05, imgs.shape)
    mask = np.broadcast_to(profile > profile.max() * 0.01, (n, size, size))
    return imgs, mask


def test_mask_fluxes_subtract_the_sky_and_flag_empty_masks():
    rng = np.random.default_rng(0)
    imgs, mask = _blobs(5, np.zeros(5), rng)
    mask = mask.copy()
    mask[4] = False
    f = mask_fluxes(imgs, mask)
    assert np.isnan(f[4]).all()
    ratio = f[:4] / f[:4, 1:2]                         # colours do not depend on the brightness
    np.testing.assert_allclose(ratio, np.broadcast_to(FLUX / FLUX[1], (4, 5)), rtol=0.02)


def test_measured_shift_recovers_a_known_reddening_with_r_fixed():
    rng = np.random.default_rng(1)
    shift = (0.30, 0.0, -0.05, -0.10, -0.02)
    a, ma = _blobs(200, np.zeros(5), rng)
    b, mb = _blobs(300, shift, rng)
    got = measured_shift(mask_fluxes(a, ma), mask_fluxes(b, mb))
    assert got[1] == 0.0
    np.testing.assert_allclose(got, shift, atol=0.01)
    # and nothing where nothing changed
    c, mc = _blobs(300, np.zeros(5), rng)
    np.testing.assert_allclose(measured_shift(mask_fluxes(a, ma), mask_fluxes(c, mc)), 0, atol=0.01)


def test_measured_shift_needs_enough_usable_rows():
    good = np.ones((50, 5))
    bad = np.ones((50, 5))
    bad[5:, 2] = -1.0                                  # noise-dominated fluxes are not colours
    with pytest.raises(ValueError, match="5 survey rows"):
        measured_shift(good, bad)


def test_the_strong_view_draws_from_the_given_colour_vector():
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.training.morphology import strong_views
    ms = load_config(None, ["morphology.colour_shift=true"]).morphology
    mags = (0.5, 0.0, -0.1, -0.1, -0.1)
    lab, _ = strong_views(ms, mags)
    x = torch.randn(6, 11, 16, 16)
    want = augment.strong(x, torch.Generator().manual_seed(2), colour_shift=True, colour_mags=mags)
    assert torch.equal(lab(x, torch.Generator().manual_seed(2)), want)
    assert not torch.equal(want, augment.strong(x, torch.Generator().manual_seed(2), colour_shift=True))


def test_colour_shift_source_is_checked():
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.errors import ConfigError
    with pytest.raises(ConfigError, match="colour_shift_source"):
        load_config(None, ["morphology.colour_shift_source=photoz"])
