"""TracIn snapshots of an MBRNN ensemble: the weights of every member at several epochs of its training.

They live in ``<model dir>/tracin/``, a model directory of their own (safetensors + sha256 manifest,
``kind: mbrnn-tracin-snapshots``) whose manifest names the sha256 of the ensemble they were saved with.
Influence is only meaningful for the trajectory that produced the model being explained, so a snapshot
set from another model is refused by name before any Spark job starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artefacts import save_artefact
from ..errors import ModelIntegrityError
from ..models import MBRNN

KIND = "mbrnn-tracin-snapshots"
SUBDIR = "tracin"


@dataclass
class Snapshot:
    member: int
    gamma: float
    epoch: int
    lr: float
    model: MBRNN


def save_snapshots(model_dir: str | Path, model_sha256: str, architecture: dict,
                   member_snapshots: list[tuple[float, list[dict]]]) -> str | None:
    """``member_snapshots``: per member (gamma, [{"epoch", "lr", "state"}]). Returns the sha256, or None
    when no snapshot was taken."""
    tensors, entries = {}, []
    for m, (gamma, snaps) in enumerate(member_snapshots):
        for s in snaps:
            prefix = f"member{m}.epoch{s['epoch']}."
            tensors.update({prefix + k: v for k, v in s["state"].items()})
            entries.append({"member": m, "gamma": gamma, "epoch": int(s["epoch"]), "lr": float(s["lr"]),
                            "prefix": prefix})
    if not entries:
        return None
    manifest = {"kind": KIND, "model_sha256": model_sha256, "architecture": architecture, "snapshots": entries}
    return save_artefact(Path(model_dir) / SUBDIR, tensors, manifest)


def default_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / SUBDIR


def read_snapshot_payload(snapshot_dir: str | Path):
    """Verified bytes of a snapshot directory (what the driver broadcasts)."""
    from ..artefacts import read_payload
    path = Path(snapshot_dir)
    if not (path / "manifest.json").is_file():
        raise ModelIntegrityError(
            f"{path} holds no TracIn snapshots: train the model with train.snapshot_every > 0 "
            "(for example --set train.snapshot_every=10) to keep them")
    return read_payload(path)


def snapshots_from_payload(payload, model_sha256: str, architecture: dict,
                           members: list[int] | None = None) -> list[Snapshot]:
    """The snapshots of the model ``model_sha256``; ``members`` restricts them (None: all)."""
    from ..artefacts import artefact_from_payload
    art = artefact_from_payload(payload)
    man, path = art.manifest, payload.path
    if man.get("kind") != KIND:
        raise ModelIntegrityError(f"{path} holds a {man.get('kind')!r} artefact, not TracIn snapshots ({KIND})")
    if man["model_sha256"] != model_sha256:
        raise ModelIntegrityError(
            f"the snapshots in {path} were saved while training model {man['model_sha256'][:16]}..., not the "
            f"model {model_sha256[:16]}... given: influence needs the checkpoints of the model it explains")
    if man["architecture"] != architecture:
        raise ModelIntegrityError(f"the snapshots in {path} have architecture {man['architecture']}, the model "
                                  f"{architecture}")
    out = []
    for e in man["snapshots"]:
        if members is not None and e["member"] not in members:
            continue
        net = MBRNN(architecture["n_in"], architecture["n_bins"], architecture["hidden"])
        state = {k[len(e["prefix"]):]: v for k, v in art.tensors.items() if k.startswith(e["prefix"])}
        net.load_state_dict(state)
        net.eval()
        out.append(Snapshot(e["member"], float(e["gamma"]), e["epoch"], e["lr"], net))
    if not out:
        raise ModelIntegrityError(f"{path} has no snapshot of the members {members}")
    return out


def load_snapshots(snapshot_dir: str | Path, model_sha256: str, architecture: dict,
                   members: list[int] | None = None) -> list[Snapshot]:
    return snapshots_from_payload(read_snapshot_payload(snapshot_dir), model_sha256, architecture, members)


def check_members(members: list[int] | None, n_members: int) -> None:
    bad = [m for m in members or [] if not 0 <= m < n_members]
    if bad:
        raise ValueError(f"influence.members {bad} out of range: the model has {n_members} members")


