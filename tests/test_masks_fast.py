"""The batched EM object masks (``masks.method="em"``) against the sklearn reference, and the exact shortcuts
(threshold order statistics, nearest region) against the direct computation."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from lsst_spark_ml.morphology import inputs as I
from lsst_spark_ml.morphology import masks as M
from lsst_spark_ml.morphology import render as R


def _mixture_sample(seed, weights, means, sds, n):
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(weights), size=n, p=weights)
    return rng.normal(np.asarray(means)[comp], np.asarray(sds)[comp])


@pytest.mark.parametrize("weights,means,sds", [((0.7, 0.3), (0.0, 6.0), (1.0, 1.5)),
                                               ((0.5, 0.3, 0.2), (-4.0, 2.0, 10.0), (1.0, 0.7, 2.0))])
def test_em_recovers_the_parameters_of_known_mixtures(weights, means, sds):
    samples = [_mixture_sample(s, weights, means, sds, 4000) for s in range(6)]
    k = len(weights)
    for mix, scores in M.fit_mixtures_em(samples, max_components=k, patience=None):
        assert mix.n_components == k and len(scores) == k and mix.converged
        o = np.argsort(mix.means)
        # ~4 standard errors at N = 4000: se(w) <= 0.008, se(mean) <= 0.1 (the sd-2 component at w = 0.2),
        # relative se(sd) <= 0.03; measured over 20 seeds the worst errors are 0.017, 0.18 and 0.065
        np.testing.assert_allclose(mix.weights[o], weights, atol=0.03)
        np.testing.assert_allclose(mix.means[o], means, atol=0.3)
        np.testing.assert_allclose(np.sqrt(mix.variances[o]), sds, rtol=0.1)
    # with K free (up to 10, no early stop) AICc still finds the true K
    assert [m.n_components for m, _ in M.fit_mixtures_em(samples, patience=None)] == [k] * len(samples)


def test_em_scores_are_sklearns_aicc_of_the_returned_mixture():
    x = _mixture_sample(1, (0.75, 0.25), (0.0, 6.0), (1.0, 1.5), 700)
    for patience in (2, None):
        gmm, scores = M.fit_background_mixture(x, sample=None, patience=patience)
        k = gmm.n_components
        assert scores[k - 1] == min(scores) and scores[k - 1] == pytest.approx(M.aicc(gmm, x[:, None]), rel=1e-9)
    # the reference fits the same model: same K, background and AICc to the EM's tolerance
    ref, ref_scores = M.fit_background_mixture(x, sample=None, method="sklearn")
    assert ref.n_components == k
    np.testing.assert_allclose(np.sort(gmm.means_[:, 0]), np.sort(ref.means_[:, 0]), atol=0.05)
    np.testing.assert_allclose(scores[:2], ref_scores[:2], atol=1.0)
    with pytest.raises(ValueError, match="method"):
        M.fit_background_mixture(x, method="gmm")


def test_aicc_picks_one_component_on_noise_and_more_on_two_populations_in_one_batch():
    rng = np.random.default_rng(4)
    noise = [rng.normal(3.0, 2.0, 512) for _ in range(100)]
    two = [np.r_[rng.normal(0, 1, 384), rng.normal(6, 1.5, 128)] for _ in range(40)]
    res = M.fit_mixtures_em(noise + two)
    k_noise = np.array([m.n_components for m, _ in res[:100]])
    # AICc itself over-fits pure noise now and then: 4.0 % of 1000 samples here, 3.6 % of 500 with sklearn
    assert (k_noise == 1).mean() >= 0.9
    assert all(m.n_components > 1 and abs(m.background_mean) < 0.5 for m, _ in res[100:])


@pytest.fixture(scope="module")
def renders():
    return np.concatenate([R.render_galaxies(16, 41, R.RenderSettings.labelled()).images,
                           R.render_galaxies(16, 42, R.RenderSettings.survey()).images])


def test_masks_agree_with_sklearn_as_well_as_sklearn_agrees_with_itself(renders):
    masks = {m: np.zeros((len(renders), 64, 64), bool) for m in M.METHODS}
    diffs = []
    for i, im in enumerate(renders):
        gens = {m: np.random.default_rng(0) for m in M.METHODS}     # object_mask's default seed, per method
        for band in im.astype(np.float64):
            finite = np.isfinite(band)
            if not finite.any():
                continue
            thr = {m: M.background_threshold(band, M.fit_background_mixture(band[finite], rng=gens[m],
                                                                              method=m)[0]) for m in M.METHODS}
            for m in M.METHODS:
                masks[m][i] |= M.region_nearest_centre(finite & (band > thr[m]))
            diffs.append(abs(thr["em"] - thr["sklearn"]) / I.noise_sigma(band))
    em, sk = masks["em"], masks["sklearn"]
    np.testing.assert_array_equal(em, M.object_masks_batch(renders))   # the steps above are object_mask's
    iou = (em & sk).sum(axis=(1, 2)) / np.maximum((em | sk).sum(axis=(1, 2)), 1)
    # Noise floor, from 200 labelled + 200 survey renders: sklearn with seed 1 against seed 0 gives median
    # IoU 0.941 (labelled) and 0.885 (survey); over random draws of 16 + 16 of them the median is 0.919,
    # its 1st percentile 0.886. The EM with seed 0 against sklearn with seed 0 (same subsamples): 0.958,
    # 1st percentile 0.924. 0.89 fails an EM that agrees worse than a reseeded reference would 99 % of the time.
    assert np.median(iou) > 0.89
    assert em.any(axis=(1, 2)).all() and sk.any(axis=(1, 2)).all()
    # Thresholds: median |difference| / sky sigma, 0.257 between sklearn seeds (5th percentile over
    # 16 + 16 draws: 0.205), 0.054 EM against sklearn (99th percentile 0.111).
    assert np.median(diffs) < 0.2


def test_batched_masks_equal_one_by_one(renders):
    x = renders[[0, 1, 2, 16, 17, 18]].copy()
    x[1, 2] = np.nan                  # all-NaN band
    x[2, 3] = 5.0                     # constant band
    x[3, 0, :, :58] = np.nan          # 384 finite pixels: a subsample of another size
    x[4, 4, 10:12] = np.inf
    batch = M.object_masks_batch(x)
    assert batch.shape == (6, 64, 64) and batch.dtype == bool
    one = np.stack([M.object_mask(im) for im in x])
    np.testing.assert_array_equal(batch, one)
    np.testing.assert_array_equal(M.object_masks_batch(x[::-1])[::-1], batch)     # order does not matter
    np.testing.assert_array_equal(I.object_masks(x), batch)
    inputs, flags = I.build_inputs(x, 64)
    ok = (flags & I.BAD_ROW) == 0
    assert ok.tolist() == [True, False, True, True, True, True]
    np.testing.assert_array_equal(inputs[ok, I.N_BANDS] > 0, batch[ok])
    # and the mixtures: a sample's fit does not depend on the rest of the call
    rng = np.random.default_rng(0)
    samples = [rng.choice(b[np.isfinite(b)], 512, replace=False).astype(np.float64) for b in x[0]]
    together = M.fit_mixtures_em(samples)
    for v, (mix, scores) in zip(samples, together):
        (alone, alone_scores), = M.fit_mixtures_em([v])
        assert scores == alone_scores
        np.testing.assert_array_equal(mix.means, alone.means)


def test_all_nan_and_constant_bands_do_not_crash():
    nan = np.full((32, 32), np.nan, dtype=np.float32)
    const = np.full((32, 32), 2.5, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no divide-by-zero / invalid-value warnings either
        for method in M.METHODS:
            assert not M.band_object_mask(nan, method=method).any()
            assert not M.band_object_mask(const, method=method).any()
            assert not M.object_mask(np.stack([nan, const, nan, const, const]), method=method).any()
            gmm, scores = M.fit_background_mixture(const, method=method)
            assert gmm.n_components == 1 and gmm.means_[0, 0] == pytest.approx(2.5) and len(scores) == 1
        assert M.object_masks_batch(np.full((2, 5, 16, 16), np.nan)).shape == (2, 16, 16)
        assert M.object_masks_batch(np.zeros((0, 5, 16, 16))).shape == (0, 16, 16)
        (mix, _), = M.fit_mixtures_em([np.array([1.0, 2.0])])       # too few values for any K: no model
        assert mix is None
    with pytest.raises(ValueError, match="finite"):
        M.fit_background_mixture(nan)


def _direct_threshold(band, mean):
    v = band[np.isfinite(band)]
    below = v[v < mean]
    return mean if below.size == 0 else mean + (mean - np.percentile(below, 20))


def _direct_region(above, min_pixels):
    labels, n = ndimage.label(above)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    big = np.flatnonzero(sizes >= min_pixels)
    if big.size == 0:
        return np.zeros(above.shape, bool)
    d = M._centre_distance(above.shape)
    flat = labels.ravel()
    dist = [d[flat == lab].min() for lab in big]
    best = [lab for lab, dd in zip(big, dist) if dd == min(dist)]
    # ties: the region holding the first such pixel in flat order
    return labels == flat[min(np.flatnonzero((flat == lab) & (d == min(dist)))[0] for lab in best)]


def test_threshold_and_region_shortcuts_equal_the_direct_computation():
    rng = np.random.default_rng(7)
    yy, xx = np.indices((300, 300))
    for trial in range(12):
        band = rng.normal(0, 1, (300, 300)) + 40 * np.exp(-((yy - 150) ** 2 + (xx - 140) ** 2) / 300.0)
        band[:, : 10 * trial] = np.nan
        if trial % 3 == 2:
            band = np.round(band, 1)     # ties at the order statistics
        finite = np.isfinite(band)
        v = band[finite]
        mean = float(np.quantile(v, rng.uniform(0.3, 0.8)))
        good_hint = rng.choice(v, 512, replace=False)
        bad_hint = good_hint + 3.0       # points the window at the wrong ranks: the count check must catch it
        for hint in (None, good_hint, bad_hint):
            assert M._threshold_at(band, finite, mean, hint) == pytest.approx(_direct_threshold(band, mean),
                                                                              rel=1e-12, abs=1e-12)
    for trial in range(30):
        # blobs of noise above thresholds of varied height: many small regions, ties, empty masks
        above = ndimage.gaussian_filter(rng.normal(size=(rng.integers(16, 90), rng.integers(16, 90))), 1.5) \
            > rng.uniform(0.0, 0.5)
        for min_pixels in (1, 25, 200):
            np.testing.assert_array_equal(M.region_nearest_centre(above, min_pixels),
                                          _direct_region(above, min_pixels))
