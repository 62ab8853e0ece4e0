"""Training-sample influence on Spark: training rows in partitions, query gradients broadcast, top-k per
query reduced across partitions without ever forming the (training x query) matrix. Method
``influence.method``: influence functions (default; final weights, inverse Hessian from a driver-side
sample) or TracIn (snapshots saved in training).

Outputs under ``out_dir``:
  self_influence/   one row per training row: id, redshift, self_influence, influence_flags, feature_flags
  influence/        one row per query: id, redshift, label_source, helpful_ids/scores, harmful_ids/scores
  _influence_meta.json, influence_colour_space.png
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import CatalogError
from ..io.hats_writer import write_parquet

META_FILE = "_influence_meta.json"
WORK_DIR = "tmp_work"     # not "_"-prefixed: Spark skips such paths when reading


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


def load_model_and_snapshots(cfg: Config, model_dir: str, snapshot_dir: str | None):
    """Driver-side checks before any Spark job: the model verified and, for TracIn, its snapshots verified
    and belonging to it."""
    from ..artefacts import artefact_from_payload, read_payload
    from ..inference.photoz import PhotozPredictor
    from ..influence.checkpoints import check_members, default_dir, read_snapshot_payload, snapshots_from_payload
    payload = read_payload(model_dir)
    pred = PhotozPredictor.from_artefact(artefact_from_payload(payload))
    arch = pred.manifest["architecture"]
    check_members(cfg.influence.members, arch["n_members"])
    if cfg.influence.method != "tracin":
        return payload, pred, None, None
    snap_payload = read_snapshot_payload(snapshot_dir or default_dir(model_dir))
    snaps = snapshots_from_payload(snap_payload, payload.sha256, arch, cfg.influence.members)
    return payload, pred, snap_payload, snaps


def _hessians(train_df, cols, cfg: Config, pred, n_train: int) -> tuple[dict, dict]:
    """Inverse damped Hessians of each member's output layer from a sample of at most influence.hessian_rows
    training rows, computed on the driver: the sample's photometry (~100 bytes a row) travels, not
    per-partition (2112 x 2112) matrices."""
    import torch

    from ..influence.checkpoints import Snapshot
    from ..influence.gradients import GradientModel, fisher_hessian_sum, invert_hessian
    from ..influence.scoring import InfluenceScorer
    n = cfg.influence
    frac = min(1.0, 1.1 * n.hessian_rows / max(n_train, 1))
    sample = train_df if frac >= 1 else train_df.sample(fraction=frac, seed=n.seed)
    keep = [cols.truth_col] + cols.values + cols.errors + ([cols.ebv_col] if cols.ebv_col else [])
    pdf = sample.select(*dict.fromkeys(keep)).limit(n.hessian_rows).toPandas()
    values, errors, ebv = _photometry(pdf, cols)
    z = pd.to_numeric(pdf[cols.truth_col], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    prep = InfluenceScorer(pred, []).prepare(values, errors, cols.photometry, z, ebv)
    if len(prep.X) == 0:
        raise CatalogError("no training row has usable photometry and a redshift: no Hessian to compute")
    gammas = [m["gamma"] for m in pred.manifest["members"]]
    X = torch.from_numpy(prep.X)
    hinvs, lambdas = {}, {}
    for m in (n.members if n.members is not None else range(len(gammas))):
        gm = GradientModel(Snapshot(m, gammas[m], 0, 1.0, pred.ensemble.members[m]))
        h = sum(fisher_hessian_sum(gm, X[s:s + 4096]) for s in range(0, len(X), 4096))
        hinv, lam = invert_hessian(h, len(X), n.damping)
        hinvs[m], lambdas[m] = hinv.float().numpy(), lam
    return hinvs, {"hessian_rows": int(len(X)), "damping_lambda": lambdas}


def _scorer(model_b, snaps_b, hinv_b, hinv_key: str, cfg: Config):
    from ..inference import cache
    n = cfg.influence

    def load():
        import torch

        from ..artefacts import artefact_from_payload
        from ..inference.photoz import PhotozPredictor
        from ..influence.checkpoints import snapshots_from_payload
        from ..influence.scoring import InfluenceScorer
        from ..session import task_cores
        torch.set_num_threads(cfg.inference.threads or task_cores())
        pred = PhotozPredictor.from_artefact(artefact_from_payload(model_b.value))
        if hinv_b is not None:
            return InfluenceScorer.influence_function(pred, hinv_b.value)
        snaps = snapshots_from_payload(snaps_b.value, model_b.value.sha256, pred.manifest["architecture"],
                                       n.members)
        return InfluenceScorer.tracin(pred, snaps, n.layers, n.projection_dim, n.seed)
    key = ("influence", model_b.value.sha256, snaps_b.value.sha256 if snaps_b is not None else hinv_key,
           tuple(n.members or ()), n.layers, n.projection_dim, n.seed)
    return cache.get_or_load(key, load)


def spread(df, spark):
    """Spectroscopic sets and pools often come as one file, which Spark reads as one partition: one core
    would do the work. Spread such inputs over the cluster's cores (a cheap shuffle of photometry)."""
    cores = spark.sparkContext.defaultParallelism
    return df.repartition(cores) if df.rdd.getNumPartitions() < cores else df


