"""The release manifest: who the release is (release.json) and what is committed (one record per partition).

Layout under ``<output_root>/<release_id>/``::

    release.json                          identity: config hash, configuration, models, first start time
    _manifest/<stage>/<partition>.json    one record per committed (or failed) partition and stage
    manifest.json                         all records, consolidated at the end of every run

A record is written after its data file has been renamed into place, so the record is the commit point:
a data file without a record (a kill between the two) is simply redone, and redoing writes the same bytes.
Every file here is written to a temporary name and renamed (a single PUT on object stores), so a reader never
sees half a record.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pyarrow.fs as pafs

from ..errors import LsstSparkMLError
from ..io.readers import _join, filesystem

RELEASE_FILE = "release.json"
MANIFEST_DIR = "_manifest"
MANIFEST_FILE = "manifest.json"


class ReleaseError(LsstSparkMLError):
    """A release directory that this configuration must not write into."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)                # rename(2): atomic on one local/POSIX file system
    else:
        with fs.open_output_stream(path) as f:   # object stores: one PUT, visible whole or not at all
            f.write(data)


def partition_key(name: str) -> str:
    return name.replace("/", "_")


def record_path(release_dir: str, stage: str, partition: str) -> str:
    return _join(release_dir, MANIFEST_DIR, stage, partition_key(partition) + ".json")


def write_record(release_dir: str, record: dict) -> None:
    fs, root = filesystem(release_dir)
    path = record_path(root, record["stage"], record["partition"])
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    atomic_write(fs, path, (json.dumps(record, sort_keys=True) + "\n").encode())


def read_records(release_dir: str) -> dict[tuple[str, str], dict]:
    """(stage, partition) -> record, for every record file."""
    fs, root = filesystem(release_dir)
    base = _join(root, MANIFEST_DIR)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return {}
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or ".tmp-" in info.base_name:
            continue
        with fs.open_input_stream(info.path) as f:
            try:
                rec = json.loads(f.read())
            except ValueError:
                continue                  # cannot happen with atomic writes; treat as not committed
        out[(rec["stage"], rec["partition"])] = rec
    return out


def open_release(release_dir: str, identity: dict) -> dict:
    """Create the release directory, or resume it when it holds this same configuration; refuse otherwise.

    Returns the stored identity (its ``created_utc`` is the first start, kept across resumes)."""
    fs, root = filesystem(release_dir)
    path = _join(root, RELEASE_FILE)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            stored = json.loads(f.read())
        if stored.get("config_hash") != identity["config_hash"]:
            raise ReleaseError(
                f"{release_dir} already holds release {stored.get('release_id')!r} made with configuration "
                f"{stored.get('config_hash')}, not {identity['config_hash']}; a release is never overwritten: "
                "choose a new release.id (or restore the configuration it was started with to resume it)")
        return stored
    if fs.get_file_info(root).type == pafs.FileType.Directory and \
            fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        raise ReleaseError(f"{release_dir} exists and is not a release directory (no {RELEASE_FILE}); "
                           "refusing to write into it")
    fs.create_dir(root, recursive=True)
    stored = {**identity, "created_utc": utc_now()}
    atomic_write(fs, path, (json.dumps(stored, indent=2, sort_keys=True, default=str) + "\n").encode())
    return stored


def consolidate(release_dir: str, records: dict) -> None:
    fs, root = filesystem(release_dir)
    rows = [records[k] for k in sorted(records)]
    atomic_write(fs, _join(root, MANIFEST_FILE), (json.dumps(rows, indent=1, sort_keys=True) + "\n").encode())
