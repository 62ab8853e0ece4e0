"""Asteroid taxonomy (issue 7): mixture math, real space-classy labelled set, estimators on Spark, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lsst_spark_ml.asteroids import mixture as mx
from lsst_spark_ml.asteroids.colours import SOLAR_AB
from lsst_spark_ml.asteroids.labels import COMPLEXES, SEVEN_CLASSES, to_complex, to_seven

BANDS = ["g", "r", "i", "z", "y"]


# ----------------------------------------------------------------------------- numpy: exact marginalisation

def _toy_params(rng, k=2, d=4):
    covs = np.stack([np.eye(d) * 0.01 + 0.004 * (j + 1) for j in range(k)])
    return mx.MixtureParams(np.full(k, 1.0 / k), rng.normal(0, 0.3, (k, d)), covs, np.arange(k))


def test_marginal_likelihood_is_exact_for_a_missing_reference_band():
    from scipy.stats import multivariate_normal
    rng = np.random.default_rng(0)
    p = _toy_params(rng)
    mags = np.array([[20.1, np.nan, 19.8, 19.9, 20.3]])     # reference band r (index 1) missing
    errs = np.array([[0.02, 0.05, 0.03, 0.04, 0.06]])
    code = int(mx.pattern_codes(np.isfinite(mags))[0])
    bands, a = mx.projection(code, 5, ref=1)
    d, noise = mx.observed_colours(mags, errs, bands)
    for k, (logp, *_rest) in enumerate(mx.component_terms(p, d, noise, a, want_stats=False)):
        want = multivariate_normal(a @ p.means[k], a @ p.covs[k] @ a.T + noise[0]).logpdf(d[0])
        assert logp[0] == pytest.approx(want, rel=1e-10)


def test_em_with_missing_bands_and_errors_recovers_the_mixture():
    rng = np.random.default_rng(1)
    truth = _toy_params(rng)
    n = 8000
    comp = rng.choice(2, n, p=truth.weights)
    colours = np.array([rng.multivariate_normal(truth.means[k], truth.covs[k]) for k in comp])
    mags = np.insert(colours, 1, 0.0, axis=1) + rng.normal(20, 1, (n, 1))
    errs = rng.uniform(0.01, 0.08, mags.shape)
    mags = mags + rng.standard_normal(mags.shape) * errs
    mags[rng.random(mags.shape) < 0.25] = np.nan               # a quarter of all bands missing
    p = mx.MixtureParams(np.array([0.5, 0.5]), truth.means + 0.1, np.stack([np.eye(4) * 0.05] * 2), np.arange(2))
    for _ in range(80):
        p = mx.m_step(p, mx.e_step_stats(p, mags, errs, 1), 1e-7)
    assert np.abs(p.means - truth.means).max() < 0.02
    assert np.abs(p.covs - truth.covs).max() < 0.004
    # Both linear-algebra paths (LAPACK for small blocks, index loops for large ones) agree.
    small = mx.flatten_stats(mx.e_step_stats(p, mags[:200], errs[:200], 1))
    old, mx.SMALL = mx.SMALL, 0
    try:
        big = mx.flatten_stats(mx.e_step_stats(p, mags[:200], errs[:200], 1))
    finally:
        mx.SMALL = old
    np.testing.assert_allclose(small, big, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- labels and the real labelled set

def test_class_mapping():
    assert [to_seven(x) for x in ("Ch", "Sq", "Xk", "Mk", "Z", "Vw", "A", "Ld")] == \
        ["C", "S", "X", "X", "D", "V", "S", "L"]
    assert [to_complex(x) for x in ("K", "L", "B", "P", "T")] == ["S", "S", "C", "X", "D"]
    assert to_seven("SD") is None and to_complex(None) is None
    assert set(map(to_complex, SEVEN_CLASSES)) == set(COMPLEXES)


@pytest.fixture(scope="module")
def classy_table():
    from lsst_spark_ml.asteroids.spectra import labelled_set
    return labelled_set(BANDS)


def test_labelled_set_from_real_classy_spectra(classy_table):
    t = classy_table
    assert len(t) > 2900                                      # 2,983 spectra; every Mahlke class_ maps
    assert set(t["class7"]) == set(SEVEN_CLASSES)
    full = t[t["n_bands"] == 5]
    assert len(full) > 900                                    # visible + near-IR spectra give all of grizy
    gr = (full["refl_g"] - full["refl_r"]).groupby(full["class7"]).median()
    iz = (full["refl_i"] - full["refl_z"]).groupby(full["class7"]).median()
    assert gr["S"] > gr["C"] + 0.05                           # S-types are redder than C-types in g - r
    assert iz["V"] < iz["S"] - 0.2                            # the deep 1-um pyroxene band of V-types in z
    # Spectra starting at 0.8 um or later cannot give g: missing, never invented.
    assert t["refl_g"].isna().sum() > 1500


def test_band_synthesis_coverage_rule():
    from lsst_spark_ml.asteroids.spectra import synthesise_bands
    wave = np.round(np.arange(0.45, 2.4501, 0.025), 3)
    flat = np.ones((3, len(wave)))
    flat[1, wave < 0.5] = np.nan                              # starts at 0.5 um: g misses ~58 % -> missing
    flat[2, wave > 1.0] = np.nan                              # ends at 1.0 um: y misses ~23 % -> extrapolated
    syn = synthesise_bands(wave, flat, BANDS)
    np.testing.assert_allclose(syn.refl_mag[0], 0.0, atol=1e-9)   # a flat reflectance has solar colours
    assert np.isnan(syn.refl_mag[1, 0]) and np.isfinite(syn.refl_mag[1, 1:]).all()
    assert np.isfinite(syn.refl_mag[2]).all() and syn.extra_err[2, 4] > syn.extra_err[0, 4]


# ----------------------------------------------------------------------------- Spark

def _wide(table: pd.DataFrame, rng, err=0.02) -> pd.DataFrame:
    """Labelled asteroids as one row per object: apparent magnitudes = reflectance + Sun + distance modulus."""
    out = pd.DataFrame({"id": np.arange(len(table)), "class7": table["class7"], "complex": table["complex"]})
    for b in BANDS:
        m = table[f"refl_{b}"].to_numpy() + SOLAR_AB["lsst"][b] + 15.0
        out[f"mag_{b}"] = m + rng.standard_normal(len(m)) * err
        out[f"err_{b}"] = err
    return out


@pytest.fixture(scope="module")
def labelled_df(spark, classy_table):
    rng = np.random.default_rng(5)
    return spark.createDataFrame(_wide(classy_table, rng)).repartition(2).cache()


@pytest.fixture(scope="module")
def semi_model(labelled_df):
    from pyspark.ml import Pipeline
    from lsst_spark_ml.estimators.asteroids import ReflectanceFeatures, SemiSupervisedAsteroidGMM
    train = labelled_df.where("id % 10 < 7")
    est = SemiSupervisedAsteroidGMM(labelCol="class7", maxIter=25, tol=1e-5, componentsPerClass=1)
    return Pipeline(stages=[ReflectanceFeatures(bands=BANDS), est]).fit(train)


def test_semisupervised_classifies_held_out_real_spectra(semi_model, labelled_df):
    pdf = semi_model.transform(labelled_df.where("id % 10 >= 7")).toPandas()
    assert len(pdf) == labelled_df.where("id % 10 >= 7").count()
    full = (pdf["asteroid_flags"] & 0xFF) == 0
    acc = (pdf.loc[full, "asteroid_complex"] == pdf.loc[full, "complex"]).mean()
    assert acc > 0.8, acc                                     # complete grizy at 0.02 mag: ~0.9
    probs = np.stack(pdf.loc[full, "probability"].to_numpy())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert list(semi_model.stages[-1].getClasses()) == list(SEVEN_CLASSES)


def test_pipeline_model_saves_as_json_and_reloads(semi_model, labelled_df, tmp_path):
    from pyspark.ml import PipelineModel
    path = str(tmp_path / "semi")
    semi_model.write().overwrite().save(path)
    files = [p for p in (tmp_path / "semi").rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
    for f in files:
        f.read_text(encoding="utf-8")                         # text (JSON) only: nothing pickled
    again = PipelineModel.load(path)
    cols = ["id", "asteroid_class", "max_probability", "unusual_score", "asteroid_flags"]
    a = semi_model.transform(labelled_df).select(*cols).orderBy("id").toPandas()
    b = again.transform(labelled_df).select(*cols).orderBy("id").toPandas()
    pd.testing.assert_frame_equal(a, b)


def test_classify_arrays_answers_what_transform_answers(semi_model, labelled_df):
    from pyspark.sql import functions as F

    from lsst_spark_ml.estimators.asteroids import NO_COLOUR
    model = semi_model.stages[-1]
    df = labelled_df.where("id % 10 >= 7")
    # Missing bands, and rows with no colour at all, so that marginalised and null answers are compared too.
    for b, k in zip(BANDS, (11, 13, 7, 17, 5)):
        df = df.withColumn(f"mag_{b}", F.when((F.col("id") % k == 0) | (F.col("id") % 29 == 0), None)
                           .otherwise(F.col(f"mag_{b}")))
    ref = semi_model.transform(df).orderBy("id").toPandas()
    got = model.classify_arrays(np.stack(ref["refl_mag"]), np.stack(ref["refl_err"]))
    none = ref["probability"].isna().to_numpy()
    assert none.sum() >= 3 and (ref["asteroid_flags"].to_numpy()[none] & NO_COLOUR).all()
    assert ((ref["asteroid_flags"] & 0xFF) != 0).mean() > 0.3
    for c in ("asteroid_class", "asteroid_complex"):
        assert got[c].tolist() == ref[c].tolist()
    np.testing.assert_array_equal(got["asteroid_flags"], ref["asteroid_flags"].to_numpy())
    np.testing.assert_array_equal(got["prediction"], ref["prediction"].to_numpy(float))
    # Rows are grouped by missing-band pattern within a batch, and transform's batches are other than this
    # one array: sums may differ in the last bit.
    for c in ("max_probability", "log_likelihood", "unusual_score"):
        np.testing.assert_allclose(got[c], ref[c].to_numpy(float), rtol=1e-12, equal_nan=True)
    assert np.isnan(got["probability"][none]).all()
    np.testing.assert_allclose(got["probability"][~none], np.stack(ref.loc[~none, "probability"]), rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 5\) for bands \['g', 'r', 'i', 'z', 'y'\], got \(3, 4\)"):
        model.classify_arrays(np.zeros((3, 4)), np.zeros((3, 4)))


def test_every_row_comes_out_and_bad_rows_are_flagged(spark, semi_model):
    from lsst_spark_ml.estimators.asteroids import LOW_PROBABILITY, NO_COLOUR, UNUSUAL
    sun = SOLAR_AB["lsst"]
    base = {b: 15.0 + sun[b] for b in BANDS}
    rows = [
        (1, *[base[b] for b in BANDS], *[0.02] * 5),                                 # complete
        (2, None, base["r"], float("nan"), base["z"], None, 0.02, 0.02, 0.02, 0.02, 0.02),  # g, i, y missing
        (3, None, None, 99.0, base["z"], None, 0.02, 0.02, 0.02, 0.02, 0.02),      # one usable band + sentinel
        (4, None, None, None, None, None, None, None, None, None, None),           # nothing
        (5, base["g"], base["r"], base["i"], base["z"], base["y"], 0.02, -1.0, 0.0, 0.02, float("nan")),  # bad errs
        (6, base["g"] + 1.5, base["r"], base["i"] - 1.0, base["z"] + 1.2, base["y"], *[0.01] * 5),  # unlike any class
    ]
    cols = ["id"] + [f"mag_{b}" for b in BANDS] + [f"err_{b}" for b in BANDS]
    schema = ", ".join(f"{c} {'long' if c == 'id' else 'double'}" for c in cols)
    df = spark.createDataFrame(rows, schema)
    out = semi_model.transform(df).orderBy("id").toPandas().set_index("id")
    assert list(out.index) == [1, 2, 3, 4, 5, 6]
    f = out["asteroid_flags"]
    assert f[1] & 0xFF == 0 and out.loc[1, "asteroid_class"] in SEVEN_CLASSES
    assert f[2] & 0xFF == 0b10101 and out.loc[2, "asteroid_class"] in SEVEN_CLASSES   # marginalised, classified
    for i in (3, 4):
        assert f[i] & NO_COLOUR and out.loc[i, "asteroid_class"] is None and out.loc[i, "probability"] is None
    assert f[5] & 0xFF == 0b10110 and out.loc[5, "asteroid_class"] in SEVEN_CLASSES
    assert f[6] & UNUSUAL and out.loc[6, "unusual_score"] == out["unusual_score"].max()
    assert out.loc[6, "unusual_score"] > 10 > out.loc[1, "unusual_score"]
    assert LOW_PROBABILITY == 1 << 9


def test_unknown_label_fails_at_fit_naming_it(labelled_df):
    from pyspark.sql import functions as F
    from lsst_spark_ml.estimators.asteroids import AsteroidLabelError, ReflectanceFeatures, SemiSupervisedAsteroidGMM
    df = ReflectanceFeatures(bands=BANDS).transform(
        labelled_df.withColumn("lab", F.when(F.col("id") == 3, F.lit("Sq")).otherwise(F.col("class7"))))
    with pytest.raises(AsteroidLabelError, match="'Sq'"):
        SemiSupervisedAsteroidGMM(labelCol="lab", maxIter=2).fit(df)


def test_missing_columns_fail_with_their_names(labelled_df, semi_model):
    from lsst_spark_ml.errors import CatalogError
    from lsst_spark_ml.estimators.asteroids import ReflectanceFeatures, SemiSupervisedAsteroidGMM
    with pytest.raises(CatalogError, match="mag_y"):
        ReflectanceFeatures(bands=BANDS).transform(labelled_df.drop("mag_y"))
    with pytest.raises(CatalogError, match="refl_err"):
        SemiSupervisedAsteroidGMM(labelCol="class7").fit(
            ReflectanceFeatures(bands=BANDS).transform(labelled_df).drop("refl_err"))
    with pytest.raises(CatalogError, match="refl_mag"):
        semi_model.stages[-1].transform(labelled_df)


def test_clustering_picks_k_by_bic_names_clusters_and_leaves_ambiguous_unassigned(spark):
    from lsst_spark_ml.estimators.asteroids import AsteroidClustering, LOW_PROBABILITY
    rng = np.random.default_rng(3)
    centres = {"C": [0.0, 0.0, 0.0, 0.0], "S": [0.25, 0.2, 0.1, 0.0], "V": [0.3, 0.1, -0.35, -0.3]}
    rows = []
    for name, c in centres.items():
        col = np.asarray(c) + rng.normal(0, 0.02, (400, 4))
        for i, v in enumerate(col):
            m = np.insert(v, 1, 0.0) + 10.0
            m[rng.random(5) < 0.1] = np.nan
            rows.append((m.tolist(), [0.01] * 5, name if i % 10 == 0 else None))
    ambiguous = np.insert((np.asarray(centres["C"]) + centres["S"]) / 2, 1, 0.0) + 10.0
    rows.append((ambiguous.tolist(), [0.3] * 5, None))      # halfway C-S and poorly measured: no clear cluster
    df = spark.createDataFrame(rows, "refl_mag array<double>, refl_err array<double>, lab string")
    model = AsteroidClustering(kMin=1, kMax=4, namingLabelCol="lab", maxIter=40).fit(df)
    assert model.info["k"] == 3, model.info["bic"]
    assert sorted(model.info["cluster_names"]) == ["C", "S", "V"]
    out = model.transform(df).toPandas()
    assert len(out) == len(rows)
    ok = out["lab"].notna()
    assert (out.loc[ok, "asteroid_class"] == out.loc[ok, "lab"]).mean() > 0.97
    last = out.iloc[-1]
    assert last["asteroid_class"] == "unassigned" and last["asteroid_flags"] & LOW_PROBABILITY


def test_combine_observations_clips_counts_and_keeps_every_asteroid(spark):
    from lsst_spark_ml.asteroids.colours import combine_observations
    obs = [(1, "r", 20.0, 0.02, 2.0, 1.0, 10.0)] * 5 + [(1, "r", 25.0, 0.02, 2.0, 1.0, 10.0)]   # one outlier
    obs += [(1, "g", 20.5, 0.02, 2.0, 1.0, 0.0), (1, "g", 20.7, 0.02, 2.0, 1.0, 0.0)]
    obs += [(2, "g", float("nan"), 0.02, 2.0, 1.0, 0.0), (2, "r", 21.0, -1.0, 2.0, 1.0, 0.0)]   # nothing usable
    df = spark.createDataFrame(obs, "id long, band string, mag double, mag_err double, r double, d double, a double")
    out = combine_observations(df, "id", "band", "mag", "mag_err", ["g", "r", "i"], "r", "d", "a", 0.04) \
        .orderBy("id").toPandas().set_index("id")
    assert list(out.index) == [1, 2]
    red = 5 * np.log10(2.0 * 1.0)
    assert out.loc[1, "nobs_r"] == 5 and out.loc[1, "mag_r"] == pytest.approx(20.0 - red - 0.4)
    assert out.loc[1, "nobs_g"] == 2 and out.loc[1, "mag_g"] == pytest.approx(20.6 - red)
    assert out.loc[1, "err_g"] == pytest.approx(0.1, rel=1e-6)        # scatter / sqrt(n) beats 0.014
    assert out.loc[1, "nobs_i"] == 0 and pd.isna(out.loc[1, "mag_i"])
    assert out.loc[2, "nobs_g"] == 0 and pd.isna(out.loc[2, "mag_r"])


def test_cli_has_the_asteroid_commands():
    from lsst_spark_ml.cli import build_parser
    p = build_parser()
    a = p.parse_args(["asteroids", "classify", "--catalog", "c", "--model", "m", "--out", "o", "--kind", "clustering"])
    assert a.func.__name__ == "cmd_asteroids_classify" and a.kind == "clustering"
    assert p.parse_args(["asteroids", "evaluate", "--out", "o"]).func.__name__ == "cmd_asteroids_evaluate"
    assert p.parse_args(["asteroids", "fit", "--out", "o"]).func.__name__ == "cmd_asteroids_fit"


def test_config_validates_asteroid_settings():
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.errors import ConfigError
    assert load_config(["conf/asteroids.yaml"]).asteroids.bands == BANDS
    with pytest.raises(ConfigError, match="reference_band"):
        load_config([], ["asteroids.reference_band=y", "asteroids.bands=[g,r,i,z]", "asteroids.system=sdss"])
    with pytest.raises(ConfigError, match="asteroids.bands"):
        load_config([], ["asteroids.system=sdss", "asteroids.bands=[g,r,i,z,y]"])


def test_classify_pipeline_writes_every_row_and_a_ranked_unusual_list(spark, semi_model, labelled_df, tmp_path):
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.pipelines import asteroids as pipeline
    semi_model.write().overwrite().save(str(tmp_path / "model" / "semisupervised"))
    cat = str(tmp_path / "catalog")
    labelled_df.drop("class7", "complex").write.parquet(cat)
    cfg = load_config([], ["asteroids.n_unusual=5"])
    meta = pipeline.classify(spark, cfg, cat, str(tmp_path / "model"), str(tmp_path / "out"))
    assert meta["rows_in"] == meta["rows_written"] == labelled_df.count()
    top = pd.read_csv(tmp_path / "out" / "_unusual.csv")
    assert list(top["rank"]) == [1, 2, 3, 4, 5] and top["unusual_score"].is_monotonic_decreasing
    with pytest.raises(Exception, match="no clustering model"):
        pipeline.classify(spark, cfg, cat, str(tmp_path / "model"), str(tmp_path / "out2"), kind="clustering")
