"""Cutout tables: 5-band image cutouts in Parquet, their footer checks, decoding, and the rendered sets.

Schema (one row per galaxy)::

    objectId      int64                 not null
    ra, dec       double                degrees
    cutout        binary                raw bytes of a C-order little-endian (5, S, S) array
    cutout_shape  list<int32>           per row, [5, S, S]
    cutout_dtype  string                per row, 'float16' or 'float32'
    label         int32, nullable       index into render.CLASSES
    label_name    string, nullable
    _healpix_29   int64                 nested HEALPix order 29 (io.hats_writer.healpix29), rows sorted by it
    ...                                 optional extra columns (``extra_columns``)

Table-level schema metadata ``b"lsst_spark_ml.cutouts"`` = JSON ``{"bands": [...], "shape": [5, S, S],
"dtype": "float16", "format_version": 1}``, in every file's footer, so ``check_cutout_table`` validates a
table from footers alone (no Spark job, no data pages) before a job starts. Tables must be written by
``write_cutouts`` (or keep this metadata): Spark's own Parquet writer drops Arrow schema metadata.

Layout: a directory of ``part-NNNNN.parquet`` files plus ``_common_metadata``; rows sorted by
``_healpix_29`` within each file, and across the files of one ``write_cutouts`` call or of one rendered
stream in ``make_sets`` (each file a contiguous sky range, as the catalogs are partitioned).
Row groups are sized in bytes (``group_mb``, 16 MB: ~400 cutouts at 64x64 float16, 7 at 480x480), so a
reader never holds more than one small group per unit of work and ``training.loader`` gets many work units.
Half precision keeps NaN (chip gaps) and the ~3 significant digits noisy images need, at half the bytes.
``cutout`` is compressed with zstd (~7 % on noisy float16 pixels), has no dictionary and no min/max
statistics (a 40 KB min/max per row group would bloat the footer).

Arrow batches must follow the bytes, not a fixed row count: ``rows_per_batch`` gives the
``spark.sql.execution.arrow.maxRecordsPerBatch`` that keeps a batch's working memory near a target.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import CatalogError
from .inputs import BAD_DTYPE, BAD_SHAPE, MISSING_BAND, N_CHANNELS
from .classes import BANDS, CLASSES

METADATA_KEY = b"lsst_spark_ml.cutouts"
FORMAT_VERSION = 1
DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
REQUIRED_COLUMNS = {
    "objectId": pa.int64(), "ra": pa.float64(), "dec": pa.float64(), "cutout": pa.binary(),
    "cutout_shape": pa.list_(pa.int32()), "cutout_dtype": pa.string(), "label": pa.int32(),
    "label_name": pa.string(), "_healpix_29": pa.int64(),
}
GROUP_MB = 16
FILE_MB = 256


@dataclass(frozen=True)
class CutoutTableInfo:
    bands: tuple[str, ...]
    shape: tuple[int, int, int]
    dtype: str
    n_rows: int
    files: tuple[str, ...]
    n_row_groups: int = 0


# ------------------------------------------------------------------------------------------- sizes
def bytes_per_cutout(shape: Sequence[int], dtype: str = "float16") -> int:
    return int(np.prod(shape)) * _dtype(dtype).itemsize


def rows_per_batch(shape: Sequence[int], dtype: str = "float16", target_mb: float = 64,
                   channels_out: int = N_CHANNELS) -> int:
    """Rows per Arrow batch so that one batch's working memory in a Python worker stays near ``target_mb``.

    A row costs its stored bytes (the Arrow batch), its float32 decode (``decode_cutouts``) and its
    float32 ``channels_out``-channel model input (``inputs.build_inputs``; 0 to leave it out): 17 MB a
    row at 480x480 float16 (3 rows per 64 MB), 0.29 MB at 64x64 (221 rows). Model activations come on top
    and are the inference code's to bound. At least 1.
    """
    n = int(np.prod(shape))
    per_row = n * _dtype(dtype).itemsize + n * 4 + (channels_out * n // int(shape[0])) * 4
    return max(1, int(target_mb * 2 ** 20 // per_row))


def _dtype(name: str) -> np.dtype:
    if name not in DTYPES:
        raise CatalogError(f"cutout dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _rows_for(mb: float, row_bytes: int) -> int:
    return max(1, int(mb * 2 ** 20 // max(row_bytes, 1)))


# ------------------------------------------------------------------------------------------- write
def _metadata(bands: Sequence[str], shape: Sequence[int], dtype: str) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps({"bands": list(bands), "shape": [int(s) for s in shape], "dtype": dtype,
                                      "format_version": FORMAT_VERSION}).encode()}


def cutout_schema(bands: Sequence[str], shape: Sequence[int], dtype: str,
                  extra: dict[str, pa.DataType] | None = None) -> pa.Schema:
    fields = [pa.field(name, typ, nullable=name != "objectId") for name, typ in REQUIRED_COLUMNS.items()]
    fields += [pa.field(name, typ) for name, typ in (extra or {}).items()]
    return pa.schema(fields, metadata=_metadata(bands, shape, dtype))


def _table(images: np.ndarray, object_ids, ra, dec, labels, dtype: str, schema: pa.Schema,
           extra_columns: dict | None) -> pa.Table:
    n = images.shape[0]
    dt = _dtype(dtype)
    data = np.ascontiguousarray(images, dtype=dt)
    row_bytes = int(np.prod(images.shape[1:])) * dt.itemsize
    offsets = np.arange(n + 1, dtype=np.int64) * row_bytes
    if offsets[-1] >= 2 ** 31:
        raise ValueError("one write chunk exceeds 2 GB of cutouts; pass fewer rows at a time")
    cutout = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                    pa.py_buffer(data.reshape(-1).view(np.uint8))])
    shape = list(images.shape[1:])
    shape_col = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * 3, pa.int32()),
                                         pa.array(np.tile(np.asarray(shape, np.int32), n), pa.int32()))
    if labels is None:
        label = pa.nulls(n, pa.int32())
        label_name = pa.nulls(n, pa.string())
    else:
        lab = pd.array(labels, dtype="Int32")
        label = pa.array(lab, pa.int32())
        label_name = pa.array([None if pd.isna(v) else CLASSES[int(v)] for v in lab], pa.string())
    from ..io.hats_writer import healpix29
    cols = {"objectId": pa.array(np.asarray(object_ids, np.int64)), "ra": pa.array(np.asarray(ra, np.float64)),
            "dec": pa.array(np.asarray(dec, np.float64)), "cutout": cutout, "cutout_shape": shape_col,
            "cutout_dtype": pa.array([dtype] * n, pa.string()), "label": label, "label_name": label_name,
            "_healpix_29": pa.array(healpix29(ra, dec))}
    for name, values in (extra_columns or {}).items():
        cols[name] = pa.array(values, schema.field(name).type)
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


class CutoutWriter:
    """Streams chunks of cutouts into a cutout table; each ``write`` chunk becomes one or more files of at
    most ``rows_per_file`` rows, sorted by ``_healpix_29`` within the chunk (pass chunks in sky order for a
    globally sorted table, as ``make_sets`` does). ``close`` writes ``_common_metadata``."""

    def __init__(self, path: str, size: int, dtype: str = "float16", bands: Sequence[str] = BANDS,
                 rows_per_file: int | None = None, rows_per_group: int | None = None,
                 extra: dict[str, pa.DataType] | None = None):
        self.path = str(path)
        self.dtype = dtype
        self.shape = (len(bands), int(size), int(size))
        row = bytes_per_cutout(self.shape, dtype)
        self.rows_per_group = int(rows_per_group or _rows_for(GROUP_MB, row))
        self.rows_per_file = int(rows_per_file or max(self.rows_per_group, _rows_for(FILE_MB, row)))
        if self.rows_per_group < 1 or self.rows_per_file < 1:
            raise ValueError("rows_per_group and rows_per_file must be >= 1")
        self.schema = cutout_schema(bands, self.shape, dtype, extra)
        self.files: list[str] = []
        self.n_rows = 0
        os.makedirs(self.path, exist_ok=True)
        stale = [f for f in os.listdir(self.path) if f.endswith(".parquet") or f == "_common_metadata"]
        for f in stale:   # an overwrite must not leave parts of an older, larger table behind
            os.remove(os.path.join(self.path, f))

    def write(self, images: np.ndarray, object_ids, ra, dec, labels=None, extra_columns: dict | None = None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.shape:
            raise ValueError(f"images must be (n, {', '.join(map(str, self.shape))}), got {images.shape}")
        table = _table(images, object_ids, ra, dec, labels, self.dtype, self.schema, extra_columns)
        table = table.sort_by("_healpix_29")
        # Leaf paths: statistics of list columns are addressed by their element column.
        stats = [f.name if f.name != "cutout_shape" else "cutout_shape.list.element"
                 for f in self.schema if f.name != "cutout"]
        for start in range(0, table.num_rows, self.rows_per_file):
            name = os.path.join(self.path, f"part-{len(self.files):05d}.parquet")
            pq.write_table(table.slice(start, self.rows_per_file), name, row_group_size=self.rows_per_group,
                           compression="zstd", use_dictionary=["cutout_dtype", "label_name"],
                           write_statistics=stats)
            self.files.append(name)
        self.n_rows += table.num_rows

    def close(self) -> str:
        pq.write_metadata(self.schema, os.path.join(self.path, "_common_metadata"))
        return self.path


def write_cutouts(path: str, images: np.ndarray, object_ids, ra, dec, labels=None, dtype: str = "float16",
                  rows_per_file: int | None = None, rows_per_group: int | None = None,
                  bands: Sequence[str] = BANDS, extra_columns: dict | None = None) -> str:
    """Write ``images`` (n, 5, S, S) as a cutout table at ``path`` (a directory, replaced); returns ``path``.

    Defaults size row groups at ~16 MB and files at ~256 MB of cutouts. ``labels``: class indices (None
    or NaN/pd.NA entries -> null). ``extra_columns``: name -> values, types inferred by Arrow.
    """
    images = np.asarray(images)
    extra = {k: pa.array(v).type for k, v in (extra_columns or {}).items()}
    w = CutoutWriter(path, images.shape[-1], dtype, bands, rows_per_file, rows_per_group, extra)
    w.write(images, object_ids, ra, dec, labels, extra_columns)
    return w.close()


# ------------------------------------------------------------------------------------------- check
def _data_files(path: str) -> tuple[pafs.FileSystem, list[str]]:
    """The data files the project's loader would read (``training.loader``'s rules: ``*.parquet``/``*.parq``,
    nothing under a ``_``/``.`` name), local or any pyarrow URI."""
    from ..io.readers import filesystem
    fs, root = filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return fs, [root]
    if info.type != pafs.FileType.Directory:
        raise CatalogError(f"cutout table {path} does not exist")
    out = []
    for fi in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = fi.path[len(root.rstrip("/")) + 1:]
        if fi.type == pafs.FileType.File and rel.endswith((".parquet", ".parq")) and not any(
                part.startswith(("_", ".")) for part in rel.split("/")):
            out.append(fi.path)
    return fs, sorted(out)


def _file_meta(fs: pafs.FileSystem, f: str) -> tuple[dict, pq.FileMetaData]:
    try:
        with fs.open_input_file(f) as fh:
            md = pq.read_metadata(fh)
    except Exception as e:
        raise CatalogError(f"cutout table file {f} is not readable Parquet: {e}") from e
    kv = md.metadata or {}
    if METADATA_KEY not in kv:
        raise CatalogError(f"cutout table file {f} has no {METADATA_KEY.decode()!r} schema metadata "
                           f"(bands, shape, dtype); write cutout tables with lsst_spark_ml.morphology.cutouts."
                           f"write_cutouts (Spark's Parquet writer drops it)")
    try:
        meta = json.loads(kv[METADATA_KEY])
    except ValueError as e:
        raise CatalogError(f"cutout table file {f}: {METADATA_KEY.decode()!r} is not JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CatalogError(f"cutout table file {f}: {METADATA_KEY.decode()!r} is not a JSON object")
    return meta, md


def _check_meta(f: str, meta: dict, expected_bands, expected_size) -> tuple[tuple, tuple, str]:
    where = f"cutout table file {f}, metadata field"
    for key in ("bands", "shape", "dtype", "format_version"):
        if key not in meta:
            raise CatalogError(f"{where} {key!r} is missing (has {sorted(meta)})")
    if meta["format_version"] != FORMAT_VERSION:
        raise CatalogError(f"{where} 'format_version' is {meta['format_version']!r}; this code reads "
                           f"{FORMAT_VERSION}")
    bands = meta["bands"]
    if not isinstance(bands, list) or not bands or not all(isinstance(b, str) for b in bands):
        raise CatalogError(f"{where} 'bands' must be a list of band names, got {bands!r}")
    dtype = meta["dtype"]
    if dtype not in DTYPES:
        raise CatalogError(f"{where} 'dtype' is {dtype!r}; must be one of {sorted(DTYPES)}")
    shape = meta["shape"]
    if (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape)
            or shape[0] != len(bands) or shape[1] != shape[2]):
        raise CatalogError(f"{where} 'shape' is {shape!r}; must be [nbands={len(bands)}, S, S]")
    if expected_bands is not None and list(bands) != list(expected_bands):
        raise CatalogError(f"{where} 'bands' is {bands}; the model expects {list(expected_bands)}")
    if expected_size is not None and shape[1] != int(expected_size):
        raise CatalogError(f"{where} 'shape' is {shape}; the model expects {int(expected_size)}x"
                           f"{int(expected_size)} cutouts")
    return tuple(bands), tuple(shape), dtype


def _check_columns(f: str, md: pq.FileMetaData, shape: tuple, dtype: str) -> None:
    schema = md.schema.to_arrow_schema()
    for name, typ in REQUIRED_COLUMNS.items():
        if name not in schema.names:
            raise CatalogError(f"cutout table file {f} has no column {name!r} (has {schema.names})")
        got = schema.field(name).type
        ok = got == typ or (name == "cutout" and got == pa.large_binary()) or (
            name == "cutout_shape" and pa.types.is_list(got) and got.value_type == pa.int32())
        if not ok:
            raise CatalogError(f"cutout table file {f}: column {name!r} has type {got}, expected {typ}")
    # Per-row dtype/shape against the table metadata, from the footer statistics (no data read).
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    for rg in range(md.num_row_groups):
        g = md.row_group(rg)
        for i, col in enumerate(names):
            st = g.column(i).statistics
            if st is None or not st.has_min_max:
                continue
            if col == "cutout_dtype" and (st.min != dtype or st.max != dtype):
                raise CatalogError(f"cutout table file {f}, row group {rg}: column 'cutout_dtype' holds "
                                   f"{st.min!r}..{st.max!r}, the metadata field 'dtype' says {dtype!r}")
            if col.startswith("cutout_shape.") and (st.min != min(shape) or st.max != max(shape)):
                raise CatalogError(f"cutout table file {f}, row group {rg}: column 'cutout_shape' holds values "
                                   f"{st.min}..{st.max}, the metadata field 'shape' says {list(shape)}")


def check_cutout_table(path: str, expected_bands: Sequence[str] | None = BANDS,
                       expected_size: int | None = None) -> CutoutTableInfo:
    """Validate a cutout table (local path or URI) from its Parquet footers only; raise ``CatalogError``
    naming the file and field when the metadata is missing or malformed, the dtype is not float16/float32,
    the shape is not (nbands, S, S), the bands differ from ``expected_bands``, the size from
    ``expected_size``, a required column is missing or mistyped, per-row dtype/shape statistics disagree
    with the metadata, or two files disagree."""
    fs, files = _data_files(path)
    if not files:
        raise CatalogError(f"cutout table {path} has no Parquet data files")
    first = None
    n_rows = n_groups = 0
    for f in files:
        meta, md = _file_meta(fs, f)
        bands, shape, dtype = _check_meta(f, meta, expected_bands, expected_size)
        _check_columns(f, md, shape, dtype)
        if first is None:
            first = (f, bands, shape, dtype)
        else:
            for field, a, b in (("bands", list(first[1]), list(bands)), ("shape", list(first[2]), list(shape)),
                                ("dtype", first[3], dtype)):
                if a != b:
                    raise CatalogError(f"cutout table {path}: metadata field {field!r} is {b!r} in {f} "
                                       f"but {a!r} in {first[0]}")
        n_rows += md.num_rows
        n_groups += md.num_row_groups
    return CutoutTableInfo(first[1], first[2], first[3], n_rows, tuple(files), n_groups)


# ------------------------------------------------------------------------------------------- decode
def _to_list(col) -> list:
    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        return col.to_pylist()
    if isinstance(col, pd.Series):
        return col.tolist()
    return list(col)


def _shape_ok(s, expected: tuple) -> int:
    """0, MISSING_BAND (fewer bands, right image size) or BAD_SHAPE for one row's stored shape."""
    try:
        t = tuple(int(v) for v in s)
    except (TypeError, ValueError):
        return BAD_SHAPE
    if t == expected:
        return 0
    if len(t) == 3 and t[1:] == expected[1:] and t[0] < expected[0]:
        return MISSING_BAND
    return BAD_SHAPE


