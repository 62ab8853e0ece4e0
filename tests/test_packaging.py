"""The wheel, and the photo-z job run from it by spark-submit on a Spark cluster, outside the source tree.

.venv holds lsst_spark_ml as an editable install of this checkout, so "it ran" proves nothing by itself: each
cluster test first submits a probe that reports, from inside executor tasks, which lsst_spark_ml and udfs the
Python workers imported, then submits jobs/photoz_predict.py (copied out of the tree) and checks that the
driver used the wheel's shipped model and that every input row came out once.

The cluster is Spark's ``local-cluster[2,1,1024]``: a master and two workers in the driver's JVM, each
worker launching a separate executor JVM with its own Python workers, as a standalone cluster does.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MASTER = "local-cluster[2,1,1024]"
N_ROWS = 2000

PROBE = r'''
import json, os, sys
from pyspark.sql import SparkSession
import lsst_spark_ml, udfs

spark = SparkSession.builder.getOrCreate()

def where(_):
    import os, sys
    import lsst_spark_ml, udfs
    yield {"pid": os.getpid(), "cwd": os.getcwd(), "prefix": sys.prefix,
           "lsst_spark_ml": lsst_spark_ml.__file__, "udfs": udfs.__file__}

executors = spark.sparkContext.parallelize(range(4), 4).mapPartitions(where).collect()
print("PROBE " + json.dumps({"master": spark.sparkContext.master, "executors": executors,
                              "driver": {"pid": os.getpid(), "lsst_spark_ml": lsst_spark_ml.__file__}}))
spark.stop()
'''


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if res.returncode != 0:
        noise = (" INFO ", "\tat ", "Shutdown hooks cannot be modified")
        err = "\n".join(line for line in res.stderr.splitlines() if not any(n in line for n in noise))
        pytest.fail(f"{cmd[0]} ... exited {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{err[-6000:]}")
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = _run(["bash", ROOT / "scripts" / "build_wheel.sh", out], timeout=600,
               env={**os.environ, "PYTHON": sys.executable})
    return Path(res.stdout.strip().splitlines()[-1])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_wheel_holds_the_package_udfs_and_every_shipped_model(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        models = ROOT / "lsst_spark_ml" / "resources" / "models"
        shipped = [p for p in models.rglob("*") if p.is_file()]
        assert {p.parent.name for p in shipped if p.name == "manifest.json"} >= {"mbrnn_dc2", "dcp_dc2"}
        assert any("asteroids_classy" in p.parts for p in shipped)
        for p in shipped:
            rel = p.relative_to(ROOT).as_posix()
            assert rel in names, f"{rel} is not in {wheel.name}"
            assert _sha(z.read(rel)) == _sha(p.read_bytes()), f"{rel} differs in {wheel.name}"
        for p in (ROOT / "udfs").glob("*.py"):
            assert p.relative_to(ROOT).as_posix() in names
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "lsst-spark-ml = lsst_spark_ml.cli:main" in z.read(entry).decode()
    # The wheel is the library: no tests, jobs, notebooks or bytecode of this checkout.
    assert not [n for n in names if n.split("/")[0] in ("tests", "jobs", "notebooks", "conf")
                or "__pycache__" in n]


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory, wheel):
    """A working directory outside the source tree: the wheel installed in site/, a synthetic catalog,
    the job script copied in, and a SPARK_HOME of links to pip's pyspark."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lsst_spark_ml.io.synthetic import _generate, load_parents
    work = tmp_path_factory.mktemp("cluster")
    assert not work.resolve().is_relative_to(ROOT)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target",
          work / "site", wheel], timeout=300)
    (work / "input").mkdir()
    rows = _generate(np.arange(N_ROWS, dtype=np.int64), load_parents(), 2026)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), work / "input" / "part-0.parquet")
    shutil.copy(ROOT / "jobs" / "photoz_predict.py", work / "photoz_predict.py")
    (work / "probe.py").write_text(PROBE)
    # local-cluster workers put the executors' directories in $SPARK_HOME/work: with pip's pyspark that is
    # inside .venv's site-packages. A SPARK_HOME of links keeps them in the test's directory.
    import pyspark
    home = work / "spark_home"
    home.mkdir()
    for entry in Path(pyspark.__file__).parent.iterdir():
        if entry.name != "work":
            (home / entry.name).symlink_to(entry)
    return work