def _photometry(frame: pd.DataFrame, cols):
    values = frame[cols.values].to_numpy(np.float64, na_value=np.nan)
    errors = frame[cols.errors].to_numpy(np.float64, na_value=np.nan)
    ebv = frame[cols.ebv_col].to_numpy(np.float64, na_value=np.nan) if cols.ebv_col else None
    return values, errors, ebv


def _ids(frame: pd.DataFrame, id_col: str) -> tuple[np.ndarray, np.ndarray]:
    s = pd.to_numeric(frame[id_col], errors="coerce")
    return s.fillna(-1).to_numpy(np.int64), s.isna().to_numpy()


WORK_SCHEMA = ("row_type tinyint, id long, redshift double, self_influence double, influence_flags int, "
               "feature_flags long, query int, score double")


def _mapper(model_b, snaps_b, hinv_b, hinv_key: str, queries_b, cols, cfg: Config, n_queries: int):
    from ..influence.scoring import RunningTopK, score_block
    k = cfg.influence.top_k

    def run(frames):
        scorer = _scorer(model_b, snaps_b, hinv_b, hinv_key, cfg)
        qf = queries_b.value if queries_b is not None else None
        topk = RunningTopK(n_queries, k) if qf else None
        for frame in frames:
            values, errors, ebv = _photometry(frame, cols)
            z = pd.to_numeric(frame[cols.truth_col], errors="coerce").to_numpy(np.float64, na_value=np.nan)
            ids, no_id = _ids(frame, cols.id_col)
            prep = scorer.prepare(values, errors, cols.photometry, z, ebv, no_id=no_id)
            si = score_block(scorer, qf, prep, ids, topk)
            yield pd.DataFrame({"row_type": np.zeros(len(frame), np.int8), "id": ids, "redshift": z,
                                "self_influence": si, "influence_flags": prep.flags,
                                "feature_flags": prep.feature_flags, "query": np.full(len(frame), -1, np.int32),
                                "score": np.full(len(frame), np.nan)})
        if topk is not None:
            q, sign, i, s = topk.rows()
            yield pd.DataFrame({"row_type": np.where(sign > 0, 1, 2).astype(np.int8), "id": i,
                                "redshift": np.full(len(q), np.nan), "self_influence": np.full(len(q), np.nan),
                                "influence_flags": np.zeros(len(q), np.int32),
                                "feature_flags": np.zeros(len(q), np.int64), "query": q, "score": s})
    return run


def _catalog_settings(cfg: Config, need_truth: bool, manifest: dict):
    from .photoz import model_catalog_settings
    cat = model_catalog_settings(cfg, manifest)
    if need_truth and cat.truth_col is None:
        cat.truth_col = "redshift"
    return cat


