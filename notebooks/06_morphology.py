# Databricks notebook source
# MAGIC %md
# MAGIC # Galaxy morphology on the Hubble sequence with a deformable attention transformer
# MAGIC
# MAGIC 5-band cutouts in Parquet -> 11-channel inputs (bands, object mask, NaN masks) built where the model runs
# MAGIC -> class probabilities and attention maps on Spark. The labelled images are GalSim renders (no labelled
# MAGIC galaxy images install offline); the shipped model is the small DAT trained on 10 % labels with survey-like
# MAGIC augmentations, its redshift colour shift measured on the unlabelled survey rows. Runs top to bottom on the embedded default. On a cluster, change the
# MAGIC next cell only: `CUTOUTS` (a cutout table written by `lsst_spark_ml.morphology.cutouts.write_cutouts`),
# MAGIC `MODEL` (a model directory) and `OUT` on shared storage.

# COMMAND ----------

import os
import tempfile

from lsst_spark_ml.cli import default_morphology_dir

CUTOUTS = None                                 # None: render a small survey-domain test table below
MODEL = str(default_morphology_dir())
N_RENDER = 200
OUT = os.environ.get("LSST_SPARK_ML_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="lsst_spark_ml-morphology-")

# COMMAND ----------

from lsst_spark_ml.session import get_spark

spark = globals().get("spark") or get_spark()
print(spark.sparkContext.master, OUT)

# COMMAND ----------

# MAGIC %md ## 1. A cutout table
# MAGIC
# MAGIC Cutouts are stored as float16 bytes per object with their shape and dtype, plus id, coordinates and an
# MAGIC optional label; the table's metadata (bands, shape, dtype) is checked from the Parquet footers before any
# MAGIC Spark job. Masks are not stored: they are derived from the bands.

# COMMAND ----------

from lsst_spark_ml.morphology.cutouts import check_cutout_table, make_sets

if CUTOUTS is None:
    CUTOUTS = make_sets(f"{OUT}/cutouts", 0, 0, N_RENDER, size=64, seed=7)["test"]
info = check_cutout_table(CUTOUTS)
print(info.n_rows, "cutouts of shape", info.shape, info.dtype, "bands", info.bands)
spark.read.parquet(CUTOUTS).select("objectId", "ra", "dec", "label_name").show(5)

# COMMAND ----------

# MAGIC %md ## 2. Classes, confidence and attention for every galaxy

# COMMAND ----------

from lsst_spark_ml.config import load_config
from lsst_spark_ml.io.readers import read_table
from lsst_spark_ml.pipelines import morphology

cfg = load_config(overrides={"morphology": {"attention": True}})
meta = morphology.predict(spark, cfg, CUTOUTS, MODEL, f"{OUT}/predictions")
print(meta["rows_in"], "rows in,", meta["rows_written"], "rows out;", meta["seconds"], "s")
pred = read_table(spark, f"{OUT}/predictions")
pred.groupBy("morph_class").count().orderBy("morph_class").show()
pred.select("objectId", "label_name", "morph_class", "morph_confidence", "morph_flags").show(8)

# COMMAND ----------

# MAGIC %md ## 3. Evaluation against the rendered truth, and attention maps
# MAGIC
# MAGIC The attention map is the last deformable block's attention: the softmax weight every query gives each
# MAGIC sampled key, splatted onto the keys' deformed positions and summed; contours over the r band.

# COMMAND ----------

from lsst_spark_ml.plots.display import show

ev = morphology.evaluate(spark, f"{OUT}/predictions", f"{OUT}/evaluation", cutouts=CUTOUTS, model_dir=MODEL)
print(f"macro-F1 {ev['macro_f1']:.3f}, accuracy {ev['accuracy']:.3f} on {ev['n']} galaxies "
      f"({ev['n_flagged']} flagged)")
print({k: round(v, 3) for k, v in ev["f1"].items()})
show(ev["confusion_png"])

# COMMAND ----------

show(ev["attention_png"])

# COMMAND ----------

# MAGIC %md ## 4. The same from SQL
# MAGIC
# MAGIC `udfs.sql.register` makes the shipped models SQL functions; `morphology_dat(cutout, cutout_shape,
# MAGIC cutout_dtype)` returns the class, confidence, probabilities and flags.

# COMMAND ----------

from udfs.sql import register

register(spark, {"morphology_dat": MODEL})
spark.read.parquet(CUTOUTS).createOrReplaceTempView("cutouts")
spark.sql("SELECT objectId, label_name, morphology_dat(cutout, cutout_shape, cutout_dtype).morph_class AS cls "
          "FROM cutouts LIMIT 5").show()
