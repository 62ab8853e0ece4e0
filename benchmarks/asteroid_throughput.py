"""Asteroid taxonomy on Spark: classify throughput on a synthetic population, and fit time against rows.

    .venv/bin/python benchmarks/asteroid_throughput.py [--rows 1000000] [--cores 2] [--fit-rows 10000,100000,1000000]

Model: SemiSupervisedAsteroidGMM fitted on the real space-classy set (grizy reflectance magnitudes with
0.02 mag noise; seven classes, two components each). Synthetic population: rows drawn from that mixture
on the executors (mapInArrow over spark.range), errors 0.01-0.1 mag, 10 % of bands missing, written to
Parquet first so the timings read data the way a survey job does. Timed with the noop sink (no output I/O).

Baselines in the same run, same cores: pyspark.ml GaussianMixtureModel.transform (Spark's own GMM, no
missing bands and no errors, so it only sees the complete rows' colour vectors) with the same number of
components, and the bare numpy posterior in one process (rows/s per core).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BANDS = ["g", "r", "i", "z", "y"]


def fit_reference_model(spark):
    from pyspark.ml import Pipeline
    import pandas as pd
    from lsst_spark_ml.asteroids.colours import SOLAR_AB
    from lsst_spark_ml.asteroids.spectra import labelled_set
    from lsst_spark_ml.estimators.asteroids import ReflectanceFeatures, SemiSupervisedAsteroidGMM
    t = labelled_set(BANDS)
    rng = np.random.default_rng(0)
    wide = pd.DataFrame({"class7": t["class7"]})
    for b in BANDS:
        wide[f"mag_{b}"] = t[f"refl_{b}"] + SOLAR_AB["lsst"][b] + 15 + rng.normal(0, 0.02, len(t))
        wide[f"err_{b}"] = 0.02
    pipe = Pipeline(stages=[ReflectanceFeatures(bands=BANDS),
                            SemiSupervisedAsteroidGMM(labelCol="class7", componentsPerClass=2, maxIter=60)])
    return pipe.fit(spark.createDataFrame(wide)).stages[-1]


def population(spark, params, n: int, parts: int, seed: int = 1):
    """n asteroids drawn from the mixture on the executors: refl_mag/refl_err arrays (NaN = missing band)."""
    import pyarrow as pa
    pj = json.dumps(params.to_dict())

    def gen(batches):
        from lsst_spark_ml.asteroids.mixture import MixtureParams
        p = MixtureParams.from_dict(json.loads(pj))
        chol = np.linalg.cholesky(p.covs)
        for b in batches:
            ids = b.column(0).to_numpy()
            rng = np.random.default_rng(seed + int(ids[0]))
            k = rng.choice(p.k, len(ids), p=p.weights)
            c = p.means[k] + np.einsum("nij,nj->ni", chol[k], rng.standard_normal((len(ids), p.d)))
            m = np.insert(c, 1, 0.0, axis=1) + rng.uniform(15, 20, (len(ids), 1))
            e = rng.uniform(0.01, 0.1, m.shape)
            m = m + rng.standard_normal(m.shape) * e
            m[rng.random(m.shape) < 0.1] = np.nan
            off = pa.array(np.arange(len(ids) + 1, dtype=np.int32) * len(BANDS))
            yield pa.RecordBatch.from_arrays(
                [pa.array(ids), pa.ListArray.from_arrays(off, pa.array(m.ravel())),
                 pa.ListArray.from_arrays(off, pa.array(e.ravel()))], names=["id", "refl_mag", "refl_err"])

    return spark.range(0, n, numPartitions=parts).mapInArrow(
        gen, "id long, refl_mag array<double>, refl_err array<double>")


def timed_noop(df) -> float:
    t = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t


def spark_gmm_baseline(spark, model, df) -> dict:
    """pyspark.ml GaussianMixtureModel with our fitted components, on the complete rows' colours."""
    from pyspark.ml.clustering import GaussianMixture
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    p = model.mixture
    colours = F.array(*[F.col("refl_mag")[j] - F.col("refl_mag")[1] for j in range(len(BANDS)) if j != 1])
    complete = df.where(F.forall("refl_mag", lambda x: ~F.isnan(x)))
    vec = complete.select(array_to_vector(colours).alias("features"))
    # Spark's GMM cannot take given parameters: fit 1 iteration on a small sample for a model of the same K.
    gm = GaussianMixture(k=p.k, maxIter=1, seed=1).fit(vec.limit(20000))
    n = complete.count()
    secs = timed_noop(gm.transform(vec))
    return {"rows": n, "seconds": round(secs, 2), "rows_per_s": round(n / secs)}


def numpy_baseline(model, n: int = 200_000) -> dict:
    from lsst_spark_ml.asteroids import mixture as mx
    p = model.mixture
    rng = np.random.default_rng(2)
    m = rng.normal(0, 0.1, (n, len(BANDS))) + 17
    e = rng.uniform(0.01, 0.1, m.shape)
    m[rng.random(m.shape) < 0.1] = np.nan
    t = time.perf_counter()
    mx.posterior(p, m, e, 1, len(model.getClasses()))
    secs = time.perf_counter() - t
    return {"rows": n, "seconds": round(secs, 2), "rows_per_s_one_core": round(n / secs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--fit-rows", default="10000,100000,1000000", help="'' skips the fit timings")
    ap.add_argument("--fit-iter", type=int, default=5, help="EM iterations per timed fit (fixed, no tol stop)")
    args = ap.parse_args()
    from lsst_spark_ml.config import SparkSettings
    from lsst_spark_ml.estimators.asteroids import SemiSupervisedAsteroidGMM
    from lsst_spark_ml.session import get_spark
    from pyspark.sql import functions as F
    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", progress=False,
                                    conf={"spark.sql.shuffle.partitions": str(2 * args.cores)}))
    out = {"cores": args.cores, "rows": args.rows}
    t = time.perf_counter()
    model = fit_reference_model(spark)
    out["reference_fit_s"] = round(time.perf_counter() - t, 1)
    out["components"] = model.mixture.k
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/population"
        parts = max(2 * args.cores, args.rows // 250_000)
        population(spark, model.mixture, args.rows, parts).write.parquet(path)
        df = spark.read.parquet(path)
        timed_noop(model.transform(df.limit(10000)))                 # warm-up: workers, imports
        secs = timed_noop(model.transform(df))
        out["classify"] = {"rows": args.rows, "seconds": round(secs, 2), "rows_per_s": round(args.rows / secs)}
        out["baseline_pyspark_GaussianMixtureModel"] = spark_gmm_baseline(spark, model, df)
        out["baseline_numpy_posterior"] = numpy_baseline(model)
        fits = []
        for n in [int(x) for x in args.fit_rows.split(",") if x.strip()]:
            sub = df.limit(n).withColumn("lab", F.when(F.col("id") % 10 == 0, F.lit("S")))
            sub = sub.repartition(max(2 * args.cores, n // 250_000)).cache()
            sub.count()
            # Labels only name the mixture here; the timing is the EM passes over n rows.
            est = SemiSupervisedAsteroidGMM(labelCol="lab", classes=["S"], componentsPerClass=model.mixture.k,
                                            maxIter=args.fit_iter, tol=1e-12)
            t = time.perf_counter()
            est.fit(sub)
            secs = time.perf_counter() - t
            sub.unpersist()
            fits.append({"rows": n, "iterations": args.fit_iter, "seconds": round(secs, 1),
                         "seconds_per_iteration": round(secs / (args.fit_iter + 1), 2)})
        out["fit_vs_rows"] = fits
    print(json.dumps(out, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
