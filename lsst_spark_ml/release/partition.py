"""One partition of a release, start to end, inside one Spark task: read, run the stages, commit, record.

Commit protocol (per stage, or once for ``join: joined``):

1. the output table is serialised in memory with fixed Parquet writer settings (bytes and their sha256);
2. the bytes go to ``<catalog>/dataset/_tmp/<unique>.parquet``, which is then renamed to the pixel's file
   (``Norder=k/Dir=d/Npix=n.parquet``): a reader sees the old file or the new one, never half of one;
3. the manifest record is written (atomically) last: it is the commit point.

A task that dies anywhere in between leaves at most a temporary file, or a data file without a record; the
rerun (a Spark task retry, the driver's next round, or a later ``release run``) redoes the partition and
writes the same bytes, so nothing is lost and nothing is counted twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import InferenceSettings
from ..io.hats_writer import HEALPIX_COLUMN, healpix29
from ..io.readers import _join, filesystem
from . import checksum, manifest, stages
from .plan import Partition

# Fixed writer settings: with rows in a fixed order these make the file bytes a function of the rows alone.
# No timestamps anywhere in the file; pyarrow's "created_by" is its version, part of the code version.
PARQUET_WRITER = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True,
                      row_group_size=131072, data_page_size=1 << 20, version="2.6", store_schema=True)
CRASH_ENV = "LSST_SPARK_ML_RELEASE_CRASH_ONCE"   # test hook: a marker path; the worker os._exit()s once


@dataclass
class TaskContext:
    release_dir: str
    release_id: str
    config_hash: str
    code_version: str
    join: str
    write_pdf: bool
    inference: InferenceSettings
    id_col: str
    ra_col: str
    dec_col: str
    keep_cols: list[str]
    truth_col: str | None
    stages: list[stages.StageRuntime]
    crash_marker: str | None = None
    stage_order: list[str] = field(default_factory=list)


def catalog_dir(ctx: TaskContext, stage: str) -> str:
    return _join(ctx.release_dir, stage)


def _provenance(ctx: TaskContext, n: int, stage: str, shas: dict[str, str | None]) -> dict[str, pa.Array]:
    """Deterministic provenance on every row (dictionary-encoded in Parquet: a few bytes per file); the
    processing time is not among them (it would change the bytes of a rerun): it is in the manifest."""
    def const(v):
        return pa.array([v] * n, type=pa.string())
    cols = {"release_id": const(ctx.release_id), "release_stage": const(stage)}
    if stage == "joined":
        cols.update({f"{k}_model_sha256": const(v) for k, v in shas.items() if v})
    else:
        cols["model_sha256"] = const(shas.get(stage))
    cols["code_version"] = const(ctx.code_version)
    cols["config_hash"] = const(ctx.config_hash)
    return cols


def read_partition(ctx: TaskContext, part: Partition) -> pa.Table:
    """The partition's rows in a fixed order: (_healpix_29, id) — HATS's spatial order, made total by the id."""
    fs, _ = filesystem(part.files[0])
    tables = []
    for fp in part.files:
        local = filesystem(fp)[1]
        try:
            with fs.open_input_file(local) as f:
                tables.append(pq.read_table(f))
        except Exception as exc:  # noqa: BLE001 - the manifest must say which file and why
            raise PartitionError(f"cannot read {fp}: {type(exc).__name__}: {exc}") from None
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    for c in (ctx.id_col, ctx.ra_col, ctx.dec_col):
        if c not in table.column_names:
            raise PartitionError(f"{part.files[0]}: no column {c!r}")
    if HEALPIX_COLUMN not in table.column_names:
        hp = healpix29(table.column(ctx.ra_col).to_numpy(zero_copy_only=False),
                       table.column(ctx.dec_col).to_numpy(zero_copy_only=False))
        table = table.append_column(HEALPIX_COLUMN, pa.array(hp, pa.int64()))
    ids = table.column(ctx.id_col)
    if ids.null_count:
        raise PartitionError(f"{part.name}: {ids.null_count} row(s) with a null {ctx.id_col}")
    table = table.sort_by([(HEALPIX_COLUMN, "ascending"), (ctx.id_col, "ascending")])
    idv = table.column(ctx.id_col).to_numpy()
    if len(idv) > 1 and len(np.unique(idv)) != len(idv):
        raise PartitionError(f"{part.name}: duplicate {ctx.id_col} values")
    return table


class PartitionError(Exception):
    """This partition cannot be processed (unreadable, no id column, duplicate ids): it is recorded as failed."""


def _serialise(table: pa.Table, meta: dict[str, str]) -> bytes:
    sink = pa.BufferOutputStream()
    # The input's own schema records (Spark's org.apache.spark.sql.parquet.row.metadata, pandas') describe the
    # input columns, not these: Spark would read the file with the input's schema. Only ours are kept.
    kept = {k: v for k, v in (table.schema.metadata or {}).items()
            if not k.startswith((b"org.apache.spark.", b"pandas"))}
    pq.write_table(table.replace_schema_metadata({**kept, **{k.encode(): v.encode() for k, v in meta.items()}}),
                   sink, **PARQUET_WRITER)
    return sink.getvalue().to_pybytes()


def commit(ctx: TaskContext, stage: str, part: Partition, table: pa.Table, meta: dict[str, str]) -> dict:
    data = _serialise(table, meta)
    fs, root = filesystem(catalog_dir(ctx, stage))
    final = _join(root, "dataset", part.out_name)
    tmp = _join(root, "dataset", "_tmp", f"{uuid.uuid4().hex}.parquet")
    fs.create_dir(tmp.rsplit("/", 1)[0], recursive=True)
    fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if ctx.crash_marker and not os.path.exists(ctx.crash_marker):
        # Test hook: the Python worker dies here, once, between the temporary write and the rename.
        with open(ctx.crash_marker, "w") as f:
            f.write(f"{stage} {part.name} pid {os.getpid()}\n")
        os._exit(17)
    fs.move(tmp, final)
    return {"path": f"{stage}/dataset/{part.out_name}", "file_sha256": hashlib.sha256(data).hexdigest(),
            "file_bytes": len(data)}


def load_committed(ctx: TaskContext, stage: str, part: Partition, ids: pa.ChunkedArray) -> pa.Table:
    """An earlier stage's committed output (a later stage needs it); its ids must be the input's, in order."""
    fs, root = filesystem(catalog_dir(ctx, stage))
    with fs.open_input_file(_join(root, "dataset", part.out_name)) as f:
        t = pq.read_table(f)
    if not t.column(ctx.id_col).equals(ids):
        raise PartitionError(f"committed {stage} output of {part.name} does not match the input's ids; "
                             "remove its record to redo it")
    return t


def run_partition(ctx: TaskContext, part: Partition, todo: list[str]) -> list[dict]:
    """Run the stages ``todo`` (names; 'joined' for the joined catalog) on ``part``; return the records written."""
    t0 = time.time()
    base = {"release_id": ctx.release_id, "partition": part.name, "input": part.input,
            "config_hash": ctx.config_hash, "code_version": ctx.code_version}
    records: list[dict] = []          # filled as stages commit: a later stage's failure keeps them
    try:
        if part.error:
            raise PartitionError(part.error)
        table = read_partition(ctx, part)
        _run_stages(ctx, part, todo, table, base, {"read": time.time() - t0}, records)
        return records
    except Exception as exc:  # noqa: BLE001 - this partition fails with its reason; the others go on
        # A worker that dies (os._exit, OOM kill) raises nothing here: the driver's next round redoes it.
        why = str(exc) if isinstance(exc, PartitionError) else f"{type(exc).__name__}: {exc}"
        done = {r["stage"] for r in records}
        failed = [{**base, "stage": s, "status": "failed", "error": why[:2000], "processed_at": manifest.utc_now()}
                  for s in todo if s not in done]
        for r in failed:
            manifest.write_record(ctx.release_dir, r)
        return records + failed


def _run_stages(ctx: TaskContext, part: Partition, todo: list[str], table: pa.Table, base: dict,
                timings: dict[str, float], records: list[dict]) -> None:
    n = table.num_rows
    keep = [c for c in [ctx.id_col, ctx.ra_col, ctx.dec_col, HEALPIX_COLUMN, *ctx.keep_cols]
            if c in table.column_names]
    keep = list(dict.fromkeys(keep))
    truth = (np.asarray(table.column(ctx.truth_col).to_numpy(zero_copy_only=False), dtype=np.float64)
             if ctx.truth_col and ctx.truth_col in table.column_names else None)
    outputs: dict[str, pa.Table] = {}
    shas = {st.name: st.model_sha256 for st in ctx.stages}
    joined = ctx.join == "joined"
    for st in ctx.stages:
        needed_later = any(st.name in stages_needs(o.name) for o in ctx.stages)
        if not joined and st.name not in todo:
            if needed_later and any(o.name in todo for o in ctx.stages if st.name in stages_needs(o.name)):
                t = load_committed(ctx, st.name, part, table.column(ctx.id_col))
                outputs[st.name] = t
            continue
        ts = time.time()
        if st.name == "photoz":
            out = stages.photoz(st, table, ctx.inference, ctx.write_pdf)
        elif st.name == "ood":
            out = stages.ood(st, table, ctx.inference, ctx.write_pdf)
        else:
            out = stages.bayes(st, table, outputs)
        if out.num_rows != n:
            raise RuntimeError(f"{st.name} on {part.name}: {n} rows in, {out.num_rows} out")
        outputs[st.name] = out
        timings[st.name] = time.time() - ts
        if joined:
            continue
        tw = time.time()
        full = table.select(keep)
        for c in out.column_names:
            full = full.append_column(c, out.column(c))
        for c, v in _provenance(ctx, n, st.name, shas).items():
            full = full.append_column(c, v)
        own = {k: timings[k] for k in ("read", st.name)}
        records.append(_record(ctx, st.name, part, full, out.column_names, base, own, tw, n,
                               {st.name: st.model_sha256}, stages.stats(st.name, out, truth)))
    if joined and "joined" in todo:
        tw = time.time()
        full = table.select(keep)
        names = []
        for st in ctx.stages:
            for c in outputs[st.name].column_names:
                full = full.append_column(c, outputs[st.name].column(c))
                names.append(c)
        for c, v in _provenance(ctx, n, "joined", shas).items():
            full = full.append_column(c, v)
        st_stats = {st.name: stages.stats(st.name, outputs[st.name], truth) for st in ctx.stages}
        records.append(_record(ctx, "joined", part, full, names, base, timings, tw, n, shas, st_stats))


def stages_needs(name: str) -> tuple[str, ...]:
    from .settings import NEEDS
    return NEEDS.get(name, ())


def _record(ctx, stage, part, full, out_cols, base, timings, tw, n, shas, st_stats) -> dict:
    meta = {"lsst_spark_ml.release": json.dumps({"release_id": ctx.release_id, "stage": stage,
                                                 "partition": part.name, "model_sha256": shas,
                                                 "code_version": ctx.code_version,
                                                 "config_hash": ctx.config_hash}, sort_keys=True)}
    info = commit(ctx, stage, part, full, meta)
    record = {**base, "stage": stage, "status": "committed", **info, "rows_in": n, "rows_out": full.num_rows,
              # Checksums over the id and the stage's outputs: order-independent, so any two runs compare.
              "rows_checksum": checksum.table_checksum(full, [ctx.id_col, *out_cols]),
              "id_checksum": checksum.table_checksum(full, [ctx.id_col]),
              "model_sha256": shas, "processed_at": manifest.utc_now(),
              "seconds": {**{k: round(v, 3) for k, v in timings.items()}, "write": round(time.time() - tw, 3)},
              "stats": st_stats}
    manifest.write_record(ctx.release_dir, record)
    return record
