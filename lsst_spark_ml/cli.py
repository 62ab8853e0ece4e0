"""``lsst-spark-ml``: the command line. Thin: parse, resolve configuration, call one pipeline function."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import Config, load_config
from .errors import LsstSparkMLError

REPO_CONF = Path(__file__).resolve().parent.parent / "conf"


def default_model_dir() -> Path:
    """The MBRNN ensemble shipped inside the package (trained by ``make train-default``)."""
    return Path(__file__).resolve().parent / "resources" / "models" / "mbrnn_dc2"


def default_dcp_dir() -> Path:
    """The DCP out-of-distribution model shipped inside the package (trained by ``make train-ood``)."""
    return Path(__file__).resolve().parent / "resources" / "models" / "dcp_dc2"


def default_morphology_dir() -> Path:
    """The small DAT morphology classifier shipped inside the package (trained by ``make train-morphology``)."""
    return Path(__file__).resolve().parent / "resources" / "models" / "morphology_dat"


def default_asteroid_dir() -> Path:
    """The asteroid mixtures shipped inside the package (fitted by ``lsst-spark-ml asteroids fit``)."""
    return Path(__file__).resolve().parent / "resources" / "models" / "asteroids_classy"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", action="append", default=[], metavar="YAML",
                   help="configuration file (repeatable; later files win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one configuration key, e.g. --set inference.batch_size=20000")
    p.add_argument("--master", help="Spark master (ignored under spark-submit, which sets its own)")
    p.add_argument("--ui", action="store_true", help="enable the Spark UI and print its URL")


def _config(args) -> Config:
    overrides = list(args.overrides)
    if args.master:
        overrides.append(f"spark.master={args.master}")
    if args.ui:
        overrides.append("spark.ui=true")
    cfg = load_config(args.conf, overrides)
    print("[lsst_spark_ml] resolved configuration:\n" + "\n".join("  " + l for l in cfg.dump().splitlines()),
          file=sys.stderr)
    return cfg


def _spark(cfg: Config):
    from .session import get_spark
    return get_spark(cfg.spark)


def cmd_photoz_train(args) -> int:
    from .io.datasets import dc2_paths
    from .pipelines import photoz
    for flag, key in (("backend", "train.backend"), ("num_processes", "train.num_processes"),
                      ("data_loader", "train.data_loader")):
        if getattr(args, flag) is not None:
            args.overrides.append(f"{key}={getattr(args, flag)}")
    cfg = _config(args)
    catalog = args.catalog or cfg.catalog.path or str(dc2_paths()["train"])
    if cfg.catalog.truth_col is None:
        cfg.catalog.truth_col = "redshift"
    spark = _spark(cfg)
    res = photoz.train(spark, cfg, catalog, args.out)
    print(json.dumps({"model_dir": res["model_dir"], "model_sha256": res["model_sha256"],
                      "metrics": res["metrics"]}, indent=2))
    return 0


def cmd_photoz_predict(args) -> int:
    from .pipelines import photoz
    cfg = _config(args)
    catalog = args.catalog or cfg.catalog.path
    out = args.out or cfg.output.path
    if not catalog or not out:
        raise LsstSparkMLError("photoz predict needs --catalog and --out (or catalog.path / output.path in conf)")
    model = args.model or str(default_model_dir())
    spark = _spark(cfg)       # photoz.predict verifies the model before any Spark job
    meta = photoz.predict(spark, cfg, catalog, model, out)
    print(json.dumps(meta, indent=2))
    return 0


def cmd_photoz_evaluate(args) -> int:
    from .artefacts import read_manifest
    from .pipelines import photoz
    cfg = _config(args)
    bins = read_manifest(args.model)[0]["bins"] if args.model else None
    spark = _spark(cfg)
    res = photoz.evaluate(spark, args.predictions, args.truth_col, args.out, bins=bins, z_col=args.z_col)
    print(json.dumps(res, indent=2, default=float))
    return 0


def cmd_bayes_run(args) -> int:
    from .pipelines import bayes
    cfg = _config(args)
    catalog = args.catalog or cfg.catalog.path
    out = args.out or cfg.output.path
    if not catalog or not out:
        raise LsstSparkMLError("bayes run needs --catalog and --out (or catalog.path / output.path in conf)")
    spark = _spark(cfg)       # templates, filters and the selection are checked before any Spark job
    meta = bayes.run(spark, cfg, catalog, out, method=args.method, where=args.where)
    print(json.dumps(meta, indent=2, default=str))
    return 0


def cmd_asteroids_fit(args) -> int:
    from .pipelines import asteroids
    cfg = _config(args)
    spark = _spark(cfg)
    meta = asteroids.fit(spark, cfg, args.out, catalog=args.catalog, label_col=args.label_col)
    print(json.dumps(meta, indent=2, default=float))
    return 0


def cmd_asteroids_classify(args) -> int:
    from .pipelines import asteroids
    cfg = _config(args)
    catalog = args.catalog or cfg.catalog.path
    out = args.out or cfg.output.path
    if not catalog or not out:
        raise LsstSparkMLError("asteroids classify needs --catalog and --out (or catalog.path / output.path in conf)")
    spark = _spark(cfg)
    meta = asteroids.classify(spark, cfg, catalog, args.model or str(default_asteroid_dir()), out, kind=args.kind)
    print(json.dumps(meta, indent=2))
    return 0


def cmd_asteroids_evaluate(args) -> int:
    from .pipelines import asteroids
    cfg = _config(args)
    spark = _spark(cfg)
    res = asteroids.evaluate(spark, cfg, args.out)
    print(json.dumps(res, indent=2, default=float))
    return 0


def cmd_ood_fit(args) -> int:
    from .pipelines import ood
    cfg = _config(args)
    spark = _spark(cfg)
    res = ood.fit(spark, cfg, args.labelled, args.unlabelled, args.out, labelled_where=args.labelled_where)
    print(json.dumps({"model_dir": res["model_dir"], "model_sha256": res["model_sha256"],
                      "thresholds": res["thresholds"], "metrics": res["metrics"]}, indent=2, default=float))
    return 0


def cmd_ood_score(args) -> int:
    from .pipelines import ood
    cfg = _config(args)
    catalog = args.catalog or cfg.catalog.path
    out = args.out or cfg.output.path
    if not catalog or not out:
        raise LsstSparkMLError("ood score needs --catalog and --out (or catalog.path / output.path in conf)")
    spark = _spark(cfg)       # the model is verified before any Spark job
    print(json.dumps(ood.score(spark, cfg, catalog, args.model or str(default_dcp_dir()), out), indent=2))
    return 0


def cmd_ood_evaluate(args) -> int:
    from .pipelines import ood
    cfg = _config(args)
    spark = _spark(cfg)
    res = ood.evaluate(spark, cfg, args.model or str(default_dcp_dir()), args.out)
    print(json.dumps(res, indent=2, default=float))
    return 0


def cmd_influence(args) -> int:
    from .pipelines import influence
    cfg = _config(args)
    spark = _spark(cfg)       # model and snapshots are verified (and matched) before any Spark job
    res = influence.run(spark, cfg, args.model or str(default_model_dir()), args.train, args.queries, args.out,
                        snapshot_dir=args.snapshots, query_where=args.query_where)
    print(json.dumps(res, indent=2, default=float))
    return 0


def cmd_targets(args) -> int:
    from .pipelines import targets
    cfg = _config(args)
    spark = _spark(cfg)
    res = targets.run(spark, cfg, args.model or str(default_model_dir()), args.pool, args.labelled, args.out,
                      dcp_dir=args.dcp_model, n_targets=args.n)
    print(json.dumps(res, indent=2, default=float))
    return 0


def cmd_demo(args) -> int:
    from .pipelines import demo
    cfg = _config(args)
    out = args.out or f"outputs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    spark = _spark(cfg)
    dcp, ast, morph = default_dcp_dir(), default_asteroid_dir(), default_morphology_dir()
    demo.run(spark, cfg, out, n_synthetic=args.rows, model_dir=args.model or str(default_model_dir()),
             dcp_dir=str(dcp) if (dcp / "manifest.json").exists() else None,
             asteroid_dir=str(ast) if (ast / "semisupervised").exists() else None,
             morphology_dir=str(morph) if (morph / "manifest.json").exists() else None)
    return 0


def cmd_release_run(args) -> int:
    """Issue 9: the annual reprocessing job. Plan and model checks happen before any SparkSession."""
    from .release import runner
    cfg = _config(args)
    if args.release_id:
        cfg.release.id = args.release_id
    if args.dry_run:
        print(runner.dry_run(cfg))
        return 0
    runner.ensure_inputs(cfg, lambda: _spark(cfg))
    res = runner.run_release(cfg, lambda: _spark(cfg))
    print(json.dumps(res, indent=2, default=str))
    return {"complete": 0, "failed_partitions": 3}.get(res["status"], 4)


def cmd_release_synth(args) -> int:
    from .release.synth import write_synthetic_release
    cfg = _config(args)
    print(json.dumps(write_synthetic_release(_spark(cfg), args.rows, args.out, args.order, args.seed), indent=2))
    return 0


def cmd_morphology_make_cutouts(args) -> int:
    from .pipelines import morphology
    cfg = _config(args)
    paths = morphology.make_cutouts(cfg, args.out, args.n_labelled, args.n_unlabelled, args.n_test, args.size,
                                    args.rows_per_group)
    print(json.dumps(paths, indent=2))
    return 0


def cmd_morphology_train(args) -> int:
    from .pipelines import morphology
    cfg = _config(args)
    spark = _spark(cfg) if cfg.train.backend != "local" else None
    res = morphology.train(spark, cfg, args.labelled, args.unlabelled, args.out)
    print(json.dumps({"model_dir": res["model_dir"], "model_sha256": res["model_sha256"],
                      "training": res["manifest"]["training"]}, indent=2, default=str))
    return 0


def cmd_morphology_predict(args) -> int:
    from .pipelines import morphology
    cfg = _config(args)
    spark = _spark(cfg)       # model and cutout-table metadata are checked before any Spark job
    print(json.dumps(morphology.predict(spark, cfg, args.cutouts, args.model, args.out), indent=2))
    return 0


def cmd_morphology_evaluate(args) -> int:
    from .pipelines import morphology
    cfg = _config(args)
    spark = _spark(cfg)
    res = morphology.evaluate(spark, args.predictions, args.out, args.label_col, args.cutouts, args.model)
    print(json.dumps({k: v for k, v in res.items() if k != "confusion"}, indent=2))
    return 0


def _morphology_parser(sub) -> None:
    mo = sub.add_parser("morphology", help="galaxy morphology (Hubble sequence) from 5-band cutouts: "
                                           "make-cutouts, train, predict, evaluate")
    mos = mo.add_subparsers(dest="morphology_command", required=True)
    mc = mos.add_parser("make-cutouts", help="render labelled, unlabelled and test cutout tables with GalSim",
                        description="labelled/: the labelled domain with labels; unlabelled/ and test/: the "
                                    "shifted survey domain (fainter, smaller, broader PSF). Sizes default to "
                                    "morphology.n_labelled / n_unlabelled / n_test and morphology.image_size.")
    mc.add_argument("--out", required=True, help="directory for the three cutout tables")
    mc.add_argument("--n-labelled", type=int)
    mc.add_argument("--n-unlabelled", type=int)
    mc.add_argument("--n-test", type=int)
    mc.add_argument("--size", type=int, help="cutout side in pixels")
    mc.add_argument("--rows-per-group", type=int, help="Parquet row-group size (default ~16 MB of cutouts); "
                                                       "DDP training needs at least one group per process")
    _common(mc)
    mc.set_defaults(func=cmd_morphology_make_cutouts)
    mt = mos.add_parser("train", help="train the DAT (or CNN) classifier, supervised or semi-supervised",
                        description="morphology.mode=semi: FixMatch on --unlabelled with the S/N curriculum; "
                                    "train.backend=torch-distributor trains with DDP. Writes a model directory "
                                    "(safetensors + sha256 manifest).")
    mt.add_argument("--labelled", required=True, help="labelled cutout table")
    mt.add_argument("--unlabelled", help="unlabelled (survey) cutout table: FixMatch's rows with morphology.mode=semi, "
                                         "the measured colour shift with morphology.colour_shift_source=unlabelled")
    mt.add_argument("--out", required=True, help="model directory to write")
    _common(mt)
    mt.set_defaults(func=cmd_morphology_train)
    mp = mos.add_parser("predict", help="class probabilities for every row of a cutout table",
                        description="Writes every input row once with morph_class, morph_confidence, "
                                    "morph_probs and morph_flags (and morph_attention with "
                                    "morphology.attention=true).")
    mp.add_argument("--cutouts", required=True, help="cutout table (Parquet)")
    mp.add_argument("--model", required=True, help="model directory written by 'morphology train'")
    mp.add_argument("--out", required=True, help="output catalog")
    _common(mp)
    mp.set_defaults(func=cmd_morphology_predict)
    me = mos.add_parser("evaluate", help="macro-F1, accuracy, confusion matrix and attention-map PNGs",
                        description="Metrics of a 'morphology predict' output against its label column.")
    me.add_argument("--predictions", required=True, help="output of 'morphology predict' with a label column")
    me.add_argument("--out", required=True, help="directory for metrics.json and PNGs")
    me.add_argument("--label-col", default="label")
    me.add_argument("--cutouts", help="the cutout table predicted (for the attention maps)")
    me.add_argument("--model", help="the model directory (for the attention maps)")
    _common(me)
    me.set_defaults(func=cmd_morphology_evaluate)


def _release_parser(sub) -> None:
    rel = sub.add_parser("release", help="annual data-release reprocessing: resumable, idempotent, by sky partition")
    rels = rel.add_subparsers(dest="release_command", required=True)
    rr = rels.add_parser("run", help="run (or resume) the release a configuration describes",
                         description="Validates the release: section and verifies every model before Spark starts; "
                                     "processes each HATS pixel of the input, committing each stage's output "
                                     "atomically; a rerun skips committed partitions. Exit code 0: complete, "
                                     "3: some partitions failed (named in the report), 4: incomplete.")
    rr.add_argument("--dry-run", action="store_true", help="print the plan (stages, partitions, models with "
                                                           "sha256, estimated cost) and stop; starts no Spark")
    rr.add_argument("--release-id", help="override release.id")
    _common(rr)
    rr.set_defaults(func=cmd_release_run)
    rs = rels.add_parser("synth", help="write a synthetic multi-pixel HATS input catalog (galaxies, stars, "
                                       "quasars, non-detections)")
    rs.add_argument("--rows", type=int, required=True)
    rs.add_argument("--out", required=True, help="HATS catalog directory to create (must not exist)")
    rs.add_argument("--order", type=int, default=3, help="HEALPix order of the partitions (default 3)")
    rs.add_argument("--seed", type=int, default=2026)
    _common(rs)
    rs.set_defaults(func=cmd_release_synth)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsst-spark-ml", description=__doc__.splitlines()[0].strip("` "))
    sub = p.add_subparsers(dest="command", required=True)

    pz = sub.add_parser("photoz", help="MBRNN photometric redshifts: train, predict, evaluate")
    pzs = pz.add_subparsers(dest="photoz_command", required=True)

    t = pzs.add_parser("train", help="train the MBRNN ensemble on a catalog with spectroscopic redshifts",
                       description="Train one MBRNN per anchor-loss gamma, fit the per-bin ensemble weights and "
                                   "write a model directory (safetensors + manifest with sha256). Default catalog: "
                                   "the cosmoDC2 training file.")
    t.add_argument("--catalog", help="training catalog (Parquet, HATS, FITS or DESC HDF5); "
                                     "default: catalog.path, else the cosmoDC2 training file")
    t.add_argument("--out", required=True, help="model directory to write (make train-default writes the "
                                                "shipped model's directory)")
    t.add_argument("--backend", choices=["local", "torch-distributor", "horovod"],
                   help="where training runs (train.backend): one process, Spark's TorchDistributor, or Horovod")
    t.add_argument("--num-processes", type=int, help="training processes of a distributed backend "
                                                     "(train.num_processes)")
    t.add_argument("--data-loader", choices=["memory", "parquet"],
                   help="memory: every process holds the training set; parquet: Spark writes features to a "
                        "Parquet cache and each process streams its own row groups (train.data_loader)")
    _common(t)
    t.set_defaults(func=cmd_photoz_train)

    pr = pzs.add_parser("predict", help="add photo-z columns to every row of a catalog",
                        description="Apply a model to every row of a catalog on Spark; writes HATS (when the "
                                    "catalog has coordinates) or Parquet, one output row per input row.")
    pr.add_argument("--catalog", help="input catalog (Parquet file/dir, HATS dir, FITS, DESC HDF5)")
    pr.add_argument("--model", help="model directory (default: the shipped MBRNN ensemble)")
    pr.add_argument("--out", help="output directory")
    _common(pr)
    pr.set_defaults(func=cmd_photoz_predict)

    ev = pzs.add_parser("evaluate", help="RAIL-style metrics (JSON on stdout) and plots of predictions",
                        description="Point and PDF metrics computed as Spark aggregations; PNG plots to --out.")
    ev.add_argument("--predictions", required=True, help="output directory of 'photoz predict'")
    ev.add_argument("--truth-col", required=True, help="column with the true/spectroscopic redshift")
    ev.add_argument("--out", required=True, help="directory for metrics.json and the PNG plots")
    ev.add_argument("--model", help="model directory, when the predictions lack _photoz_meta.json")
    ev.add_argument("--z-col", default="z_median", help="point estimate for the plots (default z_median)")
    _common(ev)
    ev.set_defaults(func=cmd_photoz_evaluate)

    by = sub.add_parser("bayes", help="Bayesian template-fitting photo-z (grid, MCMC, VI) for flagged rows")
    bys = by.add_subparsers(dest="bayes_command", required=True)
    br = bys.add_parser("run", help="posteriors for the rows with ood_flag set (or --where), all rows kept",
                        description="Fits the selected rows with the chosen method on Spark and writes every input "
                                    "row once, with bayes_* columns, z_adopted/pdf_adopted and z_source.")
    br.add_argument("--catalog", help="input catalog, typically the output of 'photoz predict' (+ OOD flags)")
    br.add_argument("--out", help="output directory")
    br.add_argument("--method", choices=("grid", "mcmc", "vi"), help="default: bayes.method")
    br.add_argument("--where", help="Spark SQL predicate choosing the rows (default: bayes.where, else "
                                    "bayes.flag_col), e.g. \"z_std > 0.3\"")
    _common(br)
    br.set_defaults(func=cmd_bayes_run)

    ast = sub.add_parser("asteroids", help="asteroid taxonomy from LSST colours: fit, classify, evaluate")
    asts = ast.add_subparsers(dest="asteroids_command", required=True)
    af = asts.add_parser("fit", help="fit the semi-supervised GMM and the BIC clustering",
                         description="Default training set: the space-classy spectra as LSST-like photometry. "
                                     "Writes PipelineModels (JSON) under --out.")
    af.add_argument("--out", required=True, help="model directory to write")
    af.add_argument("--catalog", help="labelled catalog instead of the space-classy set (needs --label-col)")
    af.add_argument("--label-col", help="column of class names in --catalog")
    _common(af)
    af.set_defaults(func=cmd_asteroids_fit)
    ac = asts.add_parser("classify", help="class, probabilities, flags and unusual score for every row",
                         description="Reads Parquet/HATS (asteroids.input: wide magnitudes or per-epoch "
                                     "observations), writes Parquet plus a ranked list of unusual objects.")
    ac.add_argument("--catalog", help="input catalog")
    ac.add_argument("--model", help="model directory written by 'asteroids fit' (default: the shipped model, "
                                    "fitted on the space-classy set)")
    ac.add_argument("--out", help="output directory")
    ac.add_argument("--kind", choices=("semisupervised", "clustering"), default="semisupervised")
    _common(ac)
    ac.set_defaults(func=cmd_asteroids_classify)
    ae = asts.add_parser("evaluate", help="held-out accuracy, confusion matrices, 10%%-label comparison, plots",
                         description="Fits on a stratified split of the space-classy set and writes metrics.json "
                                     "and PNG plots to --out.")
    ae.add_argument("--out", required=True, help="directory for metrics.json and plots")
    _common(ae)
    ae.set_defaults(func=cmd_asteroids_evaluate)

    oo = sub.add_parser("ood", help="DCP out-of-distribution scores: fit, score, evaluate")
    oos = oo.add_subparsers(dest="ood_command", required=True)
    f = oos.add_parser("fit", help="train the two DCP networks on labelled and unlabelled catalogs",
                       description="Three training stages (Lee & Shin 2022) on labelled galaxies plus an "
                                   "unlabelled region; writes a model directory (safetensors + manifest). "
                                   "Defaults: the cosmoDC2 training file and the embedded region.")
    f.add_argument("--labelled", help="catalog with spectroscopic redshifts (default: cosmoDC2 training file)")
    f.add_argument("--labelled-where", help="Spark SQL predicate keeping some labelled rows, e.g. "
                   "'mag_i_lsst < 23' (a spectroscopic-like training set)")
    f.add_argument("--unlabelled", help="catalog of the region to score (default: the embedded region)")
    f.add_argument("--out", required=True, help="model directory to write")
    _common(f)
    f.set_defaults(func=cmd_ood_fit)
    sc = oos.add_parser("score", help="add ood_score, ood_flag, ood_tercile and photo-z to every row")
    sc.add_argument("--catalog", help="input catalog (Parquet, HATS, FITS, DESC HDF5)")
    sc.add_argument("--model", help="DCP model directory (default: the shipped model)")
    sc.add_argument("--out", help="output directory")
    _common(sc)
    sc.set_defaults(func=cmd_ood_score)
    oe = oos.add_parser("evaluate", help="ROC-AUC, PR-AUC, accuracy, F1.5 against synthetic stars, quasars and "
                                         "z > 3.1 galaxies; catastrophic fraction per score tercile; PNG")
    oe.add_argument("--model", help="DCP model directory (default: the shipped model)")
    oe.add_argument("--out", required=True, help="directory for ood_metrics.json and the histogram PNG")
    _common(oe)
    oe.set_defaults(func=cmd_ood_evaluate)

    inf = sub.add_parser("influence", help="influence of training rows: self-influence and, per query, "
                                           "the most helpful and harmful training galaxies",
                         description="influence.method=influence-function (default): output-layer gradients "
                                     "through the inverse Hessian of the final model; tracin: gradient products "
                                     "over the snapshots kept in training (train.snapshot_every > 0). Writes "
                                     "self_influence/ (one row per training row), influence/ (one row per "
                                     "query) and a PNG.")
    inf.add_argument("--model", help="model directory (default: the shipped model; for tracin, one trained "
                                     "with train.snapshot_every > 0, e.g. make train-influence)")
    inf.add_argument("--snapshots", help="tracin: snapshot directory (default: <model>/tracin)")
    inf.add_argument("--train", help="training catalog with redshifts (default: the cosmoDC2 training file)")
    inf.add_argument("--queries", help="catalog of the objects to explain (redshift used when present, else the "
                                       "model's most probable bin), e.g. a 'photoz predict' output")
    inf.add_argument("--query-where", help="Spark SQL predicate on the query catalog, e.g. "
                                           "\"abs(z_median - redshift) > 0.15 * (1 + redshift)\"")
    inf.add_argument("--out", required=True, help="output directory")
    _common(inf)
    inf.set_defaults(func=cmd_influence)

    tg = sub.add_parser("targets", help="rank unlabelled objects for spectroscopy and write a target list",
                        description="Uncertainty (DCP score or PDF entropy) x unlabelled density, then a "
                                    "diverse greedy choice away from the training set; every pool row is scored "
                                    "(scores/), the N chosen go to targets.csv with a reason each.")
    tg.add_argument("--pool", required=True, help="catalog of unlabelled candidates")
    tg.add_argument("--labelled", help="current spectroscopic training set (default: cosmoDC2 training file)")
    tg.add_argument("--model", help="photo-z model directory (default: the shipped model)")
    tg.add_argument("--dcp-model", help="DCP model directory: its OOD score becomes the uncertainty")
    tg.add_argument("-n", type=int, help="number of targets (default influence.n_targets)")
    tg.add_argument("--out", required=True, help="output directory")
    _common(tg)
    tg.set_defaults(func=cmd_targets)

    d = sub.add_parser("demo", help="the main job: photo-z for cosmoDC2 and a synthetic 10^6-row LSST catalog",
                       description="Predicts, evaluates and plots with the shipped model on the embedded default "
                                   "(Spark local[*]); prints the output folder at the end.")
    d.add_argument("--out", help="output folder (default outputs/demo-<time>)")
    d.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic catalog (default 10^6)")
    d.add_argument("--model", help="model directory (default: the shipped model)")
    _common(d)
    d.set_defaults(func=cmd_demo)
    _release_parser(sub)
    _morphology_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LsstSparkMLError as exc:
        print(f"lsst-spark-ml: error: {exc}", file=sys.stderr)
        return 2


def run_job(argv: list[str] | None = None) -> int:
    """``main`` for the spark-submit entry points (``jobs/*.py``), stopping the SparkSession afterwards.

    A driver that exits with its session open leaves a standalone or local-cluster master launching
    executors for an application that is gone ("Failed to launch executor" in the worker logs). ``main``
    leaves the session alone: tests and notebooks call it in-process with one shared session."""
    try:
        return main(argv)
    finally:
        from pyspark.sql import SparkSession
        spark = SparkSession.getActiveSession()
        if spark is not None:
            spark.stop()


if __name__ == "__main__":
    sys.exit(main())
