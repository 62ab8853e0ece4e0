"""Stage-level GPU scheduling for the inference stages (Spark's ``ResourceProfile``).

Only the stage that runs a model asks for GPUs; reading, shuffling and writing keep the default profile.
Several tasks share one GPU (task amount 1/n), because each task does its per-row host work -- features and
Arrow conversion for photo-z, object masks for morphology -- on one core: measured on an H200
(benchmarks/gpu_results.md), one task fed the GPU at 0.8 M rows/s against 6.3 M rows/s for the network with
its transfers, and built 15 morphology inputs/s against 460 images/s for DAT-Tiny.
"""
from __future__ import annotations


def tasks_per_gpu(conf, requested: int | None) -> int:
    """``requested``, else the executor's cores per GPU (``spark.executor.cores`` /
    ``spark.executor.resource.gpu.amount``), at least 1."""
    if requested is not None:
        return max(1, int(requested))
    cores = int(conf.get("spark.executor.cores", "1"))
    gpus = max(1, int(float(conf.get("spark.executor.resource.gpu.amount", "1"))))
    return max(1, cores // gpus)


def gpu_profile(spark, device: str, tasks: int | None, cpus_per_task: int = 1, force: bool = False):
    """A ``ResourceProfile`` giving each task 1/n of a GPU (n = ``tasks_per_gpu``) and ``cpus_per_task``
    cores, for ``device == "cuda"`` on a cluster manager with stage-level scheduling (YARN or Kubernetes
    with dynamic allocation, or standalone). Executors ask for ``spark.executor.resource.gpu.amount`` GPUs
    (default 1), found by ``spark.executor.resource.gpu.discoveryScript``. Local mode cannot schedule GPUs:
    None there, and for any other device (``force`` builds it anyway, for inspection).

    The per-worker model cache is keyed by the GPU a task was given, so the n tasks on one GPU run n Python
    workers with one model copy each (a few hundred MB of GPU memory per copy for the shipped models)."""
    if device != "cuda" and not force:
        return None
    if spark.sparkContext.master.startswith("local") and not force:
        return None
    from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests
    conf = spark.sparkContext.getConf()
    n = tasks_per_gpu(conf, tasks)
    ereq = ExecutorResourceRequests().resource(
        "gpu", int(float(conf.get("spark.executor.resource.gpu.amount", "1"))),
        discoveryScript=conf.get("spark.executor.resource.gpu.discoveryScript", ""))
    treq = TaskResourceRequests().cpus(cpus_per_task).resource("gpu", 1.0 / n)
    return ResourceProfileBuilder().require(ereq).require(treq).build
