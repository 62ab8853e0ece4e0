"""Training-sample influence (TracIn) and spectroscopic target selection (issue 6)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import BANDS, load_dc2, tiny_config
from lsst_spark_ml.errors import CatalogError, ConfigError, ModelIntegrityError


def _frame(v, e, z, ids):
    cols = {"id": np.asarray(ids, dtype=np.int64)}
    if z is not None:
        cols["redshift"] = z
    for j, b in enumerate(BANDS):
        cols[f"mag_{b}_lsst"] = v[:, j]
        cols[f"mag_err_{b}_lsst"] = e[:, j]
    return pd.DataFrame(cols)


def _train(tmp, name, n=3000, z=None, seed=1234, epochs=6, every=2, hidden=(32, 32)):
    from lsst_spark_ml.training.photoz import TrainingSet, train_photoz
    v, e, z0, _ = load_dc2("train", n)
    cfg = tiny_config(train={"max_epochs": epochs, "snapshot_every": every, "batch_size": 256, "seed": seed},
                      model={"hidden": list(hidden)})
    out = tmp / name
    res = train_photoz(TrainingSet(v, e, "mag", z0 if z is None else z, source=name), cfg, str(out),
                       log=lambda m: None)
    return out, res["model_sha256"], cfg


@pytest.fixture(scope="module")
def snap_model(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("influence"), "snap")


def test_snapshots_are_saved_with_the_model_and_bound_to_it(snap_model):
    from lsst_spark_ml.influence.checkpoints import load_snapshots
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    model_dir, sha, _ = snap_model
    pred = PhotozPredictor.load(model_dir)
    snaps = load_snapshots(model_dir / "tracin", sha, pred.manifest["architecture"])
    # 2 members x epochs 1, 3, 5 (snapshot_every=2 keeps epochs 1, 3, 5, ...)
    assert sorted((s.member, s.epoch) for s in snaps) == [(m, e) for m in (0, 1) for e in (1, 3, 5)]
    assert all(s.lr > 0 for s in snaps)
    # The snapshot weights are not the final ones: TracIn needs the trajectory.
    final = pred.ensemble.members[0].state_dict()
    first = snaps[0].model.state_dict()
    assert not torch.equal(final["net.0.weight"], first["net.0.weight"])
    with pytest.raises(ModelIntegrityError, match="not the model"):
        load_snapshots(model_dir / "tracin", "0" * 64, pred.manifest["architecture"])


def test_factorised_output_layer_gradients_equal_torch_func(snap_model):
    from lsst_spark_ml.influence.checkpoints import load_snapshots
    from lsst_spark_ml.influence.gradients import GradientModel
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    from lsst_spark_ml.models import anchor_loss
    model_dir, sha, _ = snap_model
    pred = PhotozPredictor.load(model_dir)
    snap = load_snapshots(model_dir / "tracin", sha, pred.manifest["architecture"])[4]   # member 1, gamma 2
    torch.manual_seed(0)
    X = torch.rand(12, pred.manifest["architecture"]["n_in"]) * 2 - 1
    y = torch.randint(0, 32, (12,))
    g1 = GradientModel(snap, layers=1)
    f = g1.factors(X, y)
    dense = g1.dense_gradients(g1._features(X), y)
    assert torch.allclose((f.delta @ f.delta.T) * (f.h1 @ f.h1.T), dense @ dense.T, rtol=1e-4, atol=1e-6)
    # Two layers through torch.func against plain autograd, one row at a time.
    g2 = GradientModel(snap, layers=2)
    dense2 = g2.dense_gradients(g2._features(X), y)
    for i in (0, 7):
        tail = g2.tail
        tail.zero_grad()
        anchor_loss(tail(g2._features(X[i:i + 1])), y[i:i + 1], snap.gamma).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in tail.parameters()])
        assert torch.allclose(dense2[i], ref, rtol=1e-4, atol=1e-6)
    # A projection keeps dot products within Johnson-Lindenstrauss error.
    gp = GradientModel(snap, layers=2, projection_dim=512, seed=3)
    proj = gp.dense_gradients(gp._features(X), y)
    exact = dense2 @ dense2.T
    assert proj.shape == (12, 512)
    assert torch.corrcoef(torch.stack([(proj @ proj.T).flatten(), exact.flatten()]))[0, 1] > 0.9


def test_corrupt_redshifts_is_catastrophic_and_exact():
    from lsst_spark_ml.influence.label_noise import corrupt_redshifts
    z = load_dc2("train", 3000)[2]
    zc, bad = corrupt_redshifts(z, 0.02, seed=1)
    assert bad.sum() == 60
    assert np.all(np.abs(zc[bad] - z[bad]) / (1 + z[bad]) > 0.15)
    assert np.array_equal(zc[~bad], z[~bad])


def test_influence_on_spark_matches_the_full_matrix_and_keeps_every_row(spark, snap_model, tmp_path):
    """Top-k reduced across partitions equals the top-k of the whole (train x query) matrix computed in
    numpy; every training row and every query comes out once, flagged where it could not be used."""
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.influence.checkpoints import load_snapshots
    from lsst_spark_ml.influence.gradients import all_factors, self_influence, tracin_scores
    from lsst_spark_ml.influence.scoring import NO_FEATURES, NO_ID, NO_LABEL, PSEUDO_LABEL, InfluenceScorer
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    from lsst_spark_ml.pipelines import influence
    model_dir, sha, _ = snap_model
    v, e, z, ids = load_dc2("train", 1500)
    v, e, z = v.copy(), e.copy(), z.copy()
    v[3] = np.nan                     # no photometry at all
    z[5] = np.nan                     # no label
    train = _frame(v, e, z, ids)
    train["id"] = train["id"].astype("Int64")
    train.loc[8, "id"] = pd.NA        # no id
    train_path = tmp_path / "train.parquet"
    train.to_parquet(train_path, index=False)
    spark.read.parquet(str(train_path)).repartition(3).write.parquet(str(tmp_path / "train3"))
    qv, qe, qz, qids = load_dc2("validation", 25)
    qz = qz.copy()
    qz[:5] = np.nan                   # queries without redshift: the model's own bin
    qv = qv.copy()
    qv[6] = np.nan
    _frame(qv, qe, qz, qids).to_parquet(tmp_path / "q.parquet", index=False)
    cfg = load_config(overrides={"influence": {"top_k": 4, "method": "tracin"}, "catalog": {"truth_col": "redshift"}})
    meta = influence.run(spark, cfg, str(model_dir), str(tmp_path / "train3"), str(tmp_path / "q.parquet"),
                         str(tmp_path / "out"))
    si = pd.read_parquet(tmp_path / "out" / "self_influence")
    inf = pd.read_parquet(tmp_path / "out" / "influence")
    assert len(si) == 1500 and len(inf) == 25
    assert meta["n_queries"] == 25 and meta["n_queries_scored"] == 24
    flags = si.set_index(si["id"].fillna(-1).astype(np.int64))["influence_flags"]
    assert flags[ids[3]] & NO_FEATURES and flags[ids[5]] & NO_LABEL and flags[-1] & NO_ID
    assert si.self_influence.isna().sum() == 3 and (si.self_influence.dropna() > 0).all()
    qflags = inf.set_index("id")["influence_flags"]
    assert all(qflags[q] & PSEUDO_LABEL for q in qids[:5]) and qflags[qids[6]] & NO_FEATURES
    assert list(inf.set_index("id").loc[qids[:5], "label_source"]) == ["predicted_bin"] * 5
    assert len(inf.set_index("id").loc[qids[6], "helpful_ids"]) == 0

    # The same numbers from the whole matrix in numpy.
    pred = PhotozPredictor.load(model_dir)
    scorer = InfluenceScorer.tracin(pred, load_snapshots(model_dir / "tracin", sha, pred.manifest["architecture"]))
    no_id = np.zeros(1500, bool)
    no_id[8] = True
    tp = scorer.prepare(v, e, "mag", z, no_id=no_id)
    qp = scorer.prepare(qv, qe, "mag", qz, pseudo_labels=True)
    tf, qf = all_factors(scorer.models, tp.X, tp.y), all_factors(scorer.models, qp.X, qp.y)
    S = tracin_scores(tf, qf)
    np.testing.assert_allclose(si.set_index("id").loc[ids[tp.usable], "self_influence"], self_influence(tf),
                               rtol=1e-5)
    tids = ids[tp.usable]
    for j, q in enumerate(qids[qp.usable]):
        row = inf.set_index("id").loc[q]
        top = np.argsort(-S[:, j])[:4]
        top = top[S[top, j] > 0]
        assert list(row.helpful_ids) == list(tids[top])
        np.testing.assert_allclose(row.helpful_scores, S[top, j], rtol=1e-5)
        bot = np.argsort(S[:, j])[:4]
        assert list(row.harmful_ids) == list(tids[bot[S[bot, j] < 0]])
    assert (tmp_path / "out" / "influence_colour_space.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "_influence_meta.json").read_text())["n_train"] == 1500

    # Influence functions (the default): same outputs, numbers from the inverse Hessian of all usable rows.
    from lsst_spark_ml.influence.checkpoints import Snapshot
    from lsst_spark_ml.influence.gradients import GradientModel, fisher_hessian_sum, invert_hessian
    cfg_if = load_config(overrides={"influence": {"top_k": 4}, "catalog": {"truth_col": "redshift"}})
    meta = influence.run(spark, cfg_if, str(model_dir), str(tmp_path / "train3"), str(tmp_path / "q.parquet"),
                         str(tmp_path / "out_if"))
    assert meta["method"] == "influence-function" and meta["hessian_rows"] == 1498    # the id-less row trains the model
    hp = scorer.prepare(v, e, "mag", z)
    hinvs = {}
    for m, gamma in enumerate((0.0, 2.0)):
        gm = GradientModel(Snapshot(m, gamma, 0, 1.0, pred.ensemble.members[m]))
        hinvs[m] = invert_hessian(fisher_hessian_sum(gm, torch.from_numpy(hp.X)), len(hp.X), 0.01)[0].float()
    sif = InfluenceScorer.influence_function(pred, hinvs)
    tf, qf = all_factors(sif.models, tp.X, tp.y), all_factors(sif.models, qp.X, qp.y, query=True)
    si_if = pd.read_parquet(tmp_path / "out_if" / "self_influence").set_index("id")
    np.testing.assert_allclose(si_if.loc[ids[tp.usable], "self_influence"], self_influence(tf), rtol=1e-3)
    S = tracin_scores(tf, qf)
    inf_if = pd.read_parquet(tmp_path / "out_if" / "influence").set_index("id")
    for j, q in enumerate(qids[qp.usable][:6]):
        top = np.argsort(-S[:, j])[:4]
        assert list(inf_if.loc[q, "helpful_ids"]) == list(tids[top[S[top, j] > 0]])


def test_self_influence_finds_wrong_redshifts(spark, tmp_path):
    """5 % of the labels made catastrophically wrong: self-influence ranks them high (influence functions;
    TracIn's bounded softmax gradients do less well, as the README's measurement says)."""
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.influence.label_noise import corrupt_redshifts
    from lsst_spark_ml.metrics.ood import roc_auc
    from lsst_spark_ml.pipelines import influence
    v, e, z, ids = load_dc2("train", 3000)
    zc, bad = corrupt_redshifts(z, 0.05, seed=4)
    model_dir, _, _ = _train(tmp_path, "noisy", z=zc, epochs=40, every=8, hidden=(64, 64, 32))
    _frame(v, e, zc, ids).to_parquet(tmp_path / "t.parquet", index=False)
    aucs = {}
    for method in ("influence-function", "tracin"):
        cfg = load_config(overrides={"catalog": {"truth_col": "redshift"}, "influence": {"method": method}})
        influence.run(spark, cfg, str(model_dir), str(tmp_path / "t.parquet"), None, str(tmp_path / method))
        si = pd.read_parquet(tmp_path / method / "self_influence").set_index("id").loc[ids, "self_influence"]
        aucs[method] = roc_auc(si.to_numpy()[~bad], si.to_numpy()[bad])
    print(aucs)
    assert aucs["influence-function"] > 0.85 and aucs["tracin"] > 0.6


def test_bad_influence_inputs_fail_clearly_before_any_job(spark, snap_model, tmp_path):
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.pipelines import influence
    model_dir, _, _ = snap_model
    other, _, _ = _train(tmp_path, "other", n=1200, seed=99, epochs=3, every=1)
    cfg = load_config(overrides={"catalog": {"truth_col": "redshift"}, "influence": {"method": "tracin"}})
    v, e, z, ids = load_dc2("train", 50)
    _frame(v, e, z, ids).to_parquet(tmp_path / "t.parquet", index=False)
    _frame(v, e, z, ids).iloc[:0].to_parquet(tmp_path / "empty.parquet", index=False)
    sc = spark.sparkContext
    sc.setJobGroup("influence-bad", "bad input")
    with pytest.raises(ModelIntegrityError, match="not the model"):
        influence.run(spark, cfg, str(model_dir), str(tmp_path / "t.parquet"), None, str(tmp_path / "o1"),
                      snapshot_dir=str(other / "tracin"))
    with pytest.raises(ModelIntegrityError, match="snapshot_every"):
        influence.run(spark, cfg, str(model_dir), str(tmp_path / "t.parquet"), None, str(tmp_path / "o2"),
                      snapshot_dir=str(tmp_path))
    with pytest.raises(CatalogError, match="query set.*empty"):
        influence.run(spark, cfg, str(model_dir), str(tmp_path / "t.parquet"), str(tmp_path / "empty.parquet"),
                      str(tmp_path / "o3"))
    assert sc.statusTracker().getJobIdsForGroup("influence-bad") == []
    with pytest.raises(CatalogError, match="has no rows"):
        influence.run(spark, cfg, str(model_dir), str(tmp_path / "t.parquet"), str(tmp_path / "t.parquet"),
                      str(tmp_path / "o4"), query_where="redshift > 99")
    sc.setJobGroup("", "")
    with pytest.raises(ConfigError, match="influence.layers"):
        load_config(overrides={"influence": {"layers": 12, "method": "tracin"}})
    with pytest.raises(ConfigError, match="needs influence.method=tracin"):
        load_config(overrides={"influence": {"layers": 2}})


def test_select_diverse_spreads_targets_and_is_nested():
    from lsst_spark_ml.influence.targets import select_diverse
    rng = np.random.default_rng(0)
    # A dense high-priority blob and a second blob slightly lower in priority.
    a = rng.normal(0, 0.01, (50, 2))
    b = rng.normal(5, 0.01, (50, 2))
    X = np.vstack([a, b])
    pr = np.r_[np.full(50, 1.0), np.full(50, 0.8)]
    d_lab = np.full(100, 10.0)
    order, d_at, _ = select_diverse(X, pr, d_lab, 4)
    assert {int(i) < 50 for i in order[:2]} == {True, False}     # one from each blob before any repeat
    assert np.all(np.diff(d_at) <= 1e-12)                          # farthest-first: distances shrink
    assert list(select_diverse(X, pr, d_lab, 2)[0]) == list(order[:2])
    # A blob already covered by the training set (d_lab small) loses to the uncovered one.
    d_lab2 = np.r_[np.full(50, 0.05), np.full(50, 10.0)]
    assert int(select_diverse(X, pr, d_lab2, 1)[0][0]) >= 50


def test_targets_on_spark_score_every_row_and_choose_distinct_reasoned_targets(spark, tmp_path):
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.pipelines import targets
    v, e, z, ids = load_dc2("validation", 3000)
    v = v.copy()
    v[10] = np.nan
    pool = _frame(v, e, None, ids)
    pool.to_parquet(tmp_path / "pool.parquet", index=False)
    lv, le, lz, lids = load_dc2("train", 2000)
    bright = lv[:, 3] < np.percentile(lv[:, 3], 40)
    _frame(lv[bright], le[bright], lz[bright], lids[bright]).to_parquet(tmp_path / "lab.parquet", index=False)
    cfg = load_config(overrides={"influence": {"density_sample": 1500, "candidate_factor": 10}})
    meta = targets.run(spark, cfg, str(_shipped()), str(tmp_path / "pool.parquet"),
                       str(tmp_path / "lab.parquet"), str(tmp_path / "t"), n_targets=30)
    scores = pd.read_parquet(tmp_path / "t" / "scores")
    assert len(scores) == 3000 and scores.id.is_unique
    assert scores.set_index("id").loc[ids[10], "target_flags"] == 1
    assert scores.priority.isna().sum() == 1
    t = pd.read_csv(tmp_path / "t" / "targets.csv")
    assert len(t) == 30 and t.id.is_unique and set(t.id) <= set(ids) and list(t["rank"]) == list(range(1, 31))
    assert t.reason.str.contains("percentile").all()
    # Targets reach beyond the bright labelled set: fainter on average than it.
    lab_i = lv[bright, 3].mean()
    pool_i = pool.set_index("id").loc[t.id, "mag_i_lsst"].mean()
    assert pool_i > lab_i
    assert meta["uncertainty"] == "photo-z PDF entropy"
    assert (tmp_path / "t" / "targets_colour_space.png").stat().st_size > 10_000
    # With the DCP model the OOD score is the uncertainty.
    from lsst_spark_ml.cli import default_dcp_dir
    meta2 = targets.run(spark, cfg, str(_shipped()), str(tmp_path / "pool.parquet"), str(tmp_path / "lab.parquet"),
                        str(tmp_path / "t2"), dcp_dir=str(default_dcp_dir()), n_targets=10)
    assert meta2["uncertainty"] == "DCP OOD score" and meta2["dcp_sha256"]


def _shipped():
    from lsst_spark_ml.cli import default_model_dir
    return default_model_dir()


def test_fisher_hessian_is_the_cross_entropy_hessian_of_the_output_layer(snap_model):
    """The Gauss-Newton matrix with the categorical Fisher equals the exact Hessian of softmax cross-entropy
    in the output layer's weights and bias, in the (bin, input) order the gradients use."""
    from lsst_spark_ml.influence.checkpoints import load_snapshots
    from lsst_spark_ml.influence.gradients import GradientModel, fisher_hessian_sum, output_layer_gradients
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    model_dir, sha, _ = snap_model
    pred = PhotozPredictor.load(model_dir)
    gm = GradientModel(load_snapshots(model_dir / "tracin", sha, pred.manifest["architecture"])[-1])
    torch.manual_seed(1)
    x = torch.rand(40, pred.manifest["architecture"]["n_in"]) * 2 - 1
    y = torch.randint(0, 32, (40,))
    with torch.no_grad():
        h1 = torch.cat([gm._features(x), torch.ones(40, 1)], 1).double()
    k, a = 32, h1.shape[1]

    def ce(theta):
        logits = h1 @ theta.reshape(k, a).T
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    lin = gm.tail[-1]
    theta = torch.cat([lin.weight.detach(), lin.bias.detach()[:, None]], 1).double().reshape(-1)
    exact = torch.autograd.functional.hessian(ce, theta)
    assert torch.allclose(fisher_hessian_sum(gm, x), exact, rtol=1e-4, atol=1e-5)
    # The gradients are flattened in the same order: delta (x) h1 against autograd for one row's CE.
    from lsst_spark_ml.influence.gradients import Factors
    g = torch.autograd.functional.jacobian(lambda t: torch.nn.functional.cross_entropy(
        h1[:1] @ t.reshape(k, a).T, y[:1], reduction="sum"), theta)
    delta = torch.softmax(h1[:1] @ theta.reshape(k, a).T, 1) - torch.nn.functional.one_hot(y[:1], k)
    assert torch.allclose(output_layer_gradients(Factors(1.0, delta=delta, h1=h1[:1]))[0], g, atol=1e-8)
