"""Read a catalog into Spark: Parquet (file or directory), HATS, FITS binary tables, DESC HDF5.

Every check that can fail (path, format, emptiness, band columns and their types) runs on the
driver from Parquet footers or the in-memory table, before any Spark job starts: a typo in the
configuration of a cluster-sized job must fail in seconds, with the file or column named.
FITS and HDF5 are read whole on the driver, so they suit catalogs up to a few million rows;
larger catalogs belong in Parquet or HATS.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.fs as pafs

from ..config import CatalogSettings
from ..errors import CatalogError
from .columns import ResolvedColumns, resolve_columns, spark_schema_dict

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

FORMATS = ("parquet", "hats", "fits", "hdf5")
HATS_PROPERTIES = ("hats.properties", "properties")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
             ".fit.gz": "fits", ".hdf5": "hdf5", ".h5": "hdf5", ".hdf": "hdf5"}
# Hidden and summary files (_SUCCESS, .crc, _metadata, _common_metadata) are not data.
_IGNORE_PREFIXES = [".", "_"]


@dataclass
class CatalogCheck:
    """What ``check_catalog`` learnt without Spark; ``read_catalog`` builds the DataFrame from it."""
    path: str
    format: str
    columns: ResolvedColumns
    num_rows: int
    schema: pa.Schema
    data_path: str | None = None       # Parquet/HATS: the file or directory Spark reads
    table: pa.Table | None = None      # FITS/HDF5: already in driver memory


# ----------------------------------------------------------------------------- file systems

def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system and the path inside it, for a local path or a URI (s3://, hdfs://, ...)."""
    path = str(path)
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    # Hadoop spells S3 "s3a"; pyarrow knows it as "s3".
    uri = re.sub(r"^s3[an]://", "s3://", path)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise CatalogError(f"cannot open {path}: {exc}") from None


def _kind(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


# ----------------------------------------------------------------------------- format detection

def _hats_root(fs: pafs.FileSystem, root: str) -> str | None:
    """The directory holding Norder=* partitions when ``root`` is a HATS catalog (or collection), else None."""
    if _kind(fs, _join(root, "collection.properties")) == pafs.FileType.File:
        # A collection (as Rubin DP1 is served) points at its main catalog; margins and indexes are skipped.
        props = _read_properties(fs, _join(root, "collection.properties"))
        primary = props.get("hats_primary_table_url")
        return _hats_root(fs, _join(root, primary)) if primary else None
    if not any(_kind(fs, _join(root, p)) == pafs.FileType.File for p in HATS_PROPERTIES):
        return None
    dataset = _join(root, "dataset")
    # Pre-2024 (hipscat) catalogs keep Norder=* directly under the root.
    return dataset if _kind(fs, dataset) == pafs.FileType.Directory else root


def _read_properties(fs: pafs.FileSystem, path: str) -> dict[str, str]:
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8", errors="replace")
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def detect_format(path: str, fmt: str = "auto") -> str:
    fs, p = filesystem(path)
    kind = _kind(fs, p)
    if kind == pafs.FileType.NotFound:
        raise CatalogError(f"catalog {path} does not exist")
    if fmt != "auto":
        if fmt not in FORMATS:
            raise CatalogError(f"unknown catalog format {fmt!r} for {path}; use one of auto, {', '.join(FORMATS)}")
        return fmt
    if kind == pafs.FileType.Directory:
        return "hats" if _hats_root(fs, p) else "parquet"
    name = p.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    raise CatalogError(f"cannot tell the format of {path} from its name; set catalog.format to one of "
                       f"{', '.join(FORMATS)} (known suffixes: {', '.join(_SUFFIXES)})")


# ----------------------------------------------------------------------------- numpy -> Arrow

def numpy_to_arrow(arr: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """One column as an Arrow array Spark accepts.

    FITS stores big-endian numbers (Arrow wants native order); Spark has no unsigned integers
    (each widens to the next signed type; uint64 beyond int64 becomes decimal(20,0)); a column with
    several values per row (FITS TDIM, 2-D HDF5) becomes an array column.
    """
    arr = np.asarray(arr)
    if arr.ndim > 1:
        n, k = arr.shape[:2]
        inner = numpy_to_arrow(arr.reshape((n * k,) + arr.shape[2:]),
                               None if mask is None else np.asarray(mask).reshape((n * k,) + arr.shape[2:]))
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * k), inner)
    if arr.dtype.kind in "biuf" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind == "S":
        arr = np.char.rstrip(np.char.decode(arr, "utf-8", errors="replace"))
    elif arr.dtype.kind == "O":
        arr = np.array([x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in arr], dtype=object)
    elif arr.dtype.kind == "u":
        if arr.dtype.itemsize < 8:
            arr = arr.astype(f"int{arr.dtype.itemsize * 16}")
        elif arr.size == 0 or arr.max() < 2**63:
            arr = arr.astype(np.int64)
        else:
            return pa.array([int(x) for x in arr], type=pa.decimal128(20, 0),
                            mask=None if mask is None else np.asarray(mask, dtype=bool))
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return pa.array(arr, mask=None if mask is None or not np.any(mask) else np.asarray(mask, dtype=bool))


