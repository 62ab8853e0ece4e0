# Databricks notebook source
# MAGIC %md
# MAGIC # Photo-z at scale: a HATS catalog through the shipped ensemble, evaluated with Spark aggregations
# MAGIC
# MAGIC A synthetic LSST-like Object table (real cosmoDC2 galaxies observed again with the LSST 10-year error
# MAGIC model, so every row has a true redshift) is written as a HATS catalog, photo-z'd with the shipped MBRNN
# MAGIC ensemble with compact one-byte-per-bin PDFs, and evaluated against the truth without bringing rows to the
# MAGIC driver: sigma_NMAD, outliers, bias, PIT and CRPS overall and by magnitude. Runs top to bottom on the
# MAGIC embedded default (Spark `local[*]`). On a cluster, change the next cell only: point `CATALOG` at your
# MAGIC Object table (Parquet or HATS, nJy fluxes), `TRUTH_COL` at its spectroscopic redshift (or `None`) and `OUT`
# MAGIC at shared storage.

# COMMAND ----------

import os
import tempfile

CATALOG = None             # None: a synthetic HATS catalog of ROWS rows written below; else a Parquet/HATS path
ROWS = int(os.environ.get("LSST_SPARK_ML_NOTEBOOK_ROWS", "200000"))   # synthetic rows when CATALOG is None
TRUTH_COL = "redshift"     # true/spectroscopic redshift column of CATALOG; None: no evaluation
OUT = os.environ.get("LSST_SPARK_ML_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="lsst_spark_ml-photoz-scale-")

# COMMAND ----------

from lsst_spark_ml.plots import show
from lsst_spark_ml.session import get_spark

spark = globals().get("spark") or get_spark()
print(spark.sparkContext.master, spark.sparkContext.defaultParallelism, "cores,", OUT)

# COMMAND ----------

# MAGIC %md ## 1. The catalog as HATS: HEALPix-partitioned Parquet that LSDB opens directly

# COMMAND ----------

import json
import time

from lsst_spark_ml.io.hats_writer import write_hats
from lsst_spark_ml.io.synthetic import synthetic_catalog

if CATALOG is None:
    CATALOG = f"{OUT}/catalog"
    t0 = time.time()
    # Order 2 (192 pixels on the sky; the DC2-like footprint covers a few of them) keeps the files few here;
    # a full survey uses the default of the jobs, output.hats_order (3), or deeper.
    hats = write_hats(synthetic_catalog(spark, ROWS), CATALOG, "coord_ra", "coord_dec", order=2)
    print(json.dumps(hats), f"{time.time() - t0:.1f} s")
print(open(f"{CATALOG}/hats.properties").read() if os.path.exists(f"{CATALOG}/hats.properties") else CATALOG)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Photo-z for every row, PDFs as one byte per bin
# MAGIC
# MAGIC `photoz.predict` is the job behind `lsst-spark-ml photoz predict` and `jobs/photoz_predict.py`: the model
# MAGIC is verified on the driver and broadcast, each Python worker loads it once, Arrow batches go through it with
# MAGIC `mapInArrow`, and the output keeps every input row (checked: rows in = rows written). With
# MAGIC `inference.pdf_format: uint8` the 64-bin PDF is stored as 64 bytes instead of 256 (`inference/compact_pdf.py`).

# COMMAND ----------

from lsst_spark_ml.cli import default_model_dir
from lsst_spark_ml.config import load_config
from lsst_spark_ml.io.readers import read_table
from lsst_spark_ml.pipelines import photoz

cfg = load_config(overrides={"inference": {"pdf_format": "uint8"}, "catalog": {"truth_col": TRUTH_COL}})
t0 = time.time()
meta = photoz.predict(spark, cfg, CATALOG, str(default_model_dir()), f"{OUT}/photoz")
seconds = time.time() - t0
cores = spark.sparkContext.defaultParallelism
print(meta["rows_in"], "rows in,", meta["rows_written"], "written as", meta["layout"], f"in {seconds:.1f} s:",
      f"{meta['rows_written'] / seconds:,.0f} rows/s on {cores} cores ({meta['rows_written'] / seconds / cores:,.0f} "
      "per core, HATS write included)")
print("precision:", meta["precision"])
predictions = read_table(spark, f"{OUT}/photoz")
predictions.select("objectId", "z_median", "z_lo68", "z_hi68", "flags", TRUTH_COL or "z_mode").show(5)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Quality flags: every row is kept, and says what was wrong with it
# MAGIC
# MAGIC The synthetic catalog damages a small fraction of rows on purpose (NaN fluxes, infinite errors, all bands
# MAGIC missing), and faint bands are non-detections, as in a real Object table.

# COMMAND ----------

import numpy as np
from pyspark.sql import functions as F

from lsst_spark_ml.features import flags as fl
from lsst_spark_ml.plots.canvas import figure, save

bands = meta["bands"]
bits = ([(f"NONDETECT_{b}", fl.NONDETECT_SHIFT + k) for k, b in enumerate(bands)]
        + [(f"MISSING_{b}", fl.MISSING_SHIFT + k) for k, b in enumerate(bands)]
        + [(f"BAD_ERROR_{b}", fl.BAD_ERROR_SHIFT + k) for k, b in enumerate(bands)]
        + [("NO_ESTIMATE", 24), ("OUT_OF_RANGE", 25), ("BAD_EBV", 26)])
# All the bits in one aggregation: one pass over the catalog instead of one per bit.
row = predictions.agg(F.count(F.lit(1)).alias("rows"), F.count(F.when(F.col("flags") != 0, 1)).alias("any"),
                      *[F.count(F.when(F.col("flags").bitwiseAND(1 << bit) != 0, 1)).alias(name)
                        for name, bit in bits]).first()
counts = {name: row[name] for name, _ in bits if row[name]}
print(f"{row['any']:,} of {row['rows']:,} rows have at least one flag;", row["NO_ESTIMATE"], "have no estimate")
print(counts)

fig = figure(figsize=(9, 3.6))
ax = fig.add_subplot()
ax.bar(list(counts), list(counts.values()), color="tab:blue")
ax.set_yscale("log")
ax.set_ylabel("rows with the bit set")
ax.set_title(f"flags of {row['rows']:,} rows ({row['any']:,} with any bit)")
ax.tick_params(axis="x", rotation=70, labelsize=8)
show(save(fig, f"{OUT}/flag_counts.png", dpi=100))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Evaluation against the truth, as Spark aggregations
# MAGIC
# MAGIC `photoz.evaluate` (`lsst-spark-ml photoz evaluate`) computes the RAIL point and PDF metrics and the inputs
# MAGIC of the plots as aggregations: only histograms and a few numbers reach the driver, so the same cell works on
# MAGIC a billion rows.

# COMMAND ----------

if TRUTH_COL:
    metrics = photoz.evaluate(spark, f"{OUT}/photoz", TRUTH_COL, f"{OUT}/evaluation")
    keys = ("n", "sigma_nmad", "point_outlier_rate", "catastrophic_fraction", "point_bias")
    print("z_median:", {k: round(metrics["z_median"][k], 4) for k in keys})
    print("PDF:", {k: round(metrics["pdf"][k], 4) for k in ("pit_ks", "pit_cvm", "pit_outlier_rate", "crps",
                                                              "cde_loss")})
    for name in ("zphot_vs_zspec.png", "pit.png", "nz.png", "example_pdfs.png"):
        show(f"{OUT}/evaluation/{name}")

# COMMAND ----------

# MAGIC %md
# MAGIC ### By magnitude
# MAGIC
# MAGIC Training sets are bright; the survey is not. The same aggregations per i-band magnitude bin, on the
# MAGIC decoded PDFs (`photoz.decode_pdf_column` turns the uint8 codes back into probabilities on the executors).

# COMMAND ----------

import pandas as pd

from lsst_spark_ml.metrics.photoz import pdf_metrics, point_metrics

MAG_BINS = [(None, 22.0), (22.0, 23.0), (23.0, 24.0), (24.0, 25.0), (25.0, None)]
if TRUTH_COL:
    bins = meta["bins"]
    edges = np.linspace(bins["z_min"], bins["z_max"], bins["n_bins"] + 1)
    i_mag = F.when(F.col("i_cModelFlux") > 0, F.lit(31.4) - 2.5 * F.log10("i_cModelFlux"))
    scored = photoz.decode_pdf_column(
        predictions.select("z_median", "pdf", TRUTH_COL, i_mag.alias("i_mag")), bins["n_bins"]).cache()
    table = []
    for lo, hi in MAG_BINS:
        cond = F.col("i_mag").isNotNull()
        cond = cond & (F.col("i_mag") >= lo) if lo is not None else cond
        cond = cond & (F.col("i_mag") < hi) if hi is not None else cond
        part = scored.where(cond)
        pm, dm = point_metrics(part, "z_median", TRUTH_COL), pdf_metrics(part, "pdf", TRUTH_COL, edges)
        if pm["n"]:
            label = f"< {hi:g}" if lo is None else f">= {lo:g}" if hi is None else f"{lo:g}-{hi:g}"
            table.append({"i": label, "n": pm["n"], "sigma_nmad": pm["sigma_nmad"],
                          "outliers": pm["point_outlier_rate"], "catastrophic": pm["catastrophic_fraction"],
                          "bias": pm["point_bias"], "pit_ks": dm["pit_ks"], "crps": dm["crps"]})
    scored.unpersist()
    by_mag = pd.DataFrame(table)
    print(by_mag.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    fig = figure(figsize=(11, 3.4))
    for j, (col, label) in enumerate([("sigma_nmad", "sigma_NMAD"), ("outliers", "outlier fraction"),
                                      ("crps", "CRPS")]):
        ax = fig.add_subplot(1, 3, j + 1)
        ax.plot(by_mag["i"], by_mag[col], "o-")
        ax.set(xlabel="i magnitude", ylabel=label)
    fig.tight_layout()
    show(save(fig, f"{OUT}/metrics_by_magnitude.png", dpi=100))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 5. What the compact PDFs cost per billion rows
# MAGIC
# MAGIC One byte per bin, square-root companded (0.4 % relative error at the peak; `compact_pdf.py`), against
# MAGIC float32. Measured here on disk (Parquet, Spark's default snappy compression) by writing the same PDFs both
# MAGIC ways, then scaled to 10^9 rows.

# COMMAND ----------

from pyarrow import fs as pafs

from lsst_spark_ml.inference.compact_pdf import bytes_per_object, to_qp_hist
from lsst_spark_ml.io.readers import filesystem


def parquet_bytes(path):
    fs, root = filesystem(path)          # local, s3a:// or hdfs:// alike
    return sum(f.size for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
               if f.type == pafs.FileType.File and f.base_name.endswith(".parquet"))


n_bins = meta["bins"]["n_bins"]
n = meta["rows_written"]
# Bytes per row do not depend on the catalog's size: at most 200,000 rows are written again, both ways.
pdfs = predictions.select("objectId", "pdf").sample(fraction=min(1.0, 200_000 / n), seed=3).cache()
n_sample = pdfs.count()
pdfs.write.mode("overwrite").parquet(f"{OUT}/pdf_uint8")
photoz.decode_pdf_column(pdfs, n_bins).write.mode("overwrite").parquet(f"{OUT}/pdf_float32")
sizes = {fmt: parquet_bytes(f"{OUT}/pdf_{fmt}") for fmt in ("uint8", "float32")}
for fmt, size in sizes.items():
    print(f"{fmt:8s} payload {bytes_per_object(fmt, n_bins):4d} B/row; on disk {size / n_sample:6.1f} B/row "
          f"(with objectId) -> {size / n_sample:4.0f} GB per 10^9 rows")
whole = parquet_bytes(f"{OUT}/photoz") / n
print(f"whole photo-z output (all columns, uint8 PDFs): {whole:.0f} B/row -> {whole:.0f} GB per 10^9 rows")

# The codes map onto qp's histogram representation without qp installed (qp.Ensemble(qp.hist, data=...)).
codes = np.stack([np.frombuffer(r["pdf"], np.uint8) for r in pdfs.where("pdf IS NOT NULL").limit(3).collect()])
pdfs.unpersist()
qp_hist = to_qp_hist(codes, np.linspace(meta["bins"]["z_min"], meta["bins"]["z_max"], n_bins + 1))
print("qp.hist:", qp_hist["bins"].shape, "edges,", qp_hist["pdfs"].shape, "densities")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 6. The same at survey scale
# MAGIC
# MAGIC Change the first cell only (`CATALOG`, `TRUTH_COL`, `OUT` on shared storage): every step above is a Spark
# MAGIC job whose driver-side work does not grow with the rows. Outside a notebook the same run is one command:
# MAGIC
# MAGIC ```bash
# MAGIC spark-submit --master yarn --archives env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
# MAGIC   jobs/photoz_predict.py --catalog s3a://bucket/dr1/object --out s3a://bucket/dr1/photoz \
# MAGIC   --set inference.pdf_format=uint8
# MAGIC spark-submit ... jobs/photoz_evaluate.py --predictions s3a://bucket/dr1/photoz --truth-col z_spec --out eval/
# MAGIC ```
# MAGIC
# MAGIC From SQL, `udfs.sql.register(spark)` gives `photoz_mbrnn(u_cModelFlux, u_cModelFluxErr, ...)` with the same
# MAGIC model and per-worker cache. The throughput printed in section 2 scales with the executor cores (each task
# MAGIC runs the network on its own batches): rows / (rows/s per core x cores) is the wall time of the inference.
