"""Spectroscopic target selection: which unlabelled objects would improve the photo-z model most if they
had a spectrum.

Each unlabelled object gets three measured quantities in the model's own scaled feature space:

* uncertainty u: the DCP out-of-distribution score when a DCP model is given, else the entropy of the
  ensemble PDF over ln(n_bins) (how little the model knows about it);
* representativeness: the density of unlabelled objects around it, 1 / mean distance to its
  ``density_k`` nearest neighbours in a random reference sample of the pool (a spectrum of a lone oddity
  teaches the model about one object; one in a dense region, about many);
* coverage: the distance to the nearest labelled training galaxy.

u and density become percentiles against the same reference sample, so the priority
``p = pct(u)^a * pct(density)^b`` is comparable across partitions and surveys. The selection is then a
priority-weighted farthest-first traversal (k-center greedy, Sener & Savarese 2018, weighted): pick the
candidate maximising p * d, where d is its distance to the nearest labelled galaxy or already chosen
target, then shrink d around the choice. High-priority objects in regions the training set already covers,
or next to a chosen target, lose to slightly lower-priority ones that add something new: no redundant
targets. The greedy order is nested, so the first K of a list of N are the list one would get for K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NO_FEATURES = 1      # target_flags: photometry gives no estimate; the row is kept with null scores


def _pairwise_min_k(X: np.ndarray, ref: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """(N, k) smallest Euclidean distances from each row of X to the rows of ref (ascending)."""
    r = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))
    out = np.empty((len(X), k), dtype=np.float64)
    for s in range(0, len(X), chunk):
        x = torch.from_numpy(np.ascontiguousarray(X[s:s + chunk], dtype=np.float32))
        d = torch.cdist(x, r)
        out[s:s + chunk] = torch.topk(d, k, dim=1, largest=False).values.double().numpy()
    return out


def knn_density(X: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """1 / mean distance to the k nearest reference rows; a row that is itself in the reference (distance 0)
    skips itself, so sampled and unsampled rows are measured alike."""
    d = _pairwise_min_k(X, ref, k + 1)
    d = np.where((d[:, :1] <= 1e-7), d[:, 1:], d[:, :k])
    return 1.0 / (d.mean(axis=1) + 1e-6)


def nearest_distance(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    if len(ref) == 0:
        return np.full(len(X), np.inf)
    return _pairwise_min_k(X, ref, 1)[:, 0]


def entropy_uncertainty(pdf: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(pdf, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])


def percentile(values: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    """Fraction of the reference at or below each value, in (0, 1] (ties share the upper rank)."""
    return np.maximum(np.searchsorted(sorted_ref, values, side="right"), 1) / len(sorted_ref)


@dataclass
class Reference:
    """What every worker needs (broadcast): the density sample of the pool, the percentile maps and the
    labelled set's features."""
    ref_X: np.ndarray
    density_sorted: np.ndarray
    uncertainty_sorted: np.ndarray
    labelled_X: np.ndarray
    k: int
    a: float
    b: float
    typical: float          # median nearest-neighbour spacing in the reference: the unit of the reasons

    @classmethod
    def build(cls, ref_X: np.ndarray, ref_uncertainty: np.ndarray, labelled_X: np.ndarray, k: int,
              a: float, b: float) -> "Reference":
        if len(ref_X) <= k:
            raise ValueError(f"the density reference has {len(ref_X)} usable rows; it needs more than "
                             f"influence.density_k={k}")
        dens = knn_density(ref_X, ref_X, k)
        spacing = _pairwise_min_k(ref_X, ref_X, 2)[:, 1]
        return cls(ref_X.astype(np.float32), np.sort(dens), np.sort(ref_uncertainty), labelled_X.astype(np.float32),
                   k, a, b, float(np.median(spacing)))

    def score(self, X: np.ndarray, uncertainty: np.ndarray) -> dict[str, np.ndarray]:
        dens = knn_density(X, self.ref_X, self.k)
        u_pct = percentile(uncertainty, self.uncertainty_sorted)
        d_pct = percentile(dens, self.density_sorted)
        return {"uncertainty": uncertainty, "uncertainty_pct": u_pct, "density": dens, "density_pct": d_pct,
                "dist_labelled": nearest_distance(X, self.labelled_X),
                "priority": u_pct ** self.a * d_pct ** self.b}


def select_diverse(X: np.ndarray, priority: np.ndarray, dist_labelled: np.ndarray, n: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Priority-weighted farthest-first choice of ``n`` rows. Returns (order, d_at_choice, gain): indices in
    the order chosen, each one's distance to the nearest labelled-or-chosen object when chosen, and the
    product that won."""
    X = np.asarray(X, dtype=np.float64)
    d = np.asarray(dist_labelled, dtype=np.float64).copy()
    finite = np.isfinite(d)
    # No labelled set (d = inf): distances to chosen targets alone; the first pick is the top priority.
    d[~finite] = np.nanmax(d[finite]) if finite.any() else 1.0
    pr = np.asarray(priority, dtype=np.float64)
    n = min(n, len(X))
    order, d_at, gain = np.empty(n, np.int64), np.empty(n), np.empty(n)
    taken = np.zeros(len(X), bool)
    for t in range(n):
        g = np.where(taken, -np.inf, pr * d)
        i = int(np.argmax(g))
        order[t], d_at[t], gain[t] = i, d[i], g[i]
        taken[i] = True
        d = np.minimum(d, np.sqrt(((X - X[i]) ** 2).sum(axis=1)))
    return order, d_at, gain


def reasons(u_pct: np.ndarray, d_pct: np.ndarray, d_lab: np.ndarray, d_choice: np.ndarray, typical: float,
            kind: str) -> list[str]:
    """One sentence per target saying which measured quantities put it on the list."""
    out = []
    for u, dp, dl, dc in zip(u_pct, d_pct, d_lab, d_choice):
        parts = [f"{kind} at the {100 * u:.0f}th percentile", f"unlabelled density at the {100 * dp:.0f}th"]
        parts.append(f"{dl / typical:.1f}x the typical spacing from the nearest training galaxy")
        if dc < dl - 1e-9:
            parts.append(f"{dc / typical:.1f}x from the nearest target chosen before it")
        out.append("; ".join(parts))
    return out


class Measure:
    """Scaled features (the photo-z model's space), photo-z and uncertainty of catalog rows."""

    def __init__(self, predictor, dcp=None):
        self.pred = predictor
        self.dcp = dcp
        self.kind = "DCP OOD score" if dcp is not None else "photo-z PDF entropy"

    def __call__(self, values, errors, kind: str, ebv=None) -> dict[str, np.ndarray]:
        from ..features import flags as FF
        from ..inference.summaries import summarize
        p = self.pred
        X, Xs, fflags = p.scaled_features(values, errors, kind, ebv)
        ok = (fflags & FF.NO_ESTIMATE) == 0
        u = np.full(len(X), np.nan)
        z = np.full(len(X), np.nan)
        if ok.any():
            pdf = p.probabilities(Xs[ok])
            z[ok] = summarize(pdf, p.edges)["z_median"]
            if self.dcp is not None:
                Xd, _ = self.dcp.scaler.transform(X[ok])
                u[ok] = self.dcp.score_and_pdf(Xd)[0]
            else:
                u[ok] = entropy_uncertainty(pdf)
        return {"X": Xs.astype(np.float32), "ok": ok, "feature_flags": fflags.astype(np.int64), "uncertainty": u,
                "z_phot": z}
