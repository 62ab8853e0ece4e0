"""MBRNN (Lee & Shin 2021): a multiple-bin regression network for photometric redshifts. Torch only, no Spark."""
from __future__ import annotations

import torch
from torch import nn


class MBRNN(nn.Module):
    """Fully connected Linear -> BatchNorm1d -> Softplus blocks, then logits over redshift bins."""

    def __init__(self, n_in: int, n_bins: int = 64, hidden: list[int] | tuple[int, ...] = (128, 256, 512, 1024,
                                                                                        512, 256, 128, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = n_in
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.Softplus()]
            prev = h
        layers.append(nn.Linear(prev, n_bins))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def anchor_loss_from_log_probs(logp: torch.Tensor, target_bin: torch.Tensor, gamma: float = 0.0,
                               anchor_margin: float = 0.05) -> torch.Tensor:
    """Anchor loss (Ryou et al. 2019) on softmax outputs, averaged over the batch.

    L = sum_k [ -y_k log p_k - (1 - y_k) (1 + p_k - p*)^gamma log(1 - p_k) ],  p* = max(p_true - margin, 0).
    gamma = 0 is a sum of one-vs-all binary cross-entropies, not softmax cross-entropy.
    """
    onehot = torch.nn.functional.one_hot(target_bin, logp.shape[1]).to(logp.dtype)
    return anchor_loss_onehot(logp, onehot, gamma, anchor_margin)


def anchor_loss_onehot(logp: torch.Tensor, onehot: torch.Tensor, gamma: float = 0.0,
                       anchor_margin: float = 0.05) -> torch.Tensor:
    """The anchor loss with the target given as a one-hot matrix (``torch.func.vmap`` cannot build one)."""
    p = logp.exp()
    p_true = (p * onehot).sum(dim=1, keepdim=True)
    p_star = (p_true - anchor_margin).clamp(min=0.0).detach()
    neg = (1.0 - onehot) * torch.log1p(-p.clamp(max=1.0 - 1e-6))
    if gamma != 0.0:
        neg = neg * (1.0 + p - p_star).pow(gamma)
    return (-(onehot * logp) - neg).sum(dim=1).mean()


def anchor_loss(logits: torch.Tensor, target_bin: torch.Tensor, gamma: float = 0.0,
                anchor_margin: float = 0.05) -> torch.Tensor:
    return anchor_loss_from_log_probs(torch.log_softmax(logits.float(), dim=1), target_bin, gamma, anchor_margin)


def ensemble_probabilities(member_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """p_k = sum_m |w_mk| p_mk / sum_{m,k'} |w_mk'| p_mk'.  member_probs: (M, N, K), weights: (M, K)."""
    num = (weights.abs().unsqueeze(1) * member_probs).sum(dim=0)
    return num / num.sum(dim=1, keepdim=True).clamp(min=1e-30)


class MBRNNEnsemble(nn.Module):
    """Members trained with different anchor-loss gamma, combined by learned per-bin weights."""

    def __init__(self, members: list[MBRNN], weights: torch.Tensor | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        n_bins = members[0].net[-1].out_features
        w = weights if weights is not None else torch.full((len(members), n_bins), 1.0 / len(members))
        self.weights = nn.Parameter(w.clone().float())

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns probabilities (N, K), not logits."""
        return ensemble_probabilities(self.member_probabilities(x), self.weights)


def bin_edges(z_min: float, z_max: float, n_bins: int) -> torch.Tensor:
    return torch.linspace(z_min, z_max, n_bins + 1, dtype=torch.float64)


def redshift_to_bin(z: torch.Tensor, z_min: float, z_max: float, n_bins: int) -> torch.Tensor:
    """Bin index of each redshift; values beyond the range go to the edge bins."""
    idx = torch.floor((z - z_min) / (z_max - z_min) * n_bins).long()
    return idx.clamp(0, n_bins - 1)
