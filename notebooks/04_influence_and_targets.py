# Databricks notebook source
# MAGIC %md
# MAGIC # Which training galaxies drive a prediction, and which galaxies deserve a spectrum
# MAGIC
# MAGIC Influence functions on the shipped MBRNN ensemble (no retraining needed), then spectroscopic target
# MAGIC selection. Runs top to bottom on the embedded default (the cosmoDC2 files of pz-rail-base, Spark
# MAGIC `local[*]`). On a cluster, change the next cell only: your training set, the objects to explain and
# MAGIC the unlabelled pool (Parquet or HATS paths), and `OUT` on shared storage.

# COMMAND ----------

import os
import tempfile

from lsst_spark_ml.io.datasets import dc2_paths

TRAINING = str(dc2_paths()["train"])          # the spectroscopic training set (with redshifts)
QUERIES = str(dc2_paths()["validation"])      # objects to explain: here the validation file ...
QUERY_WHERE = "id % 20 = 0"                    # ... one in twenty of them (any Spark SQL predicate)
POOL = str(dc2_paths()["validation"])         # unlabelled candidates for spectroscopy
OUT = os.environ.get("LSST_SPARK_ML_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="lsst_spark_ml-influence-")

# COMMAND ----------

from lsst_spark_ml.session import get_spark

spark = globals().get("spark") or get_spark()
print(spark.sparkContext.master, OUT)

# COMMAND ----------

# MAGIC %md ## 1. Influence of every training galaxy on the selected objects
# MAGIC
# MAGIC `influence.method: influence-function` (the default) preconditions each member's output-layer gradients
# MAGIC by its inverse Hessian; `tracin` needs a model trained with `train.snapshot_every`.

# COMMAND ----------

from lsst_spark_ml.cli import default_dcp_dir, default_model_dir
from lsst_spark_ml.config import load_config
from lsst_spark_ml.pipelines import influence, targets

cfg = load_config(overrides={"catalog": {"truth_col": "redshift"}, "influence": {"top_k": 5}})
meta = influence.run(spark, cfg, str(default_model_dir()), TRAINING, QUERIES, f"{OUT}/influence",
                     query_where=QUERY_WHERE)
print(meta["n_train"], "training rows,", meta["n_queries"], "queries, Hessian from", meta["hessian_rows"], "rows")

# COMMAND ----------

self_influence = spark.read.parquet(f"{OUT}/influence/self_influence")
print("Training galaxies with the highest self-influence (candidates for a wrong spectroscopic redshift):")
self_influence.orderBy(self_influence.self_influence.desc()).show(10)
spark.read.parquet(f"{OUT}/influence/influence").select("id", "redshift", "helpful_ids", "harmful_ids").show(
    5, truncate=60)

# COMMAND ----------

# MAGIC %md ## 2. A plot: training galaxies in colour space

# COMMAND ----------

from lsst_spark_ml.plots import show

show(f"{OUT}/influence/influence_colour_space.png")

# COMMAND ----------

# MAGIC %md ## 3. Spectroscopic targets: uncertain (DCP score), representative, not redundant

# COMMAND ----------

tmeta = targets.run(spark, cfg, str(default_model_dir()), POOL, TRAINING, f"{OUT}/targets",
                    dcp_dir=str(default_dcp_dir()), n_targets=50)
import pandas as pd

chosen = pd.read_csv(f"{OUT}/targets/targets.csv")
print(tmeta["uncertainty"], "-", tmeta["n_targets"], "targets from", tmeta["n_pool"], "candidates")
print(chosen[["rank", "id", "z_phot", "priority", "reason"]].head(10).to_string(index=False))

# COMMAND ----------

show(f"{OUT}/targets/targets_colour_space.png")
