"""The annual release job (issue 9): plan, commits, resume, kills, corruption, tampering, namespacing.

One small synthetic input (15 HEALPix pixels at order 3) serves every test; runs go through the real job
(``release.runner.run_release``) on the shared session, or through the real command in a subprocess where the
driver itself must die.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lsst_spark_ml.config import load_config
from lsst_spark_ml.errors import ConfigError, ModelIntegrityError
from lsst_spark_ml.release import manifest, runner
from lsst_spark_ml.release.checksum import table_checksum
from lsst_spark_ml.release.partition import CRASH_ENV

ROOT = Path(__file__).resolve().parent.parent
N_ROWS = 1200


@pytest.fixture(scope="module")
def objects(spark, tmp_path_factory):
    from lsst_spark_ml.release.synth import write_synthetic_release
    out = tmp_path_factory.mktemp("release_in") / "objects"
    res = write_synthetic_release(spark, N_ROWS, str(out), order=3)
    assert res["n_rows"] == N_ROWS and res["n_partitions"] > 4
    return out


def conf(objects, root, release_id="r1", stages=("photoz", "ood"), **release):
    """The release configuration as a dict (also written as YAML for the subprocess runs)."""
    rel = {"id": release_id, "output_root": str(root), "inputs": {"objects": str(objects)},
           "stages": [{"name": s} for s in stages], **release}
    return {"spark": {"master": "local[2]", "progress": False},
            "release": rel, "catalog": {"truth_col": "redshift", "keep_cols": ["true_class"]}}


def cfg_of(d):
    return load_config(overrides=d)


def never():
    raise AssertionError("a SparkSession was asked for although nothing had to run")


def run(spark, d):
    return runner.run_release(cfg_of(d), lambda: spark, log=lambda m: None)


def file_hashes(release_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(release_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(release_dir.rglob("*.parquet")) if "_tmp" not in p.parts}


def input_ids(objects) -> set:
    return set(pq.read_table(objects / "dataset", columns=["objectId"]).column(0).to_pylist())


def no_jobs(spark, group, fn):
    """Run fn with a job group set; return (result or exception, the ids of Spark jobs it started)."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - the caller checks which
            out = exc
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return out, list(sc.statusTracker().getJobIdsForGroup(group))


@pytest.fixture(scope="module")
def clean(spark, objects, tmp_path_factory):
    """A clean, uninterrupted photoz + ood release: the reference the interrupted ones must equal."""
    root = tmp_path_factory.mktemp("clean")
    d = conf(objects, root)
    res, jobs = no_jobs(spark, "clean-run", lambda: run(spark, d))
    assert jobs, "the job-group probe saw no Spark job for a real run: the no-job checks would prove nothing"
    assert res["status"] == "complete", res
    return d, root / "r1", res


# ----------------------------------------------------------------------------- configuration and plan

def test_config_errors_name_the_key(objects, tmp_path):
    d = conf(objects, tmp_path)
    d["release"]["stages"][0]["modle"] = "x"
    with pytest.raises(ConfigError, match=r"modle.*release\.stages\[0\]"):
        cfg_of(d)
    cases = [({"stages": [{"name": "morphology"}]}, "morphology.*cutout tables"),
             ({"stages": [{"name": "photoz", "input": "nope"}]}, r"release\.stages\[0\]\.input 'nope'"),
             ({"stages": [{"name": "photoz"}, {"name": "bayes"}]}, "bayes needs.*ood"),
             ({"id": "../up"}, r"release\.id"), ({"join": "outer"}, r"release\.join"),
             ({"stages": [{"name": "photoz", "model_sha256": "abc"}]}, r"release\.stages\[0\]\.model_sha256")]
    for change, pattern in cases:
        bad = conf(objects, tmp_path)
        bad["release"].update(change)
        with pytest.raises(ConfigError, match=pattern):
            runner.dry_run(cfg_of(bad))


def test_dry_run_prints_the_plan_and_starts_no_spark_job(spark, objects, tmp_path):
    text, jobs = no_jobs(spark, "dry-run", lambda: runner.dry_run(cfg_of(conf(objects, tmp_path))))
    assert isinstance(text, str), text
    assert jobs == []
    assert "Norder=3/Dir=0/Npix=" in text and f"{N_ROWS:,} rows" in text
    assert "sha256 aa246c6a28e19d40" in text and "core-hours" in text
    assert not (tmp_path / "r1").exists()


# ----------------------------------------------------------------------------- run, rerun, determinism

