"""The SparkSession factory: ``local[*]`` by default, never overriding a master spark-submit already set."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .config import SparkSettings

log = logging.getLogger(__name__)
LOG4J_QUIET = Path(__file__).resolve().parent / "resources" / "log4j2.properties"

# What every pandas/Arrow UDF of this package relies on.
ARROW_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.python.worker.reuse": "true",       # keeps the per-worker model cache alive between tasks
    "spark.sql.session.timeZone": "UTC",
}


def _submitted_master() -> str | None:
    """The master spark-submit (or an already running context) put in the JVM's properties, if any."""
    from pyspark import SparkConf, SparkContext
    if SparkContext._active_spark_context is not None:
        return SparkContext._active_spark_context.master
    if "PYSPARK_GATEWAY_PORT" in os.environ or _launched_by_spark_submit():
        # spark-submit started the JVM already; until we connect to it, SparkConf() is an empty Python
        # dict and would report no master.
        SparkContext._ensure_initialized()
        return SparkConf().get("spark.master", None)
    return None


def _launched_by_spark_submit() -> bool:
    # spark-submit starts the Python driver with this variable naming the JVM gateway's secret.
    return "PYSPARK_GATEWAY_SECRET" in os.environ


def get_spark(settings: SparkSettings | None = None, **overrides):
    """Return the active SparkSession or build one from ``settings``.

    The master comes, in order, from spark-submit, then ``settings.master``, then ``local[*]``.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    settings = settings or SparkSettings()
    for k, v in overrides.items():
        setattr(settings, k, v)

    submitted = _submitted_master()
    if not submitted:
        # Local workers must run this interpreter (it has pandas/torch); the first python3 on PATH may not.
        # Under spark-submit the cluster's own setting (spark.pyspark.python, a packed env) decides.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = submitted or settings.master or "local[*]"
    if submitted and settings.master and settings.master != submitted:
        log.warning("spark-submit set master %s; ignoring configured master %s", submitted, settings.master)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    builder = SparkSession.builder.appName(settings.app_name)
    if not submitted:
        builder = builder.master(master)
    conf = dict(ARROW_CONF)
    conf["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(settings.arrow_batch_rows)
    conf["spark.ui.enabled"] = "true" if settings.ui else "false"
    conf["spark.ui.showConsoleProgress"] = "true" if settings.progress else "false"
    if master.startswith("local"):
        conf.setdefault("spark.driver.memory", "4g")
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    if not submitted and settings.log_level.upper() in ("WARN", "ERROR", "FATAL", "OFF"):
        # Only a JVM this process launches can take a log4j file; spark-submit's JVM already has its own.
        conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{LOG4J_QUIET}"
    conf.update({k: str(v) for k, v in settings.conf.items()})
    if submitted and SparkContext._active_spark_context is None:
        # spark-submit's --conf values win over our defaults and YAML: the person submitting decides.
        # (A running session, e.g. a notebook's, takes the settings asked for here as runtime conf.)
        from pyspark import SparkConf
        given = SparkConf()
        conf = {k: v for k, v in conf.items() if not given.contains(k)}
    for k, v in conf.items():
        builder = builder.config(k, v)

    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    if settings.ui and spark.sparkContext.uiWebUrl:
        print(f"[lsst_spark_ml] Spark UI: {spark.sparkContext.uiWebUrl}", file=sys.stderr)
    return spark


def task_cores(default: int = 1) -> int:
    """Cores Spark gave the running task (spark.task.cpus); ``default`` outside a task."""
    try:
        from pyspark import TaskContext
        ctx = TaskContext.get()
        if ctx is not None:
            return max(1, int(ctx.cpus()))
    except Exception:  # noqa: BLE001 - older contexts lack cpus(); one thread is the safe answer
        pass
    return default
