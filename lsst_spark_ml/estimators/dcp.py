"""``DCPEstimator`` / ``DCPModel``: DCP out-of-distribution scoring as a ``pyspark.ml`` Estimator and Model.

    est = DCPEstimator(labelCol="redshift", bands=list("ugrizy"), photometry="mag", numProcesses=2)
    model = est.fit(labelled_df, unlabelled_df)        # or est.fit(df): rows with a null label are unlabelled
    scored = model.transform(catalog_df)               # + ood_score, ood_flag, ood_tercile, photo-z columns
    model.write().overwrite().save("models/dcp")       # DCPModel.load("models/dcp")

Inside a ``Pipeline`` the estimator gets one DataFrame, so unlabelled rows are those whose label is null.
Saved models hold the params (Spark's metadata format) and a ``model/`` directory of safetensors weights plus a
manifest with sha256; loading verifies it and never unpickles. Save paths are local or mounted (e.g. ``/dbfs``).
"""
from __future__ import annotations

import os

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasLabelCol, HasSeed
from pyspark.ml.util import (DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter,
                             MLReadable, MLReader, MLWritable, MLWriter)

from ..config import Config, load_config
from ..errors import CatalogError

MODEL_SUBDIR = "model"


def _local(path: str) -> str:
    if "://" in path and not path.startswith("file:"):
        raise ValueError(f"{path}: DCP models are saved to local or mounted paths (e.g. /dbfs/...), "
                         f"not {path.split(':')[0]}")
    return path.removeprefix("file://").removeprefix("file:")


class _DCPParams(HasLabelCol, HasSeed):
    bands = Param(Params._dummy(), "bands", "photometric bands, in order", TypeConverters.toListString)
    photometry = Param(Params._dummy(), "photometry", "auto | flux (nJy) | mag (AB)", TypeConverters.toString)
    fluxCol = Param(Params._dummy(), "fluxCol", "flux column template, {band}", TypeConverters.toString)
    fluxErrCol = Param(Params._dummy(), "fluxErrCol", "flux error column template", TypeConverters.toString)
    magCol = Param(Params._dummy(), "magCol", "magnitude column template, {band}", TypeConverters.toString)
    magErrCol = Param(Params._dummy(), "magErrCol", "magnitude error column template", TypeConverters.toString)
    nBins = Param(Params._dummy(), "nBins", "redshift bins", TypeConverters.toInt)
    zMax = Param(Params._dummy(), "zMax", "upper edge of the last redshift bin", TypeConverters.toFloat)
    hidden = Param(Params._dummy(), "hidden", "hidden layer widths of each network", TypeConverters.toListInt)
    margin = Param(Params._dummy(), "margin", "discrepancy-loss margin m (< ln nBins; unset: ln nBins - 0.059)",
                   TypeConverters.toFloat)
    checkEvery = Param(Params._dummy(), "checkEvery", "steps between validation checks", TypeConverters.toInt)
    ts1Patience = Param(Params._dummy(), "ts1Patience", "checks without improvement before TS2",
                        TypeConverters.toInt)
    ts2Patience = Param(Params._dummy(), "ts2Patience", "checks without improvement or gap growth before TS3",
                        TypeConverters.toInt)
    ts3Patience = Param(Params._dummy(), "ts3Patience", "checks without improvement ending TS3",
                        TypeConverters.toInt)
    maxChecksPerStage = Param(Params._dummy(), "maxChecksPerStage", "checks after which a stage ends anyway",
                              TypeConverters.toInt)
    batchSize = Param(Params._dummy(), "batchSize", "labelled rows per step", TypeConverters.toInt)
    unlabelledBatchSize = Param(Params._dummy(), "unlabelledBatchSize", "unlabelled rows per TS2 step",
                                TypeConverters.toInt)
    flagQuantile = Param(Params._dummy(), "flagQuantile", "ood_flag threshold: this quantile of the labelled "
                         "validation scores", TypeConverters.toFloat)
    maxUnlabelledRows = Param(Params._dummy(), "maxUnlabelledRows", "unlabelled rows sampled for training",
                              TypeConverters.toInt)
    backend = Param(Params._dummy(), "backend", "local | torch-distributor | horovod", TypeConverters.toString)
    numProcesses = Param(Params._dummy(), "numProcesses", "training processes of a distributed backend",
                         TypeConverters.toInt)
    cacheDir = Param(Params._dummy(), "cacheDir", "Parquet cache of unlabelled features (shared storage)",
                     TypeConverters.toString)
    withPhotoz = Param(Params._dummy(), "withPhotoz", "transform also adds the TS3 photo-z columns",
                       TypeConverters.toBoolean)
    withPdf = Param(Params._dummy(), "withPdf", "the photo-z columns include the binned PDF",
                    TypeConverters.toBoolean)

    def __init__(self):
        super().__init__()
        c = Config()
        self._setDefault(labelCol="redshift", seed=c.train.seed, bands=list(c.catalog.bands),
                         photometry=c.catalog.photometry, fluxCol=c.catalog.flux_col,
                         fluxErrCol=c.catalog.flux_err_col, magCol=c.catalog.mag_col, magErrCol=c.catalog.mag_err_col,
                         nBins=c.model.n_bins, zMax=c.model.z_max, hidden=list(c.model.hidden),
                         checkEvery=c.ood.check_every, ts1Patience=c.ood.ts1_patience,
                         ts2Patience=c.ood.ts2_patience, ts3Patience=c.ood.ts3_patience,
                         maxChecksPerStage=c.ood.max_checks_per_stage, batchSize=c.ood.batch_size,
                         unlabelledBatchSize=c.ood.unlabelled_batch_size, flagQuantile=c.ood.flag_quantile,
                         maxUnlabelledRows=c.ood.max_unlabelled_rows, backend=c.train.backend,
                         numProcesses=c.train.num_processes, withPhotoz=True, withPdf=True)

    def to_config(self, base: Config | None = None) -> Config:
        """The params as a validated ``Config`` (bad values fail here, before any Spark job)."""
        g = self.getOrDefault
        over = {
            "catalog": {"bands": g(self.bands), "photometry": g(self.photometry), "flux_col": g(self.fluxCol),
                        "flux_err_col": g(self.fluxErrCol), "mag_col": g(self.magCol),
                        "mag_err_col": g(self.magErrCol), "truth_col": g(self.labelCol)},
            "model": {"n_bins": g(self.nBins), "z_max": g(self.zMax), "hidden": g(self.hidden)},
            "train": {"seed": g(self.seed), "backend": g(self.backend), "num_processes": g(self.numProcesses)},
            "ood": {"margin": g(self.margin) if self.isDefined(self.margin) else None,
                    "check_every": g(self.checkEvery), "ts1_patience": g(self.ts1Patience),
                    "ts2_patience": g(self.ts2Patience), "ts3_patience": g(self.ts3Patience),
                    "max_checks_per_stage": g(self.maxChecksPerStage), "batch_size": g(self.batchSize),
                    "unlabelled_batch_size": g(self.unlabelledBatchSize), "flag_quantile": g(self.flagQuantile),
                    "max_unlabelled_rows": g(self.maxUnlabelledRows),
                    "cache_dir": g(self.cacheDir) if self.isDefined(self.cacheDir) else None},
        }
        if base is None:
            return load_config(overrides=over)
        import copy
        cfg = copy.deepcopy(base)
        for section, values in over.items():
            for k, v in values.items():
                setattr(getattr(cfg, section), k, v)
        return cfg.validate()


