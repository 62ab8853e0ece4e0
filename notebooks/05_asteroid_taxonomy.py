# Databricks notebook source
# MAGIC %md
# MAGIC # Asteroid taxonomy from LSST colours: clustering, a semi-supervised mixture with few labels, anomalies
# MAGIC
# MAGIC The 2,983 real reflectance spectra of space-classy (Mahlke et al. 2022) through the LSST filter curves,
# MAGIC observed with LSST single-visit errors over ~30 epochs per band, then classified with the `pyspark.ml`
# MAGIC estimators of `lsst_spark_ml/estimators/asteroids.py`: one Gaussian mixture in colour space that handles
# MAGIC missing bands and per-object errors exactly. Runs top to bottom on the embedded default (Spark `local[*]`).
# MAGIC On a cluster, change the next cell only: `CATALOG` (Parquet or HATS, one row per asteroid with
# MAGIC `mag_<band>`/`err_<band>`), its label column if some rows have a class, and `OUT` on shared storage.

# COMMAND ----------

import os
import tempfile

from lsst_spark_ml.cli import default_asteroid_dir

CATALOG = None                 # None: the space-classy labelled set observed with LSST-like noise, written below
LABEL_COL = "class7"           # C D K L S V X where known (null elsewhere); None: no labels at all
LABEL_FRACTION = 0.1           # labels the semi-supervised fit may see (the rest it treats as unlabelled)
MODEL_DIR = str(default_asteroid_dir())   # the shipped model (`asteroids fit` on all of space-classy)
OUT = os.environ.get("LSST_SPARK_ML_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="lsst_spark_ml-asteroids-")

# COMMAND ----------

from pyspark.sql import functions as F

from lsst_spark_ml.plots import show
from lsst_spark_ml.session import get_spark

spark = globals().get("spark") or get_spark()
print(spark.sparkContext.master, OUT)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. The asteroids: real spectra, LSST-like photometry
# MAGIC
# MAGIC Bands are synthesised only where the spectrum covers the filter (the near-infrared-only spectra give z and
# MAGIC y alone); each asteroid is then observed ~30 times per band at 18 < r < 22 with a lightcurve and a phase
# MAGIC slope, and the epochs are combined per band with 3-sigma clipping (`asteroids/colours.py`), as a survey
# MAGIC catalog would be.

# COMMAND ----------

import time

from lsst_spark_ml.config import load_config
from lsst_spark_ml.pipelines import asteroids

cfg = load_config()             # the asteroids: keys of conf/asteroids.yaml (bands grizy, seven classes, k 2..8)
a = cfg.asteroids
if CATALOG is None:
    CATALOG = f"{OUT}/asteroids"
    asteroids.labelled_frame(spark, a).write.mode("overwrite").parquet(CATALOG)
catalog = spark.read.parquet(CATALOG).cache()
print(catalog.count(), "asteroids;", ", ".join(c for c in catalog.columns if c.endswith("_g")), "...")
if LABEL_COL:
    catalog.groupBy(LABEL_COL).count().orderBy(LABEL_COL).show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Colours: magnitudes minus the Sun's
# MAGIC
# MAGIC `ReflectanceFeatures` turns the per-band columns into an array of reflectance magnitudes (NaN where a band
# MAGIC is missing or a sentinel) and one of errors; the mixtures use colours relative to r.

# COMMAND ----------

import numpy as np

from lsst_spark_ml.plots import asteroids as plots

features = asteroids.features_stage(a)
refl = features.transform(catalog)
refl.select("id", *([LABEL_COL] if LABEL_COL else []), "refl_mag", "refl_err").show(3, truncate=70)
usable = refl.select(F.size(F.filter("refl_mag", lambda x: ~F.isnan(x))).alias("bands")).groupBy("bands").count()
usable.orderBy("bands").show()

sample = refl.select("refl_mag", *([LABEL_COL] if LABEL_COL else [])).limit(20_000).toPandas()
mags = np.stack([np.asarray(v, float) for v in sample["refl_mag"]])
groups = sample[LABEL_COL].to_numpy() if LABEL_COL else np.full(len(sample), "asteroid", dtype=object)
show(plots.colour_colour(mags, list(a.bands), groups, f"{OUT}/colours_by_class.png", "labelled class"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Few labels: a held-out test set, and 10 % of the other labels kept
# MAGIC
# MAGIC The split is a hash of the id (stable across runs and partitionings); labels outside the kept fraction
# MAGIC become null, i.e. unlabelled rows the mixture still learns from.

# COMMAND ----------

split = F.pmod(F.xxhash64("id"), F.lit(10))
keep = F.pmod(F.xxhash64("id", F.lit("labels")), F.lit(1000)) < int(1000 * LABEL_FRACTION)
data = catalog.withColumn("is_test", split < 3)
if LABEL_COL:
    data = data.withColumn("label_few", F.when(keep & ~F.col("is_test"), F.col(LABEL_COL)))
    data = data.withColumn("complex_few", F.when(keep & ~F.col("is_test"), F.col("complex")))
data = data.cache()
train, test = data.where(~F.col("is_test")), data.where("is_test")
print(train.count(), "training rows,", test.count(), "test rows,",
      train.where("label_few IS NOT NULL").count() if LABEL_COL else 0, "labels kept")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. The two estimators
# MAGIC
# MAGIC `SemiSupervisedAsteroidGMM`: labelled rows are tied to their class's components (two Gaussians per class),
# MAGIC unlabelled rows are marginalised over all. `AsteroidClustering`: no labels in the fit; the number of
# MAGIC components is chosen by BIC and clusters are named after the fit by the complex most of their labelled
# MAGIC members belong to. Both sum EM statistics per partition on the executors: nothing but sums reaches the
# MAGIC driver.

# COMMAND ----------

from lsst_spark_ml.asteroids.labels import COMPLEXES

classes, _ = asteroids.classes_for(a)
t0 = time.time()
semi = asteroids.semisupervised_pipeline(a, "label_few", classes).fit(train) if LABEL_COL else None
t1 = time.time()
clus = asteroids.clustering_pipeline(a, "complex_few" if LABEL_COL else "").fit(train)
t2 = time.time()
print(f"semi-supervised fit {t1 - t0:.1f} s; clustering fit {t2 - t1:.1f} s, k by BIC:", clus.stages[-1].info["k"],
      {k: round(v) for k, v in clus.stages[-1].info["bic"].items()}, "clusters:", clus.stages[-1].info["cluster_names"])

# COMMAND ----------

# MAGIC %md
# MAGIC On the held-out rows, at the complex level (C, D, S, V, X): the semi-supervised mixture with 10 % of the
# MAGIC labels, clustering named by the same labels, and the shipped model (fitted on every label, these rows
# MAGIC included, so an optimistic reference).

# COMMAND ----------

import pandas as pd

shipped = asteroids.load_model(MODEL_DIR)
models = {"semi-supervised, few labels": semi, "clustering (BIC)": clus, "shipped (all labels)": shipped}
if LABEL_COL:
    rows = []
    for name, model in models.items():
        m = asteroids.confusion_metrics(model.transform(test), "complex", "asteroid_complex", list(COMPLEXES))
        rows.append({"model": name, "complex accuracy": m["accuracy"], "coverage": m["coverage"],
                     **{f"recall {c}": r for c, r in m["recall"].items()}})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 5. Flags and anomalies
# MAGIC
# MAGIC Every row comes out, with `asteroid_flags`: bits 0-7 a band unusable (marginalised), 8 NO_COLOUR (fewer than
# MAGIC two bands: no class), 9 LOW_PROBABILITY, 10 UNUSUAL (`unusual_score`, -log10 of the chi-square tail under
# MAGIC the nearest component, above 3). The unusual ones are what a follow-up programme would look at first.

# COMMAND ----------

from lsst_spark_ml.estimators.asteroids import LOW_PROBABILITY, NO_COLOUR, UNUSUAL

classified = (semi or shipped).transform(test).cache()
bits = {"any band missing": 0xFF, "NO_COLOUR": NO_COLOUR, "LOW_PROBABILITY": LOW_PROBABILITY, "UNUSUAL": UNUSUAL}
row = classified.agg(F.count(F.lit(1)).alias("rows"),
                     *[F.count(F.when(F.col("asteroid_flags").bitwiseAND(b) != 0, 1)).alias(n)
                       for n, b in bits.items()]).first()
print(row.asDict())
print(f"the least typical held-out asteroids (UNUSUAL is set above a score of {a.unusual_threshold}):")
classified.orderBy(F.desc_nulls_last("unusual_score")).select(
    "id", *([LABEL_COL] if LABEL_COL else []), "asteroid_class", "max_probability", "unusual_score",
    "asteroid_flags").show(8)

pred = classified.select("refl_mag", "asteroid_class", "max_probability").toPandas()
pmags = np.stack([np.asarray(v, float) for v in pred["refl_mag"]])
show(plots.colour_colour(pmags, list(a.bands), pred["asteroid_class"].to_numpy(), f"{OUT}/colours_predicted.png",
                         "held-out asteroids: predicted class"))
show(plots.probability_histogram(pred["max_probability"].to_numpy(float), f"{OUT}/probability_hist.png",
                                 a.min_probability))
cpred = clus.transform(test).select("refl_mag", "asteroid_class").toPandas()
show(plots.colour_colour(np.stack([np.asarray(v, float) for v in cpred["refl_mag"]]), list(a.bands),
                         cpred["asteroid_class"].to_numpy(), f"{OUT}/colours_clusters.png",
                         "clustering (BIC), clusters named by complex"))
classified.unpersist()

# COMMAND ----------

# MAGIC %md
# MAGIC ## 6. Save, load, same answers
# MAGIC
# MAGIC The fitted pipelines are ordinary `pyspark.ml` `PipelineModel`s: `write().save()` stores Spark's params
# MAGIC metadata with the mixture inside as JSON (nothing pickled), and `PipelineModel.load` gives back a model that
# MAGIC answers identically. `asteroids fit` writes the same layout (`semisupervised/`, `clustering/`).

# COMMAND ----------

from pyspark.ml import PipelineModel

fitted = semi or clus
fitted.write().overwrite().save(f"{OUT}/model/semisupervised")
again = PipelineModel.load(f"{OUT}/model/semisupervised")
cols = ["id", "asteroid_class", "max_probability", "unusual_score", "asteroid_flags"]
before = fitted.transform(test).select(*cols).orderBy("id").toPandas()
after = again.transform(test).select(*cols).orderBy("id").toPandas()
pd.testing.assert_frame_equal(before, after)
print(f"reloaded from {OUT}/model/semisupervised: {len(after)} rows, identical classes, probabilities, scores, "
      "flags")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 7. From SQL, and at survey scale
# MAGIC
# MAGIC `udfs.sql.register(spark)` registers `asteroid_class(g_mag, g_err, r_mag, r_err, i_mag, i_err, z_mag,
# MAGIC z_err, y_mag, y_err)` (the shipped model; `register(spark, {"name": model_dir})` for another) returning
# MAGIC `asteroid_class`, `asteroid_complex`, `max_probability`, `probability` (C D K L S V X), `log_likelihood`,
# MAGIC `unusual_score`, `unusual`, `asteroid_flags` and `model_sha256`; a wrong number of arguments fails before any
# MAGIC job runs. For a whole catalog, the job (`lsst-spark-ml asteroids classify`, `jobs/asteroid_taxonomy.py`)
# MAGIC writes every row and a ranked list of the most unusual ones:
# MAGIC
# MAGIC ```bash
# MAGIC spark-submit --master yarn jobs/asteroid_taxonomy.py classify --catalog s3a://bucket/sso_colours \
# MAGIC   --out s3a://bucket/taxonomy --conf conf/asteroids.yaml
# MAGIC ```

# COMMAND ----------

from udfs.sql import register

register(spark, {"asteroid_class": MODEL_DIR})
catalog.createOrReplaceTempView("sso")
args = ", ".join(f"mag_{b}, err_{b}" for b in a.bands)
spark.sql(f"SELECT id, asteroid_class({args}) AS t FROM sso").select(
    "id", "t.asteroid_class", "t.asteroid_complex", "t.max_probability", "t.unusual", "t.asteroid_flags").show(5)
spark.sql(f"SELECT asteroid_class({args}).asteroid_complex AS complex, count(*) AS n FROM sso "
          "GROUP BY 1 ORDER BY 1").show()

meta = asteroids.classify(spark, cfg, CATALOG, MODEL_DIR, f"{OUT}/classified")
print(meta["rows_in"], "rows in,", meta["rows_written"], "written in", meta["seconds"], "s; ranked list:",
      meta["unusual_list"])
print(pd.read_csv(meta["unusual_list"]).head(5).to_string(index=False))
