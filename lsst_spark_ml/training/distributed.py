"""Data-parallel training through Spark's TorchDistributor (gloo on CPU, NCCL on GPU).

The train function is the same one the ``local`` backend runs: inside a distributed run, ``current()``
tells ``training.loop.fit`` its rank and world size, and fit wraps the model in DistributedDataParallel,
gives each rank its share of every batch, and keeps every rank's decisions (checkpoint, early stop)
identical by validating the same weights with rank 0's BatchNorm statistics on every rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .backends import register


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: str


_CTX: DistContext | None = None


def current() -> DistContext | None:
    return _CTX


def _ddp_entry(train_fn, args, kwargs):
    """Runs in every torchrun process that TorchDistributor starts."""
    global _CTX
    import torch
    import torch.distributed as dist
    use_cuda = torch.cuda.is_available() and os.environ.get("LSST_SPARK_ML_DDP_CPU") != "1"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(1)     # one core per process, as Spark's tasks
    _CTX = DistContext(dist.get_rank(), dist.get_world_size(), "cuda" if use_cuda else "cpu")
    try:
        # Every rank returns the same value: in local mode TorchDistributor keeps whichever rank ends last.
        return train_fn(*args, **kwargs)
    finally:
        _CTX = None
        dist.destroy_process_group()


@register("torch-distributor")
def _torch_distributor(train_fn, *args, num_processes: int = 2, local_mode: bool = True,
                       use_gpu: bool = False, **kwargs):
    from pyspark.ml.torch.distributor import TorchDistributor
    if not use_gpu:
        os.environ["LSST_SPARK_ML_DDP_CPU"] = "1"
    return TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu).run(
        _ddp_entry, train_fn, args, kwargs)
