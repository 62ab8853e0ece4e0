"""Augmentations for the 11-channel morphology inputs, batched in torch.

Weak view (FixMatch): a random flip and a random multiple of 90 degrees. Galaxy morphology has no preferred
orientation or handedness, and on the pixel grid these are exact (no interpolation), so the object and NaN
masks stay exact too.

Strong view: the weak view, then what separates the survey from the labelled set: a smaller galaxy
(``zoom_out``: shrunk by up to 2x, masks shrunk with it), then on the band channels in linear flux (the inputs
are arcsinh-stretched, ``inputs.normalise``; ``sinh`` undoes the stretch in units of the noise sigma) a broader
PSF (Gaussian blur, sigma drawn per image), optionally redder colours (``colour_shift``: the galaxy moved to
a higher redshift), a fainter object (flux times a factor in [dim_min, 1]) and more sky noise, then a random
erased square (cutout). The ranges cover the survey domain of ``morphology.render``
(2 mag fainter at 1 mag shallower depth, 0.6x the size, PSF 1.05 against 0.7 arcsec). Photometric changes
keep the masks of the original observation: they say where the object and the missing pixels were measured,
and a model must not learn to read the augmentation from them.
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


ZOOMS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# grizy magnitude change (r held fixed) of a galaxy moved from z = 0.07, the middle of the labelled domain's
# redshifts, to z = 0.30, the far end of the survey's: the mean over GalSim's CWW templates (E, Sbc, Scd, Im;
# E alone: g +0.66, Im: +0.38) through the LSST bandpasses (tests/test_morphology_data.py recomputes it).
# Why: the k-correction reddens every class as the 4000 A break moves through g, and g - r is the colour
# that orders the Hubble sequence, so a network trained at low redshift calls a survey galaxy one class
# earlier (README, morphology). The strong view draws a fraction t ~ U(0, 1) of this shift per image.
REDSHIFT_COLOUR_SHIFT = (0.460, 0.0, -0.024, -0.043, -0.031)


def redshift_colours(bands: torch.Tensor, generator: torch.Generator | None = None,
                     shift=REDSHIFT_COLOUR_SHIFT) -> torch.Tensor:
    """Band fluxes (linear, (n, 5, H, W)) of the same galaxies seen redder: magnitudes plus t * ``shift``,
    with t ~ U(0, 1) per image. The noise is not rescaled: the sky of the survey is what it is."""
    t = torch.rand(bands.shape[0], 1, generator=generator)
    factor = 10.0 ** (-0.4 * t * torch.tensor(shift, dtype=torch.float32))
    return bands * factor[:, :, None, None].to(bands.dtype)


def zoom_out(x: torch.Tensor, generator: torch.Generator | None = None, zooms=ZOOMS) -> torch.Tensor:
    """The same galaxy seen smaller: each image shrunk by a factor drawn from ``zooms`` (band flux averaged
    over the merged pixels, masks by nearest pixel) and centred in a canvas of fresh unit sky noise (the
    stretch's scale is the noise sigma, ``inputs.normalise``) with no object and no missing pixels."""
    n, c, h, w = x.shape
    k = torch.randint(0, len(zooms), (n,), generator=generator)
    out = x.clone()
    for i, z in enumerate(zooms):
        sel = k == i
        if z >= 1.0 or not sel.any():
            continue
        hs, ws = max(4, int(round(h * z))), max(4, int(round(w * z)))
        src = x[sel]
        bands = F.interpolate(torch.sinh(src[:, :N_BANDS].float()), size=(hs, ws), mode="area")
        masks = F.interpolate(src[:, N_BANDS:].float(), size=(hs, ws), mode="nearest")
        canvas_b = torch.randn((len(src), N_BANDS, h, w), generator=generator)
        canvas_m = torch.zeros((len(src), c - N_BANDS, h, w))
        y0, x0 = (h - hs) // 2, (w - ws) // 2
        canvas_b[:, :, y0:y0 + hs, x0:x0 + ws] = bands
        canvas_m[:, :, y0:y0 + hs, x0:x0 + ws] = masks
        out[sel] = torch.cat([torch.asinh(canvas_b), canvas_m], 1).to(x.dtype)
    return out


def strong(x: torch.Tensor, generator: torch.Generator | None = None, *, max_blur: float = 2.0,
           dim_min: float = 0.15, max_noise: float = 2.0, erase_frac: float = 0.25,
           colour_shift: bool = False, colour_mags=REDSHIFT_COLOUR_SHIFT) -> torch.Tensor:
    """The strong view (module docstring). Without ``colour_shift`` no draw is made for it, so the random
    stream, and every earlier run, is unchanged; ``colour_mags``: the whole shift (``redshift_colours``)."""
    x = zoom_out(weak(x, generator), generator)
    n, _, h, w = x.shape
    bands = torch.sinh(x[:, :N_BANDS].float())                        # linear flux, stretch-scale units
    sigma = torch.rand(n, generator=generator) * max_blur
    bands = torch.where((sigma > 0.2)[:, None, None, None], _blur(bands, sigma), bands)
    if colour_shift:
        bands = redshift_colours(bands, generator, colour_mags)
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
