"""Does the photo-z stage wait for its input? Time inside ``next(batches)`` against the whole task, and a
prefetch thread against none, in one run.

    .venv/bin/python benchmarks/io_overlap.py [--rows 400000] [--cores 2] [--arrow-mb 4] [--repeats 3]

The catalog is read from Parquet on every run (no cache), so the JVM reads and decodes Parquet and sends
Arrow batches to the Python workers while they compute. Spark already overlaps the two: the JVM's writer
thread fills the socket while Python works on the previous batch. What is left for Python to overlap is
reading a batch off the socket (Arrow IPC, nearly zero-copy). Variants, same mapper (``udfs.photoz``):

 * ``default``: the jobs' ``mapInArrow`` function;
 * ``prefetch``: a thread pulls the next Arrow batches (depth 2) while the main thread computes.
Each task logs the seconds it spent waiting in ``next()`` and its total; rows/s is the median of
``--repeats`` noop-sink runs after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_END = object()


def prefetch(batches, depth: int = 2):
    """Yield from ``batches`` while a thread reads ahead up to ``depth`` items; re-raise its errors here."""
    q: queue.Queue = queue.Queue(depth)

    def fill():
        try:
            for b in batches:
                q.put(b)
            q.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
    threading.Thread(target=fill, daemon=True).start()
    while True:
        b = q.get()
        if b is _END:
            return
        if isinstance(b, BaseException):
            raise b
        yield b


def timed(mapper, log_dir: str, read_ahead: bool):
    """``mapper`` with the time spent waiting for input batches logged per task."""
    def run(batches):
        it = iter(prefetch(batches) if read_ahead else batches)
        wait, t0 = 0.0, time.perf_counter()
        while True:
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - t
            yield from mapper(iter([b]))
        Path(log_dir, f"{uuid.uuid4().hex}.json").write_text(
            json.dumps({"wait": wait, "total": time.perf_counter() - t0}))
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--arrow-mb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.config import CatalogSettings, InferenceSettings, SparkSettings
    from lsst_spark_ml.io.columns import resolve_columns, spark_schema_dict
    from lsst_spark_ml.io.synthetic import _generate, load_parents
    from lsst_spark_ml.session import get_spark
    from udfs.photoz import arrow_batch_rows, broadcast_model, output_schema, photoz_arrow_mapper

    tmp = Path(tempfile.mkdtemp(prefix="lsm-overlap-"))
    _generate(np.arange(args.rows), load_parents(), seed=7).to_parquet(tmp / "catalog.parquet",
                                                                       row_group_size=50_000)
    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", progress=False))
    df = spark.read.parquet(str(tmp / "catalog.parquet"))
    cols = resolve_columns(spark_schema_dict(df), CatalogSettings())
    bc = broadcast_model(spark, str(default_model_dir()))
    inf = InferenceSettings(batch_mb=args.arrow_mb)
    rows = arrow_batch_rows(df.schema, 64, inf)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(rows))
    results = {"rows": args.rows, "arrow_batch_rows": rows, "partitions": df.rdd.getNumPartitions()}
    for name in ("default", "prefetch", "default", "prefetch"):          # interleaved: drift hits both
        log_dir = tempfile.mkdtemp(dir=tmp)
        out = df.mapInArrow(timed(photoz_arrow_mapper(bc, cols, inf), log_dir, name == "prefetch"),
                            output_schema(df.schema))
        out.write.format("noop").mode("overwrite").save()
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out.write.format("noop").mode("overwrite").save()
            ts.append(time.perf_counter() - t)
        logs = [json.loads(p.read_text()) for p in Path(log_dir).glob("*.json")]
        r = {"rows_per_s": args.rows / float(np.median(ts)),
             "wait_fraction": sum(x["wait"] for x in logs) / sum(x["total"] for x in logs)}
        results.setdefault(name, []).append(r)
        print(name, json.dumps(r), file=sys.stderr, flush=True)
    spark.stop()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
