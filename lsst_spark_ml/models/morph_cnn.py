"""The plain convolutional baseline beside DAT for galaxy morphology. Torch only, no Spark.

A ResNet with basic blocks (two 3x3 convolutions and an identity or 1x1 projection shortcut). GroupNorm in
place of BatchNorm: the morphology batches mix labelled, weak and strong views (FixMatch) and are small at
480 px, and per-worker inference then does not depend on the batch. The stem (7x7 stride 2, 3x3 max-pool
stride 2) gives the same stride 4 as DAT's patch embedding; every later stage halves the map.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dat import ConfigMixin, DropPath, _is_real, attention_to_input, inference_passes


@dataclass(frozen=True)
class CNNConfig(ConfigMixin):
    in_chans: int = 11
    num_classes: int = 6
    widths: tuple = (64, 128, 256, 512)
    depths: tuple = (2, 2, 2, 2)
    norm_groups: int = 8                      # GroupNorm groups; must divide every width
    drop_path: float = 0.0

    def __post_init__(self):
        self._normalise()
        self._positive_ints("in_chans", "num_classes", "norm_groups")
        if not isinstance(self.widths, tuple) or not self.widths:
            self._bad("widths", "needs at least one stage")
        self._per_stage(len(self.widths), "widths", "depths")
        if any(w % self.norm_groups for w in self.widths):
            self._bad("norm_groups", f"must divide every width {self.widths}")
        if not _is_real(self.drop_path) or not 0.0 <= self.drop_path < 1.0:
            self._bad("drop_path", "must be in [0, 1)")
        object.__setattr__(self, "drop_path", float(self.drop_path))

    @classmethod
    def tiny_cpu(cls, num_classes: int = 6) -> "CNNConfig":
        """Trains on 2 CPU cores at 64 x 64 in minutes (about the tiny DAT's multiply-adds)."""
        return cls(num_classes=num_classes, widths=(24, 48, 96), depths=(1, 1, 1), norm_groups=8)

    @classmethod
    def base(cls, num_classes: int = 6) -> "CNNConfig":
        """ResNet-18 layout at 1.5x width: about DAT-Tiny's multiply-adds (4.5 vs 4.6 G at 224 px)."""
        return cls(num_classes=num_classes, widths=(96, 192, 384, 768), depths=(2, 2, 2, 2), norm_groups=8,
                   drop_path=0.1)

    @classmethod
    def dat_tiny(cls, num_classes: int = 6) -> "CNNConfig":
        """The CNN that stands beside DAT-Tiny (the ``dat_tiny`` preset for network ``cnn``): ``base``."""
        return cls.base(num_classes)


def _gn(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, ch)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, drop_path: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _gn(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _gn(c_out, groups)
        # Each residual branch starts at zero so that a fresh network is a chain of identities: steadier
        # early training without BatchNorm (Goyal et al. 2017).
        nn.init.zeros_(self.norm2.weight)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), _gn(c_out, groups))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        y = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu(self.shortcut(x) + self.drop_path(y))


class MorphCNN(nn.Module):
    def __init__(self, cfg: CNNConfig | Mapping | None = None):
        super().__init__()
        if cfg is None:
            cfg = CNNConfig()
        elif isinstance(cfg, Mapping):
            cfg = CNNConfig.from_dict(cfg)
        self.cfg = cfg
        w0, g = cfg.widths[0], cfg.norm_groups
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, w0, 7, 2, 3, bias=False), _gn(w0, g), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        rates = torch.linspace(0.0, cfg.drop_path, sum(cfg.depths)).tolist()
        self.stages = nn.ModuleList()
        b, c_in = 0, w0
        for i, (w, d) in enumerate(zip(cfg.widths, cfg.depths)):
            blocks = [BasicBlock(c_in if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1, g, rates[b + j])
                      for j in range(d)]
            self.stages.append(nn.Sequential(*blocks))
            b, c_in = b + d, w
        self.head = nn.Linear(cfg.widths[-1], cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _check(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"MorphCNN expects (B, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def _activation_bytes(self, x: torch.Tensor) -> int:
        """Peak activation bytes per image, about: 8 float32 maps at the stem's stride 2."""
        return (x.shape[-2] // 2) * (x.shape[-1] // 2) * self.cfg.widths[0] * 4 * 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) -> logits (B, num_classes)."""
        self._check(x)
        outs = [self.head(self.forward_features(c).mean((2, 3)))
                for c in inference_passes(x, self._activation_bytes(x))]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits, attn (B, H, W) float32 in [0, 1]).

        attn is a gradient-free saliency proxy, not attention: the root mean square over channels of the
        last stage's feature map (the activations the pooled head reads), resized bilinearly to the input
        and divided by its per-image maximum.
        """
        self._check(x)
        logits, maps = [], []
        for c in inference_passes(x, self._activation_bytes(x)):
            f = self.forward_features(c)
            logits.append(self.head(f.mean((2, 3))))
            maps.append(attention_to_input(f.float().pow(2).mean(1).sqrt(), x.shape[-2:]))
        return torch.cat(logits), torch.cat(maps)