def _read_fits(path: str) -> pa.Table:
    from astropy.table import Table
    try:
        # mask_invalid=False: a NaN flux stays NaN (the features treat it as a non-detection), not null.
        t = Table.read(path, format="fits", mask_invalid=False, character_as_bytes=False)
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds; the user needs the file name
        raise CatalogError(f"cannot read FITS table {path}: {exc}") from None
    cols = {}
    for name in t.colnames:
        col = t[name]
        mask = getattr(col, "mask", None)
        cols[name] = numpy_to_arrow(np.asarray(col), None if mask is None else np.asarray(mask))
    return pa.table(cols) if cols else pa.table({})


def _read_hdf5(path: str, group: str) -> pa.Table:
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CatalogError(f"cannot open HDF5 file {path}: {exc}") from None
    with f:
        if group.strip("/") and group not in f:
            raise CatalogError(f"HDF5 file {path} has no group {group!r} (it has {sorted(f)}); "
                               "set catalog.hdf5_group ('' for the root)")
        g = f[group] if group.strip("/") else f
        if not isinstance(g, h5py.Group):
            raise CatalogError(f"{group!r} in HDF5 file {path} is a dataset, not a group of columns")
        cols: dict[str, np.ndarray] = {}
        for name, ds in g.items():
            if not isinstance(ds, h5py.Dataset):
                continue                                # a subgroup (e.g. metadata) is not a column
            if ds.ndim == 0:
                raise CatalogError(f"HDF5 dataset {group}/{name} in {path} is a scalar, not a column")
            if ds.dtype.names:                          # one compound dataset: each field a column
                data = ds[()]
                cols.update({field: data[field] for field in ds.dtype.names})
            else:
                cols[name] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        n = max(set(lengths.values()), key=list(lengths.values()).count)
        odd = {k: v for k, v in lengths.items() if v != n}
        raise CatalogError(f"HDF5 group {group!r} in {path}: column(s) {odd} differ in length from the others "
                           f"({n} rows)")
    return pa.table({k: numpy_to_arrow(v) for k, v in cols.items()}) if cols else pa.table({})


def _parquet_dataset(fs: pafs.FileSystem, path: str, source: str) -> pds.Dataset:
    try:
        return pds.dataset(path, filesystem=fs, format="parquet", partitioning="hive",
                           ignore_prefixes=_IGNORE_PREFIXES)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CatalogError(f"cannot read Parquet {source}: {exc}") from None


# ----------------------------------------------------------------------------- public API

def check_catalog(path: str | os.PathLike | None, cat: CatalogSettings, need_truth: bool = False) -> CatalogCheck:
    """Validate a catalog without Spark: it exists, has rows, and holds every column ``cat`` asks for.

    Parquet and HATS rows are counted from the file footers only; FITS and HDF5 are loaded on the driver
    (and kept in the result, so ``read_catalog`` does not read them twice).
    """
    path = str(path if path is not None else cat.path or "")
    if not path:
        raise CatalogError("no catalog path given (set catalog.path)")
    fmt = detect_format(path, cat.format)
    table = data_path = None
    if fmt in ("parquet", "hats"):
        fs, p = filesystem(path)
        data_path = path if "://" in path else p
        if fmt == "hats":
            p, data_path = _hats_dataset(fs, p, path)
        ds = _parquet_dataset(fs, p, path)
        if not ds.files:
            raise CatalogError(f"catalog {path} holds no Parquet files")
        try:
            num_rows = ds.count_rows()                 # footers only: no data pages are read
        except (pa.ArrowInvalid, OSError) as exc:
            raise CatalogError(f"cannot read Parquet footers of {path}: {exc}") from None
        schema = ds.schema
    elif fmt == "fits":
        table = _read_fits(path)
        num_rows, schema = table.num_rows, table.schema
    else:
        table = _read_hdf5(path, cat.hdf5_group)
        num_rows, schema = table.num_rows, table.schema
    if num_rows == 0:
        where = f" (group {cat.hdf5_group!r})" if fmt == "hdf5" else ""
        raise CatalogError(f"catalog {path}{where} is empty: 0 rows")
    columns = resolve_columns({f.name: f.type for f in schema}, cat, need_truth=need_truth, source=path)
    if table is None and len(ds.files) > 1:
        _check_every_file(ds, columns)
    return CatalogCheck(path, fmt, columns, num_rows, schema, data_path, table)