def precheck(cfg: Config, path: str, what: str, need_truth: bool, manifest: dict) -> None:
    """Existence, rows (from footers) and columns of a catalog, without Spark: reading one with Spark
    already runs a job (schema inference), so every input is checked this way first."""
    from ..io.readers import check_catalog
    try:
        check_catalog(path, _catalog_settings(cfg, need_truth, manifest), need_truth=need_truth)
    except CatalogError as exc:
        raise CatalogError(f"{what}: {exc}") from None


def _read(spark, cfg: Config, path: str, what: str, need_truth: bool, manifest: dict):
    from ..io.readers import read_catalog_counted
    cat = _catalog_settings(cfg, need_truth, manifest)
    try:
        df, cols, n = read_catalog_counted(spark, path, cat, need_truth=need_truth)
    except CatalogError as exc:
        raise CatalogError(f"{what}: {exc}") from None
    if cols.id_col is None:
        raise CatalogError(f"{what} {path} has no id column (set catalog.id_col): influence names rows by id")
    return df, cols, n


def _queries(spark, cfg: Config, scorer, path: str, where: str | None, manifest: dict):
    """The query rows on the driver (they are broadcast), their flags and gradient factors."""
    from ..influence.gradients import all_factors
    from ..influence.scoring import PSEUDO_LABEL
    df, cols, n = _read(spark, cfg, path, "query set", False, manifest)
    if n > cfg.influence.max_queries and not where:
        raise CatalogError(f"query set {path} has {n} rows, more than influence.max_queries="
                           f"{cfg.influence.max_queries}: select fewer (--query-where) or raise the limit")
    if where:
        df = df.where(where)
    wanted = [cols.id_col] + cols.values + cols.errors + [c for c in (cols.truth_col, cols.ebv_col) if c]
    pdf = df.select(*dict.fromkeys(wanted)).limit(cfg.influence.max_queries + 1).toPandas()
    if len(pdf) == 0:
        raise CatalogError(f"query set {path}{f' where {where}' if where else ''} has no rows: nothing to explain")
    if len(pdf) > cfg.influence.max_queries:
        raise CatalogError(f"query set {path} where {where} selects more than influence.max_queries="
                           f"{cfg.influence.max_queries} rows")
    values, errors, ebv = _photometry(pdf, cols)
    z = (pd.to_numeric(pdf[cols.truth_col], errors="coerce").to_numpy(np.float64, na_value=np.nan)
         if cols.truth_col else None)
    ids, no_id = _ids(pdf, cols.id_col)
    prep = scorer.prepare(values, errors, cols.photometry, z, ebv, pseudo_labels=True, no_id=no_id)
    table = pd.DataFrame({"query": np.arange(len(pdf), dtype=np.int32), "id": ids,
                          "redshift": np.full(len(pdf), np.nan) if z is None else z,
                          "influence_flags": prep.flags, "feature_flags": prep.feature_flags,
                          "label_source": np.where(~prep.usable, None,
                                                   np.where(prep.flags & PSEUDO_LABEL, "predicted_bin", "redshift"))})
    # Factors of unusable queries are absent: their index gets no candidates and so empty arrays.
    usable_idx = np.flatnonzero(prep.usable)
    mags = dict(zip(ids.tolist(), _magnitudes(pdf, cols, scorer.pred)))
    return table, usable_idx, all_factors(scorer.models, prep.X, prep.y, query=True), mags


