"""Write Spark DataFrames as HATS catalogs (LSDB and ``hats`` open them directly) or plain Parquet.

Layout::

    out_path/
      hats.properties, properties        catalog metadata (both names: hats reads either)
      partition_info.csv                 Norder,Npix of every non-empty pixel
      dataset/_common_metadata           schema
      dataset/_metadata                  all row-group footers, paths relative to dataset/
      dataset/Norder=k/Dir=d/Npix=n/part-*.parquet   one file per pixel, rows sorted by _healpix_29

Spark names its own part files, so each Npix is a directory (``hats_npix_suffix=/``). Partitions have
a fixed order (no adaptive splitting): pick ``order`` so the largest pixel stays a comfortable task.

Rows whose coordinates cannot be placed on the sphere (null, NaN, infinite RA or Dec, |Dec| > 90) are
kept, never dropped: they get ``_healpix_29 = 0`` (BAD_COORD_HEALPIX29), so they land in pixel 0 of the
chosen order, keep their original (invalid) coordinates, and are counted in the summary's
``n_bad_coordinates``. Pixel 0 is a real pixel, so the catalog stays valid HATS; spatial queries
compare coordinates and never return them.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import CatalogError
from .readers import _join, filesystem

log = logging.getLogger(__name__)

HEALPIX_COLUMN = "_healpix_29"
HEALPIX_ORDER = 29
BAD_COORD_HEALPIX29 = 0
PARTITION_COLUMNS = ("Norder", "Dir", "Npix")
_PIXEL_PATH = re.compile(r"Norder=(\d+)/Dir=(\d+)/Npix=(\d+)")


def healpix29(ra, dec) -> np.ndarray:
    """Nested HEALPix index at order 29 (int64) of RA/Dec in degrees; invalid coordinates give 0."""
    from astropy import units as u
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix.nested import lonlat_to_healpix
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    good = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    out = np.full(ra.shape, BAD_COORD_HEALPIX29, dtype=np.int64)
    if good.any():
        # cdshealpix panics (aborting the Python worker) on |lat| > 90 or NaN: only valid rows go in.
        # One thread: Spark already runs one task per core.
        out[good] = lonlat_to_healpix(Longitude(ra[good], u.deg), Latitude(dec[good], u.deg),
                                      HEALPIX_ORDER, num_threads=1).astype(np.int64)
    return out


def _healpix29_series(ra: pd.Series, dec: pd.Series) -> pd.Series:
    return pd.Series(healpix29(ra.to_numpy(dtype=np.float64, na_value=np.nan),
                               dec.to_numpy(dtype=np.float64, na_value=np.nan)))


def _spark_mode(mode: str) -> str:
    if mode not in ("overwrite", "error"):
        raise CatalogError(f"output mode must be overwrite|error, got {mode!r}")
    return "overwrite" if mode == "overwrite" else "errorifexists"


def _check_target(out_path: str, mode: str) -> tuple[pafs.FileSystem, str]:
    fs, root = filesystem(out_path)
    if mode == "error" and fs.get_file_info(root).type != pafs.FileType.NotFound:
        raise CatalogError(f"output {out_path} already exists (output.mode=error); remove it or use overwrite")
    return fs, root


def write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def write_parquet(df, out_path: str, mode: str = "overwrite") -> dict:
    """Write ``df`` as a Parquet directory; the row count comes from the write itself (no second pass)."""
    from pyspark.sql import Observation, functions as F
    spark_mode = _spark_mode(mode)
    _check_target(str(out_path), mode)
    obs = Observation()
    df.observe(obs, F.count(F.lit(1)).alias("n")).write.mode(spark_mode).parquet(str(out_path))
    return {"path": str(out_path), "format": "parquet", "n_rows": int(obs.get["n"])}


def write_hats(df, out_path: str, ra_col: str, dec_col: str, order: int, mode: str = "overwrite",
               name: str | None = None) -> dict:
    """Write ``df`` as a HATS catalog partitioned at HEALPix ``order``; return a summary.

    Existing ``_healpix_29``/Norder/Dir/Npix columns (e.g. from a HATS input) are recomputed.
    Summary keys: path, n_rows (from a Spark aggregation during the write), n_bad_coordinates,
    n_partitions, max_rows_per_partition, order.
    """
    from pyspark.sql import Observation, functions as F
    if not 0 <= int(order) <= HEALPIX_ORDER:
        raise CatalogError(f"HATS order must be in 0..{HEALPIX_ORDER}, got {order}")
    order = int(order)
    missing = [c for c in (ra_col, dec_col) if c not in df.columns]
    if missing:
        raise CatalogError(f"cannot write HATS: no coordinate column(s) {missing} in {df.columns}")
    spark_mode = _spark_mode(mode)
    out_path = str(out_path).rstrip("/")
    fs, root = _check_target(out_path, mode)

    ra, dec = F.col(ra_col).cast("double"), F.col(dec_col).cast("double")
    # Spark orders NaN above every number, so these comparisons are false for NaN and infinities.
    good = F.coalesce((F.abs(ra) < F.lit(float("inf"))) & (F.abs(dec) <= F.lit(90.0)), F.lit(False))
    hp = F.pandas_udf(_healpix29_series, "long")
    npix = F.shiftright(F.col(HEALPIX_COLUMN), 2 * (HEALPIX_ORDER - order))
    out = (df.drop(HEALPIX_COLUMN, *PARTITION_COLUMNS)
             .withColumn(HEALPIX_COLUMN, hp(ra, dec))
             .withColumn("Norder", F.lit(order))
             .withColumn("Npix", npix)
             .withColumn("Dir", F.expr("(Npix div 10000) * 10000")))
    obs = Observation()
    out = out.observe(obs, F.count(F.lit(1)).alias("n"), F.sum(F.when(good, 0).otherwise(1)).alias("n_bad"))
    # Hash-partitioning on Npix puts each pixel in exactly one task, hence one file per pixel (what
    # strict HATS validation expects); sorting on the partition columns first satisfies the ordering
    # Spark's partitioned writer requires, so it adds no sort of its own that would lose _healpix_29 order.
    (out.repartition("Npix")
        .sortWithinPartitions(*PARTITION_COLUMNS, HEALPIX_COLUMN)
        .write.mode(spark_mode)
        .option("maxRecordsPerFile", 0)
        .partitionBy(*PARTITION_COLUMNS)
        .parquet(_join(out_path, "dataset")))
    metrics = obs.get
    n_rows, n_bad = int(metrics["n"]), int(metrics["n_bad"] or 0)

    dataset = _join(root, "dataset")
    files = _data_files(fs, dataset)
    footers = _read_footers(fs, dataset, files)
    counts: dict[int, int] = {}
    for rel, md in footers:
        pixel = int(_PIXEL_PATH.search(rel).group(3))
        counts[pixel] = counts.get(pixel, 0) + md.num_rows
    written = sum(counts.values())
    if written != n_rows:
        raise RuntimeError(f"HATS write to {out_path} is inconsistent: {n_rows} input rows, {written} in the files")
    if footers:
        schema = pq.read_schema(_join(dataset, footers[0][0]), filesystem=fs)
    else:
        from pyspark.sql.pandas.types import to_arrow_schema
        schema = to_arrow_schema(out.drop(*PARTITION_COLUMNS).schema)
    pq.write_metadata(schema, _join(dataset, "_common_metadata"), filesystem=fs)
    pq.write_metadata(schema, _join(dataset, "_metadata"), filesystem=fs,
                      metadata_collector=[md for _, md in footers])

    write_text(fs, _join(root, "partition_info.csv"),
                "Norder,Npix\n" + "".join(f"{order},{p}\n" for p in sorted(counts)))

    from .. import __version__
    props = {
        "obs_collection": name or out_path.rsplit("/", 1)[-1],
        "dataproduct_type": "object",
        "hats_nrows": n_rows,
        "hats_col_ra": ra_col,
        "hats_col_dec": dec_col,
        "hats_col_healpix": HEALPIX_COLUMN,
        "hats_col_healpix_order": HEALPIX_ORDER,
        "hats_npix_suffix": "/",
        "hats_max_rows": max(counts.values(), default=0),
        "hats_order": order,
        "hats_estsize": sum(f.size for f in files) // 1024,
        "hats_builder": f"lsst_spark_ml v{__version__}",
        "hats_creation_date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M%Z"),
        "hats_version": "v1.0",
    }
    text = "#HATS catalog\n" + "".join(f"{k}={v}\n" for k, v in props.items())
    for fname in ("hats.properties", "properties"):
        write_text(fs, _join(root, fname), text)
    if n_bad:
        log.warning("%d row(s) of %s have invalid coordinates; kept with %s=%d (Norder=%d, Npix=0)",
                    n_bad, out_path, HEALPIX_COLUMN, BAD_COORD_HEALPIX29, order)
    return {"path": out_path, "format": "hats", "n_rows": n_rows, "n_bad_coordinates": n_bad,
            "n_partitions": len(counts), "max_rows_per_partition": props["hats_max_rows"], "order": order}


def _data_files(fs: pafs.FileSystem, dataset: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(dataset, recursive=True))
    return [f for f in infos if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            and not f.base_name.startswith((".", "_"))]


def _read_footers(fs: pafs.FileSystem, dataset: str, files) -> list[tuple[str, pq.FileMetaData]]:
    """(path relative to dataset/, footer) of every data file, in pixel order, as hats writes _metadata."""
    def one(info):
        rel = info.path[len(dataset.rstrip("/")) + 1:]
        with fs.open_input_file(info.path) as f:
            md = pq.read_metadata(f)
        md.set_file_path(rel)
        return rel, md

    # Footer reads are latency-bound on object stores: overlap them.
    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(one, files))
    return sorted(footers, key=lambda t: (int(_PIXEL_PATH.search(t[0]).group(3)), t[0]))


__all__ = ["BAD_COORD_HEALPIX29", "HEALPIX_COLUMN", "healpix29", "write_hats", "write_parquet"]


def write_catalog(df, out_path: str, cols, output, n_in: int, source: str) -> dict:
    """HATS when the catalog has coordinates, else Parquet; then the one-row-out-per-row-in check that every
    catalog-writing stage makes (it cannot fail by construction, and is checked all the same)."""
    if cols.has_coordinates:
        written = write_hats(df, out_path, cols.ra_col, cols.dec_col, output.hats_order, output.mode)
    else:
        written = write_parquet(df, out_path, output.mode)
    if written.get("n_rows") != n_in:
        raise RuntimeError(f"{source}: {n_in} rows in, {written.get('n_rows')} rows written to {out_path}")
    return written
