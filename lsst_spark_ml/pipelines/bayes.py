"""Bayesian photo-z follow-up on Spark: template-fitting posteriors (grid | mcmc | vi) for the selected rows.

Selected rows (``ood_flag`` set, or ``bayes.where``) are repartitioned so the expensive fits spread over every
core, fitted with ``mapInPandas``, and unioned back with the untouched rows: every input row appears once.
Each row says in ``z_source`` which method gave its adopted answer (``z_adopted``, ``pdf_adopted``): the
Bayesian method where it was run and succeeded, else the network (``network``), else ``none``.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Iterator

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import CatalogError, TemplateCoverageError
from ..io.hats_writer import write_catalog, write_text
from ..io.readers import filesystem, read_catalog_counted

META_FILE = "_bayes_meta.json"
PHOTOZ_META = "_photoz_meta.json"
OOD_META = "_ood_meta.json"
SCALAR_OUT = ("bayes_z_mean", "bayes_z_median", "bayes_z_mode", "bayes_z_std", "bayes_z_lo68", "bayes_z_hi68",
              "bayes_z_lo95", "bayes_z_hi95", "bayes_rhat", "bayes_ess", "bayes_elbo",
              "z_adopted", "z_adopted_lo68", "z_adopted_hi68")
OUTPUT_COLUMNS = SCALAR_OUT + ("bayes_pdf", "bayes_flags", "bayes_method", "z_source", "pdf_adopted")
SEL = "_bayes_selected"


def _log(msg: str) -> None:
    print(f"[lsst_spark_ml] {msg}", file=sys.stderr, flush=True)


def output_fields():
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, LongType, StringType, StructField
    return ([StructField(c, DoubleType()) for c in SCALAR_OUT]
            + [StructField("bayes_pdf", ArrayType(FloatType())), StructField("bayes_flags", LongType()),
               StructField("bayes_method", StringType()), StructField("z_source", StringType()),
               StructField("pdf_adopted", ArrayType(FloatType()))])


def resolve_bins(catalog_path: str, cfg: Config) -> dict:
    """The network's bins: from the metadata of a photo-z or DCP output, else cfg.model."""
    fs, p = filesystem(catalog_path)
    for meta in (PHOTOZ_META, OOD_META):     # a photo-z output, or a DCP output (its TS3 photo-z)
        try:
            with fs.open_input_stream(f"{p.rstrip('/')}/{meta}") as f:
                return json.loads(f.read())["bins"]
        except (FileNotFoundError, OSError, KeyError, ValueError):
            continue
    m = cfg.model
    return {"n_bins": m.n_bins, "z_min": m.z_min, "z_max": m.z_max}


def check_bins(bins: dict, cfg: Config) -> np.ndarray:
    b = cfg.bayes
    edges = np.linspace(bins["z_min"], bins["z_max"], bins["n_bins"] + 1)
    if edges[0] < b.z_min - 1e-9 or edges[-1] > b.z_max + 1e-9:
        raise TemplateCoverageError(
            f"the network's PDF bins span z = {edges[0]}..{edges[-1]} but bayes.z_min/z_max is "
            f"{b.z_min}..{b.z_max}; the Bayesian PDF must cover the same range")
    return edges


