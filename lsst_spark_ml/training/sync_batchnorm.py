"""BatchNorm over the global batch of a data-parallel run, on CPU as well as GPU.

With plain DistributedDataParallel each rank normalises with its own share of the batch, so N processes
train a different model from one process on the same batches. torch's SyncBatchNorm fixes that on GPUs
only (it refuses CPU tensors), and Horovod's needs its own ops. This module sums (sum x, sum x^2, count)
over ranks with the backend's differentiable all-reduce, so the forward and backward passes equal those of
one process on the whole batch, up to floating-point reduction order, under every backend and on CPU.

``fit`` swaps it in for ``nn.BatchNorm1d`` when the world is larger than one and swaps it back at the end,
so the model code and the saved state dict (same parameter and buffer names) never change.
"""
from __future__ import annotations

import torch
from torch import nn


class CrossRankBatchNorm1d(nn.BatchNorm1d):
    def __init__(self, *args, all_reduce_sum=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._all_reduce_sum = all_reduce_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._all_reduce_sum is None:
            return super().forward(x)
        c = x.shape[1]
        local = torch.cat([x.sum(0), (x * x).sum(0), x.new_full((1,), float(x.shape[0]))])
        total = self._all_reduce_sum(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)   # biased, as BatchNorm normalises
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1.0))
            self.num_batches_tracked.add_(1)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


def _swap(module: nn.Module, make) -> nn.Module:
    for name, child in module.named_children():
        new = make(child)
        if new is not child:
            setattr(module, name, new)
        else:
            _swap(child, make)
    return module


def _share_state(src: nn.BatchNorm1d, dst: nn.BatchNorm1d) -> nn.BatchNorm1d:
    """``dst`` takes ``src``'s parameters and buffers (the same tensors) and its train/eval mode."""
    dst.weight, dst.bias = src.weight, src.bias
    dst.running_mean, dst.running_var, dst.num_batches_tracked = (src.running_mean, src.running_var,
                                                                  src.num_batches_tracked)
    return dst.train(src.training)


def to_cross_rank(model: nn.Module, all_reduce_sum) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` in place; parameters and buffers are shared, not copied."""
    def make(m):
        if type(m) is not nn.BatchNorm1d:
            return m
        return _share_state(m, CrossRankBatchNorm1d(m.num_features, m.eps, m.momentum, m.affine,
                                                     m.track_running_stats, all_reduce_sum=all_reduce_sum))
    return _swap(model, make)


def to_plain(model: nn.Module) -> nn.Module:
    def make(m):
        if type(m) is not CrossRankBatchNorm1d:
            return m
        return _share_state(m, nn.BatchNorm1d(m.num_features, m.eps, m.momentum, m.affine,
                                              m.track_running_stats))
    return _swap(model, make)
