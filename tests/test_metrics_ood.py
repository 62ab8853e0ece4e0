"""OOD metrics: hand-checkable cases, brute-force references, and a run on the labelled OOD set."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lsst_spark_ml.metrics import ood as M


def brute_auc(s_id, s_ood):
    diff = np.asarray(s_ood)[:, None] - np.asarray(s_id)[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def brute_ap(s_id, s_ood):
    s_id, s_ood = np.asarray(s_id), np.asarray(s_ood)
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s_id) | set(s_ood), reverse=True):
        tp, fp = (s_ood >= t).sum(), (s_id >= t).sum()
        r = tp / len(s_ood)
        ap += (r - prev_r) * tp / (tp + fp)
        prev_r = r
    return ap


def brute_metrics(s_id, s_ood, t, beta=1.5):
    tp, fp = (s_ood >= t).sum(), (s_id >= t).sum()
    fn, tn = len(s_ood) - tp, len(s_id) - fp
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / len(s_ood)
    f = (1 + beta ** 2) * p * r / (beta ** 2 * p + r) if p + r else 0.0
    return {"accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": p, "recall": r, "f1_5": f}


def test_hand_checked_cases():
    assert M.roc_auc([0, 1], [2, 3]) == 1.0
    assert M.roc_auc([2, 3], [0, 1]) == 0.0
    assert M.roc_auc([0, 1], [1, 2]) == pytest.approx(3.5 / 4)        # one tie counts half
    assert M.roc_auc([5, 5], [5, 5]) == 0.5
    assert M.pr_auc([0, 1], [2, 3]) == 1.0
    # Ranking 3(ID) 2(ID) 1(OOD) 0(OOD): precision 1/3 at recall 1/2, 1/2 at recall 1.
    assert M.pr_auc([2, 3], [0, 1]) == pytest.approx(0.5 / 3 + 0.25)
    m = M.threshold_metrics([0, 1, 2], [1.5, 3], threshold=3)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 0, 3, 1)
    assert m["accuracy"] == pytest.approx(0.8) and m["precision"] == 1.0 and m["recall"] == 0.5
    assert m["f1_5"] == pytest.approx(3.25 * 0.5 / 2.75)              # (1+b^2)PR/(b^2 P+R), b = 1.5
    none = M.threshold_metrics([0, 1], [2], threshold=10)
    assert none["precision"] == 0.0 and none["f1_5"] == 0.0 and none["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    # Integer scores force many ties, the case where shortcuts usually go wrong.
    s_id = rng.integers(0, 15, size=rng.integers(5, 80)).astype(float)
    s_ood = rng.integers(5, 20, size=rng.integers(5, 80)).astype(float)
    assert M.roc_auc(s_id, s_ood) == pytest.approx(brute_auc(s_id, s_ood), abs=1e-12)
    assert M.roc_auc(s_ood, s_id) == pytest.approx(1 - M.roc_auc(s_id, s_ood), abs=1e-12)
    assert M.pr_auc(s_id, s_ood) == pytest.approx(brute_ap(s_id, s_ood), abs=1e-12)
    cands = np.r_[np.unique(np.r_[s_id, s_ood]), np.inf]
    for t in cands[::3]:
        got, ref = M.threshold_metrics(s_id, s_ood, t), brute_metrics(s_id, s_ood, t)
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, abs=1e-12)
    for metric in ("accuracy", "f1_5"):
        thr, best = M.best_threshold(s_id, s_ood, metric)
        assert best[metric] == pytest.approx(max(brute_metrics(s_id, s_ood, t)[metric] for t in cands))
        assert best["threshold"] == thr


def test_auc_invariant_to_monotonic_transform():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 500), rng.normal(1, 1, 400)
    assert M.roc_auc(np.exp(a), np.exp(b)) == pytest.approx(M.roc_auc(a, b))
    assert M.pr_auc(np.exp(a), np.exp(b)) == pytest.approx(M.pr_auc(a, b))
    # Two unit Gaussians 1 sigma apart: AUC = Phi(1/sqrt 2) = 0.760.
    big_a, big_b = rng.normal(0, 1, 20000), rng.normal(1, 1, 20000)
    assert M.roc_auc(big_a, big_b) == pytest.approx(0.5 * (1 + math.erf(0.5)), abs=0.01)


def test_best_threshold_separable_and_useless():
    thr, m = M.best_threshold([0.1, 0.2, 0.3], [0.8, 0.9])
    assert thr == 0.8 and m["accuracy"] == 1.0 and m["f1_5"] == 1.0
    # A score with no skill on a mostly-ID sample flags nothing rather than everything.
    thr, m = M.best_threshold([1.0] * 9, [1.0])
    assert thr == math.inf and m["accuracy"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="metric"):
        M.best_threshold([0], [1], metric="auc")


def test_tercile_catastrophic():
    scores = np.arange(1, 10, dtype=float)
    dz = np.array([0.0, 0.01, -0.02, 0.0, 0.2, 0.0, -0.5, 0.3, 0.16])
    out = M.tercile_catastrophic(scores, dz)
    assert out["n"] == [3, 3, 3] and out["n_catastrophic"] == [0, 1, 3]
    assert out["fraction"] == pytest.approx([0.0, 1 / 3, 1.0]) and out["overall"] == pytest.approx(4 / 9)
    fixed = M.tercile_catastrophic(scores, dz, edges=(6.5, 8.5))
    assert fixed["n"] == [6, 2, 1] and fixed["n_catastrophic"] == [1, 2, 1]
    # The limit is strict (> 0.15) and non-finite pairs are dropped, not counted.
    edge = M.tercile_catastrophic([1.0, 2.0, 3.0, np.nan], [0.15, 0.1500001, 0.0, 1.0])
    assert edge["n_catastrophic"] == [0, 1, 0] and edge["n_dropped"] == 1
    with pytest.raises(ValueError, match="length"):
        M.tercile_catastrophic([1, 2], [0.1])


def test_bad_scores_rejected():
    with pytest.raises(ValueError, match="empty"):
        M.roc_auc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        M.pr_auc([0.0, np.nan], [1.0])


def test_report_on_labelled_ood_set():
    """A colour-only score (distance from the galaxy u-g/g-r/r-i median) separates real DC2 galaxies from the
    synthetic stars; the report is strict JSON and internally consistent."""
    import h5py

    from lsst_spark_ml.io.datasets import dc2_paths
    from lsst_spark_ml.ood.labelled_ood import generate

    with h5py.File(dc2_paths()["validation"], "r") as f:
        g = f["photometry"]
        gal = {b: g[f"mag_{b}_lsst"][:5000].astype(float) for b in "ugrizy"}
        z = g["redshift"][:5000]

    def colours(d):
        return np.stack([d["g"] - d["r"], d["r"] - d["i"], d["i"] - d["z"]], axis=1)

    cg = colours(gal)
    centre, scale = np.median(cg, axis=0), np.std(cg, axis=0)

    def score(d):
        return np.sqrt((((colours(d) - centre) / scale) ** 2).sum(axis=1))

    ood = {}
    for kind in ("star", "quasar"):
        df = generate(kind, 2000, seed=4)
        ood[kind] = score({b: df[f"mag_{b}_lsst"].to_numpy(float) for b in "ugrizy"})
    s_id = score(gal)
    fake_dz = np.where(z > 2.5, 0.3, 0.0)          # a stand-in for photo-z errors, only to exercise the path
    rep = M.report(s_id, ood, threshold=2.0, metric="f1_5", dz_over_1pz=fake_dz)
    json.dumps(rep, allow_nan=False)
    assert set(rep["kinds"]) == {"star", "quasar", "all"}
    assert rep["kinds"]["all"]["n"] == 4000 and rep["n_id"] == 5000
    for entry in rep["kinds"].values():
        assert 0 <= entry["roc_auc"] <= 1 and entry["pr_auc"] >= entry["pr_auc_chance"] - 0.05
        assert entry["at_threshold"]["threshold"] == 2.0
        assert entry["best"]["f1_5"] >= entry["at_threshold"]["f1_5"] - 1e-12
    assert rep["kinds"]["star"]["roc_auc"] > 0.6          # blackbodies sit off the galaxy colour cloud
    assert len(rep["catastrophic_terciles"]["fraction"]) == 3
