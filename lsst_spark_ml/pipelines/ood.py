"""DCP out-of-distribution scoring end to end: fit from catalogs, score a catalog, evaluate against LOOD."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..config import Config
from ..io.hats_writer import write_catalog, write_text
from ..io.readers import filesystem, read_catalog, read_catalog_counted

META_FILE = "_ood_meta.json"
BRIGHT_I = 23.0


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


def fit(spark, cfg: Config, labelled_path: str | None, unlabelled_path: str | None, out_dir: str,
        labelled_where: str | None = None) -> dict:
    """Defaults: the cosmoDC2 training file as labelled data, the embedded region (``ood.datasets``) as
    unlabelled data. ``labelled_where``: a Spark SQL predicate keeping some labelled rows (a spectroscopic
    quality cut, or a magnitude limit that makes a spectroscopic-like training set, benchmarks/bayes_results.md)."""
    from ..io.datasets import dc2_paths
    from ..ood.fit import fit_dcp
    if cfg.catalog.truth_col is None:
        cfg.catalog.truth_col = "redshift"
    labelled, _ = read_catalog(spark, labelled_path or str(dc2_paths()["train"]), cfg.catalog, need_truth=True)
    if labelled_where:
        from ..io.predicates import sql_predicate
        labelled = labelled.where(sql_predicate(labelled, labelled_where, "--labelled-where"))
        _log(f"labelled rows where {labelled_where}")
    if unlabelled_path:
        unlabelled, _ = read_catalog(spark, unlabelled_path, cfg.catalog)
    else:
        from ..ood.datasets import region
        _log("unlabelled data: the embedded region (half the cosmoDC2 validation file + synthetic stars, "
             "quasars and z > 3.1 galaxies)")
        unlabelled = spark.createDataFrame(region())
    return fit_dcp(spark, labelled, unlabelled, cfg, out_dir, log=_log)


def score(spark, cfg: Config, catalog_path: str, model_dir: str, out_path: str) -> dict:
    """Every row of the catalog with ``ood_score``, ``ood_flag``, ``ood_tercile`` and the TS3 photo-z."""
    from ..estimators.dcp import DCPModel
    from ..pipelines.photoz import model_catalog_settings
    t0 = time.time()
    model = DCPModel.from_model_dir(model_dir)          # refuses a tampered model before any Spark job
    cat = model_catalog_settings(cfg, model.manifest)
    df, cols, n_in = read_catalog_counted(spark, catalog_path, cat)
    model._set(photometry=cols.photometry, withPdf=cfg.output.write_pdf,
               **{k: getattr(cat, v) for k, v in (("fluxCol", "flux_col"), ("fluxErrCol", "flux_err_col"),
                                                  ("magCol", "mag_col"), ("magErrCol", "mag_err_col"))})
    out = model.transform(df)
    _log(f"OOD scores for {catalog_path} with model {model.payload.sha256[:16]}... -> {out_path}")
    written = write_catalog(out, out_path, cols, cfg.output, n_in, str(catalog_path))
    meta = {"model_dir": str(model_dir), "model_sha256": model.payload.sha256, "thresholds": model.thresholds,
            "bins": model.manifest["bins"], "catalog": str(catalog_path), "rows_in": n_in,
            "rows_written": written.get("n_rows"), "seconds": round(time.time() - t0, 1)}
    fs, p = filesystem(out_path)
    write_text(fs, f"{p.rstrip('/')}/{META_FILE}", json.dumps(meta, indent=2) + "\n")
    return meta


def evaluate(spark, cfg: Config, model_dir: str, out_dir: str, n_lood_per_kind: int = 3000) -> dict:
    """ROC-AUC, PR-AUC and thresholded metrics of in-distribution galaxies (the held-out half of the cosmoDC2
    validation file) against each synthetic LOOD kind; catastrophic photo-z fraction per score tercile;
    score histograms. Nothing evaluated was seen in training."""
    from ..estimators.dcp import DCPModel
    from ..metrics.ood import report, roc_auc
    from ..ood.datasets import evaluation
    from ..plots.ood import score_histograms
    model = DCPModel.from_model_dir(model_dir)
    model._set(photometry="mag", withPdf=False)
    ev = evaluation(n_lood_per_kind)
    scored = model.transform(spark.createDataFrame(ev)).select(
        "kind", "redshift", "mag_i_lsst", "ood_score", "ood_flag", "z_median").toPandas()
    if len(scored) != len(ev):
        raise RuntimeError(f"{len(ev)} rows in, {len(scored)} scored")
    gal = scored[scored.kind == "galaxy"]
    by_kind = {k: scored.loc[scored.kind == k, "ood_score"].to_numpy() for k in ("star", "quasar", "highz_galaxy")}
    dz = (gal.z_median - gal.redshift) / (1 + gal.redshift)
    t = model.thresholds
    res = {"model_sha256": model.payload.sha256, "thresholds": t, "galaxies_flagged": float(gal.ood_flag.mean()),
           # Accuracy-optimal thresholds per kind, and the metrics at the model's own flag threshold.
           **report(gal.ood_score.to_numpy(), by_kind, threshold=t["flag"], metric="accuracy",
                    dz_over_1pz=dz.to_numpy(), tercile_edges=(t["tercile_1"], t["tercile_2"]))}
    # Colours alone separate faint stars from galaxies poorly (errors blur the stellar locus); bright objects
    # show what the score does where the photometry can tell.
    bright = scored["mag_i_lsst"] < BRIGHT_I
    gal_b = scored[(scored.kind == "galaxy") & bright].ood_score.to_numpy()
    res["roc_auc_bright"] = {"i_lt": BRIGHT_I, **{k: roc_auc(gal_b, scored[(scored.kind == k) & bright].ood_score)
                                                  for k in by_kind}}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    score_histograms({"galaxy (cosmoDC2)": gal.ood_score.to_numpy(), **by_kind}, t,
                     str(Path(out_dir) / "ood_score_histograms.png"))
    (Path(out_dir) / "ood_metrics.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res

