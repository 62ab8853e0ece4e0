# Databricks notebook source
# MAGIC %md
# MAGIC # Which objects is the network unsure of, and what a physical model says about them
# MAGIC
# MAGIC DCP out-of-distribution scores (Lee & Shin 2022) from the shipped model on galaxies the network never saw
# MAGIC and on a labelled out-of-distribution set (stars, quasars, galaxies beyond z = 3.1), then the Bayesian
# MAGIC template-fitting follow-up of the flagged rows only, merged back so that every row says where its redshift
# MAGIC comes from (`z_source`). Runs top to bottom on the embedded default (the cosmoDC2 files, Spark `local[*]`).
# MAGIC On a cluster, change the next cell only: `CATALOG` (Parquet or HATS, nJy fluxes or AB magnitudes), the
# MAGIC column holding a known kind if there is one, the rows to follow up, and `OUT` on shared storage.

# COMMAND ----------

import os
import tempfile

CATALOG = None             # None: held-out cosmoDC2 galaxies + the labelled OOD set, written below
KIND_COL = "kind"          # column naming what each row really is ("galaxy" = in distribution); None: unknown
LOOD_PER_KIND = int(os.environ.get("LSST_SPARK_ML_NOTEBOOK_ROWS", "60000")) // 20  # stars, quasars, high-z each
BAYES_WHERE = "ood_flag AND id % 4 = 0"       # the rows to follow up (Spark SQL); on a cluster: "ood_flag"
MCMC_WHERE = "ood_flag AND id % 64 = 0"       # a few dozen of them again with MCMC (slower, R-hat and ESS)
OUT = os.environ.get("LSST_SPARK_ML_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="lsst_spark_ml-ood-bayes-")

# COMMAND ----------

from pyspark.sql import functions as F

from lsst_spark_ml.plots import show
from lsst_spark_ml.session import get_spark

spark = globals().get("spark") or get_spark()
print(spark.sparkContext.master, OUT)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. The objects: in-distribution galaxies and three kinds the network was not trained on
# MAGIC
# MAGIC `ood.datasets.evaluation`: the half of the cosmoDC2 validation file that the DCP model never saw (not even
# MAGIC unlabelled), and stars (blackbodies), quasars (power law + broad lines + IGM) and galaxies at z 3.1-5 drawn
# MAGIC through the LSST curves with the same i-band distribution and error model (`ood/labelled_ood.py`), so
# MAGIC neither brightness nor errors give them away.

# COMMAND ----------

from lsst_spark_ml.ood.datasets import evaluation

if CATALOG is None:
    CATALOG = f"{OUT}/objects"
    spark.createDataFrame(evaluation(LOOD_PER_KIND)).write.mode("overwrite").parquet(CATALOG)
objects = spark.read.parquet(CATALOG)
if KIND_COL:
    objects.groupBy(KIND_COL).count().orderBy(KIND_COL).show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. DCP scores for every row
# MAGIC
# MAGIC `ood.score` is the job behind `lsst-spark-ml ood score` (`jobs/ood_score.py`); in a `pyspark.ml` pipeline
# MAGIC the same model is `DCPModel.from_model_dir(...)`, and in SQL `ood_dcp(...)` (`udfs.sql.register`). Each row
# MAGIC gets `ood_score` (entropy gap of the two networks), `ood_tercile` and `ood_flag` (above the 99th percentile
# MAGIC of in-distribution validation scores, stored in the model), plus the model's own photo-z and PDF.

# COMMAND ----------

from lsst_spark_ml.cli import default_dcp_dir
from lsst_spark_ml.config import load_config
from lsst_spark_ml.io.readers import read_table
from lsst_spark_ml.pipelines import ood

cfg = load_config()
meta = ood.score(spark, cfg, CATALOG, str(default_dcp_dir()), f"{OUT}/scored")
thresholds = meta["thresholds"]
print(meta["rows_in"], "rows scored in", meta["seconds"], "s; thresholds:",
      {k: round(v, 3) for k, v in thresholds.items()})
scored = read_table(spark, f"{OUT}/scored")
print("flagged:", scored.filter("ood_flag").count(), "of", scored.count())
if KIND_COL:
    scored.groupBy(KIND_COL).agg(F.avg(F.col("ood_flag").cast("double")).alias("fraction_flagged"),
                                 F.avg("ood_score").alias("mean_score")).orderBy(KIND_COL).show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. How well the score separates the kinds: distributions and ROC-AUC
# MAGIC
# MAGIC The scores per kind come to the driver (at most 50,000 per kind, sampled in Spark) for the plot and the
# MAGIC rank statistics of `metrics/ood.py`.

# COMMAND ----------

import numpy as np

from lsst_spark_ml.metrics.ood import report
from lsst_spark_ml.plots.ood import score_histograms

if KIND_COL:
    counts = {r[0]: r[1] for r in scored.groupBy(KIND_COL).count().collect()}
    sample = scored.sampleBy(KIND_COL, {k: min(1.0, 50_000 / n) for k, n in counts.items()}, seed=1)
    pdf = sample.select(KIND_COL, "ood_score").toPandas()
    by_kind = {k: g["ood_score"].to_numpy() for k, g in pdf.groupby(KIND_COL)}
    galaxies = by_kind.pop("galaxy")
    res = report(galaxies, by_kind, threshold=thresholds["flag"])
    for kind, r in res["kinds"].items():
        print(f"{kind:13s} ROC-AUC {r['roc_auc']:.3f}  PR-AUC {r['pr_auc']:.3f}  "
              f"flagged at the model's threshold: {r['at_threshold']['recall']:.1%} of them")
    print(f"galaxies flagged: {np.mean(galaxies >= thresholds['flag']):.1%}")
    show(score_histograms({"galaxy": galaxies, **by_kind}, thresholds, f"{OUT}/ood_score_histograms.png"))

# COMMAND ----------

# MAGIC %md
# MAGIC For galaxies with a known redshift, the flag isolates the network's worst answers:

# COMMAND ----------

from lsst_spark_ml.metrics.photoz import point_metrics

if "redshift" in scored.columns:
    gal = scored.where(f"{KIND_COL} = 'galaxy'") if KIND_COL else scored
    for flagged in (True, False):
        m = point_metrics(gal.where(f"ood_flag = {flagged}"), "z_median", "redshift")
        print(f"ood_flag {flagged!s:5s}: {m['n']:6d} galaxies, sigma_NMAD {m['sigma_nmad']:.4f}, "
              f"catastrophic {m['catastrophic_fraction']:.1%}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Bayesian follow-up of the flagged rows only
# MAGIC
# MAGIC `bayes.run` is `lsst-spark-ml bayes run --catalog SCORED --out PATH --method vi|mcmc|grid [--where SQL]`
# MAGIC (`jobs/bayes_followup.py`; the settings are the `bayes:` keys of `conf/bayes.yaml`). CWW+SB4 templates, IGM,
# MAGIC the LSST curves and the BPZ prior; the selected rows are spread over every core and fitted with
# MAGIC `mapInPandas`, the others pass through, and every input row comes out once with `z_adopted`,
# MAGIC `pdf_adopted` and `z_source` (the method, `network`, or `none`).

# COMMAND ----------

from lsst_spark_ml.pipelines import bayes

vi = bayes.run(spark, cfg, f"{OUT}/scored", f"{OUT}/bayes_vi", method="vi", where=BAYES_WHERE)
print(vi["rows_in"], "rows in,", vi["rows_written"], "out,", vi["seconds"], "s; z_source:", vi["z_source_counts"])
merged = read_table(spark, f"{OUT}/bayes_vi")
merged.where("z_source = 'vi'").select(
    "id", *([KIND_COL] if KIND_COL else []), "ood_score", "z_median", "bayes_z_median", "bayes_z_lo68",
    "bayes_z_hi68", "bayes_elbo", "z_source").show(5)

# COMMAND ----------

mcmc = bayes.run(spark, cfg, f"{OUT}/scored", f"{OUT}/bayes_mcmc", method="mcmc", where=MCMC_WHERE)
print("MCMC:", mcmc["z_source_counts"], mcmc["seconds"], "s")
chains = read_table(spark, f"{OUT}/bayes_mcmc").where("z_source = 'mcmc'")
chains.select("id", "bayes_z_median", "bayes_rhat", "bayes_ess", "bayes_flags").show(5)

# COMMAND ----------

# MAGIC %md
# MAGIC On the flagged galaxies with a known redshift, network against templates (on cosmoDC2, which the network
# MAGIC was trained on, the templates do not win: see the README's Bayesian section):

# COMMAND ----------

if "redshift" in merged.columns:
    fitted = merged.where("z_source = 'vi'")
    fitted = fitted.where(f"{KIND_COL} = 'galaxy'") if KIND_COL else fitted
    for col in ("z_median", "bayes_z_median"):
        m = point_metrics(fitted, col, "redshift")
        print(f"{col:15s} on {m['n']} flagged galaxies: sigma_NMAD {m['sigma_nmad']:.4f}, "
              f"catastrophic {m['catastrophic_fraction']:.1%}")

# COMMAND ----------

# MAGIC %md ## 5. Network and Bayesian PDFs of a few flagged objects

# COMMAND ----------

from pyspark.sql import Window

from lsst_spark_ml.plots.canvas import figure, save

bins = vi["bins"]
edges = np.linspace(bins["z_min"], bins["z_max"], bins["n_bins"] + 1)
cols = ["id", "pdf", "bayes_pdf", "z_median", "bayes_z_median"] + [c for c in ("redshift", KIND_COL)
                                                                   if c and c in merged.columns]
mc = {r["id"]: r["bayes_pdf"] for r in read_table(spark, f"{OUT}/bayes_mcmc").where("z_source = 'mcmc'").select(
    "id", "bayes_pdf").collect()}
# Rows that MCMC fitted too come first, so that the panels can compare both methods; where the kind is known,
# three galaxies and one of each other kind.
picked = merged.where("z_source = 'vi'").select(*cols).withColumn("_mcmc", F.col("id").isin(list(mc)))
if KIND_COL:
    rank = F.row_number().over(Window.partitionBy(KIND_COL).orderBy(F.desc("_mcmc"), "id"))
    picked = picked.withColumn("_k", rank).where(F.col("_k") <= F.when(F.col(KIND_COL) == "galaxy", 3).otherwise(1))
rows = [r.asDict() for r in picked.orderBy(*([KIND_COL] if KIND_COL else []), "id").limit(6).collect()]
fig = figure(figsize=(12, 6))
for j, r in enumerate(rows):
    ax = fig.add_subplot(2, 3, j + 1)
    for p, label, style in ((r["pdf"], "network (DCP TS3)", {"color": "C0"}),
                            (r["bayes_pdf"], "templates, VI", {"color": "C3"}),
                            (mc.get(r["id"]), "templates, MCMC",
                             {"color": "C2", "ls": "--"})):
        if p is not None:
            p = np.asarray(p, float)
            ax.stairs(p / p.sum() / np.diff(edges), edges, label=label, **style)
    z_true = r.get("redshift")
    if z_true is not None and np.isfinite(z_true):
        ax.axvline(z_true, color="k", lw=1, label="true z")
    ax.set_title(f"id {r['id']}" + (f" ({r[KIND_COL]})" if KIND_COL else "")
                 + (f", true z {z_true:.2f}" if z_true is not None else ""), fontsize=9)
    ax.set_xlim(edges[0], edges[-1])
if rows:
    # One legend, from the panel that draws every kind of line.
    max(fig.axes, key=lambda ax: len(ax.get_legend_handles_labels()[0])).legend(fontsize=7)
fig.supxlabel("z")
fig.supylabel("p(z)")
fig.tight_layout()
show(save(fig, f"{OUT}/network_vs_bayes_pdfs.png", dpi=100))
