"""Release configuration: checks beyond the typed ``release:`` section, model resolution, the config hash.

Everything here runs on the driver before a SparkSession exists: a wrong key, an unknown stage or a model
that does not match its manifest must fail in seconds, not after the first billion rows.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import ConfigError

# Stages in the order they run inside a partition; later ones may read earlier ones' columns.
STAGES = ("photoz", "ood", "bayes")
# Asked for by issue 9 but not run by this job: the error says so instead of "unknown".
NOT_YET = {"morphology": "galaxy morphology runs on cutout tables, not on the object catalog this job reads; the "
                         "release job does not run it (use 'lsst-spark-ml morphology predict' on the cutouts)",
           "asteroids": "the asteroid taxonomy runs on per-asteroid catalogs through a Spark ML pipeline; the "
                        "release job does not run it yet (use 'lsst-spark-ml asteroids classify')"}
NEEDS = {"bayes": ("photoz", "ood")}        # bayes fits the rows ood flags and adopts photoz where it cannot
_RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Keys that change how a release runs, not what it writes: left out of the config hash, so that moving the
# output root or raising the retry count resumes the same release.
RUNTIME_KEYS = ("output_root", "max_rounds", "synthetic_rows", "synthetic_order")


@dataclass(frozen=True)
class StageSpec:
    name: str
    input: str
    model_dir: str | None
    model_sha256: str | None          # the manifest's sha256, verified (None: the stage has no model)


def shipped_model(stage: str) -> Path | None:
    root = Path(__file__).resolve().parent.parent / "resources" / "models"
    return {"photoz": root / "mbrnn_dc2", "ood": root / "dcp_dc2"}.get(stage)


def validate(cfg: Config) -> None:
    """The release section's own rules (unknown keys already failed in config._build, naming the key)."""
    r = cfg.release
    if not r.id:
        raise ConfigError("release.id is required (it names the output directory <release.output_root>/<id>)")
    if not _RELEASE_ID.match(r.id):
        raise ConfigError(f"release.id {r.id!r} must be 1-100 letters, digits, '.', '_' or '-' (it is a directory "
                          "name), starting with a letter or digit")
    if not r.inputs:
        raise ConfigError("release.inputs is empty: name at least one input catalog, e.g. objects: PATH")
    if not r.stages:
        raise ConfigError("release.stages is empty: list at least one stage, e.g. - name: photoz")
    if r.join not in ("per-stage", "joined"):
        raise ConfigError(f"release.join must be per-stage|joined, got {r.join!r}")
    if r.max_rounds < 1 or r.synthetic_rows < 0 or not 0 <= r.synthetic_order <= 19:
        raise ConfigError("release.max_rounds must be >= 1, release.synthetic_rows >= 0 and "
                          "release.synthetic_order in 0..19")
    seen = []
    for i, s in enumerate(r.stages):
        where = f"release.stages[{i}]"
        if s.name in NOT_YET:
            raise ConfigError(f"{where}.name {s.name!r}: {NOT_YET[s.name]}")
        if s.name not in STAGES:
            raise ConfigError(f"{where}.name must be one of {', '.join(STAGES)}, got {s.name!r}")
        if s.name in seen:
            raise ConfigError(f"{where}.name {s.name!r} is listed twice")
        if s.input not in r.inputs:
            raise ConfigError(f"{where}.input {s.input!r} is not a key of release.inputs {sorted(r.inputs)}")
        if s.model_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", s.model_sha256):
            raise ConfigError(f"{where}.model_sha256 must be 64 lower-case hex digits, got {s.model_sha256!r}")
        if s.name == "bayes" and s.model is not None:
            raise ConfigError(f"{where}.model: the bayes stage has no model directory (its templates are "
                              "set by the bayes: section)")
        seen.append(s.name)
    names = [s.name for s in r.stages]
    for stage, needs in NEEDS.items():
        missing = [n for n in needs if stage in names and n not in names]
        if missing:
            raise ConfigError(f"release.stages: {stage} needs the stage(s) {missing} in the same release")
    inputs = {s.name: s.input for s in r.stages}
    for stage, needs in NEEDS.items():
        if stage in inputs and any(inputs[n] != inputs[stage] for n in needs):
            raise ConfigError(f"release.stages: {stage} must read the same input as {list(needs)}")
    if r.join == "joined" and len(set(inputs.values())) > 1:
        raise ConfigError("release.join: joined needs every stage to read the same input (the join is on "
                          "its object id)")


def ordered(cfg: Config) -> list:
    """The configured stages in execution order (dependencies first), whatever order the YAML lists them."""
    return sorted(cfg.release.stages, key=lambda s: STAGES.index(s.name))


def resolve_models(cfg: Config) -> list[StageSpec]:
    """Verify every stage's model against its manifest (and the pinned sha256): ModelIntegrityError names the
    file before anything else happens. The bytes are read again for the broadcast, and checked again there."""
    from ..artefacts import verify
    specs = []
    for s in ordered(cfg):
        model = s.model or (str(shipped_model(s.name)) if shipped_model(s.name) else None)
        sha = verify(model, s.model_sha256)[1] if model else None
        specs.append(StageSpec(s.name, s.input, model, sha))
    return specs


def science_dict(cfg: Config, specs: list[StageSpec]) -> dict:
    """What decides the bytes a release writes: the sections the stages read, and the verified models."""
    release = {k: v for k, v in vars(cfg.release).items() if k not in RUNTIME_KEYS}
    release["stages"] = [{"name": s.name, "input": s.input, "model_sha256": s.model_sha256}
                         for s in specs]
    d = cfg.to_dict()
    # inference.* stays in: batch size, device and thread count can change the floating-point result bits.
    return {"release": release, "catalog": d["catalog"], "features": d["features"], "inference": d["inference"],
            "write_pdf": cfg.output.write_pdf, **({"bayes": d["bayes"]} if "bayes" in release_stage_names(cfg)
                                                  else {})}


def release_stage_names(cfg: Config) -> list[str]:
    return [s.name for s in cfg.release.stages]


def config_hash(cfg: Config, specs: list[StageSpec]) -> str:
    return hashlib.sha256(json.dumps(science_dict(cfg, specs), sort_keys=True, default=str).encode()).hexdigest()