def _check_every_file(ds: pds.Dataset, columns: ResolvedColumns) -> None:
    """The dataset schema is the first file's: a later file with a text flux column would fail mid-job,
    after an overwrite has already removed the previous output. Footers are cached from count_rows."""
    needed = columns.values + columns.errors + [c for c in (columns.ra_col, columns.dec_col, columns.truth_col,
                                                            columns.ebv_col) if c]
    for frag in ds.get_fragments():
        schema = frag.physical_schema
        for c in needed:
            if c not in schema.names:
                raise CatalogError(f"file {frag.path} lacks column {c!r} that the other files have")
            t = schema.field(c).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
                raise CatalogError(f"column {c!r} must be numeric, but it is {t} in file {frag.path}")


def read_catalog_counted(spark: SparkSession, path: str | os.PathLike | None, cat: CatalogSettings,
                         need_truth: bool = False) -> tuple[DataFrame, ResolvedColumns, int]:
    """Return ``(DataFrame, ResolvedColumns, rows)`` for the catalog at ``path`` (default ``cat.path``).

    All checks of ``check_catalog`` run first; a bad catalog raises CatalogError before any Spark job.
    A HATS catalog keeps its Norder/Dir/Npix partition columns.
    """
    chk = check_catalog(path, cat, need_truth=need_truth)
    if chk.table is not None:
        df = spark.createDataFrame(chk.table)
    else:
        reader = spark.read
        if chk.format == "hats":
            reader = reader.option("basePath", chk.data_path)
        df = reader.parquet(chk.data_path)
        if chk.format == "hats" and "Npix" not in df.columns:
            # Standard HATS stores one file per pixel (Npix=123.parquet): Spark only sees directories
            # as partitions, so the pixel comes from the file name.
            from pyspark.sql import functions as F
            df = df.withColumn("Npix", F.regexp_extract(F.col("_metadata.file_path"), r"Npix=(\d+)", 1).cast("long"))
    log.info("catalog %s: %s, %d rows, %s photometry", chk.path, chk.format, chk.num_rows, chk.columns.photometry)
    # Spark's types can differ from Arrow's (unsigned, decimals): check again on what Spark will compute with.
    return df, resolve_columns(spark_schema_dict(df), cat, need_truth=need_truth, source=chk.path), chk.num_rows


def read_catalog(spark: SparkSession, path: str | os.PathLike | None, cat: CatalogSettings,
                 need_truth: bool = False) -> tuple[DataFrame, ResolvedColumns]:
    """``read_catalog_counted`` without the row count (known from footers or the driver table)."""
    df, cols, _ = read_catalog_counted(spark, path, cat, need_truth)
    return df, cols


def _hats_dataset(fs: pafs.FileSystem, p: str, path: str) -> tuple[str, str]:
    """(dataset directory in ``fs``, the same directory spelt like the user's ``path`` for Spark)."""
    root = _hats_root(fs, p) if _kind(fs, p) == pafs.FileType.Directory else None
    if root is None and _kind(fs, _join(p, "dataset")) == pafs.FileType.Directory:
        root = _join(p, "dataset")             # properties missing, layout unmistakable
    if root is None:
        raise CatalogError(f"{path} is not a HATS catalog: no hats.properties with a dataset/ directory")
    # root lies under p; Spark gets it spelt like the user's path (URI scheme kept).
    return root, (path.rstrip("/") + root[len(p.rstrip("/")):] if "://" in path else root)


def read_table(spark: SparkSession, path: str | os.PathLike) -> DataFrame:
    """A Parquet or HATS table without photometry checks (e.g. predictions written by this package)."""
    path = str(path)
    fmt = detect_format(path, "auto")
    if fmt not in ("parquet", "hats"):
        raise CatalogError(f"{path} is {fmt}; expected a Parquet or HATS table")
    fs, p = filesystem(path)
    if fmt == "hats":
        _, data_path = _hats_dataset(fs, p, path)
        return spark.read.option("basePath", data_path).parquet(data_path)
    if not _parquet_dataset(fs, p, path).files:
        raise CatalogError(f"{path} holds no Parquet files")
    return spark.read.parquet(path)


__all__ = ["CatalogCheck", "FORMATS", "check_catalog", "detect_format", "filesystem", "numpy_to_arrow",
           "read_catalog", "read_catalog_counted", "read_table"]
