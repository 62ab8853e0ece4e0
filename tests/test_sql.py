"""The photo-z model as a Spark SQL function."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from helpers import BANDS, load_dc2
from lsst_spark_ml.asteroids.labels import SEVEN_CLASSES
from lsst_spark_ml.estimators.asteroids import NO_COLOUR, UNUSUAL
from lsst_spark_ml.inference.photoz import PhotozPredictor
from udfs.sql import register


FLUX_COLS = [c for b in BANDS for c in (f"{b}_cModelFlux", f"{b}_cModelFluxErr")]
FLUX_PARAMS = [c for b in BANDS for c in (f"{b}_flux", f"{b}_flux_err")]


def flux_view(spark, n: int, name: str = "object"):
    """The first ``n`` DC2 validation galaxies as an Object table with nJy fluxes, as a temporary view."""
    v, e, z, ids = load_dc2("validation", n)
    flux = 10 ** (-0.4 * (np.where(v > 90, 40.0, v) - 31.4))
    ferr = flux * e / 1.0857
    pdf = pd.DataFrame({"objectId": ids})
    for k, b in enumerate(BANDS):
        pdf[f"{b}_cModelFlux"], pdf[f"{b}_cModelFluxErr"] = flux[:, k], ferr[:, k]
    spark.createDataFrame(pdf).createOrReplaceTempView(name)
    return flux, ferr, ids


def test_photoz_from_sql_matches_the_predictor(spark, tiny_model):
    flux, ferr, ids = flux_view(spark, 400)
    sig = register(spark, {"photoz_test": str(tiny_model[0])})
    assert sig["photoz_test"] == FLUX_PARAMS
    args = ", ".join(FLUX_COLS)
    out = spark.sql(f"SELECT objectId, photoz_test({args}) AS pz FROM object").select(
        "objectId", "pz.z_median", "pz.flags", "pz.model_sha256").toPandas().set_index("objectId").loc[ids]
    # The SQL function runs with the default precision, auto: resolve the reference the same way.
    ref = PhotozPredictor.load(tiny_model[0], precision="auto").predict(flux, ferr, "flux")
    assert len(out) == 400
    np.testing.assert_allclose(out["z_median"].to_numpy(), ref["z_median"], rtol=1e-6)
    np.testing.assert_array_equal(out["flags"].to_numpy(), ref["flags"])
    assert (out["model_sha256"] == tiny_model[1]).all()


def test_photoz_and_ood_functions_check_their_arguments_at_analysis(spark, tiny_model):
    from pyspark.errors import AnalysisException, PythonException

    from lsst_spark_ml.cli import default_dcp_dir
    from lsst_spark_ml.config import InferenceSettings
    from lsst_spark_ml.io.columns import ResolvedColumns
    from lsst_spark_ml.inference.schema import spark_struct
    from udfs.dcp import dcp_pandas_udf
    from udfs.dcp import spark_struct as dcp_struct
    from udfs.photoz import broadcast_model, photoz_pandas_udf
    flux_view(spark, 60, "object60")
    sig = register(spark, {"pz_checked": str(tiny_model[0]), "ood_checked": str(default_dcp_dir())})
    assert sig == {"pz_checked": FLUX_PARAMS, "ood_checked": FLUX_PARAMS}
    # Magnitudes: the parameters say so.
    assert register(spark, {"pz_mag": str(tiny_model[0])}, photometry="mag")["pz_mag"] == [
        c for b in BANDS for c in (f"{b}_mag", f"{b}_mag_err")]
    eleven = ", ".join(FLUX_COLS[:11])
    for name in sig:
        # spark.sql only analyses: raising here means no job ran. Spark 4.3 prints the 12 as "[1, 2]".
        with pytest.raises(AnalysisException, match=rf"WRONG_NUM_ARGS.*`{name}` requires .* actual number is 11"):
            spark.sql(f"SELECT {name}({eleven}) FROM object60")
    # Named arguments, in reverse order, give the positional answer, every field of the struct.
    named = ", ".join(f"{p} => {c}" for p, c in reversed(list(zip(FLUX_PARAMS, FLUX_COLS))))
    for name, struct in (("pz_checked", spark_struct()), ("ood_checked", dcp_struct())):
        # The UDF's own result type, not a declared one: pdf keeps its non-null elements.
        assert spark.sql(f"SELECT {name}({named}) AS r FROM object60").schema["r"].dataType == struct
        a = spark.sql(f"SELECT objectId, {name}({named}) AS r FROM object60").select("objectId", "r.*")
        b = spark.sql(f"SELECT objectId, {name}({', '.join(FLUX_COLS)}) AS r FROM object60").select(
            "objectId", "r.*")
        assert a.schema == b.schema
        a, b = (x.toPandas().sort_values("objectId", ignore_index=True) for x in (a, b))
        assert len(a) == 60 and a["z_median"].notna().sum() > 50
        pd.testing.assert_frame_equal(a.drop(columns="pdf"), b.drop(columns="pdf"))

        def pdfs(x):
            return [None if p is None else p.tolist() for p in x["pdf"]]
        assert pdfs(a) == pdfs(b)
    # From the DataFrame API there is no SQL signature: the UDFs themselves say what they take.
    cols = ResolvedColumns("flux", BANDS, FLUX_PARAMS[0::2], FLUX_PARAMS[1::2])
    df = spark.table("object60")
    for make, model, func in ((photoz_pandas_udf, tiny_model[0], "photoz"),
                              (dcp_pandas_udf, default_dcp_dir(), "ood_dcp")):
        udf = make(broadcast_model(spark, str(model)), cols, InferenceSettings())
        with pytest.raises(PythonException,
                           match=rf"{func} takes 12 arguments \(u_flux, u_flux_err, .*y_flux_err\), got 11"):
            df.select(udf(*FLUX_COLS[:11])).collect()


# ----------------------------------------------------------------------------- asteroid_class

AST_BANDS = ["g", "r", "i", "z", "y"]
AST_ARGS = ", ".join(f"mag_{b}, err_{b}" for b in AST_BANDS)


@pytest.fixture(scope="module")
def asteroid_rows(spark):
    """Real space-classy reflectances as apparent magnitudes (every seventh spectrum, so every class and the
    near-infrared-only spectra appear), plus rows damaged in the ways a survey table is."""
    from lsst_spark_ml.asteroids.colours import SOLAR_AB
    from lsst_spark_ml.asteroids.spectra import labelled_set
    t = labelled_set(AST_BANDS).iloc[::7].reset_index(drop=True)
    rng = np.random.default_rng(11)
    pdf = pd.DataFrame({"id": np.arange(len(t), dtype=np.int64)})
    for b in AST_BANDS:
        pdf[f"mag_{b}"] = t[f"refl_{b}"].to_numpy() + SOLAR_AB["lsst"][b] + 16.0 + rng.normal(0, 0.02, len(t))
        pdf[f"err_{b}"] = 0.02
    nan = float("nan")
    damaged = [
        [None] * 10,                                                             # nothing measured
        [nan, 0.02, 18.0, 0.02, 99.0, 0.02, None, None, None, None],             # r only: sentinel, NaN
        [21.0, 0.02, 20.5, 0.0, 20.4, -1.0, 20.3, 0.02, 20.3, None],             # bad errors
    ]
    for k, vals in enumerate(damaged):
        pdf.loc[len(pdf)] = [10_000 + k] + [nan if v is None else v for v in vals]
    pdf["id"] = pdf["id"].astype(np.int64)
    df = spark.createDataFrame(pdf)
    # Spark NULLs, not only NaN: the first damaged row is all NULL.
    null_row = F.col("id") == 10_000
    for c in df.columns[1:]:
        df = df.withColumn(c, F.when(null_row, F.lit(None).cast("double")).otherwise(F.col(c)))
    return df.repartition(2).cache()


@pytest.mark.parametrize("kind", ["semisupervised", "clustering"])
def test_asteroid_class_from_sql_matches_the_pipeline_model(spark, asteroid_rows, kind):
    from lsst_spark_ml.cli import default_asteroid_dir
    from lsst_spark_ml.pipelines.asteroids import load_model
    # The fit directory serves its semi-supervised pipeline; a pipeline directory serves itself.
    model_dir = default_asteroid_dir() if kind == "semisupervised" else default_asteroid_dir() / kind
    sig = register(spark, {"ast_test": str(model_dir)})
    assert sig["ast_test"] == [f"{b}_{k}" for b in AST_BANDS for k in ("mag", "err")]
    asteroid_rows.createOrReplaceTempView("asteroids")
    got = spark.sql(f"SELECT id, ast_test({AST_ARGS}) AS a FROM asteroids").select("id", "a.*").toPandas()
    ref = load_model(str(default_asteroid_dir()), kind).transform(asteroid_rows).toPandas()
    n = asteroid_rows.count()
    assert len(got) == n and got["id"].is_unique
    got, ref = got.set_index("id").sort_index(), ref.set_index("id").sort_index()
    assert list(got.index) == list(ref.index)
    pd.testing.assert_series_equal(got["asteroid_class"], ref["asteroid_class"])
    pd.testing.assert_series_equal(got["asteroid_complex"], ref["asteroid_complex"])
    pd.testing.assert_series_equal(got["asteroid_flags"], ref["asteroid_flags"])
    for c in ("max_probability", "log_likelihood", "unusual_score"):
        np.testing.assert_allclose(got[c].to_numpy(float), ref[c].to_numpy(float), rtol=1e-12, equal_nan=True)
    both = ref["probability"].notna()
    assert (got["probability"].notna() == both).all()
    np.testing.assert_allclose(np.stack(got.loc[both, "probability"]), np.stack(ref.loc[both, "probability"]),
                               rtol=1e-12)
    assert (got["unusual"].dropna() == ((ref["asteroid_flags"] & UNUSUAL) != 0)[got["unusual"].notna()]).all()
    # The answers are not trivially equal: classes vary and the real spectra are mostly classified.
    assert got["asteroid_class"].nunique() >= 4
    assert got["asteroid_class"].notna().mean() > 0.8


def test_asteroid_class_flags_missing_values_instead_of_dropping_rows(spark, asteroid_rows):
    from lsst_spark_ml.cli import default_asteroid_dir
    register(spark, {"asteroid_class": str(default_asteroid_dir())})
    asteroid_rows.createOrReplaceTempView("asteroids")
    out = spark.sql(f"SELECT id, asteroid_class({AST_ARGS}) AS a FROM asteroids WHERE id >= 10000").select(
        "id", "a.*").toPandas().set_index("id").sort_index()
    assert list(out.index) == [10_000, 10_001, 10_002]
    f = out["asteroid_flags"]
    for i in (10_000, 10_001):                # nothing, and r alone: no colour to classify by
        assert f[i] & NO_COLOUR and out.loc[i, "asteroid_class"] is None and out.loc[i, "probability"] is None
        assert pd.isna(out.loc[i, "unusual"])
    assert f[10_000] & 0xFF == 0b11111
    assert f[10_001] & 0xFF == 0b11101        # r (bit 1) is the one usable band
    # Zero, negative and NULL errors mark r, i and y missing; g and z still give a colour and a class.
    assert f[10_002] & 0xFF == 0b10110 and not f[10_002] & NO_COLOUR
    assert out.loc[10_002, "asteroid_class"] in SEVEN_CLASSES
    assert out["model_sha256"].nunique() == 1 and len(out["model_sha256"].iloc[0]) == 64


def test_asteroid_class_with_the_wrong_number_of_arguments_fails_at_analysis(spark, asteroid_rows):
    from lsst_spark_ml.cli import default_asteroid_dir
    from pyspark.errors import AnalysisException
    register(spark, {"asteroid_class": str(default_asteroid_dir())})
    asteroid_rows.createOrReplaceTempView("asteroids")
    nine = ", ".join(AST_ARGS.split(", ")[:9])
    # Spark 4.3 prints the expected count of a function of 10+ parameters as its digits ("[1, 0]"); the
    # function's name and the count given are right, and the query fails before any job runs.
    with pytest.raises(AnalysisException, match=r"WRONG_NUM_ARGS.*`asteroid_class` requires .* actual number is 9"):
        spark.sql(f"SELECT asteroid_class({nine}) FROM asteroids")
    # The UDF called from the DataFrame API has no SQL signature in front of it: it says what it takes.
    from pyspark.errors import PythonException
    from udfs.asteroids import asteroid_pandas_udf, load_spec
    udf = asteroid_pandas_udf(load_spec(spark, str(default_asteroid_dir())))
    with pytest.raises(PythonException, match=r"asteroid_class takes 10 arguments \(g_mag, g_err, .*y_err\), got 9"):
        asteroid_rows.select(udf(*asteroid_rows.columns[1:10])).collect()
    # Named arguments, in any order, give the positional answer.
    named = ", ".join(f"{b}_{k} => {k}_{b}" for b in reversed(AST_BANDS) for k in ("mag", "err"))
    a = spark.sql(f"SELECT id, asteroid_class({named}).asteroid_class AS c FROM asteroids").toPandas()
    b = spark.sql(f"SELECT id, asteroid_class({AST_ARGS}).asteroid_class AS c FROM asteroids").toPandas()
    pd.testing.assert_frame_equal(a.sort_values("id", ignore_index=True), b.sort_values("id", ignore_index=True))


def test_default_registration_includes_the_shipped_asteroid_and_morphology_models(spark):
    sig = register(spark)
    assert set(sig) == {"photoz_mbrnn", "ood_dcp", "asteroid_class", "morphology_dat"}
    row = spark.sql("SELECT asteroid_class(21.0, 0.02, 20.5, 0.02, 20.4, 0.02, 20.35, 0.03, 20.3, 0.05) AS a").first()
    assert row["a"]["asteroid_class"] in SEVEN_CLASSES and len(row["a"]["probability"]) == len(SEVEN_CLASSES)


def test_asteroid_model_built_once_per_worker_not_per_batch(spark, asteroid_rows, tmp_path):
    from lsst_spark_ml.cli import default_asteroid_dir
    from lsst_spark_ml.inference import cache
    from lsst_spark_ml.pipelines.asteroids import load_model
    # A model no worker has cached yet: the shipped one with another probability threshold.
    model = load_model(str(default_asteroid_dir()))
    model.stages[-1]._set(minProbability=0.55)
    model.write().overwrite().save(str(tmp_path / "model"))
    log = tmp_path / "loads.log"
    asteroid_rows.repartition(4).createOrReplaceTempView("asteroids4")
    spark.sparkContext.environment[cache.LOAD_LOG_ENV] = str(log)
    old = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "40")
    try:
        # A Python UDF takes the worker environment it is created with: register after setting the log.
        register(spark, {"ast_cached": str(tmp_path / "model")})
        # collect, not count: a count would prune the function away.
        n = len(spark.sql(f"SELECT ast_cached({AST_ARGS}).asteroid_class AS c FROM asteroids4").collect())
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", old)
        del spark.sparkContext.environment[cache.LOAD_LOG_ENV]
    assert n == asteroid_rows.count()
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    # ~430 rows in batches of 40 over 4 tasks: a dozen batches, one model per Python worker.
    assert len(pids) == len(set(pids)), f"a worker built the model twice: {pids}"
    assert 1 <= len(pids) <= 4, f"{len(pids)} builds for a dozen batches"