class DCPEstimator(Estimator, _DCPParams, DefaultParamsReadable, DefaultParamsWritable):
    """Two MBRNNs trained in three stages on labelled and unlabelled rows (Lee & Shin 2022)."""

    def __init__(self, **kwargs):
        super().__init__()
        self._set(**kwargs)
        self._base_config: Config | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> "DCPEstimator":
        """Every setting of a YAML configuration (features, training optimiser, ...), not only the params."""
        est = cls(labelCol=cfg.catalog.truth_col or "redshift", seed=cfg.train.seed, bands=list(cfg.catalog.bands),
                  photometry=cfg.catalog.photometry, fluxCol=cfg.catalog.flux_col,
                  fluxErrCol=cfg.catalog.flux_err_col, magCol=cfg.catalog.mag_col, magErrCol=cfg.catalog.mag_err_col,
                  nBins=cfg.model.n_bins, zMax=cfg.model.z_max, hidden=list(cfg.model.hidden),
                  checkEvery=cfg.ood.check_every, ts1Patience=cfg.ood.ts1_patience,
                  ts2Patience=cfg.ood.ts2_patience, ts3Patience=cfg.ood.ts3_patience,
                  maxChecksPerStage=cfg.ood.max_checks_per_stage, batchSize=cfg.ood.batch_size,
                  unlabelledBatchSize=cfg.ood.unlabelled_batch_size, flagQuantile=cfg.ood.flag_quantile,
                  maxUnlabelledRows=cfg.ood.max_unlabelled_rows, backend=cfg.train.backend,
                  numProcesses=cfg.train.num_processes)
        if cfg.ood.cache_dir:
            est._set(cacheDir=cfg.ood.cache_dir)
        if cfg.ood.margin is not None:
            est._set(margin=cfg.ood.margin)
        est._base_config = cfg
        return est

    def fit(self, dataset, params=None, unlabelled=None):
        """``fit(labelled, unlabelled)``, or ``fit(df)`` where unlabelled rows have a null label."""
        from pyspark.sql import DataFrame
        if isinstance(params, DataFrame):
            unlabelled, params = params, None
        if unlabelled is None:
            return super().fit(dataset, params)
        est = self.copy(params) if params else self
        est._base_config = self._base_config
        return est._fit_pair(dataset, unlabelled)

    def _fit(self, dataset):
        from pyspark.sql import functions as F
        label = self.getLabelCol()
        if label not in dataset.columns:
            raise CatalogError(f"the DataFrame has no label column {label!r}")
        return self._fit_pair(dataset.filter(F.col(label).isNotNull()), dataset.filter(F.col(label).isNull()))

    def _fit_pair(self, labelled, unlabelled) -> "DCPModel":
        import tempfile

        from ..artefacts import read_payload
        from ..ood.fit import fit_dcp
        cfg = self.to_config(getattr(self, "_base_config", None))
        out = tempfile.mkdtemp(prefix="lsst_spark_ml-dcp-")
        fit_dcp(labelled.sparkSession, labelled, unlabelled, cfg, out)
        model = DCPModel(read_payload(out))
        self._copyValues(model)
        return model


