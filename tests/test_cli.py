"""The real command line (``lsst-spark-ml``) and the spark-submit jobs, each run in its own process.

Every run that reaches Spark starts a JVM (~10 s), so one prediction is shared by the tests that read it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from helpers import BANDS, load_dc2
from lsst_spark_ml.pipelines.photoz import META_FILE

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLI = VENV_BIN / "lsst-spark-ml"
SHIPPED_MODEL = REPO / "lsst_spark_ml" / "resources" / "models" / "mbrnn_dc2"
PHOTOZ_COLUMNS = ["z_mean", "z_mode", "z_median", "z_std", "z_lo68", "z_hi68", "pdf", "flags", "model_sha256"]
PLOTS = ("zphot_vs_zspec.png", "pit.png", "nz.png", "example_pdfs.png")
N_ROWS = 5000
NAN_COORD_ROWS = (3, 17, 4001)            # coord_ra, coord_dec or both NaN
NAN_FLUX_ROWS = (5, 250, 2500)            # one band's flux NaN

_LAUNCH_VARS = ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "PYSPARK_SUBMIT_ARGS", "SPARK_SUBMIT_OPTS",
                "MASTER", "SPARK_MASTER", "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE",
                "_PYSPARK_DRIVER_CONN_INFO_PATH")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", PYTHONUNBUFFERED="1")
    return env


def run_all(jobs: list[tuple[list, Path]], timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Run commands side by side (each mostly waits on its own JVM and Python workers starting)."""
    procs = [subprocess.Popen([str(a) for a in args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, cwd in jobs]
    done = []
    try:
        for (args, _), p in zip(jobs, procs):
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess([str(a) for a in args], p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return done


def run(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_all([(args, cwd)], timeout)[0]


def show(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, show(proc)


# ----------------------------------------------------------------------------- inputs

def rubin_catalog(n: int = N_ROWS, seed: int = 7) -> pa.Table:
    """DC2 validation galaxies in Rubin Object-table naming: cModel fluxes in nJy, objectId, coordinates."""
    mags, mag_errs, z, _ = load_dc2("validation", n)
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {"objectId": rng.permutation(np.arange(10**12, 10**12 + 10 * n, 10))[:n]}
    # Uniform on the sphere inside a DC2-like footprint: a handful of order-3 pixels, as a real tract gives.
    ra = rng.uniform(50.0, 75.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-45.0)), np.sin(np.radians(-25.0)), n)))
    ra[NAN_COORD_ROWS[0]] = np.nan
    dec[NAN_COORD_ROWS[1]] = np.nan
    ra[NAN_COORD_ROWS[2]] = dec[NAN_COORD_ROWS[2]] = np.nan
    cols["coord_ra"], cols["coord_dec"] = ra, dec
    for k, b in enumerate(BANDS):
        flux = 10.0 ** (-0.4 * (mags[:, k] - 31.4))
        err = flux * mag_errs[:, k] / 1.0857
        # The DESC file marks a non-detection with mag 99; an Object table has a flux near 0 and a real error.
        nondet = mags[:, k] > 90
        flux[nondet] = 0.0
        err[nondet] = 10.0 ** (-0.4 * (27.8 - 31.4))
        cols[f"{b}_cModelFlux"], cols[f"{b}_cModelFluxErr"] = flux, err
    for row, band in zip(NAN_FLUX_ROWS, "gri"):
        cols[f"{band}_cModelFlux"][row] = np.nan
    cols["redshift"] = z
    return pa.table(cols)


def mag_catalog_without_r(path: Path, n: int = 200) -> Path:
    mags, mag_errs, z, ids = load_dc2("validation", n)
    cols = {"id": ids, "redshift": z}
    for k, b in enumerate(BANDS):
        if b != "r":
            cols[f"mag_{b}_lsst"] = mags[:, k]
        cols[f"mag_err_{b}_lsst"] = mag_errs[:, k]
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, pa.Table]:
    table = rubin_catalog()
    path = tmp_path_factory.mktemp("catalog") / "object.parquet"
    pq.write_table(table, path, row_group_size=1000)
    return path, table


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, catalog, tiny_model):
    """The same catalog predicted by ``lsst-spark-ml photoz predict`` and by the spark-submit job (run side
    by side): {"cli": (process, output dir), "submit": (process, output dir)}."""
    work = tmp_path_factory.mktemp("predict")
    cat, model = catalog[0], tiny_model[0]
    cli = [CLI, "photoz", "predict", "--catalog", cat, "--model", model, "--out", work / "cli", "--master", "local[2]"]
    submit = [VENV_BIN / "spark-submit", "--master", "local[1]", REPO / "jobs" / "photoz_predict.py",
              "--catalog", cat, "--model", model, "--out", work / "submit"]
    p_cli, p_submit = run_all([(cli, work), (submit, work)])
    return {"cli": (p_cli, work / "cli"), "submit": (p_submit, work / "submit")}


