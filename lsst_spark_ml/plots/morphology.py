"""Attention maps of the morphology networks as contours over the r-band image (matplotlib, Agg)."""
from __future__ import annotations

import math
import os

import numpy as np

LEVELS = (0.25, 0.5, 0.75, 0.95)


def arcsinh_stretch(img: np.ndarray) -> np.ndarray:
    """asinh((img - sky) / noise) with a robust sky (median) and noise (1.4826 MAD): linear near the noise,
    logarithmic in bright cores, so faint arms and a bright bulge show together. NaN stays NaN."""
    img = np.asarray(img, dtype=np.float64)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.full(img.shape, np.nan)
    sky = float(np.median(finite))
    noise = 1.4826 * float(np.median(np.abs(finite - sky)))
    if not noise > 0:
        noise = float(np.std(finite)) or 1.0
    return np.arcsinh((img - sky) / noise)


def attention_grid(images_r: np.ndarray, attn: np.ndarray, titles: list[str], path, ncols: int = 4,
                   levels=LEVELS):
    """One panel per galaxy: the arcsinh-stretched r-band image in grey with the attention map's contours at
    ``levels`` (fractions of the map's maximum) over it. images_r and attn: (n, H, W). Writes a PNG at
    ``path`` and returns ``path``."""
    import matplotlib
    from matplotlib.figure import Figure

    images_r = np.asarray(images_r, dtype=np.float64)
    attn = np.asarray(attn, dtype=np.float64)
    if images_r.ndim != 3 or images_r.shape != attn.shape:
        raise ValueError(f"attention_grid: images_r and attn must both be (n, H, W), got {images_r.shape} and "
                         f"{attn.shape}")
    n = images_r.shape[0]
    if n == 0 or len(titles) != n:
        raise ValueError(f"attention_grid: need one title per galaxy and at least one galaxy, got {n} images and "
                         f"{len(titles)} titles")
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.8 * ncols, 3.0 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    grey = matplotlib.colormaps["gray"].with_extremes(bad="#1f3fbf")     # NaN pixels (chip gaps) in blue
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        s = arcsinh_stretch(images_r[i])
        ok = np.isfinite(s)
        lo, hi = (np.percentile(s[ok], [1.0, 99.7]) if ok.any() else (0.0, 1.0))
        ax.imshow(np.ma.masked_invalid(s), cmap=grey, origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6),
                  interpolation="nearest")
        a = np.nan_to_num(attn[i], nan=0.0)
        peak = float(a.max())
        lv = [lvl * peak for lvl in levels if float(a.min()) < lvl * peak < peak] if peak > 0 else []
        if lv:
            ax.contour(a, levels=lv, cmap="autumn", origin="lower", linewidths=1.0)
        ax.set_title(str(titles[i]), fontsize=9)
    fig.suptitle("last-block attention (contours at " + ", ".join(f"{lvl:g}" for lvl in levels)
                 + " of peak; NaN pixels blue)", fontsize=9)
    fig.savefig(os.fspath(path), dpi=110)
    return path
