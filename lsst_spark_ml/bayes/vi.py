"""Batched variational inference: a K-component full-covariance Gaussian mixture in the unconstrained space
(logit of z and of the template coordinate), fitted per object by maximising the reparameterised ELBO.

All objects of a batch are one set of tensors and one Adam optimiser; objects do not interact because the
loss is a sum of per-object ELBOs. The mixture expectation is taken component by component
(ELBO = sum_k pi_k E_{q_k}[log p - log q]), so the weights get exact gradients without a discrete sample.
Components start on the K most probable, well-separated cells of the coarse scan (see init.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .init import peaks
from .posterior import BatchPosterior

ELBO_SAMPLES = 64          # samples per component for the reported ELBO (fit uses vi_samples)
REWEIGHT_ROUNDS, REWEIGHT_SAMPLES = 2, 32


@dataclass
class VIResult:
    density: np.ndarray    # (N, nz) marginal q(z) on the fine grid
    elbo: np.ndarray       # (N,)
    n_evals: int           # log-posterior evaluations per object (fit + final ELBO)


class _Mixture:
    def __init__(self, post: BatchPosterior, k: int):
        m = post.model
        self.post = post
        self.span_z, self.span_t = m.z_max - m.z0, m.t_max
        mean, sd, log_mass = peaks(post, k)
        pz = ((mean[..., 0] - m.z0) / self.span_z).clamp(1e-4, 1 - 1e-4)
        pt = (mean[..., 1] / self.span_t).clamp(0.02, 0.98)
        self.mu = torch.stack([torch.logit(pz), torch.logit(pt)], dim=-1).requires_grad_()
        # Moment-matched start: each component's spread of the coarse posterior, mapped to logit space.
        sd_u = sd[..., 0] / (self.span_z * pz * (1 - pz))
        sd_v = sd[..., 1] / (self.span_t * pt * (1 - pt))
        self.log_sd = torch.stack([torch.log(sd_u), torch.log(sd_v)], dim=-1).requires_grad_()
        self.rho = torch.zeros(pz.shape, dtype=torch.float64, requires_grad=True)
        self.logits = log_mass.clamp(min=-12).detach().requires_grad_()

    def params(self):
        return [self.mu, self.log_sd, self.rho, self.logits]

    def _chol(self):
        sd = torch.exp(self.log_sd)
        zero = torch.zeros_like(self.rho)
        return torch.stack([torch.stack([sd[..., 0], zero], -1),
                            torch.stack([self.rho * sd[..., 1], sd[..., 1]], -1)], -2)   # (N, K, 2, 2)

    def log_q(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, P, 2) -> log q(x) (N, P) under the whole mixture."""
        L = self._chol()
        d = x[:, None] - self.mu[:, :, None]                                            # (N, K, P, 2)
        # Lower-triangular 2x2 solve written out: cheaper than a batched triangular solve.
        y0 = d[..., 0] / L[..., 0, 0][..., None]
        y1 = (d[..., 1] - L[..., 1, 0][..., None] * y0) / L[..., 1, 1][..., None]
        logdet = torch.log(L[..., 0, 0]) + torch.log(L[..., 1, 1])
        comp = -0.5 * (y0 ** 2 + y1 ** 2) - logdet[..., None] - math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(self.logits, 1)[..., None] + comp, dim=1)

    def log_p(self, x: torch.Tensor) -> torch.Tensor:
        m = self.post.model
        su, sv = torch.sigmoid(x[..., 0]), torch.sigmoid(x[..., 1])
        z = m.z0 + self.span_z * su
        t = self.span_t * sv
        log_jac = (math.log(self.span_z) + torch.nn.functional.logsigmoid(x[..., 0])
                   + torch.nn.functional.logsigmoid(-x[..., 0]) + math.log(self.span_t)
                   + torch.nn.functional.logsigmoid(x[..., 1]) + torch.nn.functional.logsigmoid(-x[..., 1]))
        return self.post.log_prob(z, t) + log_jac

    def elbo(self, s: int, gen: torch.Generator) -> torch.Tensor:
        n, k, _ = self.mu.shape
        eps = torch.randn(n, k, s, 2, generator=gen, dtype=torch.float64)
        x = self.mu[:, :, None] + torch.einsum("nkij,nksj->nksi", self._chol(), eps)      # (N, K, S, 2)
        flat = x.reshape(n, k * s, 2)
        f = (self.log_p(flat) - self.log_q(flat)).reshape(n, k, s).mean(dim=2)
        # An -inf target (outside support is impossible here, but underflow is not) must not poison the batch.
        f = torch.nan_to_num(f, nan=-1e6, neginf=-1e6)
        return (torch.softmax(self.logits, 1) * f).sum(dim=1)

    @torch.no_grad()
    def reweight(self, s: int, gen: torch.Generator) -> None:
        """Mixture weights from each component's share of the evidence (stratified importance sampling):
        pi_k <- pi_k E_{q_k}[p / q]. The reparameterised gradient of the weights is too noisy with a few samples
        to split mass between distant modes; this fixed point does it with the same target and no gradient."""
        n, k, _ = self.mu.shape
        eps = torch.randn(n, k, s, 2, generator=gen, dtype=torch.float64)
        x = (self.mu[:, :, None] + torch.einsum("nkij,nksj->nksi", self._chol(), eps)).reshape(n, k * s, 2)
        lw = torch.nan_to_num(self.log_p(x) - self.log_q(x), nan=-torch.inf).reshape(n, k, s)
        share = torch.logsumexp(lw, dim=2) - math.log(s)
        new = torch.log_softmax(self.logits, 1) + share
        ok = torch.isfinite(new).any(dim=1, keepdim=True)
        self.logits.copy_(torch.where(ok, torch.nan_to_num(new, neginf=-50.0), self.logits))

    def density_z(self, zg: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            m = self.post.model
            p = torch.as_tensor((zg - m.z0) / self.span_z).clamp(1e-9, 1 - 1e-9)
            u = torch.logit(p)
            log_du = -torch.log(self.span_z * p * (1 - p))
            sd = torch.exp(self.log_sd[..., 0])                                         # (N, K)
            comp = (-0.5 * ((u[None, None] - self.mu[..., 0, None]) / sd[..., None]) ** 2
                    - torch.log(sd[..., None]) - 0.5 * math.log(2 * math.pi))
            logd = torch.logsumexp(torch.log_softmax(self.logits, 1)[..., None] + comp, dim=1) + log_du
            return torch.exp(logd - logd.max(dim=1, keepdim=True).values).numpy()


def run_vi(post: BatchPosterior, components: int, steps: int, samples: int, lr: float,
           gen: torch.Generator) -> VIResult:
    q = _Mixture(post, components)
    opt = torch.optim.Adam(q.params(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = -q.elbo(samples, gen).sum()
        loss.backward()
        opt.step()
    for _ in range(REWEIGHT_ROUNDS):
        q.reweight(REWEIGHT_SAMPLES, gen)
    with torch.no_grad():
        elbo = q.elbo(ELBO_SAMPLES, gen).numpy()
    return VIResult(q.density_z(post.model.grid.z), elbo,
                    components * (steps * samples + ELBO_SAMPLES + REWEIGHT_ROUNDS * REWEIGHT_SAMPLES))
