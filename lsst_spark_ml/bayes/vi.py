"""Batched variational inference: a K-component full-covariance Gaussian mixture in the unconstrained space
(logit of z and of the template coordinate), fitted per object by maximising the reparameterised ELBO.

All objects of a batch are one set of tensors and one Adam optimiser; objects do not interact because the
loss is a sum of per-object ELBOs. The mixture expectation is taken component by component
(ELBO = sum_k pi_k E_{q_k}[log p - log q]), so the weights get exact gradients without a discrete sample.
Components start on the K most probable, well-separated cells of the coarse scan (see init.py), and the Adam step
decays linearly to LR_FINAL of its start (with a constant step the last iterate keeps the gradient noise and the
z medians jitter at the 0.01(1+z) level). Modes (``run_vi``): ``iterative`` (this, the default), ``amortised``
(the inference network of amortised.py, one forward pass) and ``semi-amortised`` (the network, then per-object
steps where an importance-sampling check fails).
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
LR_FINAL = 0.05
REPORT_SAMPLES = 8         # amortised VI: samples per component for the ELBO and the importance-sampling check
REFINE_KL = 0.05           # amortised VI: optimise per object when the estimated KL(q || p) exceeds this (nats)


@dataclass
class VIResult:
    # The marginal q(z): a Gaussian mixture in logit((z - z0) / (z1 - z0)), (N, K) each; summaries.from_logit_mixture
    # takes it to the posterior summaries in closed form.
    mu_z: np.ndarray
    sd_z: np.ndarray
    log_pi: np.ndarray
    elbo: np.ndarray       # (N,)
    n_evals: float         # log-posterior evaluations per object (fit + final ELBO), mean over the batch
    n_refined: int = 0     # amortised VI: objects optimised further because the network's fit failed the check


class _Mixture:
    def __init__(self, post: BatchPosterior | None, mu, log_sd, rho, logits):
        self.post = post
        if post is not None:
            m = post.model
            self.span_z, self.span_t = m.z_max - m.z0, m.t_max
        self.mu, self.log_sd, self.rho, self.logits = mu, log_sd, rho, logits

    @classmethod
    def from_peaks(cls, post: BatchPosterior, k: int) -> "_Mixture":
        """Components on the K most probable, well-separated cells of the coarse scan (init.py)."""
        m = post.model
        span_z, span_t = m.z_max - m.z0, m.t_max
        mean, sd, log_mass = peaks(post, k)
        pz = ((mean[..., 0] - m.z0) / span_z).clamp(1e-4, 1 - 1e-4)
        pt = (mean[..., 1] / span_t).clamp(0.02, 0.98)
        mu = torch.stack([torch.logit(pz), torch.logit(pt)], dim=-1)
        # Moment-matched start: each component's spread of the coarse posterior, mapped to logit space.
        sd_u = sd[..., 0] / (span_z * pz * (1 - pz))
        sd_v = sd[..., 1] / (span_t * pt * (1 - pt))
        log_sd = torch.stack([torch.log(sd_u), torch.log(sd_v)], dim=-1)
        return cls.from_params(post, mu, log_sd, torch.zeros(pz.shape, dtype=torch.float64),
                               log_mass.clamp(min=-12))

    @classmethod
    def from_params(cls, post: BatchPosterior | None, mu, log_sd, rho, logits, trainable: bool = False):
        """Given parameters (e.g. the amortised network's output); ``trainable``: detached leaf copies to optimise."""
        ps = [mu, log_sd, rho, logits]
        if trainable:
            ps = [p.detach().clone().requires_grad_() for p in ps]
        return cls(post, *ps)

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

    def _draw(self, s: int, gen: torch.Generator) -> torch.Tensor:
        """Stratified samples: s from each component -> (N, K * S, 2), component-major."""
        n, k, _ = self.mu.shape
        eps = torch.randn(n, k, s, 2, generator=gen, dtype=torch.float64)
        return (self.mu[:, :, None] + torch.einsum("nkij,nksj->nksi", self._chol(), eps)).reshape(n, k * s, 2)

    def elbo(self, s: int, gen: torch.Generator) -> torch.Tensor:
        n, k, _ = self.mu.shape
        x = self._draw(s, gen)
        f = (self.log_p(x) - self.log_q(x)).reshape(n, k, s).mean(dim=2)
        # An -inf target (outside support is impossible here, but underflow is not) must not poison the batch.
        f = torch.nan_to_num(f, nan=-1e6, neginf=-1e6)
        return (torch.softmax(self.logits, 1) * f).sum(dim=1)

    @torch.no_grad()
    def elbo_and_kl(self, s: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Stratified samples (s per component) -> (ELBO, KL(q || p) = log Z - ELBO) per object, with log Z the
        importance-sampling estimate sum_k pi_k mean_s p/q from the same samples (non-finite: failed fit)."""
        n, k, _ = self.mu.shape
        x = self._draw(s, gen)
        lw = (self.log_p(x) - self.log_q(x)).reshape(n, k, s)
        logpi = torch.log_softmax(self.logits, 1)
        elbo = (torch.exp(logpi) * lw.mean(dim=2)).sum(dim=1)
        log_z = torch.logsumexp(logpi + torch.logsumexp(lw, dim=2) - math.log(s), dim=1)
        elbo = torch.where(torch.isfinite(elbo), elbo, torch.full_like(elbo, -torch.inf))
        return elbo, log_z - elbo

    @torch.no_grad()
    def reweight(self, s: int, gen: torch.Generator) -> None:
        """Mixture weights from each component's share of the evidence (stratified importance sampling):
        pi_k <- pi_k E_{q_k}[p / q]. The reparameterised gradient of the weights is too noisy with a few samples
        to split mass between distant modes; this fixed point does it with the same target and no gradient."""
        n, k, _ = self.mu.shape
        x = self._draw(s, gen)
        lw = torch.nan_to_num(self.log_p(x) - self.log_q(x), nan=-torch.inf).reshape(n, k, s)
        share = torch.logsumexp(lw, dim=2) - math.log(s)
        new = torch.log_softmax(self.logits, 1) + share
        ok = torch.isfinite(new).any(dim=1, keepdim=True)
        self.logits.copy_(torch.where(ok, torch.nan_to_num(new, neginf=-50.0), self.logits))

    def marginal_z(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q(z) as (mu, sd, log weights) of a Gaussian mixture in logit z: the first coordinate's marginal."""
        with torch.no_grad():
            return (self.mu[..., 0].numpy().copy(), torch.exp(self.log_sd[..., 0]).numpy(),
                    torch.log_softmax(self.logits, 1).numpy())


def _optimise(q: _Mixture, steps: int, samples: int, lr: float, gen: torch.Generator) -> None:
    opt = torch.optim.Adam(q.params(), lr=lr)
    # The step size decays linearly to LR_FINAL of its start: the last iterates average the gradient noise
    # instead of jittering the components (a constant step leaves the z medians noisy at the 0.01(1+z) level).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - (1.0 - LR_FINAL) * i / max(steps - 1, 1))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = -q.elbo(samples, gen).sum()
        loss.backward()
        opt.step()
        sched.step()
    for _ in range(REWEIGHT_ROUNDS):
        q.reweight(REWEIGHT_SAMPLES, gen)


def run_vi_iterative(post: BatchPosterior, components: int, steps: int, samples: int, lr: float,
                     gen: torch.Generator) -> VIResult:
    """Per-object VI from the coarse scan (no network): every object optimised for ``steps`` Adam steps."""
    with torch.enable_grad():
        q = _Mixture.from_peaks(post, components)
        q = _Mixture.from_params(post, q.mu, q.log_sd, q.rho, q.logits, trainable=True)
        _optimise(q, steps, samples, lr, gen)
    with torch.no_grad():
        elbo = q.elbo(ELBO_SAMPLES, gen).numpy()
    return VIResult(*q.marginal_z(), elbo,
                    components * (steps * samples + ELBO_SAMPLES + REWEIGHT_ROUNDS * REWEIGHT_SAMPLES))


VI_MODES = ("iterative", "amortised", "semi-amortised")


def run_vi(post: BatchPosterior, components: int, steps: int, samples: int, lr: float,
           gen: torch.Generator, mode: str = "iterative") -> VIResult:
    """``iterative`` (default): every object optimised from the coarse scan. ``amortised``: the inference network's
    mixture (amortised.py), no per-object optimisation. ``semi-amortised``: the network's mixture, then ``steps``
    Adam steps from it for the objects whose importance-sampling check fails (estimated KL(q || p) above
    ``REFINE_KL`` nats)."""
    if mode not in VI_MODES:
        raise ValueError(f"VI mode must be one of {VI_MODES}, got {mode!r}")
    if mode == "iterative":
        return run_vi_iterative(post, components, steps, samples, lr, gen)
    return _run_vi_amortised(post, components, steps, samples, lr, gen, refine=mode == "semi-amortised")


def _run_vi_amortised(post: BatchPosterior, components: int, steps: int, samples: int, lr: float,
                      gen: torch.Generator, refine: bool) -> VIResult:
    from .amortised import features, get_network
    net = get_network(post.model, components)
    with torch.no_grad():
        q = _Mixture.from_params(post, *net(features(post.flux, post.weight, post.m0)))
        elbo, kl = q.elbo_and_kl(REPORT_SAMPLES, gen)
    refine = torch.nonzero(~(kl <= REFINE_KL) if refine else torch.zeros_like(kl, dtype=torch.bool)).flatten()
    n_ref = int(len(refine))
    if n_ref:
        sub = post.subset(refine.numpy())
        with torch.enable_grad():
            qr = _Mixture.from_params(sub, q.mu[refine], q.log_sd[refine], q.rho[refine], q.logits[refine],
                                      trainable=True)
            _optimise(qr, steps, samples, lr, gen)
        with torch.no_grad():
            e2, _ = qr.elbo_and_kl(REPORT_SAMPLES, gen)
            better = e2 > elbo[refine]          # keep whichever of the two fits has the higher ELBO
            rows = refine[better]
            for a, b in ((q.mu, qr.mu), (q.log_sd, qr.log_sd), (q.rho, qr.rho), (q.logits, qr.logits)):
                a[rows] = b.detach()[better]
            elbo[rows] = e2[better]
    k = components
    n_evals = k * REPORT_SAMPLES * (1 + n_ref / post.n) + n_ref / post.n * k * (
        steps * samples + REWEIGHT_ROUNDS * REWEIGHT_SAMPLES)
    return VIResult(*q.marginal_z(), elbo.numpy(), n_evals, n_ref)
