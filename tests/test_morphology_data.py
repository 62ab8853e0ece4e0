"""Data side of the morphology capability (issue 8): rendering, masks, inputs, cutout tables."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from lsst_spark_ml.errors import CatalogError, ConfigError
from lsst_spark_ml.morphology import cutouts as C
from lsst_spark_ml.morphology import inputs as I
from lsst_spark_ml.morphology import masks as M
from lsst_spark_ml.morphology import render as R

UNIFORM = {c: 1.0 for c in R.CLASSES}


def _no_gaps(settings):
    return dataclasses.replace(settings, nan_gap_probability=0.0)


def _r50(img):
    """Curve-of-growth half-light radius (pixels) about the stamp centre; noise averages out in the sum."""
    s = img.shape[-1]
    yy, xx = np.indices(img.shape)
    r = np.hypot(yy - (s - 1) / 2, xx - (s - 1) / 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(np.nan_to_num(img).ravel()[order])
    rr = r[order]
    total = cum[rr <= s / 2][-1]
    return rr[np.searchsorted(cum, 0.5 * total)]


def _concentration(img):
    s = img.shape[-1]
    yy, xx = np.indices(img.shape)
    r = np.hypot(yy - (s - 1) / 2, xx - (s - 1) / 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(np.nan_to_num(img).ravel()[order])
    rr = r[order]
    total = cum[rr <= s / 2][-1]
    return rr[np.searchsorted(cum, 0.8 * total)] / max(rr[np.searchsorted(cum, 0.2 * total)], 0.5)


def _asymmetry(img):
    x = np.nan_to_num(img)
    s = x.shape[-1]
    yy, xx = np.indices(x.shape)
    inside = np.hypot(yy - (s - 1) / 2, xx - (s - 1) / 2) < s / 2
    return np.abs(x - np.rot90(x, 2))[inside].sum() / np.abs(x)[inside].sum()


def _second_moment_radius(img, radius=12):
    x = np.clip(np.nan_to_num(img), 0, None)
    s = x.shape[-1]
    yy, xx = np.indices(x.shape) - (s - 1) / 2
    w = x * (np.hypot(yy, xx) < radius)
    return np.sqrt(((yy ** 2 + xx ** 2) * w).sum() / w.sum())


# ------------------------------------------------------------------------------------------- render
def test_render_is_deterministic_per_seed_and_well_shaped():
    s = R.RenderSettings.survey()
    a = R.render_galaxies(6, seed=3, settings=s, class_weights=UNIFORM)
    b = R.render_galaxies(6, seed=3, settings=s, class_weights=UNIFORM)
    tail = R.render_galaxies(3, seed=3, settings=s, class_weights=UNIFORM, start=3)
    other = R.render_galaxies(6, seed=4, settings=s, class_weights=UNIFORM)
    assert a.images.shape == (6, 5, 64, 64) and a.images.dtype == np.float32
    assert a.labels.dtype == np.int64 and a.labels.min() >= 0 and a.labels.max() < len(R.CLASSES)
    assert np.array_equal(a.images, b.images, equal_nan=True) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.images[3:], tail.images, equal_nan=True)   # galaxy i depends on (seed, i) only
    assert not np.array_equal(a.images, other.images, equal_nan=True)
    for col in ("class", "bulge_to_total", "n_bulge", "n_disk", "r_half", "q_disk", "inclination_deg",
                "position_angle_deg", "arm_count", "arm_strength", "knot_fraction", "n_knots", "mag_r",
                "psf_fwhm", "redshift", "nan_gap_bands"):
        assert col in a.params.columns, col
    assert list(a.params["class"]) == [R.CLASSES[k] for k in a.labels]
    with pytest.raises(ConfigError, match="unknown class"):
        R.render_galaxies(1, 0, s, class_weights={"Sd": 1.0})


def test_fast_path_matches_galsim_convolution():
    """The per-component Fourier path equals GalSim's own Convolve(...).drawImage to 1e-3 of the peak."""
    import galsim
    for settings, beta, fwhm in ((R.RenderSettings.labelled(), 3.5, 0.7), (R.RenderSettings.survey(), 0.0, 1.1)):
        g = R._grid(settings.size, settings.pixel_scale, settings.oversample, settings.pad)
        bulge = galsim.Sersic(n=4.0, half_light_radius=0.4).shear(q=0.7, beta=0.4 * galsim.radians)
        disk = galsim.Exponential(half_light_radius=1.5).shear(q=0.4, beta=1.0 * galsim.radians)
        dx, dy = 0.3, -0.2
        os_ = settings.oversample
        disk_img = disk.drawImage(nx=g.n, ny=g.n, scale=g.fine, method="no_pixel", offset=(dx * os_, dy * os_),
                                  dtype=np.float32).array
        ft = 0.4 * R._transform(bulge, g, dx * settings.pixel_scale, dy * settings.pixel_scale) \
            + 0.6 * np.fft.rfft2(disk_img)
        img = R._to_pixels(ft * R._psf_transform(settings, g, fwhm, beta), g, settings.size, os_)
        psf = galsim.Moffat(beta=beta, fwhm=fwhm) if settings.psf_model == "moffat" else galsim.Kolmogorov(fwhm=fwhm)
        ref = galsim.Convolve(0.4 * bulge + 0.6 * disk, psf).drawImage(
            nx=settings.size, ny=settings.size, scale=settings.pixel_scale, offset=(dx, dy)).array
        assert np.abs(img - ref).max() < 1e-3 * ref.max()


