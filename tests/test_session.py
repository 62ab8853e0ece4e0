"""The SparkSession factory: one shared session, the Arrow settings every UDF relies on, and the master rule
(spark-submit's master always wins; then the configured one; then local[*])."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from lsst_spark_ml.config import SparkSettings
from lsst_spark_ml.session import get_spark

VENV_BIN = Path(sys.executable).parent
ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"

# Variables that would tell a fresh driver it was launched by spark-submit / an existing gateway, or
# pick a master for it: the subprocesses below must see only what each test sets.
_LAUNCH_VARS = ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "PYSPARK_SUBMIT_ARGS", "SPARK_SUBMIT_OPTS",
                "MASTER", "SPARK_MASTER", "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE",
                "_PYSPARK_DRIVER_CONN_INFO_PATH")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


DRIVER_SCRIPT = textwrap.dedent("""
    from lsst_spark_ml.config import SparkSettings
    from lsst_spark_ml.session import get_spark

    spark = get_spark(SparkSettings({master_arg}progress=False))
    print("MASTER=" + spark.sparkContext.master, flush=True)
    print("ARROW=" + spark.conf.get("spark.sql.execution.arrow.pyspark.enabled"), flush=True)
    print("COUNT=" + str(spark.range(7).count()), flush=True)
    spark.stop()
""")


def run_driver(cmd_prefix: list[str], tmp_path: Path, master_arg: str = "") -> dict:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER_SCRIPT.format(master_arg=master_arg))
    proc = subprocess.run([*cmd_prefix, str(script)], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert {"MASTER", "ARROW", "COUNT"} <= set(found), proc.stdout + proc.stderr[-4000:]
    return found


def test_shared_session_has_the_arrow_settings(spark):
    conf = spark.conf
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.sql.execution.arrow.pyspark.fallback.enabled") == "false"
    assert conf.get(ARROW_BATCH) == str(SparkSettings().arrow_batch_rows)
    assert conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.sparkContext.master == "local[2]"


def test_get_spark_returns_the_shared_session_and_applies_batch_rows(spark):
    before = spark.conf.get(ARROW_BATCH)
    try:
        # A second call (as every pipeline makes) must not build a second context, whatever master it asks.
        again = get_spark(SparkSettings(master="local[1]", arrow_batch_rows=1234, progress=False))
        assert again is spark
        assert again.sparkContext is spark.sparkContext
        assert again.sparkContext.master == "local[2]"
        assert spark.conf.get(ARROW_BATCH) == "1234"
        assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
        # The session still works with the new batch size (an Arrow round trip).
        assert spark.range(3000).toPandas()["id"].sum() == sum(range(3000))
    finally:
        spark.conf.set(ARROW_BATCH, before)


def test_spark_submit_master_is_never_overridden(tmp_path):
    # The script asks for local[2]; spark-submit said local[1]: spark-submit wins.
    found = run_driver([str(VENV_BIN / "spark-submit"), "--master", "local[1]"], tmp_path,
                       master_arg='master="local[2]", ')
    assert found["MASTER"] == "local[1]"
    assert found["ARROW"] == "true" and found["COUNT"] == "7"


def test_plain_python_without_master_is_local_star(tmp_path):
    found = run_driver([sys.executable], tmp_path)
    assert found["MASTER"] == "local[*]"
    assert found["ARROW"] == "true" and found["COUNT"] == "7"