def run(spark, cfg: Config, model_dir: str, train_path: str | None, query_path: str | None, out_dir: str,
        snapshot_dir: str | None = None, query_where: str | None = None) -> dict:
    """Self-influence of every training row and, with ``query_path``, the top-k helpful and harmful training
    rows of every query. ``train_path`` None: the cosmoDC2 training file the shipped model was trained on."""
    from pyspark.sql import Window, functions as F

    from ..influence.scoring import InfluenceScorer
    from ..io.datasets import dc2_paths
    t0 = time.time()
    payload, pred, snap_payload, snaps = load_model_and_snapshots(cfg, model_dir, snapshot_dir)
    n = cfg.influence
    train_path = str(train_path or dc2_paths()["train"])
    if query_path:      # the training set's read checks it; the query set is read after that read's job
        precheck(cfg, query_path, "query set", False, pred.manifest)
    train_df, cols, n_train = _read(spark, cfg, train_path, "training set", True, pred.manifest)
    hinvs, hinv_key, info = None, "", {}
    if n.method == "tracin":
        scorer = InfluenceScorer.tracin(pred, snaps, n.layers, n.projection_dim, n.seed)
    else:
        hinvs, info = _hessians(train_df, cols, cfg, pred, n_train)
        scorer = InfluenceScorer.influence_function(pred, hinvs)
        hinv_key = hashlib.sha256(b"".join(h.tobytes() for _, h in sorted(hinvs.items()))).hexdigest()
    queries, qmags = None, {}
    if query_path:
        qtable, usable_idx, qfactors, qmags = _queries(spark, cfg, scorer, query_path, query_where, pred.manifest)
        queries = (qtable, usable_idx, qfactors)
    n_q = len(queries[1]) if queries else 0
    what = (f"TracIn over {len(snaps)} snapshots (members {sorted({s.member for s in snaps})}, epochs "
            f"{sorted({s.epoch for s in snaps})}), layers={n.layers}" if snaps is not None else
            f"influence functions, {len(hinvs)} members, Hessian from {info['hessian_rows']} rows")
    _log(f"influence: {n_train} training rows x {n_q} queries; {what}; model {payload.sha256[:16]}...")
    sc = spark.sparkContext
    model_b = sc.broadcast(payload)
    snaps_b = sc.broadcast(snap_payload) if snap_payload is not None else None
    hinv_b = sc.broadcast(hinvs) if hinvs is not None else None
    queries_b = sc.broadcast(queries[2]) if queries and n_q else None
    keep = [cols.id_col, cols.truth_col] + cols.values + cols.errors + ([cols.ebv_col] if cols.ebv_col else [])
    mapped = spread(train_df.select(*dict.fromkeys(keep)), spark).mapInPandas(
        _mapper(model_b, snaps_b, hinv_b, hinv_key, queries_b, cols, cfg, n_q), WORK_SCHEMA)
    out = Path(out_dir)     # local or mounted storage: the plots and the meta file are written directly
    work = str(out / WORK_DIR)
    mapped.write.mode("overwrite").parquet(work)
    t_map = time.time() - t0
    res = spark.read.parquet(work)

    self_tbl = (res.where("row_type = 0")
                .select(F.col("id").alias(cols.id_col), F.col("redshift").alias(cols.truth_col), "self_influence",
                        "influence_flags", "feature_flags"))
    written = write_parquet(self_tbl, str(out / "self_influence"), cfg.output.mode)
    if written["n_rows"] != n_train:
        raise RuntimeError(f"{train_path}: {n_train} training rows in, {written['n_rows']} self-influence rows out")
    meta = {"model_dir": str(model_dir), "model_sha256": payload.sha256, "method": n.method,
            "training_set": train_path, "n_train": n_train,
            "settings": {k: getattr(n, k) for k in ("top_k", "layers", "projection_dim", "damping", "members")},
            **info, "seconds_map": round(t_map, 1)}
    if snaps is not None:
        meta["snapshots_sha256"] = snap_payload.sha256
        meta["snapshots"] = [{"member": s.member, "gamma": s.gamma, "epoch": s.epoch, "lr": s.lr} for s in snaps]
    if queries is not None:
        qtable, usable_idx, _ = queries
        cands = res.where("row_type > 0")
        w = Window.partitionBy("query", "row_type").orderBy(F.desc(F.abs(F.col("score"))))
        top = cands.withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= n.top_k)

        def arrays(rt):     # (rank, id, score) structs of one kind, in rank order
            return F.sort_array(F.collect_list(F.when(F.col("row_type") == rt, F.struct("rank", "id", "score"))))
        agg = top.groupBy("query").agg(arrays(1).alias("h"), arrays(2).alias("x"))
        # Candidate query indices count usable queries only; map them back to the query table's rows.
        idx_map = spark.createDataFrame(pd.DataFrame({"query": np.arange(len(usable_idx), dtype=np.int32),
                                                      "qrow": usable_idx.astype(np.int32)}))
        agg = agg.join(idx_map, "query").drop("query").withColumnRenamed("qrow", "query")
        qdf = spark.createDataFrame(qtable)
        infl = (qdf.join(agg, "query", "left").orderBy("query")
                .select(F.col("id").alias(cols.id_col), F.col("redshift").alias(cols.truth_col),
                        "label_source",
                        F.coalesce(F.col("h.id"), F.array().cast("array<long>")).alias("helpful_ids"),
                        F.coalesce(F.col("h.score"), F.array().cast("array<double>")).alias("helpful_scores"),
                        F.coalesce(F.col("x.id"), F.array().cast("array<long>")).alias("harmful_ids"),
                        F.coalesce(F.col("x.score"), F.array().cast("array<double>")).alias("harmful_scores"),
                        "influence_flags", "feature_flags"))
        wq = write_parquet(infl, str(out / "influence"), cfg.output.mode)
        if wq["n_rows"] != len(qtable):
            raise RuntimeError(f"{len(qtable)} queries in, {wq['n_rows']} influence rows out")
        meta.update({"queries": str(query_path), "query_where": query_where, "n_queries": int(len(qtable)),
                     "n_queries_scored": int(len(usable_idx))})
    meta["plots"] = _plots(spark, cfg, out, train_df, cols, pred, qmags)
    meta["seconds"] = round(time.time() - t0, 1)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    _log(f"influence written to {out_dir} in {meta['seconds']} s")
    return meta