def test_run_writes_every_row_once_and_a_rerun_skips_everything(spark, objects, clean, tmp_path):
    d, rdir, res = clean
    ids = input_ids(objects)
    summary = json.loads((rdir / "report.json").read_text())["summary"]
    for stage in ("photoz", "ood"):
        t = pq.read_table(rdir / stage / "dataset")
        assert t.num_rows == N_ROWS and set(t.column("objectId").to_pylist()) == ids
        assert set(t.column("release_id").to_pylist()) == {"r1"}
        assert set(t.column("config_hash").to_pylist()) == {res["config_hash"]}
        assert summary[stage]["rows_in"] == summary[stage]["rows_out"] == N_ROWS
        assert summary[stage]["rows_checksum"] == table_checksum(t, ["objectId"] + [
            c for c in t.column_names if c.startswith(("z_", "pdf", "flags", "ood_"))])
        from hats.io.validation import is_valid_catalog
        assert is_valid_catalog(str(rdir / stage), strict=True)
        read = spark.read.parquet(str(rdir / stage / "dataset"))
        assert read.count() == N_ROWS and set(t.column_names) <= set(read.columns)   # Spark sees the outputs
    assert (rdir / "report.html").read_text().count("<img") >= 3
    before = file_hashes(rdir)
    again = runner.run_release(cfg_of(d), never, log=lambda m: None)       # must not even want Spark
    assert again["status"] == "complete" and again["rounds"] == []
    assert file_hashes(rdir) == before

    # The same configuration elsewhere (output_root is not part of the release's identity): same bytes.
    other = run(spark, {**d, "release": {**d["release"], "output_root": str(tmp_path)}})
    assert other["status"] == "complete"
    assert file_hashes(tmp_path / "r1") == before


def test_bayes_stage_and_joined_catalog(spark, objects, clean, tmp_path):
    d = conf(objects, tmp_path, "joined1", ("photoz", "ood", "bayes"), join="joined")
    res = run(spark, d)
    assert res["status"] == "complete", res
    t = pq.read_table(tmp_path / "joined1" / "joined" / "dataset")
    assert t.num_rows == N_ROWS
    for c in ("z_median", "ood_score", "bayes_z_median", "z_source", "photoz_model_sha256", "ood_model_sha256"):
        assert c in t.column_names
    src = t.column("z_source").to_pylist()
    flagged = t.column("ood_flag").to_pylist()
    assert src.count("vi") > 0 and all(s in ("network", "none") for s, f in zip(src, flagged) if not f)
    # The photo-z columns equal the per-stage release's (same model, same rows).
    ref = pq.read_table(clean[1] / "photoz" / "dataset")
    cols = ["objectId", "z_median", "pdf", "flags"]
    assert table_checksum(t, cols) == table_checksum(ref, cols)


# ----------------------------------------------------------------------------- faults

def _same_as_clean(rdir: Path, clean_dir: Path) -> None:
    assert file_hashes(rdir) == file_hashes(clean_dir)
    a = json.loads((rdir / "report.json").read_text())["summary"]
    b = json.loads((clean_dir / "report.json").read_text())["summary"]
    for stage in ("photoz", "ood"):
        for k in ("rows_in", "rows_out", "rows_checksum", "id_checksum"):
            assert a[stage][k] == b[stage][k], (stage, k)


