"""The unnormalised log-posterior log p(F | z, t) + log p(z, t | m0) of a batch of objects, in torch.

One implementation serves the grid, the MCMC sampler and the VI fit, so the three target exactly the same
density. Parameters are z in [z_min, z_max] and the template coordinate t in [0, T-1]; the model flux between
grid nodes is bilinear in (z, t), which the grid reproduces exactly at its nodes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import BayesSettings
from .likelihood import FluxData, log_like
from .prior import BPZPrior
from .templates import ModelGrid


class Model:
    """Everything fixed per job: model fluxes and the prior (broadcast once, rebuilt cheaply per worker)."""

    def __init__(self, grid: ModelGrid, s: BayesSettings):
        self.grid = grid
        self.settings = s
        self.flux = torch.as_tensor(grid.flux, dtype=torch.float64)                     # (nz, T, B)
        self.nz, self.nt, self.nb = self.flux.shape
        self.z0, self.dz = float(grid.z[0]), grid.dz
        self.z_max = float(grid.z[-1])
        self.t_max = float(self.nt - 1)
        self.prior = BPZPrior(grid.templates, self.z0, self.z_max, s.prior)
        self._flat = self.flux.reshape(self.nz * self.nt, self.nb)

    def model_flux(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Bilinear model fluxes at (z, t) of any shape -> shape + (B,)."""
        iz = (z - self.z0) / self.dz
        k = torch.clamp(torch.floor(iz), 0, self.nz - 2).long()
        wz = (iz - k).unsqueeze(-1)
        j = torch.clamp(torch.floor(t), 0, self.nt - 2).long()
        wt = (t - j).unsqueeze(-1)
        f = self._flat
        i00 = k * self.nt + j
        return ((1 - wz) * (1 - wt) * f[i00] + wz * (1 - wt) * f[i00 + self.nt]
                + (1 - wz) * wt * f[i00 + 1] + wz * wt * f[i00 + self.nt + 1])


class BatchPosterior:
    """log-posterior of N objects; ``log_prob(z, t)`` takes (N, P) points, -inf outside the support."""

    def __init__(self, model: Model, data: FluxData):
        self.model = model
        self.flux = torch.as_tensor(data.flux, dtype=torch.float64)
        self.weight = torch.as_tensor(data.weight, dtype=torch.float64)
        self.m0 = np.asarray(data.m0, dtype=np.float64)
        self.prior_terms = model.prior.object_terms(self.m0)
        self.n = len(data.flux)

    def subset(self, rows) -> "BatchPosterior":
        """The posterior of some of the objects (rows: index array)."""
        rows = np.asarray(rows)
        return BatchPosterior(self.model, FluxData(self.flux[rows].numpy(), self.weight[rows].numpy(),
                                                   self.m0[rows], (self.weight[rows] > 0).sum(1).numpy()))

    def inside(self, z, t):
        m = self.model
        return (z >= m.z0) & (z <= m.z_max) & (t >= 0) & (t <= m.t_max)

    def log_prob(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.model
        ok = self.inside(z, t)
        zc = torch.clamp(z, m.z0, m.z_max)
        tc = torch.clamp(t, 0.0, m.t_max)
        lp = log_like(m.model_flux(zc, tc), self.flux, self.weight) + m.prior.log_prob(self.prior_terms, zc, tc)
        return torch.where(ok, lp, torch.full_like(lp, -torch.inf))