def bayes_mapper(grid_bc, settings, cols, limits: dict, method: str, edges: np.ndarray, network_cols: bool,
                 vi_net: dict | None = None):
    """The function ``mapInPandas`` runs: fits each batch, appends the output columns. ``vi_net``: the amortised
    VI network trained on the driver (``bayes.amortised.network_state``), installed in each worker's model."""
    import hashlib
    # One Model per Python worker and job configuration (workers are reused across tasks and stages).
    key = hashlib.sha256(repr((settings, cols.bands)).encode()).hexdigest()[:16]

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from ..bayes.fit import fit
        from ..bayes.posterior import Model
        from ..inference import cache
        from ..session import task_cores
        torch.set_num_threads(settings.threads or task_cores())
        grid = grid_bc.value
        model = cache.get_or_load((f"bayes-{key}",), lambda: Model(grid, settings))
        if vi_net is not None:
            from ..bayes.amortised import install_network
            install_network(model, settings.vi_components, vi_net)
        for pdf in frames:
            values = np.column_stack([pd.to_numeric(pdf[c], errors="coerce").to_numpy(np.float64)
                                      for c in cols.values])
            errors = np.column_stack([pd.to_numeric(pdf[c], errors="coerce").to_numpy(np.float64)
                                      for c in cols.errors])
            res = fit(model, values, errors, cols.photometry, cols.bands, limits, method, edges).columns
            ok = np.isfinite(res["z_median"])
            out = pdf.copy()
            for c in ("z_mean", "z_median", "z_mode", "z_std", "z_lo68", "z_hi68", "z_lo95", "z_hi95",
                      "rhat", "ess", "elbo"):
                out[f"bayes_{c}"] = res[c]
            out["bayes_pdf"] = [r if k else None for r, k in zip(res["pdf"], ok)]
            out["bayes_flags"] = res["flags"]
            out["bayes_method"] = method
            net_ok = (np.isfinite(pd.to_numeric(pdf["z_median"], errors="coerce").to_numpy(np.float64))
                      if network_cols else np.zeros(len(pdf), bool))
            out["z_source"] = np.where(ok, method, np.where(net_ok, "network", "none"))
            for dst, src in (("z_adopted", "z_median"), ("z_adopted_lo68", "z_lo68"), ("z_adopted_hi68", "z_hi68")):
                net = (pd.to_numeric(pdf[src], errors="coerce").to_numpy(np.float64) if network_cols
                       else np.full(len(pdf), np.nan))
                out[dst] = np.where(ok, res[src], net)
            net_pdf = list(pdf["pdf"]) if network_cols else [None] * len(pdf)
            out["pdf_adopted"] = [b if k else n for b, n, k in zip(out["bayes_pdf"], net_pdf, ok)]
            yield out
    return run