def decode_cutouts(cutout, shape_col, dtype_col, expected_shape: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (n, *expected_shape), int32 flags (n,)) from the ``cutout``/``cutout_shape``/``cutout_dtype``
    columns (Arrow arrays, pandas Series or lists); never raises on a bad row.

    Null cutout -> MISSING_BAND; stored shape with fewer bands -> MISSING_BAND; other shape mismatch, null
    shape, or a byte length that is not shape x itemsize (truncated) -> BAD_SHAPE; dtype not
    float16/float32 -> BAD_DTYPE. Flagged rows are zeros. When every row is good and the input is an Arrow
    binary array, the whole batch is read with one ``np.frombuffer`` over Arrow's value buffer (no per-row
    Python objects) and converted to float32 in one pass.
    """
    expected = tuple(int(s) for s in expected_shape)
    per_row = int(np.prod(expected))
    if isinstance(cutout, pa.ChunkedArray):
        cutout = cutout.combine_chunks()
    n = len(cutout)
    out = np.zeros((n,) + expected, dtype=np.float32)
    flags = np.zeros(n, dtype=np.int32)
    if n == 0:
        return out, flags
    dtypes = _to_list(dtype_col)
    shapes = _to_list(shape_col)
    for i in range(n):
        if dtypes[i] not in DTYPES:
            flags[i] |= BAD_DTYPE
        flags[i] |= BAD_SHAPE if shapes[i] is None else _shape_ok(shapes[i], expected)

    if isinstance(cutout, pa.Array) and (pa.types.is_binary(cutout.type) or pa.types.is_large_binary(cutout.type)):
        valid = ~np.asarray(cutout.is_null().to_numpy(zero_copy_only=False), bool)
        flags[~valid] |= MISSING_BAND
        bufs = cutout.buffers()
        off_t = np.int64 if pa.types.is_large_binary(cutout.type) else np.int32
        offsets = np.frombuffer(bufs[1], dtype=off_t)[cutout.offset:cutout.offset + n + 1].astype(np.int64)
        lengths = np.diff(offsets)
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
        same = len(set(dtypes)) == 1 and dtypes[0] in DTYPES
        if same and not flags.any():
            dt = DTYPES[dtypes[0]]
            contiguous = np.all(lengths == per_row * dt.itemsize)
            if contiguous:
                start = int(offsets[0])
                view = data[start:start + n * per_row * dt.itemsize].view(dt)
                out[:] = view.reshape((n,) + expected)
                return out, flags
        for i in range(n):
            if flags[i]:
                continue
            dt = DTYPES[dtypes[i]]
            if lengths[i] != per_row * dt.itemsize:
                flags[i] |= BAD_SHAPE
                continue
            out[i] = data[offsets[i]:offsets[i + 1]].view(dt).reshape(expected)
        return out, flags

    values = _to_list(cutout)
    for i in range(n):
        v = values[i]
        if v is None:
            flags[i] |= MISSING_BAND
        if flags[i]:
            continue
        dt = DTYPES[dtypes[i]]
        try:
            buf = np.frombuffer(v, dtype=np.uint8)
        except TypeError:
            flags[i] |= BAD_SHAPE
            continue
        if buf.size != per_row * dt.itemsize:
            flags[i] |= BAD_SHAPE
            continue
        out[i] = buf.view(dt).reshape(expected)
    return out, flags


def read_cutouts(path: str, columns: Sequence[str] | None = None, expected_bands: Sequence[str] | None = BANDS,
                 expected_size: int | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Whole table in memory (small sets and tests): (float32 images, flags, the other columns)."""
    from ..io.readers import filesystem
    info = check_cutout_table(path, expected_bands, expected_size)
    table = pq.ParquetDataset(list(info.files), filesystem=filesystem(path)[0]).read(columns=columns)
    images, flags = decode_cutouts(table.column("cutout"), table.column("cutout_shape"),
                                   table.column("cutout_dtype"), info.shape)
    rest = table.drop_columns([c for c in ("cutout",) if c in table.column_names]).to_pandas()
    return images, flags, rest


