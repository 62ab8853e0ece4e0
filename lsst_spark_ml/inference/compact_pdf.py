"""Compact binned PDFs: one byte per bin (64 B for the 64-bin MBRNN PDF instead of 256 B of float32).

Format ``uint8`` (square-root companding, per-row scale implicit):

    q_k = round(255 * sqrt(p_k / max_j p_j))          encode, one uint8 per bin
    p_k = (q_k / 255)^2 / sum_j (q_j / 255)^2          decode

The square root spends the 8 bits where the probability is: relative error ~ 1/q_k (0.4 % at the peak)
and bins below (0.5/255)^2 = 3.8e-6 of the peak become 0. The per-row scale needs no storage because a
PDF sums to 1: decoding renormalises. A row that has no PDF (NaN: the NO_ESTIMATE rows) encodes as all
zeros, which no real PDF can produce (its peak bin always codes 255), and decodes back to NaN; in Spark the
column is null for those rows, as the float32 column is.

In Spark and Parquet the column is ``binary`` (K bytes per row; Parquet adds a 4-byte length).

qp (LSST DESC's PDF library, ``qp-prob``) representations, without importing qp:
 * ``qp.hist``: ``to_qp_hist(codes, edges)`` -> {"bins": edges (K+1,), "pdfs": densities (N, K)}: the decoded
   probabilities divided by the bin widths, i.e. exactly this project's piecewise-constant PDF;
   ``qp.Ensemble(qp.hist, data=to_qp_hist(...))``.
 * ``qp.quant``: ``to_qp_quant(codes, edges, quants)`` -> {"quants": levels (Q,), "locs": (N, Q)}: the
   redshifts where the piecewise-linear CDF reaches each level (the same interpolation ``z_median`` uses);
   ``qp.Ensemble(qp.quant, data=to_qp_quant(...))``.
``to_qp_ensemble`` does the call when qp is installed.
"""
from __future__ import annotations

import numpy as np

FORMATS = ("float32", "uint8")
_LEVELS = 255.0


def bytes_per_object(fmt: str, n_bins: int) -> int:
    """Payload bytes of one PDF (Parquet adds 4 per row for a binary value, Arrow a 4-byte offset)."""
    if fmt == "float32":
        return 4 * n_bins
    if fmt == "uint8":
        return n_bins
    raise ValueError(f"unknown PDF format {fmt!r}; one of {FORMATS}")


def encode_uint8(pdf: np.ndarray) -> np.ndarray:
    """(N, K) probabilities (rows of NaN: no PDF) -> (N, K) uint8 codes (rows of 0 for no PDF)."""
    p = np.asarray(pdf, dtype=np.float64)
    p = np.where(p > 0, p, 0.0)                             # NaN -> 0 as well; tiny negatives from rounding
    peak = p.max(axis=1, keepdims=True)
    valid = np.isfinite(np.asarray(pdf, dtype=np.float64)).all(axis=1) & (peak[:, 0] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.rint(_LEVELS * np.sqrt(p / np.where(peak > 0, peak, 1.0)))
    q[~valid] = 0
    return q.astype(np.uint8)


def decode_uint8(codes: np.ndarray) -> np.ndarray:
    """(N, K) uint8 codes -> (N, K) float32 probabilities summing to 1; all-zero rows -> NaN."""
    q = np.asarray(codes, dtype=np.float64) / _LEVELS
    p = q * q
    s = p.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = p / s
    out[s[:, 0] == 0] = np.nan
    return out.astype(np.float32)


def encode(pdf: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "float32":
        return np.asarray(pdf, dtype=np.float32)
    if fmt == "uint8":
        return encode_uint8(pdf)
    raise ValueError(f"unknown PDF format {fmt!r}; one of {FORMATS}")


def decode(codes: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "float32":
        return np.asarray(codes, dtype=np.float32)
    if fmt == "uint8":
        return decode_uint8(codes)
    raise ValueError(f"unknown PDF format {fmt!r}; one of {FORMATS}")


def codes_from_binary(values, n_bins: int) -> np.ndarray:
    """A Spark/Arrow binary column (bytes per row, None for null) -> (N, K) uint8, null rows all zero."""
    import pyarrow as pa
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.binary())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.binary())
    out = np.zeros((len(arr), n_bins), dtype=np.uint8)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if valid.any():
        dense = arr.filter(pa.array(valid))                  # a fresh array: offsets start at element 0
        m = len(dense)
        offs = np.frombuffer(dense.buffers()[1], dtype=np.int32)[dense.offset:dense.offset + m + 1]
        if not np.all(np.diff(offs) == n_bins):
            raise ValueError(f"compact PDF values are not all {n_bins} bytes long")
        flat = np.frombuffer(dense.buffers()[2], dtype=np.uint8)
        out[valid] = flat[offs[0]:offs[-1]].reshape(m, n_bins)
    return out


def binary_array(codes: np.ndarray, valid: np.ndarray):
    """(N, K) uint8 codes -> pyarrow binary array of K-byte values (null where not ``valid``), no row loop."""
    import pyarrow as pa
    n, k = codes.shape
    offsets = np.arange(0, (n + 1) * k, k, dtype=np.int32)
    data = np.ascontiguousarray(codes, dtype=np.uint8).ravel()
    validity = pa.array(np.asarray(valid, dtype=bool)).buffers()[1] if not np.all(valid) else None
    return pa.Array.from_buffers(pa.binary(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=int(n - np.count_nonzero(valid)))


# ---------------------------------------------------------------- qp representations

def to_qp_hist(codes_or_pdf: np.ndarray, edges: np.ndarray, fmt: str = "uint8") -> dict:
    """qp.hist parameters: bin edges and per-bin densities (probability / width)."""
    p = decode(codes_or_pdf, fmt).astype(np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    return {"bins": edges, "pdfs": p / np.diff(edges)}


def to_qp_quant(codes_or_pdf: np.ndarray, edges: np.ndarray, quants=None, fmt: str = "uint8") -> dict:
    """qp.quant parameters: quantile levels and the redshifts where each row's CDF reaches them.

    Default levels: 0.01, 0.02, ..., 0.99 (qp interpolates the CDF between them; rows without a PDF: NaN)."""
    from .summaries import quantiles
    p = decode(codes_or_pdf, fmt).astype(np.float64)
    qs = np.linspace(0.01, 0.99, 99) if quants is None else np.asarray(quants, dtype=np.float64)
    locs = np.full((len(p), len(qs)), np.nan)
    ok = np.isfinite(p).all(axis=1)
    if ok.any():
        locs[ok] = quantiles(p[ok], np.asarray(edges, dtype=np.float64), qs).T
    return {"quants": qs, "locs": locs}


def to_qp_ensemble(codes_or_pdf: np.ndarray, edges: np.ndarray, representation: str = "hist",
                   fmt: str = "uint8"):
    """A ``qp.Ensemble`` (needs ``pip install qp-prob``) in the hist or quant representation."""
    import qp
    if representation == "hist":
        return qp.Ensemble(qp.hist, data=to_qp_hist(codes_or_pdf, edges, fmt))
    if representation == "quant":
        return qp.Ensemble(qp.quant, data=to_qp_quant(codes_or_pdf, edges, fmt=fmt))
    raise ValueError("representation must be hist or quant")