@pytest.mark.slow
def test_killed_driver_resumes_to_the_clean_output(spark, objects, clean, tmp_path):
    d = conf(objects, tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(d))
    env = {**os.environ, runner.EXIT_AFTER_ENV: "1", "PYSPARK_PYTHON": sys.executable}
    p = subprocess.run([sys.executable, "-m", "lsst_spark_ml.cli", "release", "run", "--conf",
                        str(tmp_path / "r.yaml")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 137, p.stderr[-3000:]
    recs = manifest.read_records(str(tmp_path / "r1"))
    n_parts = len({k[1] for k in manifest.read_records(str(clean[1]))})
    assert 1 <= sum(r["status"] == "committed" for r in recs.values()) < 2 * n_parts   # killed mid-release
    assert not (tmp_path / "r1" / "report.json").exists()
    res = run(spark, d)
    assert res["status"] == "complete" and res["committed"] == 2 * n_parts
    _same_as_clean(tmp_path / "r1", clean[1])


def test_killed_python_worker_gives_the_clean_output(spark, objects, clean, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(marker))
    res = run(spark, conf(objects, tmp_path))
    assert marker.exists(), "the worker crash hook never fired"
    assert res["status"] == "complete"
    assert res["rounds"][0]["error"] is not None and len(res["rounds"]) >= 2
    _same_as_clean(tmp_path / "r1", clean[1])


def test_corrupt_partition_is_named_and_isolated(spark, objects, clean, tmp_path):
    bad_in = tmp_path / "objects"
    shutil.copytree(objects, bad_in)
    files = sorted((bad_in / "dataset").rglob("*.parquet"))
    victim = files[len(files) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])                       # truncated mid-file
    pixel = "/".join(victim.relative_to(bad_in / "dataset").parts[:3])
    d = conf(bad_in, tmp_path / "out")
    res = run(spark, d)
    assert res["status"] == "failed_partitions"
    assert set(res["failed"]) == {f"photoz:{pixel}", f"ood:{pixel}"}
    assert all(str(victim) in why for why in res["failed"].values())
    rec = manifest.read_records(str(tmp_path / "out" / "r1"))[("photoz", pixel)]
    assert rec["status"] == "failed" and str(victim) in rec["error"]
    good = pq.read_table(tmp_path / "out" / "r1" / "photoz" / "dataset")
    n_bad = pq.read_metadata(objects / victim.relative_to(bad_in)).num_rows
    assert good.num_rows == N_ROWS - n_bad
    assert pixel in (tmp_path / "out" / "r1" / "report.html").read_text()
    # Repaired, the rerun does only that partition; the result then equals the clean run's rows.
    victim.write_bytes(data)
    res = run(spark, d)
    assert res["status"] == "complete" and res["rounds"][0]["partitions"] == 1
    assert pq.read_table(tmp_path / "out" / "r1" / "photoz" / "dataset").num_rows == N_ROWS


def test_tampered_model_stops_the_release_before_any_spark_job(spark, objects, tmp_path):
    model = tmp_path / "mbrnn"
    shutil.copytree(ROOT / "lsst_spark_ml" / "resources" / "models" / "mbrnn_dc2", model)
    w = model / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF
    w.write_bytes(bytes(data))
    d = conf(objects, tmp_path / "out")
    d["release"]["stages"][0]["model"] = str(model)
    err, jobs = no_jobs(spark, "tampered", lambda: run(spark, d))
    assert isinstance(err, ModelIntegrityError) and "weights.safetensors" in str(err)
    assert jobs == [] and not (tmp_path / "out").exists()
    # A model that is intact but not the pinned one is refused the same way.
    d = conf(objects, tmp_path / "out")
    d["release"]["stages"][0]["model_sha256"] = "0" * 64
    err, jobs = no_jobs(spark, "pinned", lambda: run(spark, d))
    assert isinstance(err, ModelIntegrityError) and "expected " + "0" * 64 in str(err) and jobs == []


def test_a_later_release_never_overwrites_an_earlier_one(spark, objects, clean, tmp_path):
    d, rdir, _ = clean
    root = rdir.parent
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in rdir.rglob("*") if p.is_file()}
    res = run(spark, conf(objects, root, "r2", ("photoz",)))
    assert res["status"] == "complete" and (root / "r2" / "photoz" / "dataset").is_dir()
    changed = conf(objects, root, "r1", ("photoz",))                 # same id, other configuration
    with pytest.raises(manifest.ReleaseError, match="never overwritten"):
        runner.run_release(cfg_of(changed), never, log=lambda m: None)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in rdir.rglob("*") if p.is_file()}
    assert after == before


def test_checksum_is_order_independent_and_sees_every_value():
    rng = np.random.default_rng(1)
    t = pa.table({"id": np.arange(100), "x": rng.normal(size=100),
                  "pdf": pa.array([rng.random(4).astype(np.float32) for _ in range(100)], pa.list_(pa.float32()))})
    perm = pa.array(rng.permutation(100))
    assert table_checksum(t) == table_checksum(t.take(perm))
    x = t.column("x").to_numpy().copy()
    x[7] = np.nextafter(x[7], 1)
    assert table_checksum(t.set_column(1, "x", pa.array(x))) != table_checksum(t)
    pdf = t.column("pdf").to_pylist()
    pdf[3] = pdf[3][::-1]
    assert table_checksum(t.set_column(2, "pdf", pa.array(pdf, pa.list_(pa.float32())))) != table_checksum(t)
    assert table_checksum(t.slice(0, 99)) != table_checksum(t)
