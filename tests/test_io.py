"""Catalog readers (Parquet, HATS, FITS, DESC HDF5) and the HATS writer."""
from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from lsst_spark_ml.config import CatalogSettings
from lsst_spark_ml.errors import CatalogError
from lsst_spark_ml.io.hats_writer import BAD_COORD_HEALPIX29, healpix29, write_hats, write_parquet
from lsst_spark_ml.io.readers import check_catalog, detect_format, read_catalog

BANDS = list("ugrizy")
HATS_ORDER = 1


def healpix_direct(ra, dec):
    from astropy import units as u
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix.nested import lonlat_to_healpix
    return lonlat_to_healpix(Longitude(ra, u.deg), Latitude(dec, u.deg), 29).astype(np.int64)


def rubin_table(n: int, seed: int = 0, bands=BANDS) -> pa.Table:
    """Rubin Object-table naming: objectId, coord_ra, coord_dec, {band}_cModelFlux[Err] in nJy."""
    rng = np.random.default_rng(seed)
    cols = {"objectId": np.arange(1, n + 1, dtype=np.int64) * 1000 + seed,
            "coord_ra": rng.uniform(0, 360, n), "coord_dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n)))}
    for b in bands:
        cols[f"{b}_cModelFlux"] = rng.lognormal(6, 1, n)
        cols[f"{b}_cModelFluxErr"] = rng.uniform(5, 50, n)
    return pa.table(cols)


def wait_listeners(spark):
    spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()


@contextmanager
def job_group(spark):
    """Collect the ids of Spark jobs started inside the block."""
    sc, gid, ids = spark.sparkContext, f"io-test-{uuid.uuid4().hex}", []
    sc.setJobGroup(gid, "io test")
    try:
        yield ids
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        wait_listeners(spark)
        ids.extend(sc.statusTracker().getJobIdsForGroup(gid))


def test_job_group_sees_jobs(spark):
    # Positive control for the "no Spark job started" assertions below.
    with job_group(spark) as ids:
        spark.range(3).count()
    assert ids


# ----------------------------------------------------------------------------- format detection

def test_detect_format(tmp_path):
    for name, fmt in [("a.parquet", "parquet"), ("a.pq", "parquet"), ("a.fits", "fits"), ("a.fit", "fits"),
                      ("a.fits.gz", "fits"), ("a.hdf5", "hdf5"), ("a.h5", "hdf5")]:
        (tmp_path / name).write_bytes(b"")
        assert detect_format(str(tmp_path / name)) == fmt
    (tmp_path / "plain").mkdir()
    assert detect_format(str(tmp_path / "plain")) == "parquet"
    (tmp_path / "cat" / "dataset").mkdir(parents=True)
    (tmp_path / "cat" / "hats.properties").write_text("obs_collection=x\n")
    assert detect_format(str(tmp_path / "cat")) == "hats"
    (tmp_path / "a.csv").write_text("x\n")
    with pytest.raises(CatalogError, match="a.csv"):
        detect_format(str(tmp_path / "a.csv"))
    with pytest.raises(CatalogError, match="unknown catalog format 'csv'"):
        detect_format(str(tmp_path / "a.csv"), "csv")


def test_healpix29_invalid_coordinates_do_not_crash():
    ra = np.array([10.0, np.nan, 10.0, np.inf, 10.0, 10.0, 370.0])
    dec = np.array([5.0, 5.0, np.nan, 5.0, 90.5, -91.0, 5.0])
    hp = healpix29(ra, dec)
    assert hp.dtype == np.int64
    assert hp[0] == healpix_direct([10.0], [5.0])[0] == hp[6]       # RA wraps at 360
    assert (hp[1:6] == BAD_COORD_HEALPIX29).all()


# ----------------------------------------------------------------------------- formats

def test_rubin_parquet_file_and_directory(spark, tmp_path):
    t = rubin_table(300)
    pq.write_table(t, tmp_path / "obj.parquet")
    d = tmp_path / "objdir"
    d.mkdir()
    pq.write_table(t.slice(0, 100), d / "part-0.parquet")
    pq.write_table(t.slice(100), d / "part-1.parquet")
    (d / "_SUCCESS").write_text("")
    for path in (tmp_path / "obj.parquet", d):
        df, cols = read_catalog(spark, str(path), CatalogSettings())
        assert cols.photometry == "flux"
        assert cols.values == [f"{b}_cModelFlux" for b in BANDS]
        assert cols.errors == [f"{b}_cModelFluxErr" for b in BANDS]
        assert (cols.id_col, cols.ra_col, cols.dec_col) == ("objectId", "coord_ra", "coord_dec")
        assert df.count() == 300
    assert check_catalog(str(d), CatalogSettings()).num_rows == 300


def test_rubin_dm_example_gaap(spark, dc2_paths):
    df, cols = read_catalog(spark, str(dc2_paths["rubin_example"]), CatalogSettings(flux_type="gaap1p0"))
    assert cols.photometry == "flux" and cols.values[0] == "u_gaap1p0Flux"
    assert (cols.id_col, cols.ra_col, cols.dec_col) == ("objectId", "ra", "decl")
    assert df.count() == 100


def test_dc2_hdf5(spark, dc2_paths):
    cat = CatalogSettings(truth_col="redshift")
    df, cols = read_catalog(spark, str(dc2_paths["train"]), cat, need_truth=True)
    assert cols.photometry == "mag"
    assert cols.values == [f"mag_{b}_lsst" for b in BANDS]
    assert cols.errors == [f"mag_err_{b}_lsst" for b in BANDS]
    assert cols.truth_col == "redshift" and cols.id_col == "id" and not cols.has_coordinates
    row = df.selectExpr("count(*) n", "min(redshift) zmin", "max(redshift) zmax", "max(mag_u_lsst) umax").first()
    assert row.n == 10225 and 0.0 < row.zmin < 0.1 and 2.9 < row.zmax < 3.1 and row.umax == 99.0


def test_desc_hdf5_grizy(spark, tmp_path):
    n, rng = 50, np.random.default_rng(3)
    path = tmp_path / "cat.hdf5"
    with h5py.File(path, "w") as f:
        g = f.create_group("photometry")
        g["id"] = np.arange(n, dtype=">i8")                    # big-endian must survive
        g["redshift"] = rng.uniform(0, 3, n)
        g["name"] = np.array([f"gal{i}" for i in range(n)], dtype="S8")
        g.create_group("meta")                                  # a subgroup is not a column
        for b in "grizy":
            g[f"mag_{b}_lsst"] = rng.uniform(20, 26, n).astype(np.float32)
            g[f"mag_err_{b}_lsst"] = rng.uniform(0.01, 0.2, n).astype(np.float32)
    cat = CatalogSettings(bands=list("grizy"), truth_col="redshift")
    df, cols = read_catalog(spark, str(path), cat, need_truth=True)
    assert cols.bands == list("grizy") and cols.values == [f"mag_{b}_lsst" for b in "grizy"]
    rows = df.orderBy("id").select("id", "name").collect()
    assert [r.id for r in rows] == list(range(n)) and rows[3].name == "gal3"
    with job_group(spark) as ids, pytest.raises(CatalogError, match="mag_u_lsst"):
        read_catalog(spark, str(path), CatalogSettings())      # default ugrizy: no u band here
    assert ids == []
    with pytest.raises(CatalogError, match="no group 'phot'"):
        check_catalog(str(path), CatalogSettings(hdf5_group="phot", bands=list("grizy")))


def test_fits_big_endian_and_vector_columns(spark, tmp_path):
    from astropy.table import MaskedColumn, Table
    n = 40
    t = rubin_table(n)
    tab = Table({k: t[k].to_numpy().astype(">f8") if k != "objectId" else t[k].to_numpy() for k in t.column_names})
    tab["shape"] = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    tab["flags"] = np.arange(n, dtype=np.uint16) + 60000       # unsigned: Spark has none
    tab["band"] = ["r"] * n
    tab["nexp"] = MaskedColumn(np.arange(n, dtype=np.int32), mask=np.arange(n) % 2 == 0)
    path = tmp_path / "obj.fits"
    tab.write(path, format="fits")
    df, cols = read_catalog(spark, str(path), CatalogSettings())
    assert cols.photometry == "flux"
    types = dict(df.dtypes)
    assert types["shape"] == "array<float>" and types["flags"] == "int" and types["band"] == "string"
    rows = {r.objectId: r for r in df.collect()}
    first = rows[int(t["objectId"][1].as_py())]
    assert first.shape == [3.0, 4.0, 5.0] and first.flags == 60001 and first.band == "r"
    assert first.g_cModelFlux == pytest.approx(t["g_cModelFlux"][1].as_py())
    assert first.nexp == 1 and rows[int(t["objectId"][0].as_py())].nexp is None


# ----------------------------------------------------------------------------- bad inputs

def _empty_parquet(tmp_path):
    p = tmp_path / "empty.parquet"
    pq.write_table(rubin_table(0), p)
    return p, CatalogSettings(), "empty.parquet"


def _empty_hdf5(tmp_path):
    p = tmp_path / "empty.hdf5"
    with h5py.File(p, "w") as f:
        g = f.create_group("photometry")
        for b in BANDS:
            g[f"mag_{b}_lsst"] = np.zeros(0, np.float32)
            g[f"mag_err_{b}_lsst"] = np.zeros(0, np.float32)
    return p, CatalogSettings(), "empty.hdf5"


def _missing_file(tmp_path):
    return tmp_path / "nope.parquet", CatalogSettings(), "nope.parquet"


def _missing_band(tmp_path):
    p = tmp_path / "noi.parquet"
    pq.write_table(rubin_table(10).drop(["i_cModelFlux"]), p)
    return p, CatalogSettings(photometry="flux"), "i_cModelFlux"


def _string_flux(tmp_path):
    t = rubin_table(10)
    i = t.column_names.index("r_cModelFlux")
    p = tmp_path / "strflux.parquet"
    pq.write_table(t.set_column(i, "r_cModelFlux", t["r_cModelFlux"].cast(pa.string())), p)
    return p, CatalogSettings(), "'r_cModelFlux'.*string"


def _unknown_format(tmp_path):
    p = tmp_path / "cat.csv"
    p.write_text("a,b\n1,2\n")
    return p, CatalogSettings(), "cat.csv"


@pytest.mark.parametrize("make", [_missing_file, _missing_band, _string_flux, _empty_parquet, _empty_hdf5,
                                  _unknown_format])
def test_bad_input_fails_before_spark(spark, tmp_path, make):
    path, cat, pattern = make(tmp_path)
    with job_group(spark) as ids, pytest.raises(CatalogError, match=pattern):
        read_catalog(spark, str(path), cat)
    assert ids == [], "a Spark job ran before the catalog error"


# ----------------------------------------------------------------------------- HATS

# (RA, Dec) at the poles, across RA 0/360 and invalid ones (kept, pixel 0).
SPECIAL = [(0.0, 90.0), (359.9999999, -90.0), (0.0, 0.0), (360.0, 0.0), (-1e-9, 10.0), (359.99999, 10.0),
           (180.0, 89.9999), (45.0, -89.9999), (12.0, float("nan")), (float("nan"), 3.0),
           (10.0, 95.0), (float("inf"), 0.0), (None, 1.0)]
N_INVALID = 5


@pytest.fixture(scope="module")
def hats_catalog(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("hats")
    t = rubin_table(400, seed=7)
    ra = t["coord_ra"].to_pylist() + [s[0] for s in SPECIAL]
    dec = t["coord_dec"].to_pylist() + [s[1] for s in SPECIAL]
    extra = rubin_table(len(SPECIAL), seed=8)
    t = pa.concat_tables([t, extra]).set_column(1, "coord_ra", pa.array(ra, pa.float64()))
    t = t.set_column(2, "coord_dec", pa.array(dec, pa.float64()))
    pq.write_table(t, base / "input.parquet")                     # Parquet keeps NaN distinct from null
    df, cols = read_catalog(spark, str(base / "input.parquet"), CatalogSettings())
    out = base / "cat"
    summary = write_hats(df, str(out), cols.ra_col, cols.dec_col, order=HATS_ORDER, name="test_cat")
    return t, out, summary


def test_hats_summary_and_files(hats_catalog):
    t, out, summary = hats_catalog
    assert summary["n_rows"] == t.num_rows and summary["n_bad_coordinates"] == N_INVALID
    props = dict(line.split("=", 1) for line in (out / "hats.properties").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["obs_collection"] == "test_cat" and props["dataproduct_type"] == "object"
    assert int(props["hats_nrows"]) == t.num_rows and props["hats_npix_suffix"] == "/"
    assert (props["hats_col_ra"], props["hats_col_dec"], props["hats_order"]) == ("coord_ra", "coord_dec", "1")
    # _metadata lists every file once; footers add up to the input.
    assert pds.parquet_dataset(str(out / "dataset" / "_metadata")).count_rows() == t.num_rows
    info = [line.split(",") for line in (out / "partition_info.csv").read_text().split()[1:]]
    files = sorted((out / "dataset").glob("Norder=*/Dir=*/Npix=*/*.parquet"))
    assert len(files) == len(info) == summary["n_partitions"]
    shift = 2 * (29 - HATS_ORDER)
    for f in files:
        npix = int(f.parent.name.split("=")[1])
        hp = pq.read_table(f, columns=["_healpix_29"])["_healpix_29"].to_numpy()
        assert (np.diff(hp) >= 0).all() and (hp >> shift == npix).all()
        assert int(f.parent.parent.name.split("=")[1]) == npix // 10000 * 10000
    assert max(pq.read_metadata(f).num_rows for f in files) == int(props["hats_max_rows"])


def test_hats_round_trip_and_healpix(spark, hats_catalog):
    t, out, summary = hats_catalog
    assert detect_format(str(out)) == "hats"
    df, cols = read_catalog(spark, str(out), CatalogSettings())
    assert cols.photometry == "flux" and {"Norder", "Dir", "Npix", "_healpix_29"} <= set(df.columns)
    back = df.select("objectId", "coord_ra", "coord_dec", "_healpix_29", "Npix").toPandas()
    assert len(back) == t.num_rows
    assert sorted(back.objectId) == sorted(t["objectId"].to_pylist())
    ok = np.isfinite(back.coord_ra) & np.isfinite(back.coord_dec) & (back.coord_dec.abs() <= 90)
    assert (~ok).sum() == N_INVALID
    assert (back._healpix_29[ok].to_numpy() == healpix_direct(back.coord_ra[ok], back.coord_dec[ok])).all()
    assert (back._healpix_29[~ok] == BAD_COORD_HEALPIX29).all() and (back.Npix[~ok] == 0).all()
    assert back.coord_dec.isna().sum() == 1 and back.coord_ra.isna().sum() == 2  # NaN and null kept as they were
    # RA 0 and 360 are the same place; both poles land in their polar pixels.
    by_id = back.set_index("objectId")._healpix_29
    ids = t["objectId"].to_pylist()[-len(SPECIAL):]
    assert by_id[ids[2]] == by_id[ids[3]]
    assert by_id[ids[0]] >> 58 in (0, 1, 2, 3) and by_id[ids[1]] >> 58 in (8, 9, 10, 11)


def test_hats_standard_layout_read(spark, hats_catalog, tmp_path):
    # hats-import writes one file per pixel (Npix=N.parquet); Npix then comes from the file name.
    _, out, summary = hats_catalog
    std = tmp_path / "std"
    shutil.copytree(out, std)
    for d in (std / "dataset").glob("Norder=*/Dir=*/Npix=*"):
        next(d.glob("*.parquet")).rename(d.parent / f"{d.name}.parquet")
        shutil.rmtree(d)
    df, _ = read_catalog(spark, str(std), CatalogSettings())
    pix = df.selectExpr("count(*) n", "sum(cast(Npix = shiftright(_healpix_29, 56) as int)) ok").first()
    assert pix.n == pix.ok == summary["n_rows"]


def test_hats_opens_with_hats_package(hats_catalog):
    hats = pytest.importorskip("hats", reason="the hats package is not installed (pip install hats)")
    from hats.io.validation import is_valid_catalog
    t, out, summary = hats_catalog
    cat = hats.read_hats(str(out))
    assert cat.catalog_info.total_rows == t.num_rows
    assert len(cat.get_healpix_pixels()) == summary["n_partitions"]
    assert "_healpix_29" in cat.schema.names
    assert is_valid_catalog(str(out), strict=True)


def test_write_parquet_and_modes(spark, tmp_path):
    df = spark.range(25).withColumnRenamed("id", "objectId")
    out = tmp_path / "plain"
    assert write_parquet(df, str(out))["n_rows"] == 25
    assert pds.dataset(str(out)).count_rows() == 25
    assert write_parquet(df.limit(5), str(out), mode="overwrite")["n_rows"] == 5
    with job_group(spark) as ids:
        with pytest.raises(CatalogError, match="already exists"):
            write_parquet(df, str(out), mode="error")
        with pytest.raises(CatalogError, match="already exists"):
            write_hats(df, str(out), "objectId", "objectId", 3, mode="error")
        with pytest.raises(CatalogError, match="coordinate"):
            write_hats(df, str(tmp_path / "h"), "ra", "dec", 3)
    assert ids == []


def test_missing_truth_column(tmp_path):
    p = tmp_path / "obj.parquet"
    pq.write_table(rubin_table(5), p)
    with pytest.raises(CatalogError, match="redshift"):
        check_catalog(str(p), CatalogSettings(truth_col="redshift"), need_truth=True)
    assert check_catalog(Path(p), CatalogSettings(truth_col="redshift")).columns.truth_col is None


def test_a_later_file_with_a_text_band_column_is_refused_before_spark(tmp_path):
    import pandas as pd

    from lsst_spark_ml.config import CatalogSettings
    from lsst_spark_ml.errors import CatalogError
    from lsst_spark_ml.io.readers import check_catalog
    cols = {f"mag_{b}_lsst": [22.0] for b in "ugrizy"} | {f"mag_err_{b}_lsst": [0.1] for b in "ugrizy"}
    d = tmp_path / "cat"
    d.mkdir()
    pd.DataFrame(cols).to_parquet(d / "a.parquet")
    pd.DataFrame(cols | {"mag_g_lsst": ["n/a"]}).to_parquet(d / "b.parquet")
    with pytest.raises(CatalogError, match=r"mag_g_lsst.*b\.parquet"):
        check_catalog(d, CatalogSettings())
