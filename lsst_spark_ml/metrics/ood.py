"""Out-of-distribution detection metrics of Lee & Shin (2022, AJ; arXiv:2112.07104), numpy only.

Conventions: OOD is the positive class and a higher score means "more OOD" (L_DCP). An object is flagged OOD
when ``score >= threshold``. sklearn is not a dependency of the project; ``roc_auc`` and ``pr_auc`` follow the
definitions of its ``roc_auc_score`` (Mann-Whitney with ties counted half) and ``average_precision_score``
(step-wise sum over distinct thresholds, no interpolation).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

CATASTROPHIC_DZ = 0.15        # |dz|/(1+z) above which a photo-z is catastrophic (Lee & Shin 2021, 2022)
F_BETA = 1.5                  # Lee & Shin 2022 report F1.5: recall weighted above precision
METRICS = ("accuracy", "balanced_accuracy", "f1_5")


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has {int((~np.isfinite(a)).sum())} non-finite scores")
    return a


def roc_auc(scores_id, scores_ood) -> float:
    """Area under the ROC curve = P(score_ood > score_id) + P(equal) / 2, from mid-ranks (O(n log n))."""
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    allv = np.concatenate([s_id, s_ood])
    uniq, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    # Mid-rank of each distinct value: ties share the average of the ranks they occupy.
    mid = np.cumsum(counts) - (counts - 1) / 2.0
    rank_ood = mid[inv[len(s_id):]].sum()
    n1, n0 = len(s_ood), len(s_id)
    return float((rank_ood - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _counts_by_threshold(s_id: np.ndarray, s_ood: np.ndarray):
    """Distinct thresholds (descending) with the TP and FP counts of ``score >= t`` at each."""
    allv = np.concatenate([s_ood, s_id])
    is_pos = np.concatenate([np.ones(len(s_ood)), np.zeros(len(s_id))])
    order = np.argsort(-allv, kind="mergesort")
    v, p = allv[order], is_pos[order]
    last = np.r_[np.nonzero(np.diff(v))[0], len(v) - 1]     # last index of each run of equal scores
    tp = np.cumsum(p)[last]
    fp = (last + 1) - tp
    return v[last], tp, fp


def pr_auc(scores_id, scores_ood) -> float:
    """Average precision with OOD as the positive class: sum_n (R_n - R_{n-1}) P_n over distinct thresholds."""
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    _, tp, fp = _counts_by_threshold(s_id, s_ood)
    precision = tp / (tp + fp)
    recall = tp / len(s_ood)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _from_counts(tp, fp, n_id: int, n_ood: int, beta: float = F_BETA) -> dict[str, np.ndarray]:
    tp, fp = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    tn, fn = n_id - fp, n_ood - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)   # nothing flagged: precision 0 (sklearn)
        recall = tp / n_ood
        b2 = beta * beta
        fbeta = np.where(precision + recall > 0,
                         (1 + b2) * precision * recall / (b2 * precision + recall), 0.0)
    return {"accuracy": (tp + tn) / (n_id + n_ood), "balanced_accuracy": 0.5 * (recall + tn / n_id),
            "precision": precision, "recall": recall, "f1_5": fbeta, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def threshold_metrics(scores_id, scores_ood, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall and F1.5 of the rule ``score >= threshold`` -> OOD."""
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    tp, fp = int((s_ood >= threshold).sum()), int((s_id >= threshold).sum())
    out = {k: (int(v) if k in ("tp", "fp", "tn", "fn") else float(v))
           for k, v in _from_counts(tp, fp, len(s_id), len(s_ood)).items()}
    out["threshold"] = float(threshold)
    return out


