"""The release driver: open (or resume) the release, run the pending partitions on Spark, finish.

One Spark job per round runs one task per pending partition (largest first), each task doing every pending
stage of its partition (``partition.run_partition``). A round that loses tasks (a crashed worker, a lost
executor beyond Spark's own retries) is followed by another over what is still uncommitted, up to
``release.max_rounds``; a partition that fails for a reason (unreadable file, duplicate ids) is recorded as
failed with that reason and not retried within the run: the other partitions go on.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import __version__
from ..config import Config
from ..errors import CatalogError, ConfigError
from ..io.columns import resolve_columns
from ..io.readers import _join, filesystem
from . import catalogs, manifest, partition, report, settings, stages
from .plan import Plan, make_plan

EXIT_AFTER_ENV = "LSST_SPARK_ML_RELEASE_EXIT_AFTER_COMMITS"   # test hook: the driver os._exit()s after N commits


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


def catalogs_of(plan: Plan, cfg: Config) -> list[str]:
    return ["joined"] if cfg.release.join == "joined" else [s.name for s in plan.stages]


def pending(plan: Plan, cfg: Config, records: dict, skip: set = frozenset()) -> list[tuple]:
    """(partition, [catalogs to do]) for every partition with something uncommitted, largest first."""
    out = []
    for p in plan.partitions:
        todo = [c for c in catalogs_of(plan, cfg)
                if (c, p.name) not in skip
                and records.get((c, p.name), {}).get("status") != "committed"
                and (c == "joined" or next(s for s in plan.stages if s.name == c).input == p.input)]
        if todo:
            out.append((p, todo))
    return sorted(out, key=lambda t: -(t[0].rows or 0))


def identity(plan: Plan, cfg: Config) -> dict:
    return {"release_id": plan.release_id, "config_hash": plan.config_hash, "code_version": plan.code_version,
            "configuration": settings.science_dict(cfg, plan.stages),
            "models": {s.name: {"dir": s.model_dir, "sha256": s.model_sha256} for s in plan.stages}}


def _columns(cfg: Config, plan: Plan, stage: settings.StageSpec):
    from ..artefacts import read_manifest
    from ..pipelines.photoz import model_catalog_settings
    cat = cfg.catalog
    if stage.model_dir:
        cat = model_catalog_settings(cfg, read_manifest(stage.model_dir)[0])
    part = next((p for p in plan.stage_partitions(stage) if not p.error), None)
    if part is None:
        raise CatalogError(f"release input {stage.input!r}: no partition is readable")
    fs, path = filesystem(part.files[0])
    with fs.open_input_file(path) as f:
        schema = pq.read_schema(f)
    cols = resolve_columns({f.name: f.type for f in schema}, cat, source=part.files[0])
    if not cols.id_col or not cols.has_coordinates:
        raise ConfigError(f"release input {stage.input!r} needs an id column and coordinates (catalog.id_col, "
                          f"catalog.ra_col, catalog.dec_col); found id {cols.id_col}, ra {cols.ra_col}, "
                          f"dec {cols.dec_col}")
    return cols


def task_context(spark, cfg: Config, plan: Plan) -> partition.TaskContext:
    """Broadcast the verified models (the bytes the driver checked) and resolve columns; no Spark job."""
    from ..artefacts import read_payload, read_manifest
    sc = spark.sparkContext
    runtimes, cols0 = [], None
    for s in plan.stages:
        cols = _columns(cfg, plan, s)
        cols0 = cols0 or cols
        rt = stages.StageRuntime(s.name, s.model_sha256, cols)
        if s.model_dir:
            rt.model = sc.broadcast(read_payload(s.model_dir, s.model_sha256))
        if s.name == "bayes":
            from ..bayes.templates import build_model_grid
            from ..pipelines.bayes import check_bins
            photoz_dir = next(x.model_dir for x in plan.stages if x.name == "photoz")
            edges = check_bins(read_manifest(photoz_dir)[0]["bins"], cfg)
            rt.bayes = {"grid": sc.broadcast(build_model_grid(cfg.bayes, cols.bands)), "settings": cfg.bayes,
                        "limits": {b: cfg.features.nondetect_limits[b] for b in cols.bands}, "edges": edges}
        runtimes.append(rt)
    keep = [c for c in cfg.catalog.keep_cols]
    if cfg.catalog.truth_col:
        keep.append(cfg.catalog.truth_col)
    return partition.TaskContext(plan.release_dir, plan.release_id, plan.config_hash, plan.code_version,
                                 cfg.release.join, cfg.output.write_pdf, cfg.inference, cols0.id_col,
                                 cols0.ra_col, cols0.dec_col, keep, cfg.catalog.truth_col, runtimes,
                                 os.environ.get(partition.CRASH_ENV))


def _exit_after_commits(release_dir: str, n: int, before: int) -> None:
    """Test hook: kill this whole driver (and with it the JVM and the workers) once n new commits exist."""
    def watch():
        while True:
            done = sum(1 for r in manifest.read_records(release_dir).values() if r.get("status") == "committed")
            if done - before >= n:
                _log(f"{EXIT_AFTER_ENV}={n}: exiting the driver now ({done} commits)")
                os._exit(137)
            time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()


def _clean_tmp(plan: Plan, cfg: Config) -> None:
    fs, root = filesystem(plan.release_dir)
    for c in catalogs_of(plan, cfg):
        tmp = _join(root, c, "dataset", "_tmp")
        if fs.get_file_info(tmp).type == pafs.FileType.Directory:
            fs.delete_dir(tmp)       # leftovers of killed tasks; a release is run by one driver at a time


def run_release(cfg: Config, get_spark, log=_log) -> dict:
    """Run (or resume) the release ``cfg.release``; ``get_spark()`` is called only if there is work to do."""
    t_start = time.time()
    plan = make_plan(cfg)
    stored = manifest.open_release(plan.release_dir, identity(plan, cfg))
    records = manifest.read_records(plan.release_dir)
    todo = pending(plan, cfg, records)
    n_before = sum(1 for r in records.values() if r.get("status") == "committed")
    log(f"release {plan.release_id}: {len(plan.partitions)} partitions, {n_before} committed stage outputs, "
        f"{len(todo)} partition(s) with work to do")
    rounds = []
    if todo:
        _clean_tmp(plan, cfg)
        spark = get_spark()
        ctx = task_context(spark, cfg, plan)
        if os.environ.get(EXIT_AFTER_ENV):
            _exit_after_commits(plan.release_dir, int(os.environ[EXIT_AFTER_ENV]), n_before)
        failed_now: set = set()
        sc = spark.sparkContext
        for rnd in range(cfg.release.max_rounds):
            todo = pending(plan, cfg, manifest.read_records(plan.release_dir), failed_now)
            if not todo:
                break
            tr = time.time()
            sc.setJobDescription(f"release {plan.release_id}: round {rnd + 1}, {len(todo)} partitions")
            err = None
            try:
                out = (sc.parallelize(todo, len(todo))
                         .map(lambda item: partition.run_partition(ctx, item[0], item[1]))
                         .collect())
                for recs in out:
                    failed_now |= {(r["stage"], r["partition"]) for r in recs if r["status"] == "failed"}
            except Exception as exc:  # noqa: BLE001 - a lost task/worker: the next round redoes what is missing
                err = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                log(f"round {rnd + 1} lost work ({err}); retrying what is not committed")
            finally:
                sc.setJobDescription(None)
            rounds.append({"round": rnd + 1, "partitions": len(todo), "seconds": round(time.time() - tr, 2),
                           "error": err})
    records = manifest.read_records(plan.release_dir)
    lost = [(p.name, c) for p, cs in pending(plan, cfg, records) for c in cs
            if records.get((c, p.name), {}).get("status") != "failed"]
    summary = finish(cfg, plan, stored, records, log)
    summary.update({"rounds": rounds, "seconds": round(time.time() - t_start, 2), "not_committed": lost})
    summary["status"] = ("incomplete" if lost else "failed_partitions" if summary["failed"] else "complete")
    fs, root = filesystem(plan.release_dir)
    fs.create_dir(_join(root, "_runs"), recursive=True)
    run_name = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    manifest.atomic_write(fs, _join(root, "_runs", run_name + ".json"),
                          json.dumps({k: v for k, v in summary.items() if k != "catalogs"}, indent=1,
                                     default=str).encode())
    log(f"release {plan.release_id}: {summary['status']} in {summary['seconds']} s -> {plan.release_dir}")
    return summary


def finish(cfg: Config, plan: Plan, stored: dict, records: dict, log) -> dict:
    """HATS metadata of each catalog, the consolidated manifest, the report: all from committed records, and
    skipped when nothing changed since the last finish (a rerun of a finished release only reads)."""
    digest = report.records_digest(records)
    fs, root = filesystem(plan.release_dir)
    failed = {f"{k[0]}:{k[1]}": r.get("error") for k, r in records.items() if r.get("status") == "failed"}
    prior = report.read_report(plan.release_dir)
    cats = {}
    if prior is None or prior.get("records_digest") != digest:
        ra, dec = _coordinate_names(cfg, plan)
        for c in catalogs_of(plan, cfg):
            rels = [r["path"].split("/dataset/", 1)[1] for (s, _), r in records.items()
                    if s == c and r.get("status") == "committed"]
            cats[c] = catalogs.write_metadata(_join(root, c), rels, f"{plan.release_id}_{c}", ra, dec,
                                              stored["created_utc"], f"lsst_spark_ml v{__version__}")
        manifest.consolidate(plan.release_dir, records)
        report.write_report(plan, cfg, stored, records, cats, digest)
    else:
        cats = prior.get("catalogs", {})
        log("nothing changed since the last run: metadata, manifest and report kept")
    return {"release_id": plan.release_id, "release_dir": plan.release_dir, "config_hash": plan.config_hash,
            "committed": sum(1 for r in records.values() if r.get("status") == "committed"),
            "failed": failed, "catalogs": cats}


def _coordinate_names(cfg: Config, plan: Plan) -> tuple[str, str]:
    cols = _columns(cfg, plan, plan.stages[0])
    return cols.ra_col, cols.dec_col


def missing_inputs(cfg: Config) -> list[str]:
    used = {s.input for s in cfg.release.stages}
    out = []
    for name in sorted(used):
        path = cfg.release.inputs.get(name)
        if path:
            fs, p = filesystem(path)
            if fs.get_file_info(p).type == pafs.FileType.NotFound:
                out.append(name)
    return out


def ensure_inputs(cfg: Config, get_spark, log=_log) -> None:
    """Generate a missing input when release.synthetic_rows asks for it (the embedded default)."""
    settings.validate(cfg)
    for name in missing_inputs(cfg):
        if cfg.release.synthetic_rows <= 0:
            return                        # make_plan names the missing catalog
        from .synth import write_synthetic_release
        path = cfg.release.inputs[name]
        log(f"input {name!r} ({path}) does not exist: generating {cfg.release.synthetic_rows:,} synthetic rows "
            f"at HEALPix order {cfg.release.synthetic_order} (release.synthetic_rows)")
        write_synthetic_release(get_spark(), cfg.release.synthetic_rows, path, cfg.release.synthetic_order)


def dry_run(cfg: Config) -> str:
    """The plan as text; starts no SparkSession (and no Spark job)."""
    settings.validate(cfg)
    missing = missing_inputs(cfg)
    if missing and cfg.release.synthetic_rows > 0:
        specs = settings.resolve_models(cfg)
        lines = [f"release {cfg.release.id}: input(s) {missing} do not exist yet; 'release run' first generates "
                 f"{cfg.release.synthetic_rows:,} synthetic rows at HEALPix order {cfg.release.synthetic_order}"]
        lines += [f"  stage {s.name} on {s.input}: model {s.model_dir} sha256 {s.model_sha256}" for s in specs]
        return "\n".join(lines)
    from .plan import describe
    plan = make_plan(cfg)
    records = manifest.read_records(plan.release_dir)
    done = sum(1 for r in records.values() if r.get("status") == "committed")
    todo = pending(plan, cfg, records)
    return describe(plan) + f"\n  already committed: {done} stage outputs; {len(todo)} partition(s) with work to do"
