"""Point estimates and intervals of binned PDFs (piecewise-constant density within each bin)."""
from __future__ import annotations

import numpy as np

POINT_COLUMNS = ("z_mean", "z_mode", "z_median", "z_std", "z_lo68", "z_hi68")


def quantiles(pdf: np.ndarray, edges: np.ndarray, qs) -> np.ndarray:
    """Quantiles of each row's distribution, linear inside the bin where the CDF crosses q. -> (len(qs), N)."""
    cdf = np.cumsum(pdf, axis=1, dtype=np.float64)
    cdf /= cdf[:, -1:]
    width = np.diff(edges)
    n, k = pdf.shape
    rows = np.arange(n)
    out = np.empty((len(qs), n))
    for i, q in enumerate(qs):
        idx = np.minimum((cdf < q).sum(axis=1), k - 1)
        lo = np.where(idx > 0, cdf[rows, np.maximum(idx - 1, 0)], 0.0)
        p = pdf[rows, idx].astype(np.float64)
        frac = np.clip(np.where(p > 0, (q - lo) / np.where(p > 0, p, 1.0), 0.5), 0.0, 1.0)
        out[i] = edges[idx] + frac * width[idx]
    return out


def summarize(pdf: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
    """z_mean, z_mode, z_median, z_std (true standard deviation, within-bin spread included), z_lo68, z_hi68."""
    pdf = np.asarray(pdf, dtype=np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    width = np.diff(edges)
    mean = pdf @ centres
    second = pdf @ (centres ** 2 + width ** 2 / 12.0)
    std = np.sqrt(np.maximum(second - mean ** 2, 0.0))
    q16, q50, q84 = quantiles(pdf, edges, (0.158655, 0.5, 0.841345))
    return {"z_mean": mean, "z_mode": centres[np.argmax(pdf, axis=1)], "z_median": q50, "z_std": std,
            "z_lo68": q16, "z_hi68": q84}


def summarize_torch(pdf, edges: np.ndarray) -> dict:
    """``summarize`` for a torch tensor, on the tensor's device (float64), returning float64 numpy arrays.

    On a GPU executor the network's PDFs then never come back to the host for the summaries: numpy's
    summaries run at about 180 k rows/s on one core, which would otherwise bound a GPU that computes the
    PDFs tens of times faster. Same arithmetic as ``summarize`` (tests/test_inference_fast.py compares them).
    """
    import torch
    p = pdf.double()
    e = torch.as_tensor(edges, dtype=torch.float64, device=p.device)
    centres, width = 0.5 * (e[:-1] + e[1:]), e[1:] - e[:-1]
    mean = p @ centres
    std = torch.sqrt(torch.clamp(p @ (centres ** 2 + width ** 2 / 12.0) - mean ** 2, min=0.0))
    cdf = torch.cumsum(p, 1)
    cdf = cdf / cdf[:, -1:]
    k = p.shape[1]
    out = {"z_mean": mean, "z_mode": centres[torch.argmax(p, 1)], "z_std": std}
    for name, q in (("z_lo68", 0.158655), ("z_median", 0.5), ("z_hi68", 0.841345)):
        idx = torch.clamp((cdf < q).sum(1), max=k - 1)
        lo = torch.where(idx > 0, cdf.gather(1, torch.clamp(idx - 1, min=0)[:, None])[:, 0], 0.0)
        pk = p.gather(1, idx[:, None])[:, 0]
        frac = torch.where(pk > 0, (q - lo) / torch.where(pk > 0, pk, 1.0), 0.5).clamp(0.0, 1.0)
        out[name] = e[idx] + frac * width[idx]
    return {c: out[c].cpu().numpy() for c in POINT_COLUMNS}
