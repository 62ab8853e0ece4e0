"""Augmentations for the 11-channel morphology inputs, batched in torch.

Weak view (FixMatch): a random flip and a random multiple of 90 degrees. Galaxy morphology has no preferred
orientation or handedness, and on the pixel grid these are exact (no interpolation), so the object and NaN
masks stay exact too.

Strong view: the weak view, then what separates the survey from the labelled set, applied to the band
channels in linear flux (the inputs are arcsinh-stretched, ``inputs.normalise``; ``sinh`` undoes the stretch
in units of the stretch scale): a broader PSF (Gaussian blur, sigma drawn per image), a fainter object
(flux times a factor in [dim_min, 1]) and more sky noise, then a random erased square (cutout). The masks are
kept from the original observation: they say where the object and the missing pixels were measured, and a
model must not learn to read the augmentation from them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

N_BANDS = 5


def weak(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flip then rot90 per image; ``x`` (n, C, H, W) with H == W."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    k = torch.randint(0, 4, (n,), generator=generator)
    out = torch.where(flip[:, None, None, None], x.flip(-1), x)
    res = out.clone()
    for r in range(1, 4):
        sel = k == r
        if sel.any():
            res[sel] = torch.rot90(out[sel], r, dims=(-2, -1))
    return res


def _blur(v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image with its own sigma (pixels); v (n, c, H, W), sigma (n,)."""
    n, c, h, w = v.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, dtype=v.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)                                   # (n, 2r+1)
    kk = k.repeat_interleave(c, 0)                                    # one kernel per (image, band)
    flat = v.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kk[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kk[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def strong(x: torch.Tensor, generator: torch.Generator | None = None, *, max_blur: float = 1.5,
           dim_min: float = 0.4, max_noise: float = 1.0, erase_frac: float = 0.25) -> torch.Tensor:
    """The strong view (module docstring); the mask channels are carried unchanged."""
    x = weak(x, generator)
    n, _, h, w = x.shape
    bands = torch.sinh(x[:, :N_BANDS].float())                        # linear flux, stretch-scale units
    sigma = torch.rand(n, generator=generator) * max_blur
    bands = torch.where((sigma > 0.2)[:, None, None, None], _blur(bands, sigma), bands)
    dim = dim_min + (1 - dim_min) * torch.rand(n, 1, 1, 1, generator=generator)
    noise = max_noise * torch.rand(n, 1, 1, 1, generator=generator)
    bands = bands * dim + noise * torch.randn(bands.shape, generator=generator)
    out = x.clone()
    out[:, :N_BANDS] = torch.asinh(bands).to(x.dtype)
    # Cutout: one erased square per image, at most erase_frac of the side, anywhere in the image.
    side = (torch.rand(n, generator=generator) * erase_frac * h).long()
    y0 = (torch.rand(n, generator=generator) * h).long()
    x0 = (torch.rand(n, generator=generator) * w).long()
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    box = ((rows >= y0[:, None, None]) & (rows < (y0 + side)[:, None, None])
           & (cols >= x0[:, None, None]) & (cols < (x0 + side)[:, None, None]))
    out[:, :N_BANDS] = out[:, :N_BANDS].masked_fill(box[:, None], 0.0)
    return out