def _passthrough(df, network_cols: bool):
    """The rows not selected: Bayesian columns null, the network's answer adopted where it has one."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, LongType, StringType
    out = df
    for c in SCALAR_OUT[:11]:
        out = out.withColumn(c, F.lit(None).cast(DoubleType()))
    out = (out.withColumn("bayes_pdf", F.lit(None).cast(ArrayType(FloatType())))
              .withColumn("bayes_flags", F.lit(None).cast(LongType()))
              .withColumn("bayes_method", F.lit(None).cast(StringType())))
    if network_cols:
        has = F.col("z_median").isNotNull() & ~F.isnan("z_median")
        out = (out.withColumn("z_source", F.when(has, F.lit("network")).otherwise(F.lit("none")))
                  .withColumn("z_adopted", F.col("z_median").cast("double"))
                  .withColumn("z_adopted_lo68", F.col("z_lo68").cast("double"))
                  .withColumn("z_adopted_hi68", F.col("z_hi68").cast("double"))
                  .withColumn("pdf_adopted", F.col("pdf").cast(ArrayType(FloatType()))))
    else:
        out = (out.withColumn("z_source", F.lit("none"))
                  .withColumn("z_adopted", F.lit(None).cast(DoubleType()))
                  .withColumn("z_adopted_lo68", F.lit(None).cast(DoubleType()))
                  .withColumn("z_adopted_hi68", F.lit(None).cast(DoubleType()))
                  .withColumn("pdf_adopted", F.lit(None).cast(ArrayType(FloatType()))))
    return out


def select_expression(df, cfg: Config, where: str | None):
    from pyspark.sql import functions as F
    where = where or cfg.bayes.where
    if where:
        from ..io.predicates import sql_predicate
        return sql_predicate(df, where, "bayes.where"), where
    flag = cfg.bayes.flag_col
    if flag not in df.columns:
        raise CatalogError(f"the catalog has no {flag!r} column to choose rows by; run the OOD stage first, "
                           "set bayes.flag_col, or give a predicate with --where / bayes.where")
    return F.coalesce(F.col(flag).cast("boolean"), F.lit(False)), f"{flag} is true"


def transform(spark, df, cols, cfg: Config, edges: np.ndarray, method: str | None = None,
              where: str | None = None, grid=None):
    """-> (DataFrame with every input row once and the output columns appended, description of the selection)."""
    from ..bayes.templates import build_model_grid
    method = method or cfg.bayes.method
    clash = [c for c in OUTPUT_COLUMNS if c in df.columns]
    if clash:
        raise CatalogError(f"the catalog already has column(s) {clash} that the Bayesian stage would write")
    sel, described = select_expression(df, cfg, where)
    grid = grid if grid is not None else build_model_grid(cfg.bayes, cols.bands)   # fails before any job
    network_cols = all(c in df.columns for c in ("z_median", "z_lo68", "z_hi68", "pdf"))
    limits = {b: cfg.features.nondetect_limits[b] for b in cols.bands}
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType
    tagged = df.withColumn(SEL, sel)
    chosen = tagged.filter(F.col(SEL)).drop(SEL)
    rest = tagged.filter(~F.col(SEL)).drop(SEL)
    schema = StructType(list(df.schema.fields) + output_fields())
    vi_net = None
    if method == "vi" and cfg.bayes.vi_mode != "iterative":
        # Train (or load from the cache) once, here: otherwise every worker would train its own copy.
        from ..bayes.amortised import get_network, network_state
        from ..bayes.posterior import Model
        vi_net = network_state(get_network(Model(grid, cfg.bayes), cfg.bayes.vi_components, log=_log))
    mapper = bayes_mapper(spark.sparkContext.broadcast(grid), cfg.bayes, cols, limits, method, edges, network_cols,
                          vi_net)
    # The selected rows are few and each costs ~10^4 x a network row: spread them over every core.
    fitted = chosen.repartition(spark.sparkContext.defaultParallelism).mapInPandas(mapper, schema)
    return fitted.unionByName(_passthrough(rest, network_cols)), described


def run(spark, cfg: Config, catalog_path: str, out_path: str, method: str | None = None,
        where: str | None = None) -> dict:
    from ..bayes.templates import build_model_grid
    t0 = time.time()
    method = method or cfg.bayes.method
    if method not in ("grid", "mcmc", "vi"):
        raise CatalogError(f"method must be grid|mcmc|vi, got {method!r}")
    bins = resolve_bins(catalog_path, cfg)
    edges = check_bins(bins, cfg)
    grid = build_model_grid(cfg.bayes, cfg.catalog.bands)          # templates/filters checked before Spark
    df, cols, n_in = read_catalog_counted(spark, catalog_path, cfg.catalog)
    out, described = transform(spark, df, cols, cfg, edges, method, where, grid)
    _log(f"Bayesian photo-z ({method}) for rows where {described} of {catalog_path} -> {out_path}")
    written = write_catalog(out, out_path, cols, cfg.output, n_in, str(catalog_path))
    from ..io.readers import read_table
    counts = {r["z_source"]: r["count"] for r in read_table(spark, out_path).groupBy("z_source").count().collect()}
    meta = {"catalog": str(catalog_path), "method": method, "selection": described, "bins": bins,
            "bands": cols.bands, "rows_in": n_in, "rows_written": written.get("n_rows"), "z_source_counts": counts,
            "bayes": {k: v for k, v in vars(cfg.bayes).items()}, "spark_master": spark.sparkContext.master,
            "seconds": round(time.time() - t0, 1)}
    fs, p = filesystem(out_path)
    write_text(fs, f"{p.rstrip('/')}/{META_FILE}", json.dumps(meta, indent=2, default=str) + "\n")
    return meta