def test_strong_view_colour_shift_is_the_templates_k_correction():
    """augment.REDSHIFT_COLOUR_SHIFT is the renderer's own CWW k-correction, z 0.07 -> 0.30, template mean."""
    from lsst_spark_ml.morphology import augment
    from lsst_spark_ml.morphology.render import _colour_table
    zs, table = _colour_table()
    i0, i1 = int(np.argmin(abs(zs - 0.07))), int(np.argmin(abs(zs - 0.30)))
    dm = (-2.5 * np.log10(table[:, i1] / table[:, i0])).mean(0)
    np.testing.assert_allclose(augment.REDSHIFT_COLOUR_SHIFT, dm, atol=2e-3)
    assert dm[0] > 0.3                                  # g - r reddens by ~0.46 mag


def test_nan_gaps_follow_their_probability():
    s = dataclasses.replace(R.RenderSettings.survey(32), nan_gap_probability=0.3)
    r = R.render_galaxies(160, 8, s, class_weights=UNIFORM)
    has_nan = np.isnan(r.images).any(axis=(2, 3))                       # (n, 5)
    bits = np.array([[(v >> b) & 1 for b in range(5)] for v in r.params["nan_gap_bands"]], bool)
    assert np.array_equal(has_nan, bits)
    frac = has_nan.mean()
    assert abs(frac - 0.3) < 4 * np.sqrt(0.3 * 0.7 / has_nan.size)       # 800 band draws
    assert 0 < has_nan.sum(axis=0).min()                                  # every band gets gaps
    assert not np.isnan(np.where(has_nan[:, :, None, None], 0, r.images)).any()
    clean = R.render_galaxies(40, 8, _no_gaps(R.RenderSettings.survey(32)), class_weights=UNIFORM)
    assert not np.isnan(clean.images).any()


def test_class_weights_are_respected():
    s = _no_gaps(R.RenderSettings.survey(32))
    r = R.render_galaxies(240, 9, s, class_weights={"E": 3.0, "Sc": 1.0})
    assert set(r.params["class"]) == {"E", "Sc"}
    frac_e = (r.params["class"] == "E").mean()
    assert abs(frac_e - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 240)
    default = R.render_galaxies(240, 10, s).params["class"].value_counts()
    assert default.get("Sb", 0) + default.get("Sc", 0) > 2 * (default.get("E", 0) + default.get("Irr", 0))


