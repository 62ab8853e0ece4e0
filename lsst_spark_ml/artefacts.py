"""Model directories: safetensors weights + a JSON manifest with the sha256 of every file.

Nothing here unpickles: weights are safetensors (tensors only), the manifest is JSON. Loading verifies
every listed file's sha256 and refuses a mismatch, a missing file or an unlisted weights file.
The model's identity (``model_sha256``) is the sha256 of manifest.json, which itself pins every file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes, save_file

from . import __version__
from .errors import ModelIntegrityError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artefact:
    path: Path
    manifest: dict
    tensors: dict[str, torch.Tensor]
    sha256: str                      # of manifest.json: the model's identity


def save_artefact(out_dir: str | Path, tensors: dict[str, torch.Tensor], manifest: dict,
                  weights_name: str = "weights.safetensors") -> str:
    """Write weights and manifest atomically enough for a model directory (temp files then rename).

    Returns the model sha256.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp_w = out / (weights_name + ".tmp")
    save_file(tensors, str(tmp_w))
    os.replace(tmp_w, out / weights_name)
    manifest = dict(manifest)
    manifest.setdefault("format_version", FORMAT_VERSION)
    manifest.setdefault("code_version", __version__)
    manifest.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    manifest["weights"] = weights_name
    files = {weights_name: sha256_file(out / weights_name)}
    for extra in manifest.get("extra_files", []):
        files[extra] = sha256_file(out / extra)
    manifest["files"] = files
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, out / MANIFEST)
    # Executors often run as another user than the one who trained: model files must be world-readable.
    for name in (MANIFEST, *files):
        os.chmod(out / name, 0o644)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_manifest(path: Path) -> tuple[dict, bytes]:
    mpath = path / MANIFEST
    if not path.is_dir():
        raise ModelIntegrityError(f"model directory {path} does not exist")
    if not mpath.is_file():
        raise ModelIntegrityError(f"model directory {path} has no {MANIFEST}")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelIntegrityError(f"{mpath} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or "files" not in manifest or "weights" not in manifest:
        raise ModelIntegrityError(f"{mpath} lacks the 'files' or 'weights' entry")
    return manifest, raw


def read_manifest(model_dir: str | Path) -> tuple[dict, str]:
    manifest, raw = _read_manifest(Path(model_dir))
    return manifest, hashlib.sha256(raw).hexdigest()


def verify(model_dir: str | Path, expected_sha256: str | None = None) -> tuple[dict, str]:
    """Check every file against the manifest; optionally pin the manifest itself to ``expected_sha256``."""
    payload = read_payload(model_dir, expected_sha256)
    return json.loads(payload.manifest_bytes), payload.sha256


def load_artefact(model_dir: str | Path, expected_sha256: str | None = None) -> Artefact:
    return artefact_from_payload(read_payload(model_dir, expected_sha256))


@dataclass(frozen=True)
class Payload:
    """A verified model directory as bytes: what the driver broadcasts, so that executors never need
    the driver's path (a cluster's workers do not have it) and load exactly the bytes that were checked."""
    path: str
    manifest_bytes: bytes
    weights_bytes: bytes
    sha256: str


def read_payload(model_dir: str | Path, expected_sha256: str | None = None) -> Payload:
    """Read each file once and check the bytes read against the manifest, so the bytes returned are
    exactly the bytes verified; optionally pin the manifest itself to ``expected_sha256``."""
    path = Path(model_dir)
    manifest, raw = _read_manifest(path)
    sha = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        raise ModelIntegrityError(f"{path / MANIFEST} has sha256 {sha}, expected {expected_sha256}")
    files = manifest["files"]
    if manifest["weights"] not in files:
        raise ModelIntegrityError(f"{path}: weights file {manifest['weights']!r} is not listed with a sha256")
    weights = b""
    for name, want in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelIntegrityError(f"{path}: manifest lists a path outside the model directory: {name!r}")
        fp = path / name
        if not fp.is_file():
            raise ModelIntegrityError(f"{path}: file {name} listed in the manifest is missing")
        if name == manifest["weights"]:
            weights = fp.read_bytes()
            got = hashlib.sha256(weights).hexdigest()
        else:
            got = sha256_file(fp)
        if got != want:
            raise ModelIntegrityError(
                f"{path}: {name} has sha256 {got} but the manifest says {want}; the model was modified "
                "or corrupted and will not be loaded")
    for fp in path.glob("*.safetensors"):
        if fp.name not in files:
            raise ModelIntegrityError(f"{path}: weights file {fp.name} is not in the manifest")
    return Payload(str(path), raw, weights, sha)


def artefact_from_payload(payload: Payload) -> Artefact:
    """Check the bytes again (cheap) and load them: safetensors, no pickle involved."""
    if hashlib.sha256(payload.manifest_bytes).hexdigest() != payload.sha256:
        raise ModelIntegrityError(f"model payload from {payload.path} does not match its sha256 {payload.sha256}")
    manifest = json.loads(payload.manifest_bytes)
    if hashlib.sha256(payload.weights_bytes).hexdigest() != manifest["files"][manifest["weights"]]:
        raise ModelIntegrityError(f"model payload from {payload.path}: weights do not match the manifest")
    return Artefact(Path(payload.path), manifest, load_bytes(payload.weights_bytes), payload.sha256)
