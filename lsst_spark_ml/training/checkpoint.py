"""Resumable training state: written by rank 0 after every epoch, read back with ``weights_only=True``.

The file holds only tensors, numbers, strings, lists and dicts (model, optimiser and scheduler state dicts,
the best weights, the history), so loading it never unpickles code. It is replaced atomically (write to a
temporary name, then ``os.replace``): a run killed while saving leaves the previous epoch's checkpoint. A
``fingerprint`` of the data and settings is stored with it; a checkpoint from a different run is not
resumed. On a cluster the directory must be on storage every training process can read.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

CHECKPOINT_FILE = "last.pt"


def save(directory: str | os.PathLike, state: dict) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, d / CHECKPOINT_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(directory: str | os.PathLike | None, fingerprint: str) -> dict | None:
    """The checkpoint in ``directory`` if there is one for this ``fingerprint``, else None."""
    if directory is None:
        return None
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        return None
    return state
