"""The main job on the embedded default: photo-z for the cosmoDC2 validation file and for a synthetic
LSST-like catalog, each evaluated with plots; then the DCP out-of-distribution evaluation. Later capabilities
add their stages here.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

from ..config import Config
from ..io.datasets import dc2_paths
from ..io.synthetic import synthetic_catalog
from . import photoz


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run(spark, cfg: Config, out: str, n_synthetic: int = 1_000_000, model_dir: str | None = None,
        dcp_dir: str | None = None, asteroid_dir: str | None = None, morphology_dir: str | None = None) -> dict:
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"output": str(out_dir), "stages": {}}

    cfg = copy.deepcopy(cfg)
    cfg.catalog.truth_col = cfg.catalog.truth_col or "redshift"

    t = time.time()
    _log("photo-z 1/2: cosmoDC2 validation file (20,449 galaxies, DESC HDF5) -> photo-z -> evaluation")
    dc2_out = out_dir / "dc2_validation"
    meta = photoz.predict(spark, cfg, str(dc2_paths()["validation"]), model_dir, str(dc2_out / "photoz"))
    ev = photoz.evaluate(spark, str(dc2_out / "photoz"), "redshift", str(dc2_out / "evaluation"), z_col="z_median")
    summary["stages"]["dc2_validation"] = {"rows": meta["rows_written"], "seconds": round(time.time() - t, 1),
                                           "metrics": ev}

    t = time.time()
    _log(f"photo-z 2/2: synthetic LSST-like catalog ({n_synthetic:,} rows, nJy fluxes, Rubin naming) "
         "generated on Spark")
    syn_in = out_dir / "synthetic" / "catalog"
    synthetic_catalog(spark, n_synthetic).write.mode("overwrite").parquet(str(syn_in))
    t_gen = time.time() - t
    t = time.time()
    meta = photoz.predict(spark, cfg, str(syn_in), model_dir, str(out_dir / "synthetic" / "photoz"))
    t_pred = time.time() - t
    ev = photoz.evaluate(spark, str(out_dir / "synthetic" / "photoz"), "redshift",
                         str(out_dir / "synthetic" / "evaluation"), z_col="z_median")
    summary["stages"]["synthetic"] = {"rows": meta["rows_written"], "generate_seconds": round(t_gen, 1),
                                      "predict_seconds": round(t_pred, 1),
                                      "rows_per_second": round(n_synthetic / t_pred) if t_pred else None,
                                      "metrics": ev}
    if dcp_dir is not None:
        from . import ood
        t = time.time()
        _log("OOD: DCP scores of held-out cosmoDC2 galaxies against synthetic stars, quasars, z > 3.1 galaxies")
        ev = ood.evaluate(spark, cfg, dcp_dir, str(out_dir / "ood"))
        summary["ood"] = {"seconds": round(time.time() - t, 1), "roc_auc": {k: v["roc_auc"] for k, v in
                                                                             ev["kinds"].items()},
                          "catastrophic_by_tercile": ev["catastrophic_terciles"]["fraction"],
                          "galaxies_flagged": ev["galaxies_flagged"]}
        t = time.time()
        _log("Bayesian follow-up: OOD scores for the cosmoDC2 validation file, then template-fitting posteriors "
             "for the flagged rows only")
        scored = out_dir / "ood" / "dc2_validation_scored"
        ood.score(spark, cfg, str(dc2_paths()["validation"]), dcp_dir, str(scored))
        from . import bayes
        bcfg = copy.deepcopy(cfg)
        bcfg.catalog.photometry = "mag"
        bm = bayes.run(spark, bcfg, str(scored), str(out_dir / "bayes"))
        summary["bayes"] = {"seconds": round(time.time() - t, 1), "method": bm["method"],
                            "z_source_counts": bm["z_source_counts"]}
    if asteroid_dir is not None:
        from . import asteroids
        t = time.time()
        _log("asteroids: the space-classy set re-observed with new LSST-like noise, classified by the shipped "
             "semi-supervised mixture")
        summary["asteroids"] = asteroids.demo(spark, cfg, asteroid_dir, str(out_dir / "asteroids"))
        summary["asteroids"]["seconds"] = round(time.time() - t, 1)
    summary["influence"] = _influence_stage(spark, cfg, out_dir, model_dir, dcp_dir)
    if morphology_dir is not None:
        summary["morphology"] = _morphology_stage(spark, cfg, out_dir, morphology_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")

    print("\nlsst_spark_ml demo: photo-z with the shipped MBRNN ensemble", file=sys.stderr)
    print(f"{'catalog':<16}{'rows':>10}{'sigma_NMAD':>12}{'outliers':>10}{'bias':>10}{'PIT KS':>9}  (z_median)",
          file=sys.stderr)
    for name, st in summary["stages"].items():
        m, p = st["metrics"]["z_median"], st["metrics"]["pdf"]
        print(f"{name:<16}{st['rows']:>10,}{m['sigma_nmad']:>12.4f}{m['catastrophic_fraction']:>10.4f}"
              f"{m['point_bias']:>10.4f}{p['pit_ks']:>9.3f}", file=sys.stderr)
    if "ood" in summary:
        o = summary["ood"]
        print("\nOut-of-distribution (DCP): ROC-AUC against cosmoDC2 galaxies " +
              ", ".join(f"{k} {v:.3f}" for k, v in o["roc_auc"].items()) +
              "; catastrophic photo-z fraction by score tercile " +
              " / ".join(f"{f:.3f}" for f in o["catastrophic_by_tercile"]), file=sys.stderr)
    if "bayes" in summary:
        print(f"Bayesian follow-up ({summary['bayes']['method']}) of the flagged rows: adopted answers by source "
              f"{summary['bayes']['z_source_counts']}", file=sys.stderr)
    if "asteroids" in summary:
        a = summary["asteroids"]
        print(f"Asteroids: {a['rows']:,} classified, complex-level accuracy {a['complex_accuracy']:.3f} "
              f"(objects seen in training, new noise)", file=sys.stderr)
    if summary.get("influence"):
        i = summary["influence"]
        print(f"Influence: {i['outliers']} catastrophic outliers of the validation file explained by their most "
              f"helpful/harmful training galaxies; {i['targets']} spectroscopic targets chosen "
              f"({i['uncertainty']})", file=sys.stderr)
    if summary.get("morphology"):
        m = summary["morphology"]
        print(f"Morphology: {m['rows']} rendered survey-domain galaxies classified by the shipped DAT, macro-F1 "
              f"{m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}; attention maps in {m['attention_png']}",
              file=sys.stderr)
    print(f"\nOutputs, metrics and plots: {out_dir}", file=sys.stderr)
    print(str(out_dir))
    return summary


def _influence_stage(spark, cfg: Config, out_dir: Path, model_dir: str | None, dcp_dir: str | None) -> dict:
    """Which cosmoDC2 training galaxies drive the validation file's catastrophic outliers (influence functions
    on the shipped model), and which validation galaxies most deserve a spectrum."""
    from . import influence, targets
    t = time.time()
    _log("influence: training galaxies behind the catastrophic photo-z outliers of the validation file, then "
         "spectroscopic targets among the validation galaxies")
    where = "abs(z_median - redshift) > 0.15 * (1 + redshift)"
    im = influence.run(spark, cfg, model_dir, None, str(out_dir / "dc2_validation" / "photoz"),
                       str(out_dir / "influence"), query_where=where)
    tm = targets.run(spark, cfg, model_dir, str(dc2_paths()["validation"]), None, str(out_dir / "targets"),
                     dcp_dir=dcp_dir, n_targets=100)
    return {"seconds": round(time.time() - t, 1), "outliers": im["n_queries"], "targets": tm["n_targets"],
            "uncertainty": tm["uncertainty"]}


def _morphology_stage(spark, cfg: Config, out_dir: Path, model_dir: str, n: int = 300) -> dict:
    """A small version of the morphology capability: GalSim renders of the survey domain (held out from the
    shipped model's training), classified on Spark with attention maps, then evaluated."""
    from ..morphology.cutouts import make_sets
    from . import morphology
    t = time.time()
    _log(f"morphology: {n} GalSim galaxies of the survey domain -> the shipped DAT on Spark -> macro-F1, "
         "confusion matrix, attention maps")
    mcfg = copy.deepcopy(cfg)
    mcfg.morphology.attention = True
    # Seed 99 differs from the shipped model's render seed, so these galaxies were never seen in training.
    sets = make_sets(str(out_dir / "morphology" / "cutouts"), 0, 0, n, size=mcfg.morphology.image_size, seed=99)
    pred = str(out_dir / "morphology" / "predictions")
    meta = morphology.predict(spark, mcfg, sets["test"], model_dir, pred)
    ev = morphology.evaluate(spark, pred, str(out_dir / "morphology" / "evaluation"), cutouts=sets["test"],
                             model_dir=model_dir)
    return {"seconds": round(time.time() - t, 1), "rows": meta["rows_written"], "macro_f1": ev["macro_f1"],
            "accuracy": ev["accuracy"], "attention_png": ev["attention_png"]}