def test_survey_domain_is_fainter_smaller_and_blurrier():
    # The same seed gives the same galaxies (class, structure) observed under the two sets of conditions.
    lab = R.render_galaxies(60, 5, _no_gaps(R.RenderSettings.labelled()))
    sur = R.render_galaxies(60, 5, _no_gaps(R.RenderSettings.survey()))
    assert np.array_equal(lab.labels, sur.labels)
    assert (sur.params["mag_r"] > lab.params["mag_r"]).all()
    assert (sur.params["r_half"] < lab.params["r_half"]).all()
    assert (sur.params["psf_fwhm"] > lab.params["psf_fwhm"]).all()
    assert set(sur.params["psf_model"]) == {"kolmogorov"} and set(lab.params["psf_model"]) == {"moffat"}
    flux_l = np.nansum(lab.images[:, 1], axis=(1, 2))
    flux_s = np.nansum(sur.images[:, 1], axis=(1, 2))
    assert (flux_s < flux_l).mean() > 0.95 and np.median(flux_s / flux_l) < 0.3
    r50_l = np.array([_r50(im[1]) for im in lab.images])
    r50_s = np.array([_r50(im[1]) for im in sur.images])
    assert np.median(r50_s) < 0.9 * np.median(r50_l)
    noise_l = np.array([I.noise_sigma(im[1]) for im in lab.images])
    noise_s = np.array([I.noise_sigma(im[1]) for im in sur.images])
    assert np.median(noise_s) > np.median(noise_l)
    assert np.median(flux_s / noise_s) < 0.3 * np.median(flux_l / noise_l)
    # PSF from the images: near point-like ellipticals are broader in the survey domain.
    point = {"E": 1.0}
    pl = R.render_galaxies(12, 6, dataclasses.replace(_no_gaps(R.RenderSettings.labelled()), r_half=(0.05, 0.05),
                                                      mag_r=(16, 16)), class_weights=point)
    ps = R.render_galaxies(12, 6, dataclasses.replace(_no_gaps(R.RenderSettings.survey()), r_half=(0.05, 0.05),
                                                      mag_r=(16, 16)), class_weights=point)
    ml = np.array([_second_moment_radius(im[1]) for im in pl.images])
    ms = np.array([_second_moment_radius(im[1]) for im in ps.images])
    assert (ms > ml).all() and np.median(ms) > 1.15 * np.median(ml)


def test_classes_differ_measurably_in_the_images():
    r = R.render_galaxies(180, 11, _no_gaps(R.RenderSettings.labelled()), class_weights=UNIFORM)
    conc = np.array([_concentration(im[1]) for im in r.images])
    asym = np.array([_asymmetry(im[1]) for im in r.images])
    med_c = {c: np.median(conc[r.labels == k]) for k, c in enumerate(R.CLASSES)}
    med_a = {c: np.median(asym[r.labels == k]) for k, c in enumerate(R.CLASSES)}
    assert med_c["E"] > med_c["Sc"] + 0.5 and med_c["E"] > med_c["Irr"] + 1.0
    assert med_a["Irr"] > max(v for c, v in med_a.items() if c != "Irr") + 0.1
    # colours: bulge-dominated red, late types blue (g - r from the latent magnitudes)
    gr = r.params["mag_total_g"] - r.params["mag_total_r"]
    assert gr[r.params["class"] == "E"].median() > gr[r.params["class"] == "Sc"].median() + 0.2


