"""A coarse scan of the posterior that seeds both samplers in every mode that carries mass.

Photo-z posteriors are often multimodal (Lyman/Balmer-break confusions); local samplers started in one mode
rarely find the other. The scan is cheap (every 10th fine redshift times the templates) and does not change
what either method targets: MCMC still converges to the exact posterior, VI still maximises the ELBO.
"""
from __future__ import annotations

import torch

from .posterior import BatchPosterior

COARSE_STEP = 3         # every 3rd fine redshift (dz = 0.006): narrow low-z peaks are not stepped over
COARSE_INTERP = 1       # one mixture node between templates: the z-t ridges lie between templates


def coarse_scan(post: BatchPosterior) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (z nodes, t nodes, log p (N, nz_c * nt_c)) of the coarse grid, flattened z-major."""
    from .grid import log_posterior_nodes, t_nodes
    m = post.model
    z = torch.as_tensor(m.grid.z[::COARSE_STEP], dtype=torch.float64)
    t = t_nodes(m.nt, COARSE_INTERP)
    return z, t, log_posterior_nodes(post, COARSE_STEP, t).reshape(post.n, -1)


def draw_initial(post: BatchPosterior, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points per object drawn from the coarse posterior, jittered within their cell -> (N, n, 2)."""
    m = post.model
    z, t, lp = coarse_scan(post)
    idx = torch.multinomial(torch.softmax(lp, dim=1), n, replacement=True, generator=gen)
    zi, ti = idx // len(t), idx % len(t)
    dz = float(z[1] - z[0])
    zs = z[zi] + (torch.rand(zi.shape, generator=gen, dtype=torch.float64) - 0.5) * dz
    ts = t[ti] + (torch.rand(ti.shape, generator=gen, dtype=torch.float64) - 0.5) * float(t[1] - t[0])
    return torch.stack([zs.clamp(m.z0, m.z_max), ts.clamp(0, m.t_max)], dim=-1)


def peaks(post: BatchPosterior, k: int, min_sep: float = 0.1):
    """The k most probable coarse cells at least ``min_sep`` apart in z, each with the mass, mean and spread of
    the coarse posterior within ``min_sep`` of it -> (mean (N, k, 2), sd (N, k, 2), log mass (N, k))."""
    z, t, lp = coarse_scan(post)
    p = torch.softmax(torch.nan_to_num(lp, nan=-torch.inf), dim=1)
    p = torch.nan_to_num(p, nan=1.0 / p.shape[1])
    zf = z.repeat_interleave(len(t))
    tf = t.repeat(len(z))
    free = torch.ones_like(p, dtype=torch.bool)
    means, sds, masses = [], [], []
    dz = float(z[1] - z[0])
    for _ in range(k):
        best = torch.where(free, p, torch.full_like(p, -1.0)).argmax(dim=1)
        near = (zf[None, :] - zf[best][:, None]).abs() < min_sep
        w = p * (near & free)
        mass = w.sum(1)
        wn = w / mass.clamp(min=1e-300)[:, None]
        mz, mt = wn @ zf, wn @ tf
        sz = torch.sqrt((wn * (zf[None] - mz[:, None]) ** 2).sum(1)).clamp(min=dz / 2)
        st = torch.sqrt((wn * (tf[None] - mt[:, None]) ** 2).sum(1)).clamp(min=0.3)
        # An empty window (all mass already taken) falls back on the cell itself.
        empty = mass <= 0
        mz = torch.where(empty, zf[best], mz)
        mt = torch.where(empty, tf[best], mt)
        means.append(torch.stack([mz, mt], -1))
        sds.append(torch.stack([sz, st], -1))
        masses.append(torch.log(mass.clamp(min=1e-12)))
        free &= ~near
    return torch.stack(means, 1), torch.stack(sds, 1), torch.stack(masses, 1)
