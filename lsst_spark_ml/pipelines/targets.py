"""Spectroscopic target selection on Spark: every unlabelled row scored in partitions against a broadcast
reference (density sample, percentile maps, labelled features); the best candidates go to the driver for
the diverse greedy choice (``lsst_spark_ml.influence.targets``).

Outputs under ``out_dir``:
  scores/        one row per unlabelled row: id, z_phot, uncertainty(+_pct), density(+_pct), dist_labelled,
                 priority, target_flags, feature_flags
  targets.csv, targets/   the N chosen, in order, with the measured quantities and a reason
  _targets_meta.json, targets_colour_space.png
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import CatalogError
from ..io.hats_writer import write_parquet
from .influence import _ids, _magnitudes, _photometry, _read, precheck, spread

META_FILE = "_targets_meta.json"
SCORE_SCHEMA = ("id long, z_phot double, uncertainty double, uncertainty_pct double, density double, "
                "density_pct double, dist_labelled double, priority double, target_flags int, feature_flags long")


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


def _measure(model_b, dcp_b, cfg: Config):
    from ..inference import cache

    def load():
        import torch

        from ..artefacts import artefact_from_payload
        from ..inference.dcp import DCPPredictor
        from ..inference.photoz import PhotozPredictor
        from ..influence.targets import Measure
        from ..session import task_cores
        torch.set_num_threads(cfg.inference.threads or task_cores())
        dcp = DCPPredictor.from_artefact(artefact_from_payload(dcp_b.value)) if dcp_b is not None else None
        return Measure(PhotozPredictor.from_artefact(artefact_from_payload(model_b.value)), dcp)
    key = ("targets", model_b.value.sha256, dcp_b.value.sha256 if dcp_b is not None else None)
    return cache.get_or_load(key, load)


def _score_mapper(model_b, dcp_b, ref_b, cols, cfg: Config):
    from ..influence.targets import NO_FEATURES

    def run(frames):
        measure = _measure(model_b, dcp_b, cfg)
        ref = ref_b.value
        for frame in frames:
            values, errors, ebv = _photometry(frame, cols)
            m = measure(values, errors, cols.photometry, ebv)
            ids, no_id = _ids(frame, cols.id_col)
            ok = m["ok"] & ~no_id
            out = {k: np.full(len(frame), np.nan) for k in ("uncertainty_pct", "density", "density_pct",
                                                           "dist_labelled", "priority")}
            if ok.any():
                sc = ref.score(m["X"][ok], m["uncertainty"][ok])
                for k in out:
                    out[k][ok] = sc[k]
            yield pd.DataFrame({"id": ids, "z_phot": m["z_phot"], "uncertainty": np.where(ok, m["uncertainty"], np.nan),
                                **out, "target_flags": np.where(ok, 0, NO_FEATURES).astype(np.int32),
                                "feature_flags": m["feature_flags"]})
    return run


def _features_of(df, cols, measure, limit: int | None = None):
    keep = [cols.id_col] + cols.values + cols.errors + ([cols.ebv_col] if cols.ebv_col else [])
    sel = df.select(*dict.fromkeys(keep))
    pdf = (sel.limit(limit) if limit else sel).toPandas()
    values, errors, ebv = _photometry(pdf, cols)
    return pdf, measure(values, errors, cols.photometry, ebv)


def run(spark, cfg: Config, model_dir: str, pool_path: str, labelled_path: str | None, out_dir: str,
        dcp_dir: str | None = None, n_targets: int | None = None) -> dict:
    """Rank the unlabelled rows of ``pool_path`` and write the ``n_targets`` (default influence.n_targets)
    that would help most, in order. ``labelled_path`` None: the cosmoDC2 training file."""
    from pyspark.sql import functions as F

    from ..artefacts import artefact_from_payload, read_payload
    from ..inference.dcp import DCPPredictor
    from ..inference.photoz import PhotozPredictor
    from ..influence.targets import Measure, Reference, reasons, select_diverse
    from ..io.datasets import dc2_paths
    from ..plots.influence import targets_colour_space
    t0 = time.time()
    n = cfg.influence
    n_targets = n_targets or n.n_targets
    payload = read_payload(model_dir)
    pred = PhotozPredictor.from_artefact(artefact_from_payload(payload))
    mode = n.uncertainty if n.uncertainty != "auto" else ("ood" if dcp_dir else "entropy")
    if mode == "ood" and not dcp_dir:
        raise CatalogError("influence.uncertainty=ood needs a DCP model (--dcp-model)")
    dcp_payload = read_payload(dcp_dir) if mode == "ood" else None
    dcp = DCPPredictor.from_artefact(artefact_from_payload(dcp_payload)) if dcp_payload else None
    if dcp is not None and dcp.bands != pred.bands:
        raise CatalogError(f"the DCP model's bands {dcp.bands} differ from the photo-z model's {pred.bands}")
    measure = Measure(pred, dcp)
    labelled_path = str(labelled_path or dc2_paths()["train"])
    precheck(cfg, labelled_path, "labelled set", False, pred.manifest)    # the pool's read checks the pool
    pool, cols, n_pool = _read(spark, cfg, pool_path, "unlabelled pool", False, pred.manifest)
    lab, lcols, n_lab = _read(spark, cfg, labelled_path, "labelled set", False, pred.manifest)
    _log(f"targets: {n_pool} unlabelled rows from {pool_path}, {n_lab} labelled rows from {labelled_path}; "
         f"uncertainty = {measure.kind}")

    # The labelled set is a spectroscopic sample (10^4-10^6 rows): sampled down to bound the broadcast.
    lab_limit = 200_000
    lab_df = lab.sample(fraction=min(1.0, lab_limit / n_lab), seed=n.seed) if n_lab > lab_limit else lab
    lab_pdf, lm = _features_of(lab_df, lcols, measure)
    frac = min(1.0, 1.2 * n.density_sample / n_pool)
    ref_df = pool.sample(fraction=frac, seed=n.seed) if frac < 1 else pool
    ref_pdf, rm = _features_of(ref_df, cols, measure, n.density_sample)
    ok = rm["ok"]
    ref = Reference.build(rm["X"][ok], rm["uncertainty"][ok], lm["X"][lm["ok"]], n.density_k,
                          n.uncertainty_weight, n.density_weight)
    sc = spark.sparkContext
    ref_b, model_b = sc.broadcast(ref), sc.broadcast(payload)
    dcp_b = sc.broadcast(dcp_payload) if dcp_payload else None
    keep = [cols.id_col] + cols.values + cols.errors + ([cols.ebv_col] if cols.ebv_col else [])
    scores = spread(pool.select(*dict.fromkeys(keep)), spark).mapInPandas(
        _score_mapper(model_b, dcp_b, ref_b, cols, cfg), SCORE_SCHEMA)
    out = Path(out_dir)
    written = write_parquet(scores.withColumnRenamed("id", cols.id_col), str(out / "scores"), cfg.output.mode)
    if written["n_rows"] != n_pool:
        raise RuntimeError(f"{pool_path}: {n_pool} rows in, {written['n_rows']} scored rows out")
    scored = spark.read.parquet(str(out / "scores"))
    n_cand = n.candidate_factor * n_targets
    cand = scored.where("target_flags = 0").orderBy(F.desc("priority"), cols.id_col).limit(n_cand).toPandas()
    if len(cand) == 0:
        raise CatalogError(f"no row of {pool_path} has usable photometry: nothing to select")
    ids = cand[cols.id_col].tolist()
    cphot, cm = _features_of(pool.where(F.col(cols.id_col).isin(ids)), cols, measure)
    cphot = cphot.drop_duplicates(cols.id_col)
    pos = pd.Series(np.arange(len(cphot)), index=cphot[cols.id_col].to_numpy())
    Xc = cm["X"][pos.loc[cand[cols.id_col]].to_numpy()]
    order, d_at, gain = select_diverse(Xc, cand.priority.to_numpy(), cand.dist_labelled.to_numpy(), n_targets)
    chosen = cand.iloc[order].reset_index(drop=True)
    chosen.insert(0, "rank", np.arange(1, len(chosen) + 1))
    chosen["dist_at_choice"] = d_at
    chosen["selection_gain"] = gain
    chosen["reason"] = reasons(chosen.uncertainty_pct, chosen.density_pct, chosen.dist_labelled, d_at,
                               ref.typical, measure.kind)
    out.mkdir(parents=True, exist_ok=True)
    chosen.to_csv(out / "targets.csv", index=False)
    write_parquet(spark.createDataFrame(chosen), str(out / "targets"), cfg.output.mode)
    # Figure: targets against the labelled set and the pool in colour space.
    cmag = _magnitudes(cphot, cols, pred)[pos.loc[chosen[cols.id_col]].to_numpy()]
    plot = targets_colour_space(_magnitudes(lab_pdf.head(20_000), lcols, pred),
                                _magnitudes(ref_pdf.head(20_000), cols, pred), cmag,
                                pred.bands, str(out / "targets_colour_space.png"))
    meta = {"model_sha256": payload.sha256, "dcp_sha256": dcp_payload.sha256 if dcp_payload else None,
            "uncertainty": measure.kind, "pool": str(pool_path), "labelled": labelled_path, "n_pool": n_pool,
            "n_labelled": n_lab, "n_targets": int(len(chosen)), "n_candidates": int(len(cand)),
            "typical_spacing": ref.typical, "settings": {k: getattr(n, k) for k in (
                "uncertainty_weight", "density_weight", "density_k", "density_sample", "candidate_factor")},
            "plots": [plot], "seconds": round(time.time() - t0, 1)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=float) + "\n")
    _log(f"{len(chosen)} targets written to {out / 'targets.csv'} in {meta['seconds']} s")
    return meta
