"""Order-independent content checksums of Arrow tables: the sum (mod 2^64) of per-row hashes.

Two outputs hold the same rows (ids and values) exactly when their checksums agree, however the rows were
ordered or split into files; comparing a killed-and-resumed release with a clean one needs nothing more.
Each row's hash mixes every column's value (floats by their bits, NaN made canonical, nulls a sentinel,
lists element by element with the position) through splitmix64.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NULL = np.uint64(0x9E3779B97F4A7C15)
_NAN = np.float64("nan").view(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 wraps silently)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _values(arr: pa.Array) -> np.ndarray:
    """One uint64 per element of a flat (non-list) array."""
    t = arr.type
    valid = None if arr.null_count == 0 else np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
    if pa.types.is_floating(t):
        v = np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        bits = v.view(np.uint64).copy()
        bits[np.isnan(v)] = _NAN          # every NaN payload hashes the same
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        bits = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)).view(np.uint64)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        enc = pc.dictionary_encode(arr)
        words = [int.from_bytes(hashlib.sha256(str(s).encode()).digest()[:8], "little")
                 for s in enc.dictionary.to_pylist()]
        bits = np.asarray(words, dtype=np.uint64)[np.asarray(enc.indices.fill_null(0))] if words else \
            np.zeros(len(arr), np.uint64)
    else:
        raise TypeError(f"checksum: unsupported column type {t}")
    return np.where(valid, bits, _NULL) if valid is not None else bits


def _column(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        n = len(arr)
        offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        flat = arr.values.slice(offsets[0], offsets[-1] - offsets[0]) if n else arr.values.slice(0, 0)
        pos = np.arange(len(flat), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], np.diff(offsets))
        elem = _mix(_values(flat) ^ _mix(pos.astype(np.uint64)))
        sums = np.zeros(n, np.uint64)
        lengths = np.diff(offsets)
        rows = np.repeat(np.arange(n), lengths)
        np.add.at(sums, rows, elem)
        out = _mix(sums ^ lengths.astype(np.uint64))
        if arr.null_count:
            out = np.where(np.asarray(arr.is_valid().to_numpy(zero_copy_only=False)), out, _NULL)
        return out
    return _values(arr)


def row_hashes(table: pa.Table, columns: list[str] | None = None) -> np.ndarray:
    cols = columns or table.column_names
    h = np.zeros(table.num_rows, np.uint64)
    for i, c in enumerate(cols):
        # The column's position and name enter the hash: swapping two columns' values changes it.
        salt = np.uint64(int.from_bytes(hashlib.sha256(f"{i}:{c}".encode()).digest()[:8], "little"))
        h = _mix(h ^ _mix(_column(table.column(c)) ^ salt))
    return h


def table_checksum(table: pa.Table, columns: list[str] | None = None) -> str:
    """Sum of the row hashes, mod 2^64, as 16 hex digits."""
    with np.errstate(over="ignore"):
        total = np.sum(row_hashes(table, columns), dtype=np.uint64)
    return f"{int(total):016x}"


def combine(checksums: list[str]) -> str:
    """The checksum of the union of disjoint tables: the sum of theirs."""
    return f"{sum(int(c, 16) for c in checksums) % (1 << 64):016x}"
