"""Every way to move rows between Spark and torch, against plain torch and the machine's own bf16 peak, in one run.

    .venv/bin/python benchmarks/inference_paths.py [--rows 100000] [--cores 2] [--batch 2048] [--arrow-mb 16]

Same MBRNN ensemble (the shipped model), same rows, same cores, same network batch (``--batch``), same
whole per-row work (nJy fluxes -> features -> scaling -> ensemble -> PDF summaries -> output columns):

 * Spark paths (local[cores], rows cached in memory, noop sink): ``mapInArrow`` (udfs.photoz, the jobs'
   default), ``mapInPandas``, the iterator pandas UDF (udfs.photoz.photoz_pandas_udf, the SQL path),
   ``pyspark.ml.functions.predict_batch_udf`` (as Spark ships it), a mapInArrow that reloads the model from
   disk on every Arrow batch (as many brokers do), and a row-at-a-time Python UDF (on ``--row-udf-rows``
   rows, extrapolated);
 * plain torch: the same predictor on in-memory arrays, ``cores`` processes x 1 thread (Spark's layout),
   in float32 and bfloat16; and the network alone (features already scaled) in four forms: as trained
   (BatchNorm, float32), folded float32, autocast bfloat16 over the unfolded model (the previous path), and
   the folded explicit-bfloat16 form the predictor uses;
 * the matrix-multiply peak: a 4096 x 4096 product timed in float32 and bfloat16 on 1 and ``cores`` threads.
   FLOP fraction = rows/s x FLOPs per row (2 x multiply-adds of the Linear layers) / peak on ``cores``.
Arrow batches: ``maxRecordsPerBatch`` from ``--arrow-mb`` and the row width (udfs.photoz.arrow_batch_rows).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def matmul_peak(threads: int, n: int = 4096, repeats: int = 3) -> dict:
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        torch.matmul(a, b)
        best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
        out[name] = 2 * n ** 3 / best
    torch.set_num_threads(old)
    return out


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def _network_worker(args):
    """The network alone on scaled features, one thread: rows/s of each form."""
    model_dir, X, batch = args
    import torch
    torch.set_num_threads(1)
    from lsst_spark_ml.inference.fast import FoldedEnsemble
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    ens = PhotozPredictor.load(model_dir, precision="float32").ensemble

    def autocast(m):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x)
        return run
    forms = {"as trained (BatchNorm), float32": ens, "folded, float32": FoldedEnsemble(ens),
             "autocast bfloat16 (unfolded; previous path)": autocast(ens),
             "folded, explicit bfloat16 (this path)": FoldedEnsemble(ens, torch.bfloat16)}
    Xt = torch.from_numpy(X)
    res = {}
    with torch.inference_mode():
        for name, f in forms.items():
            f(Xt[:batch])
            best = min(_timed(lambda: [f(Xt[s:s + batch]) for s in range(0, len(Xt), batch)]) for _ in range(3))
            res[name] = len(Xt) / best
    return res


def network_only(model_dir, X, cores, batch) -> dict:
    parts = np.array_split(X, cores)
    with mp.get_context("spawn").Pool(cores) as pool:
        res = pool.map(_network_worker, [(model_dir, p, batch) for p in parts])
    # each process ran its share on its own core: the machine's rate is the sum of the per-process rates
    return {k: sum(r[k] for r in res) for k in res[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2048, help="rows per network call (inference.batch_size)")
    ap.add_argument("--arrow-mb", type=float, default=16.0, help="target MB per Arrow batch (inference.batch_mb)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--row-udf-rows", type=int, default=2000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import functions as Fn

    from lsst_spark_ml.artefacts import verify
    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.config import CatalogSettings, InferenceSettings, SparkSettings
    from lsst_spark_ml.inference.fast import cpu_bf16_features, flops_per_row, resolve_precision
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    from lsst_spark_ml.inference.schema import POINT_COLUMNS, arrow_columns, spark_struct
    from lsst_spark_ml.io.columns import resolve_columns, spark_schema_dict
    from lsst_spark_ml.io.synthetic import BANDS, _generate, load_parents
    from lsst_spark_ml.session import get_spark
    from photoz_throughput import plain_torch
    from udfs.photoz import (_column_getter_arrow, _photometry, _predictor, arrow_batch_rows, broadcast_model,
                             output_schema, photoz_arrow_mapper, photoz_pandas_udf)

    model_dir = str(Path(args.model or default_model_dir()).resolve())
    manifest, sha = verify(model_dir)
    arch = manifest["architecture"]
    flops_member = flops_per_row(arch["hidden"], arch["n_in"], arch["n_bins"])
    flops = flops_member * arch["n_members"]
    results: dict = {"rows": args.rows, "cores": args.cores, "batch": args.batch, "model_sha256": sha,
                     "cpu_bf16": list(cpu_bf16_features()), "flops_per_row": flops,
                     "flops_per_row_member": flops_member}

    # ---- the hardware's own limits, measured first (nothing else running in this process)
    peak1, peakn = matmul_peak(1), matmul_peak(args.cores)
    results["peak_flops"] = {"1_thread": peak1, f"{args.cores}_threads": peakn}
    print(f"matmul peak: float32 {peakn['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {peakn['bfloat16'] / 1e9:.0f} "
          f"GFLOP/s on {args.cores} threads ({peak1['bfloat16'] / 1e9:.0f} bf16 on 1)", file=sys.stderr)

    # ---- data: the synthetic LSST catalog of the demo (nJy fluxes)
    frame = _generate(np.arange(args.rows), load_parents(), seed=7)
    values = frame[[f"{b}_cModelFlux" for b in BANDS]].to_numpy(np.float64)
    errors = frame[[f"{b}_cModelFluxErr" for b in BANDS]].to_numpy(np.float64)
    pred32 = PhotozPredictor.load(model_dir, precision="float32")
    from lsst_spark_ml.features.photometry import build_features
    X, _, _ = build_features(values, errors, "flux", pred32.bands, pred32.features)
    Xs, _ = pred32.scaler.transform(X)

    # ---- plain torch
    net = network_only(model_dir, Xs, args.cores, args.batch)
    results["network_only_rows_per_s"] = net
    plain = {}
    for prec in ("float32", "bfloat16"):
        runs = [plain_torch(model_dir, values, errors, args.cores, args.batch, prec)["rows_per_s"]
                for _ in range(args.repeats)]
        plain[prec] = float(np.median(runs))
    results["plain_torch_rows_per_s"] = plain
    print(json.dumps({"network_only": net, "plain": plain}), file=sys.stderr, flush=True)

    # ---- Spark
    tmp = Path(tempfile.mkdtemp(prefix="lsm-paths-"))
    frame.to_parquet(tmp / "catalog.parquet", row_group_size=50_000)
    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", progress=False))
    df = spark.read.parquet(str(tmp / "catalog.parquet")).repartition(args.cores * 4).cache()
    df.count()
    cols = resolve_columns(spark_schema_dict(df), CatalogSettings())
    bc = broadcast_model(spark, model_dir)
    n_bins = arch["n_bins"]
    inf0 = InferenceSettings(batch_size=args.batch, batch_mb=args.arrow_mb)
    batch_rows = arrow_batch_rows(df.schema, n_bins, inf0)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    results["arrow_batch_rows"] = batch_rows
    auto = resolve_precision("auto", __import__("torch").device("cpu"))

    def timed_noop(out, n_rows=args.rows) -> float:
        out.write.format("noop").mode("overwrite").save()          # warm-up: workers start, model loads
        ts = [_timed(lambda: out.write.format("noop").mode("overwrite").save()) for _ in range(args.repeats)]
        return n_rows / float(np.median(ts))

    def mapinpandas(inf):
        def run(frames):
            pred = _predictor(bc, inf)
            for f in frames:
                v, e, ebv = _photometry(lambda c: f[c].to_numpy(np.float64), cols)
                res = pred.predict(v, e, cols.photometry, ebv, batch_size=inf.batch_size)
                out = pa.table(arrow_columns(res, pred.sha256, pred.n_bins)).to_pandas()
                yield pd.concat([f.reset_index(drop=True), out], axis=1)
        return run

    def reloading(inf):
        def run(batches):
            from lsst_spark_ml.inference.photoz import PhotozPredictor as P
            for batch in batches:
                pred = P.load(model_dir, precision=inf.precision)        # from disk, every batch
                v, e, ebv = _photometry(_column_getter_arrow(batch), cols)
                res = pred.predict(v, e, cols.photometry, ebv, batch_size=inf.batch_size)
                out = arrow_columns(res, pred.sha256, pred.n_bins)
                yield pa.RecordBatch.from_arrays(list(batch.columns) + list(out.values()),
                                                 names=list(batch.schema.names) + list(out.keys()))
        return run

    def predict_batch(inf):
        from pyspark.ml.functions import predict_batch_udf

        def make_predict_fn():
            pred = _predictor(bc, inf)

            # predict_batch_udf counts the predict function's parameters: one per input column (a
            # ``*arrays`` signature is refused with "Multiple input columns found").
            def predict(u, g, r, i, z, y, eu, eg, er, ei, ez, ey):
                v, e = np.column_stack([u, g, r, i, z, y]), np.column_stack([eu, eg, er, ei, ez, ey])
                res = pred.predict(v, e, cols.photometry, None, batch_size=inf.batch_size)
                out = {c: res[c] for c in POINT_COLUMNS}
                out["pdf"] = res["pdf"]
                out["flags"] = res["flags"]
                out["model_sha256"] = np.full(len(v), pred.sha256)
                return out
            return predict
        return predict_batch_udf(make_predict_fn, return_type=spark_struct(), batch_size=batch_rows)

    def row_udf(inf):
        from pyspark.sql.functions import udf

        @udf(returnType=spark_struct())
        def one(*xs):
            pred = _predictor(bc, inf)
            k = len(cols.values)
            v = np.asarray([xs[:k]], dtype=np.float64)
            e = np.asarray([xs[k:2 * k]], dtype=np.float64)
            r = pred.predict(v, e, cols.photometry, None, batch_size=inf.batch_size)
            row = {c: (None if not r["ok"][0] else float(r[c][0])) for c in POINT_COLUMNS}
            row["pdf"] = None if not r["ok"][0] else r["pdf"][0].tolist()
            return {**row, "flags": int(r["flags"][0]), "model_sha256": pred.sha256}
        return one

    spark_rows = []
    in_cols = [Fn.col(c) for c in cols.values + cols.errors]
    assert len(cols.values) == 6, "the predict_batch_udf path is written for the six LSST bands"
    for prec in ("float32", "bfloat16"):
        inf = InferenceSettings(batch_size=args.batch, batch_mb=args.arrow_mb, precision=prec)
        paths = {"mapInArrow (udfs default)":
                 lambda: df.mapInArrow(photoz_arrow_mapper(bc, cols, inf), output_schema(df.schema))}
        if prec == auto:
            paths.update({
                "mapInPandas": lambda: df.mapInPandas(mapinpandas(inf), output_schema(df.schema)),
                "iterator pandas UDF (udfs SQL path)":
                    lambda: df.withColumn("pz", photoz_pandas_udf(bc, cols, inf)(*[Fn.col(c) for c in cols.inputs])),
                "predict_batch_udf": lambda: df.withColumn("pz", predict_batch(inf)(*in_cols)),
                "model reloaded every Arrow batch": lambda: df.mapInArrow(reloading(inf), output_schema(df.schema)),
            })
        for name, make in paths.items():
            rate = timed_noop(make())
            spark_rows.append({"path": name, "precision": prec, "rows_per_s": rate})
            print(json.dumps(spark_rows[-1]), file=sys.stderr, flush=True)
        if prec == auto:
            small = df.limit(args.row_udf_rows).repartition(args.cores).cache()
            small.count()
            rate = timed_noop(small.withColumn("pz", row_udf(inf)(*in_cols)), args.row_udf_rows)
            spark_rows.append({"path": f"row-at-a-time Python UDF ({args.row_udf_rows:,} rows, extrapolated)",
                               "precision": prec, "rows_per_s": rate})
            print(json.dumps(spark_rows[-1]), file=sys.stderr, flush=True)
    spark.stop()
    results["spark"] = spark_rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n")

    # ---- one table
    pk = peakn["bfloat16"]
    print(f"\nMBRNN ensemble {sha[:12]} ({arch['n_members']} members, {flops / 1e6:.2f} MFLOP per row), "
          f"{args.rows:,} rows, {args.cores} cores x 1 thread, network batch {args.batch}, Arrow batch "
          f"{batch_rows:,} rows (~{args.arrow_mb:g} MB), median of {args.repeats}; CPU bf16: "
          f"{', '.join(cpu_bf16_features()) or 'none'}; auto precision here: {auto}")
    print(f"matmul peak on {args.cores} threads: float32 {peakn['float32'] / 1e9:.0f} GFLOP/s, "
          f"bfloat16 {pk / 1e9:.0f} GFLOP/s (1 thread: {peak1['float32'] / 1e9:.0f} / {peak1['bfloat16'] / 1e9:.0f})")
    print("\n| path | precision | rows/s | / plain torch (same precision) | fraction of bf16 peak |")
    print("|---|---|---:|---:|---:|")
    for name, r in net.items():
        print(f"| network only: {name} | {'bfloat16' if 'bfloat16' in name else 'float32'} | {r:,.0f} | | "
              f"{r * flops / pk:.2f} |")
    for prec, r in plain.items():
        print(f"| plain torch, whole per-row work | {prec} | {r:,.0f} | 1.00 | {r * flops / pk:.2f} |")
    for r in spark_rows:
        print(f"| Spark: {r['path']} | {r['precision']} | {r['rows_per_s']:,.0f} | "
              f"{r['rows_per_s'] / plain[r['precision']]:.2f} | {r['rows_per_s'] * flops / pk:.2f} |")


if __name__ == "__main__":
    os.environ.setdefault("LSST_SPARK_ML_BENCH", "1")
    main()
