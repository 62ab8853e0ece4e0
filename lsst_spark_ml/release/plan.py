"""The release plan: input partitions, verified models, the config hash and a cost estimate; no Spark.

``lsst-spark-ml release run --dry-run`` prints it and stops, so a cluster-sized job can be checked (keys,
models, inputs, size, cost) without a SparkSession.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import __version__
from ..config import Config
from ..errors import CatalogError
from ..io.readers import _hats_dataset, _join, detect_format, filesystem
from . import settings

_PIXEL = re.compile(r"Norder=(\d+)/Dir=(\d+)/Npix=(\d+)")

# Per-row cost constants (core-seconds per input row) for the estimate, measured by
# benchmarks/release_throughput.py --rows 1000000 on this project's 2-core machine (task seconds of each stage
# in the release report / rows: photo-z 163 s, DCP 168 s per 10^6 rows, float32, CPU); Bayesian VI at 194
# objects/s per core (benchmarks/bayes_results.md, throughput table: the default per-object VI) on an assumed
# ~1 % of rows (the DCP flag quantile is 0.99). Read, sort,
# checksum and the Parquet write add ~6 us per row per stage (10 us with the 64-bin PDF, 1 us without).
# A cluster core is assumed to be as fast as one core here; Spark start and driver work are not included.
COST_CORE_S_PER_ROW = {"photoz": 1.63e-4, "ood": 1.68e-4, "bayes": 0.01 / 194}
IO_CORE_S_PER_ROW = 6e-6
BAYES_FLAGGED_FRACTION = 0.01


@dataclass
class Partition:
    input: str                        # key of release.inputs
    name: str                         # Norder=k/Dir=d/Npix=n (HATS) or the file's relative path (Parquet)
    files: list[str]
    rows: int | None                  # from the footers; None when a footer cannot be read
    error: str | None = None          # why the footers could not be read (the task reports it again)
    norder: int | None = None
    npix: int | None = None

    @property
    def out_name(self) -> str:
        """Output file path inside a stage's dataset/ (HATS: one file per pixel, Npix=n.parquet)."""
        if self.npix is not None:
            return f"{self.name}.parquet"
        return self.name if self.name.endswith(".parquet") else self.name + ".parquet"


@dataclass
class Plan:
    release_id: str
    release_dir: str
    config_hash: str
    code_version: str
    stages: list[settings.StageSpec]
    inputs: dict[str, dict]           # name -> {"path", "format", "n_partitions", "rows"}
    partitions: list[Partition]
    estimate: dict = field(default_factory=dict)

    def stage_partitions(self, stage: settings.StageSpec) -> list[Partition]:
        return [p for p in self.partitions if p.input == stage.input]


def list_partitions(name: str, path: str) -> tuple[str, list[Partition]]:
    """(format, partitions) of one input: a HATS catalog's pixels, or a Parquet directory's files."""
    fmt = detect_format(path, "auto")
    if fmt not in ("hats", "parquet"):
        raise CatalogError(f"release input {name!r} at {path} is {fmt}; the release reads HATS or Parquet")
    fs, p = filesystem(path)
    base = _hats_dataset(fs, p, path)[0] if fmt == "hats" else p
    if fs.get_file_info(base).type == pafs.FileType.File:
        infos = [fs.get_file_info(base)]
        base = base.rsplit("/", 1)[0]
    else:
        infos = [f for f in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                 if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                 and not any(part.startswith((".", "_")) for part in f.path[len(base) + 1:].split("/"))]
    groups: dict[str, list[str]] = {}
    for f in sorted(infos, key=lambda i: i.path):
        rel = f.path[len(base.rstrip("/")) + 1:]
        m = _PIXEL.search(rel) if fmt == "hats" else None
        if fmt == "hats" and not m:
            continue                      # margin caches, indexes: not partitions of the main catalog
        key = m.group(0) if m else rel
        groups.setdefault(key, []).append(f.path)
    if not groups:
        raise CatalogError(f"release input {name!r} at {path} holds no Parquet partitions")
    parts = []
    for key, files in groups.items():
        rows, error = 0, None
        for fp in files:
            try:
                with fs.open_input_file(fp) as fh:
                    rows += pq.read_metadata(fh).num_rows
            except Exception as exc:  # noqa: BLE001 - any unreadable footer isolates this partition
                rows, error = None, f"{fp}: {type(exc).__name__}: {exc}"
                break
        m = _PIXEL.fullmatch(key)
        parts.append(Partition(name, key, files, rows, error, int(m.group(1)) if m else None,
                               int(m.group(3)) if m else None))
    parts.sort(key=lambda q: (q.norder or 0, q.npix if q.npix is not None else -1, q.name))
    return fmt, parts


def make_plan(cfg: Config) -> Plan:
    settings.validate(cfg)
    specs = settings.resolve_models(cfg)           # ModelIntegrityError before anything reads data
    r = cfg.release
    inputs, partitions = {}, []
    for name in sorted({s.input for s in specs}):
        fmt, parts = list_partitions(name, r.inputs[name])
        inputs[name] = {"path": r.inputs[name], "format": fmt, "n_partitions": len(parts),
                        "rows": sum(p.rows or 0 for p in parts),
                        "unreadable": [p.name for p in parts if p.error]}
        partitions += parts
    plan = Plan(r.id, _join(r.output_root.rstrip("/"), r.id), settings.config_hash(cfg, specs), __version__,
                specs, inputs, partitions)
    plan.estimate = estimate(plan)
    return plan


def estimate(plan: Plan) -> dict:
    per_stage = {}
    for s in plan.stages:
        rows = sum(p.rows or 0 for p in plan.stage_partitions(s))
        per_stage[s.name] = {"rows": rows,
                             "core_hours": rows * (COST_CORE_S_PER_ROW[s.name] + IO_CORE_S_PER_ROW) / 3600}
    total = sum(v["core_hours"] for v in per_stage.values())
    return {"per_stage": per_stage, "core_hours": total,
            "assumptions": {"core_s_per_row": COST_CORE_S_PER_ROW, "io_core_s_per_row": IO_CORE_S_PER_ROW,
                            "bayes_flagged_fraction": BAYES_FLAGGED_FRACTION,
                            "note": "measured on this 2-core machine; wall time = core_hours / cores used"}}


def describe(plan: Plan) -> str:
    lines = [f"release {plan.release_id} -> {plan.release_dir}",
             f"  config hash {plan.config_hash}, code version {plan.code_version}"]
    for name, i in plan.inputs.items():
        lines.append(f"  input {name}: {i['path']} ({i['format']}, {i['n_partitions']} partitions, "
                     f"{i['rows']:,} rows)")
        for p in [q for q in plan.partitions if q.input == name]:
            rows = f"{p.rows:,} rows" if p.rows is not None else f"UNREADABLE ({p.error})"
            lines.append(f"    {p.name}: {len(p.files)} file(s), {rows}")
    for s in plan.stages:
        model = f"model {s.model_dir} sha256 {s.model_sha256}" if s.model_dir else "no model"
        est = plan.estimate["per_stage"][s.name]
        lines.append(f"  stage {s.name} on {s.input}: {model}; ~{est['core_hours']:.3g} core-hours")
    lines.append(f"  estimated cost: {plan.estimate['core_hours']:.3g} core-hours "
                 f"(assumptions: {plan.estimate['assumptions']})")
    return "\n".join(lines)
