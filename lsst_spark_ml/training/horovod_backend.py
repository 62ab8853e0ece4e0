"""Horovod backend: ``horovod.spark.run`` starts one Gloo-connected process per Spark task.

Kept for clusters that already run Horovod; TorchDistributor is the default (Horovod 0.28.1, June 2023, is
its last release, and it installs only through ``scripts/build_horovod.sh``). The train function is the same
as under the other backends: ``fit`` asks the context below for Horovod's DistributedOptimizer and the
parameter broadcast instead of DistributedDataParallel.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .backends import register
from .distributed import DistContext, set_current


def _hvd():
    try:
        import horovod.torch as hvd
    except ImportError as exc:   # the build script failed or was never run
        raise ConfigError("train.backend 'horovod' needs Horovod: run scripts/build_horovod.sh (it builds "
                          f"Horovod 0.28.1 for this torch; log in .venv/horovod-build.log). Import error: {exc}")
    return hvd


class HorovodContext(DistContext):
    backend = "horovod"

    def wrap_model(self, model):
        hvd = _hvd()
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)   # every rank starts from rank 0's weights
        return model

    def wrap_optimizer(self, opt, model):
        hvd = _hvd()
        # No broadcast_optimizer_state: every rank builds the same optimiser (and loads the same checkpoint),
        # and on a fresh Adam it would take a zero-gradient step that weight decay turns into a real one.
        return hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())

    def step(self, opt, clip) -> None:
        # Horovod all-reduces gradients asynchronously during backward; clip the averaged gradient, as DDP
        # does, not each rank's own.
        opt.synchronize()
        clip()
        with opt.skip_synchronize():
            opt.step()

    def all_reduce_sum(self, t):
        hvd = _hvd()
        return hvd.allreduce(t, op=hvd.Sum)

    def broadcast_(self, t, src=0):
        _hvd().broadcast_(t, root_rank=src)

    def all_gather_object(self, obj):
        return _hvd().allgather_object(obj)


def _horovod_entry(train_fn, args, kwargs):
    """Runs in every Spark task that horovod.spark.run starts."""
    hvd = _hvd()
    hvd.init()
    torch.set_num_threads(1)
    set_current(HorovodContext(hvd.rank(), hvd.size(), "cpu"))
    try:
        return train_fn(*args, **kwargs)
    finally:
        set_current(None)
        hvd.shutdown()


@register("horovod")
def _horovod(train_fn, *args, num_processes: int = 2, use_gpu: bool = False, **kwargs):
    _hvd()
    import horovod.spark
    if use_gpu:
        raise ConfigError("train.use_gpu with the horovod backend is not supported by this build (Gloo, CPU); "
                          "use train.backend=torch-distributor for GPUs")
    results = horovod.spark.run(_horovod_entry, args=(train_fn, args, kwargs), num_proc=num_processes,
                                use_gloo=True, use_mpi=False, verbose=0)
    return results[0]