def best_threshold(scores_id, scores_ood, metric: str = "accuracy") -> tuple[float, dict[str, float]]:
    """Threshold maximising ``metric`` (one of METRICS) over every distinct score, and its metrics.

    Ties in the metric go to the highest threshold (fewest objects flagged). Flagging nothing is a candidate
    too (threshold +inf), so a score with no skill is not forced to flag anything.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {METRICS}")
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    thr, tp, fp = _counts_by_threshold(s_id, s_ood)
    thr, tp, fp = np.r_[np.inf, thr], np.r_[0.0, tp], np.r_[0.0, fp]
    values = _from_counts(tp, fp, len(s_id), len(s_ood))[metric]
    k = int(np.argmax(values))          # first maximum = highest threshold (descending order)
    return float(thr[k]), threshold_metrics(s_id, s_ood, thr[k])


def tercile_catastrophic(scores, dz_over_1pz, edges: tuple[float, float] | None = None,
                         limit: float = CATASTROPHIC_DZ) -> dict:
    """Catastrophic fraction (|dz|/(1+z) > limit) among ID galaxies in the low, middle and high score terciles.

    ``edges`` defaults to the 1/3 and 2/3 quantiles of ``scores`` (the DCP model's stored thresholds can be
    passed instead). Bins: score <= e1, e1 < score <= e2, score > e2. A score that ranks catastrophic
    photo-z errors well gives fractions rising from low to high.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    dz = np.abs(np.asarray(dz_over_1pz, dtype=np.float64).ravel())
    if s.shape != dz.shape:
        raise ValueError(f"scores ({s.size}) and dz_over_1pz ({dz.size}) differ in length")
    ok = np.isfinite(s) & np.isfinite(dz)
    s, dz = s[ok], dz[ok]
    if s.size == 0:
        raise ValueError("no finite (score, dz) pairs")
    e1, e2 = edges if edges is not None else np.quantile(s, [1 / 3, 2 / 3])
    idx = np.digitize(s, [e1, e2], right=True)      # 0: <= e1, 1: (e1, e2], 2: > e2
    cat = dz > limit
    n = np.bincount(idx, minlength=3)
    n_cat = np.bincount(idx, weights=cat, minlength=3)
    frac = [float(c / k) if k else math.nan for c, k in zip(n_cat, n)]
    return {"edges": [float(e1), float(e2)], "n": n.tolist(), "n_catastrophic": n_cat.astype(int).tolist(),
            "fraction": frac, "overall": float(cat.mean()), "limit": limit, "n_dropped": int((~ok).sum())}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None       # strict JSON has no NaN/inf
    return x


def report(scores_id, scores_ood_by_kind: Mapping[str, np.ndarray], *, threshold: float | None = None,
           metric: str = "accuracy", dz_over_1pz=None, tercile_edges: tuple[float, float] | None = None) -> dict:
    """JSON-able evaluation of ID scores against each labelled-OOD kind and against all kinds pooled.

    Per kind: n, ROC-AUC, PR-AUC (with its chance level, the OOD fraction), the best threshold for ``metric``
    and, when ``threshold`` is given (e.g. the model's stored one), the metrics at it. With ``dz_over_1pz``
    (ID galaxies, same order as ``scores_id``) the catastrophic fraction per score tercile is added.
    """
    s_id = _scores(scores_id, "scores_id")
    groups = {k: _scores(v, f"scores_ood[{k}]") for k, v in scores_ood_by_kind.items()}
    if not groups:
        raise ValueError("scores_ood_by_kind is empty")
    if len(groups) > 1:
        groups["all"] = np.concatenate(list(groups.values()))
    out: dict = {"n_id": len(s_id), "metric": metric, "kinds": {}}
    for kind, s_ood in groups.items():
        thr, best = best_threshold(s_id, s_ood, metric)
        entry = {"n": len(s_ood), "roc_auc": roc_auc(s_id, s_ood), "pr_auc": pr_auc(s_id, s_ood),
                 "pr_auc_chance": len(s_ood) / (len(s_ood) + len(s_id)), "best": best}
        if threshold is not None:
            entry["at_threshold"] = threshold_metrics(s_id, s_ood, threshold)
        out["kinds"][kind] = entry
    if dz_over_1pz is not None:
        out["catastrophic_terciles"] = tercile_catastrophic(s_id, dz_over_1pz, tercile_edges)
    return _jsonable(out)