def read_output(out: Path) -> pa.Table:
    return pds.dataset(out / "dataset", format="parquet", partitioning="hive").to_table()


# ----------------------------------------------------------------------------- help

HELP_CASES = [
    ([], ["photoz", "demo"]),
    (["photoz"], ["train", "predict", "evaluate"]),
    (["photoz", "train"], ["--catalog", "--out", "--conf", "--set", "--master"]),
    (["photoz", "predict"], ["--catalog", "--model", "--out", "--conf", "--set", "--master"]),
    (["photoz", "evaluate"], ["--predictions", "--truth-col", "--out", "--model", "--z-col"]),
    (["demo"], ["--out", "--rows", "--model", "--master"]),
]


def test_help_of_every_command(tmp_path):
    for args, needles in HELP_CASES:
        proc = run([CLI, *args, "--help"], cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, show(proc)
        assert proc.stdout.startswith("usage: lsst-spark-ml"), show(proc)
        for needle in needles:
            assert needle in proc.stdout, f"'{' '.join(args)} --help' does not mention {needle}:\n{proc.stdout}"
    # No command at all is a usage error, not a traceback.
    proc = run([CLI], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, show(proc)


RUN_JOB_PROBE = """
import sys
from pyspark.sql import SparkSession
from lsst_spark_ml.cli import main, run_job
args = ["photoz", "predict", "--catalog", sys.argv[1], "--out", sys.argv[2], "--master", "local[1]"]
assert main(args) == 2                    # refused (no such catalog) once its session is up
spark = SparkSession.getActiveSession()
assert spark is not None and spark.sparkContext._jsc is not None, "main stopped the session"
assert run_job(args) == 2                 # main's exit code, then the session is gone
assert SparkSession.getActiveSession() is None and spark.sparkContext._jsc is None, "run_job left Spark running"
print("probe ok")
"""


def test_run_job_stops_spark_after_main_and_main_does_not(tmp_path):
    proc = run([sys.executable, "-c", RUN_JOB_PROBE, tmp_path / "no_such_catalog", tmp_path / "out"], cwd=tmp_path,
               timeout=120)
    assert proc.returncode == 0 and "probe ok" in proc.stdout, show(proc)


def test_every_job_runs_through_run_job():
    jobs = sorted((REPO / "jobs").glob("*.py"))
    assert len(jobs) >= 10
    for job in jobs:
        text = job.read_text()
        assert "sys.exit(run_job([" in text and "main(" not in text, f"{job.name} does not stop Spark via run_job"


# ----------------------------------------------------------------------------- bad input

def assert_refused_before_any_job(proc: subprocess.CompletedProcess, code: int | None, *needles: str) -> None:
    if code is None:
        assert proc.returncode != 0, show(proc)
    else:
        assert proc.returncode == code, show(proc)
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in stderr\n{show(proc)}"
    assert "[Stage" not in proc.stderr, f"a Spark job ran before the error\n{show(proc)}"
    assert "Traceback" not in proc.stderr, show(proc)


def test_bad_inputs_fail_fast_with_the_culprit_named(tmp_path, tiny_model, catalog):
    model = tiny_model[0]
    missing = tmp_path / "no_such_catalog.parquet"
    no_r = mag_catalog_without_r(tmp_path / "no_r.parquet")
    bad_model = tmp_path / "tampered"
    shutil.copytree(model, bad_model)
    with open(bad_model / "weights.safetensors", "r+b") as f:
        f.seek(-16, os.SEEK_END)
        tail = f.read(16)
        f.seek(-16, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in tail))

    def predict(cat, mdl, name):
        return [CLI, "photoz", "predict", "--catalog", cat, "--model", mdl, "--out", tmp_path / name], tmp_path

    p_missing, p_no_r, p_tampered = run_all([predict(missing, model, "out1"), predict(no_r, model, "out2"),
                                             predict(catalog[0], bad_model, "out3")])
    assert_refused_before_any_job(p_missing, 2, "no_such_catalog.parquet", "does not exist")
    assert_refused_before_any_job(p_no_r, 2, "mag_r_lsst", "no_r.parquet")
    assert_refused_before_any_job(p_tampered, None, "sha256", "weights.safetensors")
    for name in ("out1", "out2", "out3"):
        assert not (tmp_path / name).exists(), f"{name} was written by a refused run"


# ----------------------------------------------------------------------------- predict + evaluate

def test_predict_writes_hats_with_every_row(predicted, catalog, tiny_model):
    proc, out = predicted["cli"]
    assert_ok(proc)
    _, table = catalog
    model_dir, sha = tiny_model
    for name in ("hats.properties", "partition_info.csv", "dataset/_metadata", "dataset/_common_metadata"):
        assert (out / name).is_file(), f"{name} missing in {sorted(p.name for p in out.iterdir())}"
    assert any((out / "dataset").glob("Norder=*/Dir=*/Npix=*"))

    meta = json.loads((out / META_FILE).read_text())
    assert meta["rows_in"] == meta["rows_written"] == N_ROWS
    assert meta["layout"] == "hats" and meta["model_sha256"] == sha
    assert meta["id_col"] == "objectId" and meta["spark_master"] == "local[2]"
    # The JSON on stdout is the same record.
    assert json.loads(proc.stdout) == meta

    got = read_output(out)
    assert got.num_rows == N_ROWS
    missing = [c for c in PHOTOZ_COLUMNS if c not in got.column_names]
    assert not missing, f"output lacks {missing}; has {got.column_names}"
    for c in table.column_names:
        assert c in got.column_names
    ids = got.column("objectId").to_numpy()
    assert len(np.unique(ids)) == N_ROWS
    assert set(ids.tolist()) == set(table.column("objectId").to_numpy().tolist())
    assert set(got.column("model_sha256").to_pylist()) == {sha}

    # Same count from the _metadata footers alone.
    assert pds.parquet_dataset(out / "dataset" / "_metadata").count_rows() == N_ROWS

    df = got.select(["objectId", "Npix", "z_median", "pdf", "flags"]).to_pandas().set_index("objectId")
    in_ids = table.column("objectId").to_numpy()
    # Rows with NaN coordinates are kept, in pixel 0.
    assert (df.loc[in_ids[list(NAN_COORD_ROWS)], "Npix"] == 0).all()
    # Nearly every galaxy gets an estimate and a PDF of the model's bins; a NaN flux is flagged, not fatal.
    z = df["z_median"].to_numpy()
    assert np.isfinite(z).mean() > 0.99
    assert np.nanmin(z) >= 0 and np.nanmax(z) <= meta["bins"]["z_max"]
    for oid in in_ids[list(NAN_FLUX_ROWS)]:
        assert df.loc[oid, "flags"] != 0
    first_ok = df["pdf"].dropna().iloc[0]
    assert len(first_ok) == meta["bins"]["n_bins"]


def test_evaluate_prints_metrics_and_writes_plots(predicted, tmp_path):
    proc, out = predicted["cli"]
    assert_ok(proc)
    ev = tmp_path / "eval"
    res = run([CLI, "photoz", "evaluate", "--predictions", out, "--truth-col", "redshift", "--out", ev,
               "--master", "local[2]"], cwd=tmp_path)
    assert_ok(res)
    printed = json.loads(res.stdout)
    for est in ("z_mean", "z_mode", "z_median"):
        m = printed[est]
        for key in ("sigma_nmad", "catastrophic_fraction", "point_bias", "point_outlier_rate"):
            assert key in m and np.isfinite(m[key]), (est, key, m)
        assert m["n"] + m["n_invalid"] == N_ROWS and m["n"] > 0.99 * N_ROWS
        # The 3-epoch test model is poor (its z_mean is useless); only the ranges are checked here.
        assert m["sigma_nmad"] > 0 and 0 <= m["catastrophic_fraction"] <= 1
    for key in ("pit_ks", "pit_cvm", "pit_ad", "pit_outlier_rate", "crps", "brier", "cde_loss"):
        assert key in printed["pdf"] and np.isfinite(printed["pdf"][key]), (key, printed["pdf"])
    assert 0 <= printed["pdf"]["pit_ks"] <= 1
    for name in PLOTS:
        f = ev / name
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert json.loads((ev / "metrics.json").read_text()) == printed


def test_spark_submit_job_predicts_the_same(predicted, tiny_model):
    proc, out = predicted["submit"]
    assert_ok(proc)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["rows_in"] == meta["rows_written"] == N_ROWS
    assert meta["layout"] == "hats" and meta["model_sha256"] == tiny_model[1]
    for name in ("hats.properties", "partition_info.csv", "dataset/_metadata"):
        assert (out / name).is_file(), name
    cli_proc, cli_out = predicted["cli"]
    assert_ok(cli_proc)
    got = read_output(out).select(["objectId", "z_median", "flags"]).to_pandas().set_index("objectId")
    ref = read_output(cli_out).select(["objectId", "z_median", "flags"]).to_pandas().set_index("objectId")
    assert len(got) == N_ROWS and set(got.index) == set(ref.index)
    got = got.loc[ref.index]
    np.testing.assert_array_equal(got["flags"].to_numpy(), ref["flags"].to_numpy())
    np.testing.assert_allclose(got["z_median"].to_numpy(), ref["z_median"].to_numpy(), rtol=1e-6)
    assert meta["spark_master"] == "local[1]", f"spark-submit's --master local[1] was overridden: {meta}"


# ----------------------------------------------------------------------------- demo

@pytest.mark.slow
def test_demo_end_to_end(tmp_path, tiny_model):
    out = tmp_path / "demo"
    proc = run([CLI, "demo", "--rows", "20000", "--out", out, "--model", tiny_model[0], "--master", "local[2]"],
               cwd=tmp_path, timeout=850)
    assert_ok(proc)
    printed = Path(proc.stdout.strip().splitlines()[-1])
    assert printed == out.resolve() and printed.is_dir()
    summary = json.loads((printed / "summary.json").read_text())
    assert set(summary["stages"]) == {"dc2_validation", "synthetic"}
    assert summary["stages"]["dc2_validation"]["rows"] == 20449
    assert summary["stages"]["synthetic"]["rows"] == 20000
    for stage in summary["stages"].values():
        m = stage["metrics"]
        assert {"z_mean", "z_mode", "z_median", "pdf"} <= set(m)
        assert np.isfinite(m["z_mode"]["sigma_nmad"]) and np.isfinite(m["pdf"]["pit_ks"])
    for stage in ("dc2_validation", "synthetic"):
        meta = json.loads((printed / stage / "photoz" / META_FILE).read_text())
        assert meta["rows_in"] == meta["rows_written"]
        for name in PLOTS + ("metrics.json",):
            assert (printed / stage / "evaluation" / name).is_file(), (stage, name)
    # The later stages, with the shipped DCP and asteroid models.
    assert set(summary["ood"]["roc_auc"]) == {"star", "quasar", "highz_galaxy", "all"}
    assert all(0.5 < v <= 1 for v in summary["ood"]["roc_auc"].values()), summary["ood"]
    assert (printed / "ood" / "ood_score_histograms.png").is_file()
    counts = summary["bayes"]["z_source_counts"]
    assert sum(counts.values()) == 20449 and counts.get("network", 0) > 0.9 * 20449, counts
    assert len(set(counts) - {"network"}) >= 1, "no row got a Bayesian answer"
    assert summary["asteroids"]["rows"] > 2000 and summary["asteroids"]["complex_accuracy"] > 0.6


# ----------------------------------------------------------------------------- the shipped model

def test_shipped_model_beats_the_knn_baseline():
    if not (SHIPPED_MODEL / "manifest.json").is_file():
        pytest.skip(f"no shipped model at {SHIPPED_MODEL} (train it with `make train-default`)")
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    from lsst_spark_ml.metrics.reference import point_metrics
    pred = PhotozPredictor.load(SHIPPED_MODEL)
    mags, errs, z, _ = load_dc2("validation")
    res = pred.predict(mags, errs, "mag")
    m = point_metrics(res["z_median"], z)
    assert m["n"] + m["n_invalid"] == len(z) and m["n_invalid"] < 0.001 * len(z), m
    assert m["sigma_nmad"] < 0.0295, m
    assert m["catastrophic_fraction"] < 0.032, m