# ------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("method", M.METHODS)
def test_aicc_picks_one_component_on_noise_and_more_on_two_populations(method):
    rng = np.random.default_rng(1)
    for seed in range(3):
        gmm, scores = M.fit_background_mixture(rng.normal(3.0, 2.0, 4096), rng=seed, method=method)
        assert gmm.n_components == 1 and np.argmin(scores) == 0
        two = np.concatenate([rng.normal(0, 1, 3000), rng.normal(6, 1.5, 1000)])
        gmm2, _ = M.fit_background_mixture(two, rng=seed, method=method)
        assert gmm2.n_components > 1
        assert abs(gmm2.means_[np.argmax(gmm2.weights_), 0]) < 0.3   # dominant component = background
    x = rng.normal(size=(500, 1))
    gmm, _ = M.fit_background_mixture(x[:, 0], rng=0, sample=None, method=method)
    p = 3 * gmm.n_components - 1
    assert M.aicc(gmm, x) == pytest.approx(gmm.aic(x) + 2 * p * (p + 1) / (500 - p - 1))


def test_object_mask_finds_the_centred_galaxy_and_nothing_in_noise():
    for settings in (R.RenderSettings.labelled(), R.RenderSettings.survey()):
        r = R.render_galaxies(3, 12, settings, class_weights=UNIFORM)
        for im in r.images:
            m = M.object_mask(im)
            assert m.dtype == bool and m.shape == (64, 64)
            assert m[31:33, 31:33].all() and m.sum() >= M.MIN_PIXELS
            # one region per band, each holding the centre, so their OR is one connected region
            assert ndimage.label(m, structure=np.ones((3, 3)))[1] == 1
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 1, (5, 64, 64)).astype(np.float32)
    assert not M.object_mask(noise).any()
    # the region nearest the centre wins over a brighter one at the edge
    yy, xx = np.indices((64, 64))
    scene = noise.copy()
    scene += 6 * np.exp(-((yy - 34) ** 2 + (xx - 30) ** 2) / (2 * 3.0 ** 2))
    scene += 60 * np.exp(-((yy - 8) ** 2 + (xx - 55) ** 2) / (2 * 4.0 ** 2))
    m = M.object_mask(scene)
    assert m[34, 30] and not m[8, 55]
    # an all-NaN band is skipped, NaN pixels never enter the mask
    scene[2] = np.nan
    scene[0, :, :5] = np.nan
    m2 = M.object_mask(scene)
    assert m2[34, 30] and not m2[8, 55]
    nm = M.nan_masks(scene)
    assert nm.dtype == np.float32 and nm[2].all() and nm[0, :, :5].all() and not nm[1].any()


# ------------------------------------------------------------------------------------------- inputs
def test_build_inputs_flags_bad_rows_and_never_raises():
    r = R.render_galaxies(2, 13, _no_gaps(R.RenderSettings.labelled()), class_weights={"Sb": 1.0})
    good, gapped = r.images[0], r.images[1].copy()
    gapped[3, :, 50:] = np.nan
    all_nan = good.copy()
    all_nan[4] = np.nan
    noise = np.random.default_rng(3).normal(0, 1, (5, 64, 64)).astype(np.float32)
    rows = [good, good[:, :32, :32], None, [good[0], good[1], None, good[3], good[4]], good[:4], all_nan,
            "not an image", noise, gapped, list(good), np.zeros((6, 64, 64)), good[:, :, :60]]
    x, flags = I.build_inputs(rows, expected_size=64)
    assert x.shape == (len(rows), 11, 64, 64) and x.dtype == np.float32 and flags.dtype == np.int32
    expect = [0, I.BAD_SHAPE, I.MISSING_BAND, I.MISSING_BAND, I.MISSING_BAND, I.ALL_NAN_BAND, I.BAD_SHAPE,
              I.NO_OBJECT, 0, 0, I.BAD_SHAPE, I.BAD_SHAPE]
    assert flags.tolist() == expect
    for i, f in enumerate(flags):
        if f & I.BAD_ROW:
            assert not x[i].any()
    assert x[7].any() and not x[7, 5].any()                     # NO_OBJECT keeps its tensor
    np.testing.assert_array_equal(x[0], x[9])                   # list of bands == array
    # channel layout: 5 normalised bands, object mask, 5 NaN masks; NaN -> 0 in the bands
    g = x[8]
    assert np.array_equal(g[6:], np.isnan(gapped).astype(np.float32))
    assert (g[3][:, 50:] == 0).all() and np.isfinite(g).all()
    assert set(np.unique(g[5])) == {0.0, 1.0} and g[5, 31:33, 31:33].all()
    assert 0.7 < np.std(x[7, 1]) < 0.95                         # unit noise -> std(arcsinh(N(0, 1))) = 0.83
    # flags from decoding pass through; an array batch of the wrong size never raises
    x2, f2 = I.build_inputs(np.stack([good, good]), 64, flags_in=np.array([I.BAD_DTYPE, 0]))
    assert f2.tolist() == [I.BAD_DTYPE, 0] and not x2[0].any() and x2[1].any()
    x3, f3 = I.build_inputs(np.stack([good, good]), expected_size=32)
    assert (f3 == I.BAD_SHAPE).all() and x3.shape == (2, 11, 32, 32) and not x3.any()
    x4, f4 = I.build_inputs([None, "x"])
    assert x4.shape == (2, 11, 0, 0) and f4.tolist() == [I.MISSING_BAND, I.BAD_SHAPE]
    # cached masks give the same tensor
    x5, _ = I.build_inputs([good], 64, masks=I.object_masks(good[None]))
    np.testing.assert_array_equal(x5[0], x[0])
    assert I.describe_flags(I.MISSING_BAND | I.NO_OBJECT) == ["MISSING_BAND", "NO_OBJECT"]


