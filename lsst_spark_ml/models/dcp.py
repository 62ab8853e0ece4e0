"""DCP (Lee & Shin 2022): two MBRNNs whose entropy gap on an object scores how far it lies from the training set.

The high-entropy network (HE) is pushed towards flat PDFs and the low-entropy one (LE) towards peaked PDFs on
unlabelled objects, while both fit the labelled galaxies with the anchor loss. On familiar objects the two
agree (small gap); on unfamiliar ones the gap opens. Torch only, no Spark.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .mbrnn import MBRNN

SCORE_FLOOR = 1e-5


class DCPPair(nn.Module):
    def __init__(self, n_in: int, n_bins: int, hidden):
        super().__init__()
        self.he = MBRNN(n_in, n_bins, hidden)
        self.le = MBRNN(n_in, n_bins, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.he(x), self.le(x)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax over bins, per row."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def discrepancy(logits_he: torch.Tensor, logits_le: torch.Tensor) -> torch.Tensor:
    return entropy(logits_he) - entropy(logits_le)


def discrepancy_loss(logits_he: torch.Tensor, logits_le: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, m - mean_UL D): open the gap on unlabelled objects up to the margin, no further."""
    return torch.relu(margin - discrepancy(logits_he, logits_le).mean())


def dcp_score(logits_he: torch.Tensor, logits_le: torch.Tensor) -> torch.Tensor:
    """L_DCP = clamp(H_HE - H_LE, 1e-5, ln n_bins); higher means further from the labelled data."""
    return discrepancy(logits_he, logits_le).clamp(SCORE_FLOOR, math.log(logits_he.shape[1]))
