"""Influence on numpy blocks: features from photometry, gradient factors per model (TracIn snapshots or
influence-function members), self-influence, and a running top-k of helpful and harmful training rows per
query that never holds the whole matrix.

Spark-free: ``lsst_spark_ml.pipelines.influence`` feeds it one Arrow batch of training rows at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..features import flags as FF
from ..inference.photoz import PhotozPredictor
from ..models import redshift_to_bin
from .checkpoints import Snapshot
from .gradients import Factors, GradientModel, InfluenceFunctionModel, all_factors, self_influence, tracin_scores

# influence_flags bits
NO_FEATURES = 1      # photometry gives no estimate (features.flags NO_ESTIMATE): no gradient
NO_LABEL = 2         # training row without a usable redshift (null, NaN or negative)
PSEUDO_LABEL = 4     # query without a redshift: its gradient uses the ensemble's own most probable bin
NO_ID = 8            # row without an id: it could not be named as helpful or harmful, so it is left out
FLAG_NAMES = {NO_FEATURES: "NO_FEATURES", NO_LABEL: "NO_LABEL", PSEUDO_LABEL: "PSEUDO_LABEL", NO_ID: "NO_ID"}


@dataclass
class Prepared:
    X: np.ndarray          # scaled features of the usable rows
    y: np.ndarray          # bin index of the usable rows
    usable: np.ndarray     # bool per input row
    flags: np.ndarray      # influence_flags per input row (int32)
    feature_flags: np.ndarray


class InfluenceScorer:
    """The ensemble (features, scaling, pseudo-labels) plus the gradient models whose dot products sum to
    the influence: one per TracIn snapshot, or one per member for influence functions."""

    def __init__(self, predictor: PhotozPredictor, models: list):
        self.pred = predictor
        self.models = models
        b = predictor.manifest["bins"]
        self.z_min, self.z_max, self.n_bins = b["z_min"], b["z_max"], b["n_bins"]

    @classmethod
    def tracin(cls, predictor: PhotozPredictor, snapshots: list[Snapshot], layers: int = 1,
               projection_dim: int = 0, seed: int = 0) -> "InfluenceScorer":
        return cls(predictor, [GradientModel(s, layers, projection_dim, seed) for s in snapshots])

    @classmethod
    def influence_function(cls, predictor: PhotozPredictor, hinvs: dict) -> "InfluenceScorer":
        """``hinvs``: member index -> inverse damped Hessian of its output layer."""
        gammas = [m["gamma"] for m in predictor.manifest["members"]]
        return cls(predictor, [InfluenceFunctionModel(i, gammas[i], predictor.ensemble.members[i], torch.as_tensor(h))
                               for i, h in sorted(hinvs.items())])

    def to_bin(self, z: np.ndarray) -> np.ndarray:
        return redshift_to_bin(torch.from_numpy(np.asarray(z, dtype=np.float64)), self.z_min, self.z_max,
                               self.n_bins).numpy()

    def prepare(self, values, errors, kind: str, z: np.ndarray | None, ebv=None, pseudo_labels: bool = False,
                no_id: np.ndarray | None = None) -> Prepared:
        p = self.pred
        X, Xs, fflags = p.scaled_features(values, errors, kind, ebv)
        flags = np.where((fflags & FF.NO_ESTIMATE) != 0, NO_FEATURES, 0).astype(np.int32)
        z = np.full(len(X), np.nan) if z is None else np.asarray(z, dtype=np.float64)
        has_z = np.isfinite(z) & (z >= 0)
        if pseudo_labels:
            flags |= np.where(has_z, 0, PSEUDO_LABEL).astype(np.int32)
        else:
            flags |= np.where(has_z, 0, NO_LABEL).astype(np.int32)
        if no_id is not None:
            flags |= np.where(no_id, NO_ID, 0).astype(np.int32)
        usable = (flags & (NO_FEATURES | NO_LABEL | NO_ID)) == 0
        y = self.to_bin(z[usable])
        if pseudo_labels:
            need = ~has_z[usable]
            if need.any():
                y[need] = np.argmax(p.probabilities(Xs[usable][need]), axis=1)
        return Prepared(Xs[usable].astype(np.float32), y, usable, flags, fflags.astype(np.int64))


class RunningTopK:
    """Per query, the k largest (helpful) and k smallest (harmful) scores seen so far, with their ids."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.pos_s = np.full((0, n_queries), -np.inf)
        self.pos_i = np.zeros((0, n_queries), dtype=np.int64)
        self.neg_s = np.full((0, n_queries), np.inf)
        self.neg_i = np.zeros((0, n_queries), dtype=np.int64)

    @staticmethod
    def _merge(s_old, i_old, s_new, i_new, k, largest: bool):
        s = np.concatenate([s_old, s_new])
        i = np.concatenate([i_old, i_new])
        if len(s) <= k:
            return s, i
        key = -s if largest else s
        sel = np.argpartition(key, k - 1, axis=0)[:k]
        return np.take_along_axis(s, sel, 0), np.take_along_axis(i, sel, 0)

    def update(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """``scores``: (n, Q) for training rows ``ids`` (n,)."""
        n, q = scores.shape
        if n == 0:
            return
        k = min(self.k, n)
        ids_b = np.broadcast_to(ids[:, None], (n, q))
        top = np.argpartition(-scores, k - 1, axis=0)[:k]
        bot = np.argpartition(scores, k - 1, axis=0)[:k]
        self.pos_s, self.pos_i = self._merge(self.pos_s, self.pos_i, np.take_along_axis(scores, top, 0),
                                             np.take_along_axis(ids_b, top, 0), self.k, True)
        self.neg_s, self.neg_i = self._merge(self.neg_s, self.neg_i, np.take_along_axis(scores, bot, 0),
                                             np.take_along_axis(ids_b, bot, 0), self.k, False)

    def rows(self):
        """(query, sign, id, score) candidates: sign +1 helpful (score > 0), -1 harmful (score < 0)."""
        out = []
        for sign, s, i in ((1, self.pos_s, self.pos_i), (-1, self.neg_s, self.neg_i)):
            keep = (s > 0) if sign > 0 else (s < 0)
            r, c = np.nonzero(keep)
            out.append((c.astype(np.int32), np.full(len(c), sign, np.int8), i[r, c], s[r, c]))
        return tuple(np.concatenate(parts) for parts in zip(*out))


def score_block(scorer: InfluenceScorer, query_factors: list[Factors], prep: Prepared, ids: np.ndarray,
                topk: RunningTopK | None, chunk: int = 4096) -> np.ndarray:
    """Self-influence of every input row (NaN where unusable); updates ``topk`` against the queries."""
    si = np.full(len(prep.usable), np.nan)
    if not prep.usable.any():
        return si
    usable_ids = ids[prep.usable]
    vals = np.empty(int(prep.usable.sum()))
    for s in range(0, len(prep.X), chunk):
        f = all_factors(scorer.models, prep.X[s:s + chunk], prep.y[s:s + chunk])
        vals[s:s + chunk] = self_influence(f)
        if topk is not None:
            topk.update(tracin_scores(f, query_factors), usable_ids[s:s + chunk])
    si[prep.usable] = vals
    return si