# ------------------------------------------------------------------------------------------- cutouts
@pytest.fixture(scope="module")
def small_set():
    s = dataclasses.replace(R.RenderSettings.survey(32), nan_gap_probability=0.3)
    return R.render_galaxies(30, 14, s, class_weights=UNIFORM)


def _write(path, r, dtype="float16", **kw):
    n = len(r)
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(10, 12, n), rng.uniform(-5, -3, n)
    return C.write_cutouts(str(path), r.images, np.arange(n) + 100, ra, dec, labels=r.labels, dtype=dtype, **kw)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_write_check_decode_round_trip(tmp_path, small_set, dtype):
    path = _write(tmp_path / "t", small_set, dtype, rows_per_file=12, rows_per_group=5)
    info = C.check_cutout_table(path, expected_size=32)
    assert info.shape == (5, 32, 32) and info.dtype == dtype and info.bands == R.BANDS
    assert info.n_rows == 30 and len(info.files) == 3 and info.n_row_groups == 3 + 3 + 2
    images, flags, rest = C.read_cutouts(path)
    assert not flags.any()
    order = np.argsort(rest["objectId"].to_numpy())
    expect = small_set.images.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(images[order], expect)      # NaN in the same places (equal_nan via testing)
    assert np.isnan(images).any()
    assert rest["label"].to_numpy()[order].tolist() == small_set.labels.tolist()
    assert rest["label_name"].to_numpy()[order].tolist() == [R.CLASSES[k] for k in small_set.labels]
    assert rest["cutout_dtype"].eq(dtype).all()
    for f in info.files:                                       # sorted on the sky within and across files
        hp = pq.read_table(f, columns=["_healpix_29"]).column(0).to_numpy()
        assert (np.diff(hp) >= 0).all()
    md = pq.read_metadata(info.files[0])
    assert json.loads(md.metadata[C.METADATA_KEY]) == {"bands": list(R.BANDS), "shape": [5, 32, 32],
                                                         "dtype": dtype, "format_version": 1}
    assert pq.read_schema(os.path.join(path, "_common_metadata")).metadata[C.METADATA_KEY]
    assert md.row_group(0).column(3).statistics is None        # no 10 KB min/max of the cutout column