# ------------------------------------------------------------------------------------------- sets
# Footprints of the rendered sets (deg): the labelled domain and the survey domain on different sky.
_FIELDS = {"labelled": (150.1, 2.2), "unlabelled": (53.1, -28.1), "test": (9.5, -44.0)}
_FIELD_SIZE = 2.0
_SET_CODE = {"labelled": 1, "unlabelled": 2, "test": 3}


def _positions(n: int, field: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform on the sphere over a ~2x2 deg field, sorted by HEALPix index (so are the files)."""
    from ..io.hats_writer import healpix29
    ra0, dec0 = _FIELDS[field]
    half = math.radians(_FIELD_SIZE / 2)
    s0, s1 = math.sin(math.radians(dec0) - half), math.sin(math.radians(dec0) + half)
    dec = np.degrees(np.arcsin(rng.uniform(s0, s1, n)))
    ra = (ra0 + rng.uniform(-1, 1, n) * _FIELD_SIZE / 2 / np.cos(np.radians(dec))) % 360.0
    order = np.argsort(healpix29(ra, dec), kind="stable")
    return ra[order], dec[order]


def _stream_seed(seed: int, name: str) -> int:
    return int(np.random.SeedSequence([int(seed), _SET_CODE[name]]).generate_state(1)[0])


def make_sets(out_dir: str, n_labelled: int, n_unlabelled: int, n_test: int, size: int = 64, seed: int = 0,
              label_fraction: float | None = None, class_weights: dict[str, float] | None = None,
              dtype: str = "float16", chunk_rows: int | None = None,
              rows_per_group: int | None = None) -> dict[str, str]:
    """Render and write the three sets of the morphology capability under ``out_dir``; return their paths.

    * ``labelled/``: ``RenderSettings.labelled(size)``, ``label``/``label_name`` filled.
    * ``unlabelled/``: ``RenderSettings.survey(size)``. ``label`` and ``label_name`` are null, so a training
      step that asks for ``label`` fails (the project's loader rejects nulls) instead of silently using
      them; the true class is kept for evaluation only, in ``eval_label``/``eval_label_name``.
    * ``test/``: ``RenderSettings.survey(size)``, held out, ``label`` filled (for evaluation).
    * ``label_fraction`` f: only a random f of the ``n_labelled`` labelled-domain galaxies keep ``label``
      in ``labelled/``; the rest go to ``unlabelled/`` like the survey rows (label null, truth in
      ``eval_label``), so "10 % of the labels" is one call.
    * ``params/<set>.parquet``: every galaxy's latent parameters (``render.RenderedSet.params``) with its
      ``objectId``; ``manifest.json``: seeds, settings, counts per class and set.

    Every row also has ``domain`` ('labelled' or 'survey'). Each set renders its own galaxy stream (seeds
    derived from ``seed`` and the set), so no galaxy appears in two sets; rendering and writing go by
    chunks of ``chunk_rows`` (default ~64 MB of float32 images), so memory does not grow with ``n``;
    each chunk is one file or more. ``rows_per_group`` overrides the ~16 MB row groups (small sets
    sharded over several ranks need several groups).
    """
    from .render import RenderSettings, render_galaxies     # GalSim: only where sets are rendered
    if label_fraction is not None and not 0.0 < float(label_fraction) <= 1.0:
        raise CatalogError(f"label_fraction must be in (0, 1], got {label_fraction}")
    _dtype(dtype)
    out_dir = str(out_dir)
    os.makedirs(os.path.join(out_dir, "params"), exist_ok=True)
    chunk = int(chunk_rows or max(1, (64 * 2 ** 20) // (len(BANDS) * size * size * 4)))
    extra = {"domain": pa.string(), "eval_label": pa.int32(), "eval_label_name": pa.string()}
    writers = {name: CutoutWriter(os.path.join(out_dir, name), size, dtype, rows_per_group=rows_per_group,
                                  extra=extra)
               for name in ("labelled", "unlabelled", "test")}
    params: dict[str, list[pd.DataFrame]] = {name: [] for name in writers}
    manifest = {"seed": seed, "size": size, "dtype": dtype, "label_fraction": label_fraction,
                "class_weights": class_weights, "classes": list(CLASSES), "bands": list(BANDS), "sets": {}}

    plan = (("labelled", n_labelled, RenderSettings.labelled(size)),
            ("unlabelled", n_unlabelled, RenderSettings.survey(size)),
            ("test", n_test, RenderSettings.survey(size)))
    for name, n, settings in plan:
        if n < 0:
            raise CatalogError(f"n_{name} must be >= 0, got {n}")
        stream = _stream_seed(seed, name)
        rng = np.random.default_rng([stream, 7])
        ra, dec = _positions(n, name, rng)
        keep = np.ones(n, dtype=bool)
        if name == "labelled" and label_fraction is not None:
            keep[:] = False
            keep[rng.permutation(n)[:int(round(float(label_fraction) * n))]] = True
        domain = "labelled" if name == "labelled" else "survey"
        manifest["sets"][name] = {"stream_seed": stream, "settings": asdict(settings), "n_rendered": n}
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            rs = render_galaxies(stop - start, stream, settings, class_weights, start=start)
            ids = (np.int64(_SET_CODE[name]) << np.int64(40)) + np.arange(start, stop, dtype=np.int64)
            names = [CLASSES[k] for k in rs.labels]
            p = rs.params.assign(objectId=ids, set=name, domain=domain)
            everything = np.ones(stop - start, dtype=bool)
            if name == "labelled":
                parts = (("labelled", keep[start:stop], True), ("unlabelled", ~keep[start:stop], False))
            else:
                parts = ((name, everything, name == "test"),)
            for target, rows, show in parts:
                if not rows.any():
                    continue
                lab = rs.labels[rows].astype(np.int32)
                writers[target].write(
                    rs.images[rows], ids[rows], ra[start:stop][rows], dec[start:stop][rows],
                    labels=lab if show else None,
                    extra_columns={"domain": [domain] * int(rows.sum()), "eval_label": lab,
                                   "eval_label_name": [names[i] for i in np.nonzero(rows)[0]]})
                params[target].append(p[rows].assign(label_visible=show))
    paths = {name: w.close() for name, w in writers.items()}
    for name, frames in params.items():
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        df.to_parquet(os.path.join(out_dir, "params", f"{name}.parquet"), index=False)
        paths[f"params_{name}"] = os.path.join(out_dir, "params", f"{name}.parquet")
        counts = df["class"].value_counts().reindex(CLASSES, fill_value=0) if len(df) else None
        manifest["sets"].setdefault(name, {})
        manifest["sets"][name].update({"n_rows": int(writers[name].n_rows),
                                       "class_counts": {} if counts is None else
                                       {k: int(v) for k, v in counts.items()}})
    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, default=str)
    paths["manifest"] = os.path.join(out_dir, "manifest.json")
    return paths


__all__ = ["CutoutTableInfo", "CutoutWriter", "METADATA_KEY", "bytes_per_cutout", "check_cutout_table",
           "cutout_schema", "decode_cutouts", "make_sets", "read_cutouts", "rows_per_batch", "write_cutouts"]