class _DCPModelWriter(MLWriter):
    def __init__(self, instance: "DCPModel"):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        from ..artefacts import verify
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession,
                                         extraMetadata={"model_sha256": self.instance.payload.sha256})
        from ..artefacts import MANIFEST
        payload = self.instance.payload
        target = os.path.join(_local(path), MODEL_SUBDIR)
        os.makedirs(target, exist_ok=True)
        # The exact bytes verified at fit or load time: the saved model has the same sha256.
        for name, data in ((MANIFEST, payload.manifest_bytes),
                           (self.instance.manifest["weights"], payload.weights_bytes)):
            with open(os.path.join(target, name), "wb") as f:
                f.write(data)
        verify(target, payload.sha256)


class _DCPModelReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> "DCPModel":
        from ..artefacts import read_payload
        meta = DefaultParamsReader.loadMetadata(path, self.sparkSession, self.cls.__module__ + "." + self.cls.__name__)
        model = self.cls(read_payload(os.path.join(_local(path), MODEL_SUBDIR), meta.get("model_sha256")))
        DefaultParamsReader.getAndSetParams(model, meta)
        return model


class DCPModel(Model, _DCPParams, MLWritable, MLReadable):
    """Adds ``ood_score``, ``ood_flag``, ``ood_tercile`` and (``withPhotoz``) the photo-z columns to every row."""

    def __init__(self, payload=None):
        super().__init__()
        self.payload = payload

    @classmethod
    def from_model_dir(cls, model_dir: str) -> "DCPModel":
        """A model directory written by ``lsst-spark-ml ood fit`` (verified against its manifest)."""
        from ..artefacts import read_payload
        model = cls(read_payload(model_dir))
        man = model.manifest
        model._set(bands=list(man["bands"]), nBins=man["bins"]["n_bins"], zMax=man["bins"]["z_max"],
                   hidden=list(man["architecture"]["hidden"]))
        return model

    @property
    def manifest(self) -> dict:
        import json
        return json.loads(self.payload.manifest_bytes)

    @property
    def thresholds(self) -> dict:
        return dict(self.manifest["thresholds"])

    def _transform(self, dataset):
        from pyspark.sql import functions as F  # noqa: F401

        from udfs.dcp import dcp_arrow_mapper, output_columns, output_schema
        from ..config import InferenceSettings
        from ..io.columns import resolve_columns, spark_schema_dict
        cfg = self.to_config()
        cfg.catalog.bands = list(self.manifest["bands"])     # the model's own bands win
        cols = resolve_columns(spark_schema_dict(dataset), cfg.catalog, source="DataFrame")
        with_photoz, with_pdf = self.getOrDefault(self.withPhotoz), self.getOrDefault(self.withPdf)
        clash = [c for c in output_columns(with_photoz, with_pdf) if c in dataset.columns]
        if clash:
            raise CatalogError(f"the DataFrame already has column(s) {clash} that DCP would write; drop them, or "
                               "set withPhotoz=False after a photo-z stage")
        from ..artefacts import artefact_from_payload
        from ..inference.dcp import DCPPredictor
        from ..pipelines.photoz import _bf16_verdict
        inf = InferenceSettings()
        # bfloat16 or not is decided once, here (accuracy gate, cached per model), not on every worker
        verdict, _ = _bf16_verdict(DCPPredictor.from_artefact(artefact_from_payload(self.payload)), inf.precision)
        bc = dataset.sparkSession.sparkContext.broadcast(self.payload)
        return dataset.mapInArrow(dcp_arrow_mapper(bc, cols, inf, with_photoz, with_pdf, verdict),
                                  output_schema(dataset.schema, with_photoz, with_pdf))

    def copy(self, extra=None):
        new = super().copy(extra)
        new.payload = self.payload
        return new

    def write(self) -> MLWriter:
        return _DCPModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _DCPModelReader(cls)