def test_check_cutout_table_names_the_file_and_field(tmp_path, small_set):
    base = _write(tmp_path / "base", small_set, rows_per_file=15)
    f32 = _write(tmp_path / "f32", small_set, "float32")
    small = R.render_galaxies(3, 15, R.RenderSettings.survey(16))
    s16 = _write(tmp_path / "s16", small)

    def mixed(name, other):
        d = tmp_path / name
        shutil.copytree(base, d)
        shutil.copy(os.path.join(other, "part-00000.parquet"), d / "part-00009.parquet")
        return str(d)

    with pytest.raises(CatalogError, match=r"part-00009\.parquet.*'dtype'|'dtype'.*part-00009\.parquet"):
        C.check_cutout_table(mixed("mixdtype", f32))
    with pytest.raises(CatalogError, match=r"'shape'.*part-00009\.parquet"):
        C.check_cutout_table(mixed("mixshape", s16))

    src = os.path.join(base, "part-00000.parquet")
    table = pq.read_table(src)

    def with_meta(name, **changes):
        meta = json.loads(table.schema.metadata[C.METADATA_KEY])
        meta.update(changes)
        d = tmp_path / name
        d.mkdir()
        pq.write_table(table.replace_schema_metadata({C.METADATA_KEY: json.dumps(meta).encode()}),
                       d / "part-00000.parquet")
        return str(d), str(d / "part-00000.parquet")

    for name, change, field in (("dt64", {"dtype": "float64"}, "dtype"), ("rect", {"shape": [5, 32, 16]}, "shape"),
                                ("nb", {"shape": [4, 32, 32]}, "shape"), ("bands", {"bands": list("ugriz")}, "bands")):
        d, f = with_meta(name, **change)
        with pytest.raises(CatalogError) as e:
            C.check_cutout_table(d)
        assert f in str(e.value) and f"'{field}'" in str(e.value)
    d = tmp_path / "nometa"
    d.mkdir()
    pq.write_table(table.replace_schema_metadata(None), d / "part-00000.parquet")
    with pytest.raises(CatalogError, match=r"nometa/part-00000\.parquet has no 'lsst_spark_ml.cutouts'"):
        C.check_cutout_table(str(d))
    with pytest.raises(CatalogError, match="expects 64x64"):
        C.check_cutout_table(base, expected_size=64)
    # rows stored as float32 under a float16 label: caught from the footer statistics
    d = tmp_path / "rowdtype"
    d.mkdir()
    t32 = pq.read_table(os.path.join(f32, "part-00000.parquet"))
    meta = json.loads(t32.schema.metadata[C.METADATA_KEY]) | {"dtype": "float16"}
    pq.write_table(t32.replace_schema_metadata({C.METADATA_KEY: json.dumps(meta).encode()}), d / "p.parquet")
    with pytest.raises(CatalogError, match=r"p\.parquet.*'cutout_dtype'"):
        C.check_cutout_table(str(d))
    with pytest.raises(CatalogError, match="does not exist"):
        C.check_cutout_table(str(tmp_path / "missing"))


