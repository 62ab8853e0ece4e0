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

The influence-function variant (``InfluenceFunctionModel``) uses the final weights only and preconditions
the output-layer gradients by the inverse of the damped Gauss-Newton Hessian; it needs no snapshots.
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
    precond: torch.Tensor | None = None   # (D, D) inverse Hessian: self-influence g^T H^-1 g

    def self_dot(self) -> torch.Tensor:
        if self.precond is not None:
            return (self.dense * (self.dense @ self.precond)).sum(1) * self.scale ** 2
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


    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> Factors:
        return self.factors(x, y)


def output_layer_gradients(f: Factors) -> torch.Tensor:
    """Dense per-row gradients of the output layer, delta (x) h1, flattened in the (k, a) order of
    ``fisher_hessian``: (N, K (H + 1))."""
    return torch.einsum("ik,ia->ika", f.delta, f.h1).reshape(len(f.delta), -1)


def fisher_hessian_sum(gm: GradientModel, x: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the Gauss-Newton Hessian of the output layer with the categorical Fisher,
    (diag p - p p^T) (x) h1 h1^T, as a float64 (K (H + 1), K (H + 1)) matrix. Labels are not needed. The
    products run in float32 on blocks of at most 4,096 rows (twice as fast; the sums of a block lose
    nothing at this size) and are accumulated in float64."""
    with torch.no_grad():
        h = gm._features(x)
        p = torch.softmax(gm.tail(h).double(), 1).float()
    h1 = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1).float()
    k, a = p.shape[1], h1.shape[1]
    out = torch.zeros(k * a, k * a, dtype=torch.float64)
    idx = torch.arange(k)
    for s in range(0, len(h1), 4096):
        pb, hb = p[s:s + 4096], h1[s:s + 4096]
        ph = torch.einsum("ik,ia->ika", pb, hb).reshape(len(pb), k * a)
        out -= (ph.T @ ph).double()
        # the diag(p) part: one (a, b) block per bin
        out.view(k, a, k, a)[idx, :, idx, :] += torch.einsum("ik,ia,ib->kab", pb, hb, hb).double()
    return out


class InfluenceFunctionModel:
    """Koh & Liang (2017) influence functions on the output layer of one member at its final weights:
    I(i, q) = g_q^T H^-1 g_i with H the damped Gauss-Newton (categorical Fisher) Hessian of the training
    loss. H^-1 weights gradient directions by how little the rest of the training set constrains them, so
    a label the model cannot fit without bending away from all its neighbours stands out, where the plain
    gradient norm saturates (a softmax gradient is bounded whatever the loss)."""

    def __init__(self, member: int, gamma: float, model: MBRNN, hinv: torch.Tensor):
        self.g = GradientModel(Snapshot(member, gamma, 0, 1.0, model))
        self.hinv = hinv.float()
        self.layers = 1

    def factors(self, x: torch.Tensor, y: torch.Tensor) -> Factors:
        return Factors(1.0, dense=output_layer_gradients(self.g.factors(x, y)), precond=self.hinv)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> Factors:
        return Factors(1.0, dense=output_layer_gradients(self.g.factors(x, y)) @ self.hinv)


def invert_hessian(h_sum: torch.Tensor, n: int, damping: float) -> tuple[torch.Tensor, float]:
    """(H / n + lambda I)^-1 with lambda = damping x mean diagonal (scale-free damping)."""
    h = h_sum / max(n, 1)
    lam = damping * float(torch.diagonal(h).mean())
    chol = torch.linalg.cholesky(h + lam * torch.eye(len(h), dtype=h.dtype))
    return torch.cholesky_inverse(chol), lam


def all_factors(models: list, X: np.ndarray, y: np.ndarray, query: bool = False) -> list[Factors]:
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return [m.query_factors(xt, yt) if query else m.factors(xt, yt) for m in models]


def self_influence(factors: list[Factors]) -> np.ndarray:
    return torch.stack([f.self_dot() for f in factors]).sum(0).numpy().astype(np.float64)


def tracin_scores(train: list[Factors], queries: list[Factors]) -> np.ndarray:
    """(N_train, N_query) TracIn matrix of one block of training rows against all queries."""
    out = None
    for a, b in zip(train, queries):
        c = a.cross(b)
        out = c if out is None else out + c
    return out.numpy().astype(np.float64)