def _magnitudes(pdf: pd.DataFrame, cols, pred) -> np.ndarray:
    from ..features.photometry import to_magnitudes
    values, errors, _ = _photometry(pdf, cols)
    return to_magnitudes(values, errors, cols.photometry, pred.bands, pred.features).mag


def _plots(spark, cfg: Config, out: Path, train_df, cols, pred, qmags: dict, n_sample: int = 20_000) -> list[str]:
    from pyspark.sql import functions as F

    from ..plots.influence import influence_colour_space
    si = spark.read.parquet(str(out / "self_influence")).where("self_influence IS NOT NULL")
    n_si = si.count()
    if n_si == 0:
        return []
    n_top = max(1, min(500, n_si // 100))
    top_ids = [r[0] for r in si.orderBy(F.desc("self_influence")).select(cols.id_col).limit(n_top).collect()]
    query = None
    if (out / "influence").exists():
        rows = (spark.read.parquet(str(out / "influence")).where(F.size("helpful_ids") > 0)
                .orderBy(F.desc(F.col("helpful_scores")[0])).limit(1).collect())
        if rows:
            query = rows[0]
    wanted = set(top_ids) | (set(query["helpful_ids"]) | set(query["harmful_ids"]) if query else set())
    keep = [cols.id_col, cols.truth_col] + cols.values + cols.errors
    frac = min(1.0, n_sample / max(n_si, 1))
    sample = train_df.select(*dict.fromkeys(keep)).where(
        F.col(cols.id_col).isin(list(wanted)) | (F.rand(cfg.influence.seed) < frac)).toPandas()
    mag = _magnitudes(sample, cols, pred)
    ids = sample[cols.id_col].to_numpy()
    qinfo = None
    if query is not None:
        qinfo = {"id": query[cols.id_col], "helpful": np.isin(ids, query["helpful_ids"]),
                 "harmful": np.isin(ids, query["harmful_ids"]), "mag": qmags[query[cols.id_col]]}
    path = influence_colour_space(mag, sample[cols.truth_col].to_numpy(np.float64), pred.bands,
                                  np.isin(ids, top_ids), qinfo, str(out / "influence_colour_space.png"))
    return [path]
