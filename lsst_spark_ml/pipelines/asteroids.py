"""Asteroid taxonomy end to end: fit on the space-classy labelled set, classify a catalog, evaluate.

Model directory written by ``fit``::

    model_dir/semisupervised/     pyspark.ml PipelineModel [ReflectanceFeatures, SemiSupervisedAsteroidGMMModel]
    model_dir/clustering/         pyspark.ml PipelineModel [ReflectanceFeatures, AsteroidClusteringModel]
    model_dir/_asteroids_meta.json  settings, class lists, BIC, training rows

All model files are JSON (Spark's params metadata with the mixture inside); nothing is pickled.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..asteroids.colours import combine_observations
from ..asteroids.labels import COMPLEXES, SEVEN_CLASSES
from ..config import AsteroidSettings, Config
from ..errors import CatalogError

META_FILE = "_asteroids_meta.json"
UNUSUAL_FILE = "_unusual.csv"
KINDS = ("semisupervised", "clustering")


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data

def labelled_table(a: AsteroidSettings) -> pd.DataFrame:
    """The space-classy spectra as synthetic reflectance magnitudes with classes (driver side, ~3,000 rows)."""
    from ..asteroids.spectra import labelled_set
    t = labelled_set(list(a.bands), a.system, a.label_col)
    t.insert(0, "id", np.arange(len(t), dtype=np.int64))
    return t


def labelled_frame(spark, a: AsteroidSettings, table: pd.DataFrame | None = None, seed: int | None = None):
    """Labelled asteroids with LSST-like multi-epoch photometry, combined per band exactly as a survey
    catalog would be (``combine_observations``): columns id, class7, complex, mag_/err_/nobs_<band>."""
    from ..asteroids.spectra import simulate_observations
    table = labelled_table(a) if table is None else table
    rng = np.random.default_rng(a.seed if seed is None else seed)
    obs = simulate_observations(table, list(a.bands), rng, (a.sim_r_min, a.sim_r_max), a.sim_mean_epochs,
                                a.sim_max_amplitude, system=a.system)
    wide = combine_observations(spark.createDataFrame(obs), "id", "band", "mag", "mag_err", list(a.bands),
                                "r_au", "delta_au", "phase_deg", a.phase_slope)
    labels = spark.createDataFrame(table[["id", "name", "label", "class7", "complex"]].astype(
        {"name": str, "label": str}))
    # Asteroids whose spectrum gives no band have no observation: the left join keeps them (flagged later).
    return labels.join(wide, on="id", how="left")


def catalog_frame(spark, a: AsteroidSettings, catalog: str):
    """A user catalog (Parquet/HATS): per-asteroid magnitudes, or epochs combined per band first."""
    from ..io.readers import read_table
    df = read_table(spark, catalog)
    if a.input == "observations":
        return combine_observations(df, a.id_col, a.obs_band_col, a.obs_mag_col, a.obs_err_col, list(a.bands),
                                    a.obs_r_col, a.obs_delta_col, a.obs_phase_col, a.phase_slope)
    return df


# ----------------------------------------------------------------------------- estimators

def classes_for(a: AsteroidSettings) -> tuple[list[str], str]:
    return (list(SEVEN_CLASSES), "class7") if a.level == "seven" else (list(COMPLEXES), "complex")


def features_stage(a: AsteroidSettings):
    from ..estimators.asteroids import ReflectanceFeatures
    return ReflectanceFeatures(bands=list(a.bands), system=a.system, magColTemplate=a.mag_col,
                               errColTemplate=a.err_col)


def _common_params(a: AsteroidSettings) -> dict:
    return dict(bands=list(a.bands), referenceBand=a.reference_band, maxIter=a.max_iter, tol=a.tol,
                regCovar=a.reg_covar, minProbability=a.min_probability, unusualThreshold=a.unusual_threshold,
                seed=a.seed)


def semisupervised_pipeline(a: AsteroidSettings, label_col: str, classes: list[str]):
    from pyspark.ml import Pipeline
    from ..estimators.asteroids import SemiSupervisedAsteroidGMM
    est = SemiSupervisedAsteroidGMM(labelCol=label_col, classes=classes,
                                    componentsPerClass=a.components_per_class, **_common_params(a))
    return Pipeline(stages=[features_stage(a), est])


def clustering_pipeline(a: AsteroidSettings, naming_col: str = ""):
    from pyspark.ml import Pipeline
    from ..estimators.asteroids import AsteroidClustering
    est = AsteroidClustering(kMin=a.k_min, kMax=a.k_max, namingLabelCol=naming_col, **_common_params(a))
    return Pipeline(stages=[features_stage(a), est])


# ----------------------------------------------------------------------------- fit / classify

def fit(spark, cfg: Config, out_dir: str, catalog: str | None = None, label_col: str | None = None) -> dict:
    """Fit both models on the space-classy labelled set (default) or on ``catalog`` with ``label_col``."""
    a = cfg.asteroids
    t0 = time.time()
    classes, default_label = classes_for(a)
    if catalog:
        if not label_col:
            raise CatalogError("fitting on a catalog needs --label-col (the column holding class names)")
        df = catalog_frame(spark, a, catalog)
        if label_col not in df.columns:
            raise CatalogError(f"catalog {catalog} has no label column {label_col!r}")
    else:
        df, label_col = labelled_frame(spark, a), default_label
    df = df.cache()
    try:
        semi = semisupervised_pipeline(a, label_col, classes).fit(df)
        clus = clustering_pipeline(a, label_col if a.level == "complex" else "").fit(df)
    finally:
        df.unpersist()
    out = Path(out_dir)
    semi.write().overwrite().save(str(out / "semisupervised"))
    clus.write().overwrite().save(str(out / "clustering"))
    meta = {"settings": dataclasses.asdict(a), "classes": classes, "label_col": label_col,
            "source": catalog or f"space-classy {a.label_col}",
            "semisupervised": semi.stages[-1].info, "clustering": clus.stages[-1].info,
            "clustering_classes": clus.stages[-1].getClasses(), "seconds": round(time.time() - t0, 1)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=float) + "\n")
    return meta


def load_model(model_dir: str, kind: str = "semisupervised"):
    from pyspark.ml import PipelineModel
    if kind not in KINDS:
        raise CatalogError(f"model kind must be one of {KINDS}, got {kind!r}")
    path = Path(model_dir) / kind
    if not (path / "metadata").exists():
        raise CatalogError(f"{model_dir} holds no {kind} model (expected {path}); run 'asteroids fit' first")
    return PipelineModel.load(str(path))


def classify(spark, cfg: Config, catalog: str, model_dir: str, out_path: str, kind: str = "semisupervised") -> dict:
    """Classes, probabilities, flags and unusual scores for every row; the most unusual ones ranked to a CSV."""
    from pyspark.sql import functions as F
    from ..io.hats_writer import write_parquet
    a = cfg.asteroids
    t0 = time.time()
    model = load_model(model_dir, kind)
    stage = model.stages[-1]
    df = catalog_frame(spark, a, catalog)
    n_in = df.count()
    out = model.transform(df)
    written = write_parquet(out, out_path, cfg.output.mode)
    if written["n_rows"] != n_in:
        raise RuntimeError(f"{catalog}: {n_in} rows in, {written['n_rows']} written")
    res = spark.read.parquet(out_path)
    id_col = a.id_col if a.id_col in res.columns else None
    keep = [c for c in (id_col, stage.getOrDefault(stage.classCol), stage.getOrDefault(stage.maxProbabilityCol),
                        stage.getOrDefault(stage.unusualScoreCol), stage.getOrDefault(stage.flagsCol)) if c]
    score = stage.getOrDefault(stage.unusualScoreCol)
    top = (res.where(F.col(score).isNotNull()).orderBy(F.col(score).desc()).limit(a.n_unusual)
           .select(*keep).toPandas())
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    top.to_csv(Path(out_path) / UNUSUAL_FILE, index=False)
    meta = {"catalog": str(catalog), "model_dir": str(model_dir), "kind": kind, "classes": stage.getClasses(),
            "rows_in": n_in, "rows_written": written["n_rows"], "unusual_list": str(Path(out_path) / UNUSUAL_FILE),
            "seconds": round(time.time() - t0, 1)}
    (Path(out_path) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def demo(spark, cfg: Config, model_dir: str, out_dir: str) -> dict:
    """The demo's stage: the labelled set observed again (another noise seed), written as a catalog and
    classified with ``model_dir``; accuracy against the labels (objects the model was fitted on)."""
    a = cfg.asteroids
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    cat = str(Path(out_dir) / "catalog")
    labelled_frame(spark, a, seed=a.seed + 1).write.mode("overwrite").parquet(cat)
    meta = classify(spark, cfg, cat, model_dir, str(Path(out_dir) / "classified"))
    res = spark.read.parquet(str(Path(out_dir) / "classified"))
    m = confusion_metrics(res, "complex", "asteroid_complex", list(COMPLEXES))
    return {"rows": meta["rows_written"], "complex_accuracy": m["accuracy"], "unusual_list": meta["unusual_list"]}


# ----------------------------------------------------------------------------- evaluate

def confusion_metrics(df, true_col: str, pred_col: str, labels: list[str]) -> dict:
    """Accuracy, per-class recall and confusion matrix from a Spark groupBy (rows with a true label only).

    A row without a prediction (NO_COLOUR) counts in ``coverage`` but not in accuracy; "unassigned" or any
    name outside ``labels`` counts as wrong (column "other").
    """
    from pyspark.sql import functions as F
    rows = df.where(F.col(true_col).isNotNull()).groupBy(true_col, pred_col).count().collect()
    cols = labels + ["other"]
    mat = np.zeros((len(labels), len(cols)), dtype=np.int64)
    unclassified = 0
    for r in rows:
        t, p, n = r[0], r[1], r[2]
        if t not in labels:
            continue
        if p is None:
            unclassified += n
            continue
        mat[labels.index(t), cols.index(p) if p in labels else len(labels)] += n
    total = int(mat.sum())
    recall = {c: (float(mat[i, i] / mat[i].sum()) if mat[i].sum() else None) for i, c in enumerate(labels)}
    return {"accuracy": float(np.trace(mat[:, :len(labels)]) / total) if total else None, "n": total,
            "unclassified": int(unclassified), "coverage": total / max(total + unclassified, 1),
            "recall": recall, "labels": labels, "confusion_columns": cols, "confusion": mat.tolist()}


def _split(table: pd.DataFrame, a: AsteroidSettings) -> tuple[np.ndarray, np.ndarray]:
    """Stratified by seven-class: test ids, and the training ids whose label is kept in the 10 % runs."""
    rng = np.random.default_rng(a.seed)
    test, kept = [], []
    for _, g in table.groupby("class7"):
        ids = rng.permutation(g["id"].to_numpy())
        n_test = int(round(a.test_fraction * len(ids)))
        test.extend(ids[:n_test])
        train = ids[n_test:]
        kept.extend(train[:max(1, int(round(a.label_fraction * len(train))))])
    return np.asarray(test), np.asarray(kept)


def evaluate(spark, cfg: Config, out_dir: str) -> dict:
    """The issue-7 targets on a held-out split of the space-classy set with LSST-like noise (metrics.json)."""
    from pyspark.sql import functions as F
    from ..plots import asteroids as plots
    a = cfg.asteroids
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = labelled_table(a)
    test_ids, kept_ids = _split(table, a)
    df = labelled_frame(spark, a, table).withColumn("is_test", F.col("id").isin([int(i) for i in test_ids]))
    df = df.withColumn("complex10", F.when(F.col("id").isin([int(i) for i in kept_ids]), F.col("complex")))
    df = df.withColumn("class7_10", F.when(F.col("id").isin([int(i) for i in kept_ids]), F.col("class7")))
    df = df.cache()
    train, test = df.where(~F.col("is_test")), df.where(F.col("is_test"))
    result: dict = {"settings": dataclasses.asdict(a), "n_labelled": len(table),
                    "n_train": int(train.count()), "n_test": int(test.count())}
    classes, label_col = classes_for(a)
    try:
        tf = time.time()
        semi = semisupervised_pipeline(a, label_col, classes).fit(train)
        result["fit_seconds_semisupervised"] = round(time.time() - tf, 1)
        pred = semi.transform(test).withColumn("n_usable", F.expr(
            "size(filter(refl_mag, x -> NOT isnan(x)))")).cache()
        all_bands = pred.where(F.col("n_usable") == len(a.bands))
        res_full = {"complex": confusion_metrics(pred, "complex", "asteroid_complex", list(COMPLEXES)),
                    "complex_all_bands": confusion_metrics(all_bands, "complex", "asteroid_complex", list(COMPLEXES))}
        if a.level == "seven":
            res_full["seven"] = confusion_metrics(pred, "class7", "asteroid_class", list(SEVEN_CLASSES))
            res_full["seven_all_bands"] = confusion_metrics(all_bands, "class7", "asteroid_class",
                                                            list(SEVEN_CLASSES))
        result["semisupervised_all_labels"] = res_full
        pdf = pred.select("refl_mag", "class7", "complex", "asteroid_class", "asteroid_complex",
                          "max_probability").toPandas()
        pred.unpersist()

        # Semi-supervised with label_fraction of the training labels versus clustering named by the same labels.
        semi10 = semisupervised_pipeline(a, "class7_10" if a.level == "seven" else "complex10", classes).fit(train)
        clus = clustering_pipeline(a, "complex10").fit(train)
        p10 = semi10.transform(test)
        pc = clus.transform(test)
        result["label_fraction_comparison"] = {
            "label_fraction": a.label_fraction, "labels_kept": int(len(kept_ids)),
            "semisupervised_complex": confusion_metrics(p10, "complex", "asteroid_complex", list(COMPLEXES)),
            "clustering_complex": confusion_metrics(pc, "complex", "asteroid_complex", list(COMPLEXES)),
            "clustering_k": clus.stages[-1].info["k"], "clustering_bic": clus.stages[-1].info["bic"],
            "cluster_names": clus.stages[-1].info["cluster_names"]}
        cpdf = pc.select("refl_mag", "asteroid_class").toPandas()
    finally:
        df.unpersist()
    refl = np.stack([np.asarray(v, float) for v in pdf["refl_mag"]]) if len(pdf) else np.zeros((0, len(a.bands)))
    crefl = np.stack([np.asarray(v, float) for v in cpdf["refl_mag"]]) if len(cpdf) else refl
    r = result["semisupervised_all_labels"]
    plots_out = [plots.colour_colour(refl, list(a.bands), pdf["class7"].to_numpy(), out / "colours_true_class.png",
                                     "held-out set: true class"),
                 plots.colour_colour(refl, list(a.bands), pdf["asteroid_class"].to_numpy(),
                                     out / "colours_semisupervised.png", "semi-supervised GMM: predicted class"),
                 plots.colour_colour(crefl, list(a.bands), cpdf["asteroid_class"].to_numpy(),
                                     out / "colours_clusters.png", "clustering (BIC), named by complex"),
                 plots.probability_histogram(pdf["max_probability"].to_numpy(float), out / "probability_hist.png",
                                             a.min_probability),
                 plots.confusion(np.asarray(r["complex"]["confusion"]), list(COMPLEXES), list(COMPLEXES) + ["other"],
                                 out / "confusion_complex.png", "complex level (held-out)")]
    if "seven" in r:
        plots_out.append(plots.confusion(np.asarray(r["seven"]["confusion"]), list(SEVEN_CLASSES),
                                         list(SEVEN_CLASSES) + ["other"],
                                         out / "confusion_seven.png", "seven classes (held-out)"))
    result["plots"] = [str(p) for p in plots_out]
    result["seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result
