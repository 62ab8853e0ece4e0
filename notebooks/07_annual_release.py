# Databricks notebook source
# MAGIC %md
# MAGIC # The annual data release: one resumable, idempotent job over the whole catalog
# MAGIC
# MAGIC A synthetic multi-pixel HATS catalog goes through photo-z, DCP out-of-distribution scores and the
# MAGIC Bayesian follow-up of the flagged rows, one sky pixel at a time, each pixel's output committed
# MAGIC atomically and recorded in a manifest. A rerun does nothing; an interrupted run resumes. On a cluster,
# MAGIC change the next cell only: your HATS input(s), the release id and an output root on shared storage.

# COMMAND ----------

import os
import tempfile

OUT = os.environ.get("LSST_SPARK_ML_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="lsst_spark_ml-release-")
ROWS = int(os.environ.get("LSST_SPARK_ML_NOTEBOOK_ROWS", "50000"))
INPUT = f"{OUT}/objects"          # a HATS catalog; generated below when it does not exist
RELEASE = {"id": "dr-notebook", "output_root": f"{OUT}/releases", "inputs": {"objects": INPUT},
           "stages": [{"name": "photoz"}, {"name": "ood"}, {"name": "bayes"}], "synthetic_rows": ROWS}

# COMMAND ----------

from lsst_spark_ml.session import get_spark

spark = globals().get("spark") or get_spark()
print(spark.sparkContext.master, OUT)

# COMMAND ----------

# MAGIC %md ## 1. The plan, before anything runs: pixels, models with sha256, estimated cost

# COMMAND ----------

from lsst_spark_ml.config import load_config
from lsst_spark_ml.release import runner

cfg = load_config(overrides={"release": RELEASE, "catalog": {"truth_col": "redshift", "keep_cols": ["true_class"]},
                             "bayes": {"method": "vi"}})
runner.ensure_inputs(cfg, lambda: spark)          # writes the synthetic input when it is missing
print(runner.dry_run(cfg))

# COMMAND ----------

# MAGIC %md ## 2. Run it, then run it again: the second run only reads the manifest

# COMMAND ----------

import time

t0 = time.time()
first = runner.run_release(cfg, lambda: spark)
t1 = time.time()
again = runner.run_release(cfg, lambda: spark)
t2 = time.time()
print(first["status"], f"{t1 - t0:.1f} s;", "rerun:", again["status"], f"{t2 - t1:.2f} s")

# COMMAND ----------

# MAGIC %md ## 3. Every row once, with its provenance; the report

# COMMAND ----------

import json

release_dir = f"{OUT}/releases/dr-notebook"
photoz = spark.read.parquet(f"{release_dir}/photoz/dataset")
print(photoz.count(), "photo-z rows for", ROWS, "input rows")
photoz.select("objectId", "z_median", "flags", "release_id", "model_sha256", "config_hash").show(3, truncate=20)
report = json.load(open(f"{release_dir}/report.json"))
print({stage: {k: v for k, v in s.items() if k in ("rows_in", "rows_out", "partitions")}
       for stage, s in report["summary"].items()})

# COMMAND ----------

import glob

from lsst_spark_ml.plots import show

for png in sorted(glob.glob(f"{release_dir}/**/*.png", recursive=True))[:3]:
    show(png)
