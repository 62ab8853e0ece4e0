"""What a train function needs to know when it runs as one of several data-parallel processes.

A backend (TorchDistributor here, Horovod in ``training.horovod_backend``) starts the processes and sets the
current ``DistContext``. ``training.loop.fit`` asks it for the few collective operations it needs --
wrap the model or the optimiser, a differentiable all-reduce for cross-rank BatchNorm, a broadcast and an
all-gather -- so the train function and the model code are the same under every backend.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import torch

from .backends import register


class DistContext(ABC):
    """Rank, world size, device, and the collectives of one backend."""
    backend = "none"

    def __init__(self, rank: int, world_size: int, device: str):
        self.rank, self.world_size, self.device = rank, world_size, device

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap_optimizer(self, opt: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
        return opt

    def step(self, opt: torch.optim.Optimizer, clip) -> None:
        """Clip the (already averaged) gradients, then step."""
        clip()
        opt.step()

    @abstractmethod
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, differentiable (gradients flow back to every rank's input)."""

    @abstractmethod
    def broadcast_(self, t: torch.Tensor, src: int = 0) -> None:
        ...

    @abstractmethod
    def all_gather_object(self, obj: Any) -> list:
        ...

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so that validation, checkpoints and
        early-stopping decisions agree without further messages."""
        for buf in model.buffers():
            self.broadcast_(buf, 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, device={self.device!r})"


class TorchContext(DistContext):
    """torch.distributed (gloo on CPU, NCCL on GPU) with DistributedDataParallel."""
    backend = "torch-distributor"

    def wrap_model(self, model):
        return torch.nn.parallel.DistributedDataParallel(model)

    def all_reduce_sum(self, t):
        import warnings
        from torch.distributed.nn.functional import all_reduce
        with warnings.catch_warnings():
            # Deprecated in favour of torch.distributed._functional_collectives, a private module: keep the
            # public differentiable all-reduce until a public replacement exists.
            warnings.simplefilter("ignore", FutureWarning)
            return all_reduce(t)

    def broadcast_(self, t, src=0):
        import torch.distributed as dist
        dist.broadcast(t, src=src)

    def all_gather_object(self, obj):
        import torch.distributed as dist
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


_CTX: DistContext | None = None


def prepare(model: torch.nn.Module, ts) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """-> (the module to call, the optimiser to step) for ``model`` under the current backend, if any.

    The optimiser is Adam with ``ts``'s settings; Horovod replaces it by a new object, so load optimiser state
    into what this returns, not before.
    """
    from .sync_batchnorm import to_cross_rank
    ctx = current()
    net = model
    if ctx is not None:
        if ts.sync_batchnorm:
            to_cross_rank(model, ctx.all_reduce_sum)
        net = ctx.wrap_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=ts.lr, betas=tuple(ts.betas), weight_decay=ts.weight_decay)
    if ctx is not None:
        opt = ctx.wrap_optimizer(opt, model)
    return net, opt


def current() -> DistContext | None:
    return _CTX


def set_current(ctx: DistContext | None) -> None:
    global _CTX
    _CTX = ctx


def _ddp_entry(train_fn, args, kwargs):
    """Runs in every torchrun process that TorchDistributor starts."""
    import torch.distributed as dist
    use_cuda = torch.cuda.is_available() and os.environ.get("LSST_SPARK_ML_DDP_CPU") != "1"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(1)     # one core per process, as Spark's tasks
    set_current(TorchContext(dist.get_rank(), dist.get_world_size(), "cuda" if use_cuda else "cpu"))
    try:
        # Every rank returns the same value: in local mode TorchDistributor keeps whichever rank ends last.
        return train_fn(*args, **kwargs)
    finally:
        set_current(None)
        dist.destroy_process_group()


@register("torch-distributor")
def _torch_distributor(train_fn, *args, num_processes: int = 2, local_mode: bool = True,
                       use_gpu: bool = False, **kwargs):
    from pyspark.ml.torch.distributor import TorchDistributor
    if not use_gpu:
        os.environ["LSST_SPARK_ML_DDP_CPU"] = "1"
    return TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu).run(
        _ddp_entry, train_fn, args, kwargs)