def _submit(work: Path, spark_args: list, script: str, script_args: list, env: dict):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "PYTHONPATH", "SPARK_"))}
    return _run([work / "spark_home" / "bin" / "spark-submit", "--master", MASTER, *spark_args,
                 work / script, *script_args], cwd=work, timeout=420,
                env={**base, "SPARK_HOME": str(work / "spark_home"), "SPARK_LOCAL_IP": "127.0.0.1", **env})


def _probe(res) -> dict:
    line = next(line for line in res.stdout.splitlines() if line.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


def _check_output(work: Path, out: str, model_root: Path) -> dict:
    import pyarrow.dataset as ds
    meta = json.loads((work / out / "_photoz_meta.json").read_text())
    # The driver took the default model from the copy of lsst_spark_ml it imported: the installed wheel's.
    assert Path(meta["model_dir"]).resolve().is_relative_to(model_root.resolve()), meta["model_dir"]
    assert meta["spark_master"] == MASTER
    assert meta["rows_in"] == meta["rows_written"] == N_ROWS
    table = ds.dataset(work / out / "dataset", format="parquet", partitioning="hive").to_table(
        columns=["objectId", "z_median", "flags"])
    ids = table.column("objectId").to_pylist()
    assert len(ids) == N_ROWS and sorted(ids) == list(range(N_ROWS))
    assert table.column("z_median").drop_null().to_numpy().size > 0.9 * N_ROWS
    return meta


@pytest.mark.slow
def test_photoz_job_runs_from_the_installed_wheel_on_a_local_cluster(cluster_dir):
    work = cluster_dir
    site = work / "site"
    py = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(site)}
    args = ["--conf", f"spark.executorEnv.PYTHONPATH={site}"]
    probe = _probe(_submit(work, args, "probe.py", [], py))
    print(json.dumps(probe, indent=1))
    assert probe["master"] == MASTER
    assert Path(probe["driver"]["lsst_spark_ml"]).is_relative_to(site)
    for ex in probe["executors"]:
        assert ex["pid"] != probe["driver"]["pid"]
        assert Path(ex["cwd"]).is_relative_to(work / "spark_home" / "work"), ex      # an executor's directory
        assert Path(ex["lsst_spark_ml"]).is_relative_to(site), ex
        assert Path(ex["udfs"]).is_relative_to(site), ex
    _submit(work, args, "photoz_predict.py", ["--catalog", "input", "--out", "out_wheel"], py)
    _check_output(work, "out_wheel", site)


@pytest.mark.slow
def test_packed_environment_runs_the_job_through_archives(cluster_dir, wheel):
    """The README's recipe: --archives env.tar.gz#environment, executors on ./environment/bin/python.

    The archive carries the wheel alone; the heavy dependencies come from .venv's site-packages through a
    .pth (scripts/pack_env.sh --base-site), which stands for a cluster image that already has them."""
    work = cluster_dir
    archive = work / "env.tar.gz"
    _run(["bash", ROOT / "scripts" / "pack_env.sh", "--wheel", wheel, "--out", archive,
          "--base-site", sysconfig.get_paths()["purelib"]], timeout=300)
    # The driver runs from the same archive unpacked elsewhere: it must be relocatable too.
    driver_env = work / "driver_env"
    driver_env.mkdir()
    _run(["tar", "-xzf", archive, "-C", driver_env])
    args = ["--archives", f"{archive}#environment", "--conf", "spark.pyspark.python=./environment/bin/python",
            "--conf", f"spark.pyspark.driver.python={driver_env / 'bin' / 'python'}"]
    probe = _probe(_submit(work, args, "probe.py", [], {}))
    print(json.dumps(probe, indent=1))
    assert Path(probe["driver"]["lsst_spark_ml"]).is_relative_to(driver_env)
    for ex in probe["executors"]:
        unpacked = Path(ex["cwd"]) / "environment"
        assert Path(ex["prefix"]) == unpacked, ex
        assert Path(ex["lsst_spark_ml"]).is_relative_to(unpacked), ex
        assert Path(ex["udfs"]).is_relative_to(unpacked), ex
    _submit(work, args, "photoz_predict.py", ["--catalog", "input", "--out", "out_archive"], {})
    _check_output(work, "out_archive", driver_env)