def test_decode_flags_bad_rows_and_never_raises(small_set):
    a = small_set.images[0]
    b16, b32 = a.astype("<f2").tobytes(), a.astype("<f4").tobytes()
    small16 = a[:, :16, :16].astype("<f2").tobytes()
    rows = [  # (bytes, shape, dtype, expected flag)
        (b16, [5, 32, 32], "float16", 0),
        (b16[:-10], [5, 32, 32], "float16", I.BAD_SHAPE),            # truncated
        (None, [5, 32, 32], "float16", I.MISSING_BAND),              # null cutout
        (b32, [5, 32, 32], "float32", 0),
        (small16, [5, 16, 16], "float16", I.BAD_SHAPE),
        (a[:4].astype("<f2").tobytes(), [4, 32, 32], "float16", I.MISSING_BAND),
        (b32, [5, 32, 32], "float64", I.BAD_DTYPE),
        (b16, None, "float16", I.BAD_SHAPE),
        (b16, [5, 32, 32], None, I.BAD_DTYPE),
    ]
    cut = pa.array([r[0] for r in rows], pa.binary())
    shp = pa.array([r[1] for r in rows], pa.list_(pa.int32()))
    dts = pa.array([r[2] for r in rows], pa.string())
    want = np.array([r[3] for r in rows])
    for args in ((cut, shp, dts), (pd.Series([r[0] for r in rows]), pd.Series([r[1] for r in rows]),
                                   pd.Series([r[2] for r in rows]))):
        out, flags = C.decode_cutouts(*args, expected_shape=(5, 32, 32))
        assert flags.tolist() == want.tolist()
        np.testing.assert_array_equal(out[0], a.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(out[3], a)
        assert not out[flags != 0].any() and out.dtype == np.float32
    # fast path (all good, one buffer) == per-row path, also on a sliced Arrow array (offset != 0)
    good = pa.array([b16, b16, b16], pa.binary())
    fast, ff = C.decode_cutouts(good.slice(1), pa.array([[5, 32, 32]] * 2, pa.list_(pa.int32())),
                                pa.array(["float16"] * 2), (5, 32, 32))
    assert not ff.any()
    np.testing.assert_array_equal(fast[1], a.astype(np.float16).astype(np.float32))
    # a flagged row feeds build_inputs as a zero tensor without a mask fit
    x, f = I.build_inputs(out[:3], 32, flags_in=flags[:3])
    assert f.tolist()[1:] == [I.BAD_SHAPE, I.MISSING_BAND] and not x[1:].any()


def test_rows_per_batch_follows_the_bytes():
    assert C.rows_per_batch((5, 480, 480), "float16", 64) == 3
    assert C.rows_per_batch((5, 64, 64), "float16", 64) == 221
    assert C.rows_per_batch((5, 480, 480), "float32", 256) < C.rows_per_batch((5, 480, 480), "float16", 256) \
        < C.rows_per_batch((5, 480, 480), "float16", 256, channels_out=0)
    assert C.rows_per_batch((5, 4096, 4096), "float32", 1) == 1
    assert C.bytes_per_cutout((5, 64, 64), "float16") == 40960


def test_make_sets_keeps_unlabelled_labels_out_of_training(tmp_path):
    from lsst_spark_ml.training.loader import ParquetLoader
    paths = C.make_sets(str(tmp_path / "sets"), n_labelled=20, n_unlabelled=10, n_test=8, size=32, seed=5,
                        label_fraction=0.5, rows_per_group=4)
    lab, unl, test = (C.read_cutouts(paths[k])[2] for k in ("labelled", "unlabelled", "test"))
    assert len(lab) == 10 and len(unl) == 20 and len(test) == 8
    assert lab["label"].notna().all() and (lab["label"] == lab["eval_label"]).all()
    assert unl["label"].isna().all() and unl["label_name"].isna().all() and unl["eval_label"].notna().all()
    assert set(unl["domain"]) == {"labelled", "survey"} and set(test["domain"]) == {"survey"}
    assert test["label"].notna().all()
    ids = np.concatenate([lab["objectId"], unl["objectId"], test["objectId"]])
    assert len(np.unique(ids)) == len(ids)
    params = pd.read_parquet(paths["params_unlabelled"])
    assert len(params) == 20 and set(params["objectId"]) == set(unl["objectId"])
    manifest = json.load(open(paths["manifest"]))
    assert manifest["sets"]["labelled"]["n_rows"] == 10
    assert sum(manifest["sets"]["test"]["class_counts"].values()) == 8
    labels = [int(v) for batch in ParquetLoader(paths["labelled"], ["label"], 4, shuffle=False, rank=0,
                                                world_size=1) for v in batch["label"]]
    assert sorted(labels) == sorted(lab["label"].astype(int).tolist())
    with pytest.raises(ValueError, match="nulls"):
        list(ParquetLoader(paths["unlabelled"], ["label"], 4, shuffle=False, rank=0, world_size=1))
