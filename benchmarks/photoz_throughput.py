"""Photo-z inference throughput: the Spark path against plain torch on the same cores, in the same run.

    .venv/bin/python benchmarks/photoz_throughput.py [--rows 200000] [--cores 2] [--batch-sizes 2000,10000,50000]

Both sides run the whole per-row work (nJy fluxes -> features -> scaling -> ensemble -> PDF summaries):
 * plain torch: the input as one in-memory array, split over ``cores`` processes with one torch thread each
   (Spark's own layout: one task per core, one thread per task);
 * Spark: local[cores], the same rows read from Parquet, mapInArrow UDF, the noop sink (no output I/O).
Peak memory is the maximum resident set size of the Python processes that ran the model.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _plain_worker(args):
    model_dir, values, errors, batch, *rest = args
    precision = rest[0] if rest else "float32"     # float32 | bfloat16 (benchmarks/inference_paths.py)
    import torch
    torch.set_num_threads(1)
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    pred = PhotozPredictor.load(model_dir, precision=precision)
    pred.predict(values[:1000], errors[:1000], "flux", batch_size=batch)   # warm-up, as Spark's first batch
    t = time.perf_counter()
    for s in range(0, len(values), batch):
        pred.predict(values[s:s + batch], errors[s:s + batch], "flux", batch_size=batch)
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_torch(model_dir, values, errors, cores, batch, precision="float32"):
    parts = np.array_split(np.arange(len(values)), cores)
    ctx = mp.get_context("spawn")
    with ctx.Pool(cores) as pool:
        t = time.perf_counter()
        res = pool.map(_plain_worker, [(model_dir, values[p], errors[p], batch, precision) for p in parts])
        wall = time.perf_counter() - t
    compute = max(r[0] for r in res)
    return {"rows_per_s": len(values) / compute, "wall_incl_startup_s": wall, "peak_rss_mb": max(r[1] for r in res)}


def with_peak_rss(mapper, log_dir: str):
    """Wrap a mapInArrow function so each Python worker records its peak RSS after its last batch."""
    def run(batches):
        yield from mapper(batches)
        with open(os.path.join(log_dir, str(os.getpid())), "w") as f:
            f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return run


def worker_peak_rss(log_dir: str) -> float:
    return max(float(Path(log_dir, p).read_text()) for p in os.listdir(log_dir))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch-sizes", default="2000,10000,50000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    # (all transfer paths, baselines and the bfloat16 peak in one run: benchmarks/inference_paths.py)
    args = ap.parse_args()

    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.config import CatalogSettings, InferenceSettings, SparkSettings
    from lsst_spark_ml.io.columns import resolve_columns, spark_schema_dict
    from lsst_spark_ml.io.synthetic import BANDS, _generate, load_parents
    from lsst_spark_ml.artefacts import verify
    from lsst_spark_ml.session import get_spark
    from udfs.photoz import broadcast_model, output_schema, photoz_arrow_mapper

    model_dir = str(Path(args.model or default_model_dir()).resolve())
    manifest, sha = verify(model_dir)
    pdf = _generate(np.arange(args.rows), load_parents(), seed=7)
    values = pdf[[f"{b}_cModelFlux" for b in BANDS]].to_numpy(np.float64)
    errors = pdf[[f"{b}_cModelFluxErr" for b in BANDS]].to_numpy(np.float64)
    tmp = Path(tempfile.mkdtemp(prefix="lsm-bench-"))
    pdf.to_parquet(tmp / "catalog.parquet", row_group_size=50_000)

    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", progress=False,
                                    conf={"spark.sql.files.maxPartitionBytes": str(8 << 20)}))
    df = spark.read.parquet(str(tmp / "catalog.parquet")).repartition(args.cores * 4).cache()
    df.count()
    model_bc = broadcast_model(spark, model_dir)
    cols = resolve_columns(spark_schema_dict(df), CatalogSettings())
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        inf = InferenceSettings(batch_size=bs, precision=args.precision)
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(bs))
        rss_dir = tempfile.mkdtemp(prefix="rss-", dir=tmp)
        out = df.mapInArrow(with_peak_rss(photoz_arrow_mapper(model_bc, cols, inf), rss_dir),
                            output_schema(df.schema))
        out.write.format("noop").mode("overwrite").save()     # warm-up: workers start, model loads
        spark_t, plain_r = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out.write.format("noop").mode("overwrite").save()
            spark_t.append(time.perf_counter() - t)
            plain_r.append(plain_torch(model_dir, values, errors, args.cores, bs, args.precision))
        sp = args.rows / float(np.median(spark_t))
        pl = float(np.median([r["rows_per_s"] for r in plain_r]))
        rows.append({"batch": bs, "spark_rows_per_s": round(sp), "plain_torch_rows_per_s": round(pl),
                     "ratio": round(sp / pl, 3), "spark_worker_peak_rss_mb": round(worker_peak_rss(rss_dir)),
                     "plain_peak_rss_mb": round(max(r["peak_rss_mb"] for r in plain_r))})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    spark.stop()

    print(f"\nphoto-z inference, {args.rows:,} rows, {args.cores} cores, model {sha[:12]} "
          f"({manifest['architecture']['n_members']} members, {args.precision}), median of {args.repeats}")
    print("| Arrow/torch batch | Spark rows/s | plain torch rows/s | Spark / plain | peak RSS per Spark worker | "
          "peak RSS per plain process |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']:,} | {r['spark_rows_per_s']:,} | {r['plain_torch_rows_per_s']:,} | {r['ratio']:.2f} | "
              f"{r['spark_worker_peak_rss_mb']} MB | {r['plain_peak_rss_mb']} MB |")


if __name__ == "__main__":
    main()
