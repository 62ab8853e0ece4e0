"""Release throughput (issue 9): a synthetic release through photo-z and DCP, against the stages alone.

    .venv/bin/python benchmarks/release_throughput.py --rows 1000000 --cores 2

Measures, on one local[cores] session and the same synthetic HATS input (generated first, not timed):

* each stage alone, as a user runs it today: ``photoz predict`` and ``ood score`` (read, infer, HEALPix
  shuffle, HATS write), wall seconds each;
* the release job with both stages (one pass over the input per partition, two committed catalogs);
* the rerun of the finished release (resume overhead; target < 5 % of the run);

and prints rows/s, the release against the sum of the stages alone, and the core-hours extrapolated to
37e9 objects (assumptions printed with it). Results also go to <out>/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

N_LSST = 37e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic rows (issue target: 10^7)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--order", type=int, default=3, help="HEALPix order of the synthetic input")
    ap.add_argument("--out", default=None, help="work directory (default outputs/bench-release-<rows>)")
    ap.add_argument("--skip-alone", action="store_true", help="do not measure the stages alone")
    args = ap.parse_args()

    from lsst_spark_ml.cli import default_dcp_dir, default_model_dir
    from lsst_spark_ml.config import SparkSettings, load_config
    from lsst_spark_ml.pipelines import ood, photoz
    from lsst_spark_ml.release import runner
    from lsst_spark_ml.release.synth import write_synthetic_release
    from lsst_spark_ml.session import get_spark

    out = Path(args.out or ROOT / "outputs" / f"bench-release-{args.rows}")
    out.mkdir(parents=True, exist_ok=True)
    spark = get_spark(SparkSettings(master=f"local[{args.cores}]", app_name="bench-release", progress=False,
                                    conf={"spark.sql.shuffle.partitions": str(4 * args.cores)}))
    objects = out / "objects"
    if not objects.exists():
        t = time.time()
        write_synthetic_release(spark, args.rows, str(objects), order=args.order)
        print(f"synthetic input: {args.rows:,} rows in {time.time() - t:.0f} s -> {objects}", flush=True)

    res: dict = {"rows": args.rows, "cores": args.cores, "order": args.order}
    cfg = load_config(overrides={"output": {"mode": "overwrite"}})
    if not args.skip_alone:
        for name, fn, model in (("photoz_alone", photoz.predict, default_model_dir()),
                                ("ood_alone", ood.score, default_dcp_dir())):
            t = time.time()
            fn(spark, cfg, str(objects), str(model), str(out / name))
            res[name] = {"seconds": round(time.time() - t, 1)}
            res[name]["rows_per_s"] = round(args.rows / res[name]["seconds"])
            print(name, res[name], flush=True)

    rel = load_config(overrides={"release": {"id": f"bench-{time.strftime('%Y%m%d%H%M%S')}",
                                             "output_root": str(out / "releases"),
                                             "inputs": {"objects": str(objects)},
                                             "stages": [{"name": "photoz"}, {"name": "ood"}]}})
    t = time.time()
    summary = runner.run_release(rel, lambda: spark)
    res["release"] = {"seconds": round(time.time() - t, 1), "status": summary["status"]}
    res["release"]["rows_per_s"] = round(args.rows / res["release"]["seconds"])
    t = time.time()
    again = runner.run_release(rel, lambda: spark)
    res["rerun"] = {"seconds": round(time.time() - t, 2), "status": again["status"],
                    "fraction_of_run": round((time.time() - t) / res["release"]["seconds"], 4)}
    if not args.skip_alone:
        alone = res["photoz_alone"]["seconds"] + res["ood_alone"]["seconds"]
        res["release_vs_sum_of_stages_alone"] = round(alone / res["release"]["seconds"], 3)
    core_s_per_row = res["release"]["seconds"] * args.cores / args.rows
    res["extrapolation_37e9"] = {
        "core_hours": round(N_LSST * core_s_per_row / 3600),
        "assumptions": "photo-z + DCP only (no Bayesian follow-up); cost linear in rows (per-partition work, no "
                       "shuffle); a cluster core as fast as one core of this machine (no GPU, float32); "
                       "driver and I/O overheads as measured here at this size"}
    print(json.dumps(res, indent=2))
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0 if summary["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
