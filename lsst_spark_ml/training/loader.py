"""Spark DataFrame -> Parquet cache -> torch batches: the project's replacement for Petastorm.

Why it exists
-------------
Petastorm's ``make_spark_converter(df).make_torch_dataloader()`` was the usual way to feed a Spark
DataFrame to torch. On this stack it is unusable: Petastorm 0.13.1 fails at import with pyarrow >= 16
(``No module named 'pyarrow.filesystem'``), fails in ``make_torch_dataloader`` with pyarrow 15, works only
with pyarrow 14 (which rules out numpy 2 and pyspark > 4.0), pins setuptools < 70 against torch's >= 77,
is called unmaintained by its maintainers (uber/petastorm issue 805), and under CPU load it was measured
silently yielding 0 rows (4 of 33 runs). See ``shared/reference/stack.md``.

What it offers
--------------
``materialize(df, cache_dir)`` writes a DataFrame once as Parquet (keyed by a hash of its plan and schema,
reused when its ``_SUCCESS`` marker exists) and returns a ``ParquetCache`` with the path, the schema and the
exact row count read from the Parquet footers (no Spark job). ``ParquetLoader`` (or ``cache.loader(...)``)
streams that Parquet -- or any Parquet file or directory -- as batches of ``{column: torch.Tensor}``.

Usage::

    cache = materialize(df, "/tmp/cache")
    loader = cache.loader(["x", "y"], batch_size=1024)          # rank/world_size from training.distributed
    for epoch in range(n):
        for batch in loader.epoch(epoch):                       # or: loader.set_epoch(epoch); for b in loader
            ...

Guarantees
----------
* Work unit = one (file, row group) pair, listed once from the footers. Each epoch the units are permuted
  with a generator seeded by ``(seed, epoch)`` only -- the same permutation on every rank -- and dealt
  round-robin to ranks, so in every epoch every row goes to exactly one rank. Without ``shuffle`` the units
  keep file/row-group order (still dealt round-robin) and rows keep their order.
* With ``shuffle`` rows pass through a shuffle buffer seeded by ``(seed, epoch, rank)``: the same
  ``(seed, epoch, rank)`` gives the same batches, different epochs give different orders. Memory stays
  O(shuffle_buffer + one row group + one batch).
* Exact row counts: every row group read must hold its footer's row count, and at the end of each epoch the
  rows that went through the loader must equal the sum of the footer counts of this rank's units; otherwise
  a ``RuntimeError`` naming the path is raised. A rank never ends an epoch silently short.
* Scalar numeric/bool columns come out 1-D; list columns of one fixed length (``list<float>``,
  ``fixed_size_list``) come out 2-D ``(batch, length)``. Floating-point columns are cast to ``dtype``
  (default float32), integer columns stay int64 (ids stay exact), bool stays bool; ``dtype`` may also be a
  ``{column: dtype}`` mapping for explicit per-column casts. Nulls are rejected with a ``ValueError``.
* ``len(loader)`` is the number of batches this rank yields in the current epoch (see ``set_epoch``).
  When row groups differ in size, a rank's share can change from epoch to epoch; ``even_batches=True``
  makes every rank yield the same number of batches (the smallest over ranks for that epoch; all rows are
  still read and counted, the surplus batches are not yielded), which DistributedDataParallel needs to
  avoid a rank waiting forever on an all-reduce.
* ``prefetch`` row groups (default 1) are read ahead in a background thread, so reading overlaps training.
* There must be at least ``world_size`` units, else ``ValueError`` (a rank with no data would hang a DDP
  run); write smaller row groups (``rows_per_group``) for small data.

* ``transform(table) -> {name: array}`` replaces the column conversion for columns that are not numbers
  (binary image cutouts: ``lsst_spark_ml.training.morphology``); it runs in the prefetch thread.

Not supported without a ``transform``: hive-partition columns encoded in directory names, nulls, ragged list
columns.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

__all__ = ["ParquetCache", "ParquetLoader", "materialize", "plan_key", "list_units"]


# ------------------------------------------------------------------------------------------------ files
def _fs_and_root(path: str) -> tuple[pafs.FileSystem, str]:
    path = str(path)
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    if path.startswith("file:"):
        path = path[len("file:"):]
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _data_files(fs: pafs.FileSystem, root: str) -> list[str]:
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [root]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no Parquet file or directory at {root}")
    files = []
    for fi in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        name = fi.base_name
        rel = os.path.relpath(fi.path, root)
        if fi.type != pafs.FileType.File or name.startswith(("_", ".")) or any(
                part.startswith(("_", ".")) for part in rel.split(os.sep)[:-1]):
            continue
        if name.endswith(".parquet") or name.endswith(".parq"):
            files.append(fi.path)
    return sorted(files)


@dataclass(frozen=True)
class _Unit:
    file: str
    row_group: int
    num_rows: int


def list_units(path: str) -> tuple[list[_Unit], pa.Schema]:
    """All (file, row group, footer row count) units under ``path`` and the common Arrow schema."""
    fs, root = _fs_and_root(path)
    files = _data_files(fs, root)
    if not files:
        raise FileNotFoundError(f"no Parquet data files under {path}")
    units: list[_Unit] = []
    schema = None
    for f in files:
        with fs.open_input_file(f) as fh:
            md = pq.ParquetFile(fh).metadata
            s = md.schema.to_arrow_schema()
        if schema is None:
            schema = s
        elif not s.equals(schema, check_metadata=False):
            raise ValueError(f"{path}: {f} has schema {s}, expected {schema}")
        units.extend(_Unit(f, i, md.row_group(i).num_rows) for i in range(md.num_row_groups))
    return units, schema


# ------------------------------------------------------------------------------------------------ cache
@dataclass(frozen=True)
class ParquetCache:
    """A DataFrame written once as Parquet: where it is, its schema and its exact footer row count."""
    path: str
    schema: pa.Schema
    num_rows: int
    num_files: int
    num_row_groups: int

    @classmethod
    def open(cls, path: str) -> "ParquetCache":
        units, schema = list_units(path)
        return cls(str(path), schema, sum(u.num_rows for u in units), len({u.file for u in units}),
                   len(units))

    def loader(self, columns: Sequence[str] | None, batch_size: int, **kwargs) -> "ParquetLoader":
        return ParquetLoader(self.path, columns, batch_size, **kwargs)


_EXPR_ID = re.compile(r"#\d+L?")


def plan_key(df) -> str:
    """sha256 over the DataFrame's semantic hash (falling back to its analyzed plan, expression ids removed)
    and its schema: the same query over the same inputs gives the same key across sessions."""
    try:
        plan = f"semanticHash={df.semanticHash()}"
    except Exception:   # e.g. a client without semanticHash
        plan = _EXPR_ID.sub("", df._jdf.queryExecution().analyzed().toString())
    return hashlib.sha256(f"{plan}\n{df.schema.json()}".encode()).hexdigest()


def materialize(df, cache_dir: str, rows_per_group: int = 50_000) -> ParquetCache:
    """Write ``df`` as Parquet under ``cache_dir/<plan_key(df)>`` unless a finished copy (``_SUCCESS``)
    is there already, and return its ``ParquetCache``.

    Files hold at most ``rows_per_group`` rows each (``maxRecordsPerFile``), so a file is about one row
    group and the loader gets enough work units to shard. The row count comes from the footers.
    """
    if rows_per_group < 1:
        raise ValueError("rows_per_group must be >= 1")
    key = plan_key(df)
    cache_dir = str(cache_dir)
    target = f"{cache_dir.rstrip('/')}/{key}" if "://" in cache_dir else os.path.join(
        os.path.abspath(cache_dir.removeprefix("file:")), key)
    fs, root = _fs_and_root(target)
    if fs.get_file_info(f"{root}/_SUCCESS").type != pafs.FileType.File:
        (df.write.mode("overwrite")
           .option("maxRecordsPerFile", int(rows_per_group))
           .option("parquet.block.size", 128 * 1024 * 1024)
           .parquet(target))
    return ParquetCache.open(target)


# ------------------------------------------------------------------------------------------------ loader
def _column_to_numpy(name: str, col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise ValueError(f"column {name!r} has {arr.null_count} nulls; fill or drop them first")
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
        values = arr.flatten()
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = np.asarray(arr.offsets)
        lengths = np.diff(offsets)
        if len(lengths) and not np.all(lengths == lengths[0]):
            raise ValueError(f"column {name!r} is a list column of varying lengths "
                             f"({lengths.min()}..{lengths.max()}); only fixed-length lists become tensors")
        width = int(lengths[0]) if len(lengths) else 0
        values = arr.flatten()
    else:
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise TypeError(f"column {name!r} has type {t}; only numeric, bool and fixed-length list columns")
        return arr.to_numpy(zero_copy_only=False)
    if values.null_count:
        raise ValueError(f"column {name!r} has null list elements")
    return values.to_numpy(zero_copy_only=False).reshape(len(arr), width)


class ParquetLoader:
    """Batches of ``{column: tensor}`` from a Parquet file or directory, sharded by row group over ranks.

    Iterate one epoch with ``loader.epoch(e)``, or ``loader.set_epoch(e)`` then ``for batch in loader``
    (``__iter__`` uses the epoch last set, 0 by default). ``len(loader)`` counts this rank's batches in that
    epoch. See the module docstring for the guarantees.
    """

    def __init__(self, path: str, columns: Sequence[str] | None, batch_size: int, *, shuffle: bool = True,
                 shuffle_buffer: int = 10_000, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False,
                 dtype: torch.dtype | Mapping[str, torch.dtype] = torch.float32,
                 even_batches: bool = False, prefetch: int = 1, transform=None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if shuffle_buffer < 0:
            raise ValueError("shuffle_buffer must be >= 0")
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.prefetch = int(prefetch)
        if rank is None or world_size is None:
            from .distributed import current
            ctx = current()
            rank = (ctx.rank if ctx is not None else 0) if rank is None else rank
            world_size = (ctx.world_size if ctx is not None else 1) if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.path = str(path)
        self._units, self.schema = list_units(self.path)
        self.columns = list(columns) if columns is not None else list(self.schema.names)
        missing = [c for c in self.columns if c not in self.schema.names]
        if missing:
            raise KeyError(f"{self.path}: no column(s) {missing}; has {self.schema.names}")
        if len(self._units) < world_size:
            raise ValueError(f"{self.path} has {len(self._units)} row groups for {world_size} ranks: "
                             f"some rank would get no data; write smaller row groups")
        self.batch_size = int(batch_size)
        self.shuffle, self.shuffle_buffer, self.seed = bool(shuffle), int(shuffle_buffer), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last, self.even_batches = bool(drop_last), bool(even_batches)
        self.dtype = dtype
        # transform(table) -> {name: array with one row per table row}: decoding done in the prefetch thread
        # (e.g. binary cutouts -> image tensors), so it overlaps training like the read itself.
        self.transform = transform
        self._epoch = 0

    # -- sharding --------------------------------------------------------------------------------
    @property
    def num_rows_total(self) -> int:
        return sum(u.num_rows for u in self._units)

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self._units)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self._units)).tolist()

    def units_for(self, epoch: int, rank: int | None = None) -> list[_Unit]:
        """The units ``rank`` (default: this loader's rank) reads in ``epoch``, in reading order."""
        rank = self.rank if rank is None else rank
        return [self._units[i] for i in self._order(epoch)[rank::self.world_size]]

    def _batches_from_rows(self, rows: int) -> int:
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def num_rows(self, epoch: int | None = None) -> int:
        """Rows this rank reads in ``epoch`` (footer counts)."""
        return sum(u.num_rows for u in self.units_for(self._epoch if epoch is None else epoch))

    def num_batches(self, epoch: int | None = None) -> int:
        epoch = self._epoch if epoch is None else epoch
        if self.even_batches:
            return min(self._batches_from_rows(sum(u.num_rows for u in self.units_for(epoch, r)))
                       for r in range(self.world_size))
        return self._batches_from_rows(self.num_rows(epoch))

    def __len__(self) -> int:
        return self.num_batches()

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.epoch(self._epoch)

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, unit: _Unit, fs: pafs.FileSystem) -> dict[str, np.ndarray]:
        with fs.open_input_file(unit.file) as fh:
            table = pq.ParquetFile(fh).read_row_group(unit.row_group, columns=self.columns)
        if table.num_rows != unit.num_rows:
            raise RuntimeError(f"{self.path}: row group {unit.row_group} of {unit.file} gave "
                               f"{table.num_rows} rows, its footer says {unit.num_rows}")
        if self.transform is not None:
            out = self.transform(table)
            bad = {k: len(v) for k, v in out.items() if len(v) != table.num_rows}
            if bad:
                raise RuntimeError(f"{self.path}: the loader's transform returned {bad} rows for a row group of "
                                   f"{table.num_rows}")
            return out
        return {c: _column_to_numpy(c, table.column(c)) for c in self.columns}

    def _to_tensor(self, name: str, a: np.ndarray) -> torch.Tensor:
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:   # zero-copy Arrow buffers are read-only; torch wants its own memory
            a = a.copy()
        t = torch.from_numpy(a)
        if isinstance(self.dtype, Mapping):
            return t.to(self.dtype[name]) if name in self.dtype else (
                t.to(torch.float32) if t.is_floating_point() else t)
        if t.is_floating_point():
            return t.to(self.dtype)
        if t.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
            return t.to(torch.int64)
        return t

    def _read_ahead(self, units: list[_Unit], fs: pafs.FileSystem) -> Iterator[dict[str, np.ndarray]]:
        """Row groups in order, the next ``prefetch`` ones read in a background thread while the current one
        is trained on (pyarrow releases the GIL while it reads and decodes)."""
        if self.prefetch == 0:
            for u in units:
                yield self._read(u, fs)
            return
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1, thread_name_prefix="parquet-prefetch") as pool:
            pending = [pool.submit(self._read, u, fs) for u in units[:self.prefetch]]
            for i in range(len(units)):
                chunk = pending.pop(0).result()
                if i + self.prefetch < len(units):
                    pending.append(pool.submit(self._read, units[i + self.prefetch], fs))
                yield chunk

    def _rows(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """Row chunks of this rank's units for ``epoch``, after the shuffle buffer."""
        fs, _ = _fs_and_root(self.path)
        units = self.units_for(epoch)
        if not self.shuffle:
            yield from self._read_ahead(units, fs)
            return
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        buf: dict[str, np.ndarray] | None = None
        for chunk in self._read_ahead(units, fs):
            keys = list(chunk)
            buf = chunk if buf is None else {c: np.concatenate([buf[c], chunk[c]]) for c in keys}
            n = len(buf[keys[0]])
            k = n - self.shuffle_buffer
            if k > 0:   # emit k rows drawn at random from the buffer, keep the rest
                perm = rng.permutation(n)
                out, keep = perm[:k], perm[k:]
                yield {c: buf[c][out] for c in keys}
                buf = {c: buf[c][keep] for c in keys}
        if buf is not None and len(next(iter(buf.values()))):
            perm = rng.permutation(len(next(iter(buf.values()))))
            yield {c: v[perm] for c, v in buf.items()}

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate this rank's batches for ``epoch``; raises RuntimeError if the rows read fall short of
        (or exceed) the footer counts."""
        expected = self.num_rows(epoch)
        limit = self.num_batches(epoch)
        bs = self.batch_size
        seen = yielded = 0
        pending: dict[str, np.ndarray] | None = None
        for chunk in self._rows(epoch):
            keys = list(chunk)
            seen += len(chunk[keys[0]])
            pending = chunk if pending is None else {c: np.concatenate([pending[c], chunk[c]]) for c in keys}
            n = len(pending[keys[0]])
            full = n // bs
            for b in range(full):
                if yielded < limit:
                    yield {c: self._to_tensor(c, pending[c][b * bs:(b + 1) * bs]) for c in keys}
                    yielded += 1
            pending = {c: pending[c][full * bs:] for c in keys}
        if seen != expected:
            raise RuntimeError(f"{self.path}: rank {self.rank}/{self.world_size} read {seen} rows in epoch "
                               f"{epoch}, the Parquet footers of its row groups say {expected}")
        if pending is not None and len(next(iter(pending.values()))) and not self.drop_last and yielded < limit:
            yield {c: self._to_tensor(c, v) for c, v in pending.items()}
            yielded += 1
        if yielded != limit:
            raise RuntimeError(f"{self.path}: rank {self.rank} yielded {yielded} batches in epoch {epoch}, "
                               f"expected {limit}")
