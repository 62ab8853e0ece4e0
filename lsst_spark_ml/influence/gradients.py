"""Per-sample loss gradients of the last layers of MBRNN snapshots, and TracIn scores from them.

TracIn (Pruthi et al. 2020, "checkpoint" form): the influence of training row i on query j is

    TracIn(i, j) = sum over snapshots s of  lr_s * grad_s l(i) . grad_s l(j)

with the gradients of each member's own anchor loss, restricted to the trailing ``layers`` Linear layers
(the rest of the network is a fixed feature map at each snapshot). Positive: a step on i lowers j's loss
(helpful); negative: harmful. Self-influence TracIn(i, i) is large for rows the model keeps fighting,
which is how wrong spectroscopic redshifts show up.

For the output layer alone the gradient is an outer product, dl/dW = delta (x) h with delta = dl/dlogits
and h the penultimate activations, so g_i . g_j = (delta_i . delta_j) (h_i . h_j + 1) exactly, with the
bias as the "+1". Storing (delta, h) costs K + H + 1 numbers per row and snapshot instead of K (H + 1),
so the default needs no projection at all. Deeper tails use ``torch.func`` per-sample gradients, projected
to ``projection_dim`` with a fixed Gaussian matrix (Johnson-Lindenstrauss) when asked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from ..models import MBRNN, anchor_loss
from ..models.mbrnn import anchor_loss_onehot
from .checkpoints import Snapshot


def split_tail(net: MBRNN, layers: int) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """(head, tail) of ``net.net`` where tail holds the last ``layers`` Linear layers (and their blocks)."""
    seq = net.net
    n_tail = 1 + 3 * (layers - 1)
    if n_tail > len(seq):
        raise ValueError(f"influence.layers={layers} exceeds the network's {len(seq) // 3 + 1} Linear layers")
    return seq[:len(seq) - n_tail], seq[len(seq) - n_tail:]


@dataclass
class Factors:
    """Per-row gradient factors for one snapshot: either (delta, h1) for the output layer, or a dense g."""
    scale: float                      # sqrt(lr_s): folded in so scores are plain dot products
    delta: torch.Tensor | None = None   # (N, K)
    h1: torch.Tensor | None = None      # (N, H + 1)
    dense: torch.Tensor | None = None   # (N, D)

    def self_dot(self) -> torch.Tensor:
        if self.dense is not None:
            return (self.dense ** 2).sum(1) * self.scale ** 2
        return (self.delta ** 2).sum(1) * (self.h1 ** 2).sum(1) * self.scale ** 2

    def cross(self, other: "Factors") -> torch.Tensor:
        """(N, Q) dot products with the query factors ``other`` of the same snapshot."""
        s = self.scale * other.scale
        if self.dense is not None:
            return (self.dense @ other.dense.T) * s
        return (self.delta @ other.delta.T) * (self.h1 @ other.h1.T) * s


class GradientModel:
    """One snapshot ready to give per-row gradient factors of its member's anchor loss."""

    def __init__(self, snap: Snapshot, layers: int = 1, projection_dim: int = 0, seed: int = 0):
        self.snap = snap
        self.gamma = snap.gamma
        self.head, self.tail = split_tail(snap.model, layers)
        self.layers = layers
        self.params = {k: v.detach() for k, v in self.tail.named_parameters()}
        self.buffers = {k: v.detach() for k, v in self.tail.named_buffers()}
        self.proj = None
        n_params = sum(v.numel() for v in self.params.values())
        if layers > 1 and projection_dim and projection_dim < n_params:
            # One fixed matrix per (seed, member, epoch): train and query rows see the same projection.
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + snap.member * 10_007 + snap.epoch)
            self.proj = torch.randn(n_params, projection_dim, generator=g) / projection_dim ** 0.5

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def factors(self, x: torch.Tensor, y: torch.Tensor) -> Factors:
        scale = float(self.snap.lr) ** 0.5
        h = self._features(x)
        if self.layers == 1:
            logits = self.tail(h).detach().requires_grad_(True)
            # anchor_loss is a batch mean: times N gives each row's own dl/dlogits.
            loss = anchor_loss(logits, y, self.gamma) * len(x)
            (delta,) = torch.autograd.grad(loss, logits)
            h1 = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
            return Factors(scale, delta=delta.detach(), h1=h1)
        return Factors(scale, dense=self.dense_gradients(h, y))

    def dense_gradients(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row gradients of the tail's parameters by ``torch.func`` (vmap over rows), flattened."""
        tail, buffers, gamma = self.tail, self.buffers, self.gamma

        def row_loss(params, hi, yi):
            logits = functional_call(tail, (params, buffers), (hi.unsqueeze(0),))
            return anchor_loss_onehot(torch.log_softmax(logits.float(), dim=1), yi.unsqueeze(0), gamma)

        onehot = torch.nn.functional.one_hot(y, self.tail[-1].out_features).float()
        grads = vmap(grad(row_loss), in_dims=(None, 0, 0))(self.params, h, onehot)
        flat = torch.cat([grads[k].reshape(len(h), -1) for k in self.params], 1)
        return flat @ self.proj if self.proj is not None else flat


def all_factors(models: list[GradientModel], X: np.ndarray, y: np.ndarray) -> list[Factors]:
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return [m.factors(xt, yt) for m in models]


def self_influence(factors: list[Factors]) -> np.ndarray:
    return torch.stack([f.self_dot() for f in factors]).sum(0).numpy().astype(np.float64)


def tracin_scores(train: list[Factors], queries: list[Factors]) -> np.ndarray:
    """(N_train, N_query) TracIn matrix of one block of training rows against all queries."""
    out = None
    for a, b in zip(train, queries):
        c = a.cross(b)
        out = c if out is None else out + c
    return out.numpy().astype(np.float64)


def vector_size(models: list[GradientModel]) -> int:
    """Numbers stored per row across snapshots (the cost model's memory term)."""
    n = 0
    for m in models:
        if m.layers == 1:
            lin = m.tail[-1]
            n += lin.out_features + lin.in_features + 1
        else:
            n = n + (m.proj.shape[1] if m.proj is not None else sum(v.numel() for v in m.params.values()))
    return n
