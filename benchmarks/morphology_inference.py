"""Morphology inference at 480 x 480 x 11: the Spark path against plain torch on the same cores, in one run.

    .venv/bin/python benchmarks/morphology_inference.py [--images 48] [--size 480] [--preset dat_tiny] [--cores 2]

Both sides do the whole per-galaxy work: float16 band bytes -> bands -> object mask (per-band Gaussian
mixtures) and NaN masks -> arcsinh stretch -> network -> probabilities.
 * plain torch: the decoded cutouts in memory, split over ``cores`` processes with one torch thread each
   (Spark's layout: one task per core, one thread per task);
 * Spark: local[cores], the same cutouts read from Parquet, ``udfs.morphology`` through mapInArrow, Arrow
   batches sized by bytes, the noop sink.
Also: the network alone (images/s, GFLOP/s against the float32 matrix-multiply peak measured here), the
input builder alone, and the peak RSS of every Python worker (target < 4 GB). The weights are random (speed
does not depend on them); the galaxies are GalSim renders of the survey domain.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.photoz_throughput import with_peak_rss, worker_peak_rss  # noqa: E402


def matmul_peak_f32(threads: int, n: int = 2048, repeats: int = 3) -> float:
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def _plain_worker(args):
    model_dir, bands, batch, precision = args
    import torch
    torch.set_num_threads(1)
    from lsst_spark_ml.inference.morphology import MorphologyPredictor
    pred = MorphologyPredictor.load(model_dir, precision=precision)
    pred.predict(bands[:1], batch_size=batch)                       # warm-up, as Spark's first batch
    t = time.perf_counter()
    for s in range(0, len(bands), batch):
        pred.predict(bands[s:s + batch], batch_size=batch)
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_torch(model_dir, bands, cores, batch, precision):
    parts = np.array_split(np.arange(len(bands)), cores)
    with mp.get_context("spawn").Pool(cores) as pool:
        res = pool.map(_plain_worker, [(model_dir, bands[p], batch, precision) for p in parts])
    return {"images_per_s": len(bands) / max(r[0] for r in res), "peak_rss_mb": max(r[1] for r in res)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--preset", default="dat_tiny")
    ap.add_argument("--network", default="dat")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--precisions", default="float32,bfloat16")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    from lsst_spark_ml.artefacts import save_artefact
    from lsst_spark_ml.config import MorphologySettings, SparkSettings
    from lsst_spark_ml.inference.morphology import KIND
    from lsst_spark_ml.models.dat import build_morphology_model, count_flops
    from lsst_spark_ml.morphology.cutouts import check_cutout_table, rows_per_batch, write_cutouts
    from lsst_spark_ml.morphology.inputs import build_inputs
    from lsst_spark_ml.morphology.render import BANDS, CLASSES, RenderSettings, render_galaxies
    from lsst_spark_ml.session import get_spark
    from lsst_spark_ml.training.morphology import network_config
    from udfs.morphology import morphology_arrow_mapper, output_schema

    tmp = Path(tempfile.mkdtemp(prefix="morph_bench_"))
    ms = MorphologySettings(network=args.network, preset=args.preset, image_size=args.size,
                            batch_size_predict=args.batch)
    net_cfg = network_config(ms, len(CLASSES))
    torch.manual_seed(0)
    model = build_morphology_model(args.network, net_cfg).eval()
    flops = count_flops(model, (1, 11, args.size, args.size))
    model_dir = tmp / "model"
    save_artefact(model_dir, model.state_dict(), {
        "kind": KIND, "network": args.network, "architecture": net_cfg, "classes": list(CLASSES),
        "bands": list(BANDS), "image_size": args.size, "note": "random weights: benchmark only"})

    t = time.perf_counter()
    rendered = render_galaxies(args.images, seed=5, settings=RenderSettings.survey(size=args.size))
    render_s = time.perf_counter() - t
    ids = np.arange(args.images, dtype=np.int64)
    cut = tmp / "cutouts"
    write_cutouts(str(cut), rendered.images, ids, np.full(args.images, 55.0), np.full(args.images, -30.0),
                  labels=rendered.labels, dtype="float16")
    info = check_cutout_table(str(cut))
    bands16 = rendered.images.astype(np.float16).astype(np.float32)   # what the table holds
    results = {"images": args.images, "size": args.size, "network": args.network, "preset": args.preset,
               "cores": args.cores, "batch": args.batch, "gflop_per_image": flops * 2 / 1e9,
               "render_s_per_image": render_s / args.images, "bytes_per_cutout_float16": 5 * args.size ** 2 * 2}

    torch.set_num_threads(args.cores)
    t = time.perf_counter()
    x, _ = build_inputs(bands16[:8], args.size)
    results["input_build_s_per_image_1core"] = (time.perf_counter() - t) / 8
    peak = matmul_peak_f32(args.cores)
    results["matmul_peak_f32_gflops"] = peak / 1e9
    torch.set_num_threads(args.cores)
    xb = torch.from_numpy(np.ascontiguousarray(np.repeat(x[:1], args.batch, 0)))
    with torch.inference_mode():
        model(xb)
        secs = min(_timed(lambda: model(xb)) for _ in range(3))
    results["network_only_f32_images_per_s"] = args.batch / secs
    results["network_only_f32_fraction_of_peak"] = args.batch / secs * flops * 2 / peak

    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", app_name="morphology-bench"))
    from lsst_spark_ml.artefacts import read_payload
    bc = spark.sparkContext.broadcast(read_payload(model_dir))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch",
                   str(rows_per_batch(tuple(info.shape), info.dtype, target_mb=ms.batch_mb)))
    df = spark.read.parquet(str(cut)).repartition(args.cores).cache()
    df.count()
    for precision in args.precisions.split(","):
        plain = plain_torch(str(model_dir), bands16, args.cores, args.batch, precision)
        pms = MorphologySettings(network=args.network, preset=args.preset, image_size=args.size,
                                 batch_size_predict=args.batch, precision=precision)
        log_dir = tempfile.mkdtemp(dir=tmp)
        mapper = with_peak_rss(morphology_arrow_mapper(bc, pms), log_dir)
        out = df.mapInArrow(mapper, output_schema(df.schema, False))
        out.write.format("noop").mode("overwrite").save()          # warm: workers load the model once
        log_dir2 = tempfile.mkdtemp(dir=tmp)
        mapper = with_peak_rss(morphology_arrow_mapper(bc, pms), log_dir2)
        out = df.mapInArrow(mapper, output_schema(df.schema, False))
        t = time.perf_counter()
        out.write.format("noop").mode("overwrite").save()
        spark_ips = args.images / (time.perf_counter() - t)
        results[precision] = {"plain_torch_images_per_s": plain["images_per_s"],
                              "plain_torch_peak_rss_mb": plain["peak_rss_mb"],
                              "spark_images_per_s": spark_ips, "spark_over_plain": spark_ips / plain["images_per_s"],
                              "spark_worker_peak_rss_mb": max(worker_peak_rss(log_dir), worker_peak_rss(log_dir2))}
        print(f"{precision}: plain torch {plain['images_per_s']:.2f} img/s, Spark {spark_ips:.2f} img/s "
              f"(ratio {spark_ips / plain['images_per_s']:.2f}); worker peak RSS "
              f"{results[precision]['spark_worker_peak_rss_mb']:.0f} MB", file=sys.stderr)
    spark.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
