"""Exact reference: the posterior on a dense (z, t) grid, marginalised over t.

Nodes are every fine-grid redshift times ``n_interp`` mixtures between adjacent templates; at the nodes the
bilinear model is exact, so this is the same density the samplers target, integrated by quadrature.
The t integral needs nodes finer than the posterior's width in t, which for bright objects is a fraction of a
segment: with 3 mixtures per segment (dt = 0.25) 6% of the z medians of objects drawn from the model moved by
more than 0.01(1+z) against a converged (dt = 1/64) integral; with 7 (dt = 0.125, the default) none did, the
largest shift being 0.007(1+z). Gauss-Legendre within segments is worse than the trapezoid here (the peaks
are narrower than the segments, not smooth across them).
"""
from __future__ import annotations

import numpy as np
import torch

from .likelihood import log_like_abc
from .posterior import BatchPosterior


def t_nodes(n_templates: int, n_interp: int) -> torch.Tensor:
    return torch.linspace(0, n_templates - 1, (n_templates - 1) * (n_interp + 1) + 1, dtype=torch.float64)


def log_posterior_nodes(post: BatchPosterior, z_stride: int, tn: torch.Tensor) -> torch.Tensor:
    """Unnormalised log p at every (fine z[::z_stride], t in tn) node -> (N, nz, nt)."""
    m = post.model
    z = torch.as_tensor(m.grid.z[::z_stride], dtype=torch.float64)
    j = torch.clamp(torch.floor(tn), 0, m.nt - 2).long()
    wt = (tn - j)[None, :, None]
    flux = m.flux[::z_stride]
    node_flux = (1 - wt) * flux[:, j] + wt * flux[:, j + 1]                              # (nz, nt, B)
    g = node_flux.reshape(-1, m.nb)
    # Three matrix products give every object's chi^2 terms at every node at once.
    a = post.weight @ (g * g).T
    b = (post.weight * post.flux) @ g.T
    c = (post.weight * post.flux * post.flux).sum(1, keepdim=True)
    ll = log_like_abc(a, b, c).reshape(post.n, len(z), len(tn))
    return ll + m.prior.log_prob_nodes(post.prior_terms, z, tn)


def log_posterior_grid(post: BatchPosterior, n_interp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (log p (N, nz, nt) unnormalised on the full fine grid, t nodes)."""
    tn = t_nodes(post.model.nt, n_interp)
    return log_posterior_nodes(post, 1, tn), tn


def grid_posterior(post: BatchPosterior, n_interp: int) -> np.ndarray:
    """Marginal p(z) on the fine grid (N, nz), normalised to unit integral (trapezoid in z and in t)."""
    lp, tn = log_posterior_grid(post, n_interp)
    wt = torch.full((len(tn),), float(tn[1] - tn[0]), dtype=torch.float64)
    wt[0] = wt[-1] = 0.5 * wt[0]
    logpz = torch.logsumexp(lp + torch.log(wt), dim=2)
    logpz = logpz - logpz.max(dim=1, keepdim=True).values
    pz = torch.exp(logpz).numpy()
    norm = np.trapezoid(pz, post.model.grid.z, axis=1)
    return pz / norm[:, None]
