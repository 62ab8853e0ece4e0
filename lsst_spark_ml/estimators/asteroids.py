"""Asteroid taxonomy estimators: ``ReflectanceFeatures``, ``SemiSupervisedAsteroidGMM``, ``AsteroidClustering``.

Input of the mixtures: ``featuresCol`` an array<double> of reflectance magnitudes per band (asteroid minus
solar, any zero point; NaN/null = band missing) and ``errorsCol`` an array<double> of their errors.
``ReflectanceFeatures`` builds both from per-band magnitude columns.

Every input row gives exactly one output row (mapInArrow appends columns). Output columns:
``probabilityCol`` (array<double>, one per class in ``getClasses()`` order; null without a colour),
``predictionCol`` (double class index), ``classCol`` (string), ``complexCol`` (string, when the classes map
to complexes), ``maxProbabilityCol``, ``logLikelihoodCol`` (log marginal density of the observed colours),
``unusualScoreCol`` (-log10 of the chi-square tail probability under the nearest component, comparable
across missing-band patterns: high = unlike every component) and ``flagsCol``:

======  ===============  ==========================================================================
bit     name             meaning
======  ===============  ==========================================================================
0..7    MISSING_<band>   band k unusable (NaN/null magnitude, or error NaN/<= 0): marginalised
8       NO_COLOUR        fewer than two usable bands: class, probabilities and scores are null
9       LOW_PROBABILITY  max class probability < minProbability (AsteroidClustering: class "unassigned")
10      UNUSUAL          unusual score above unusualThreshold
======  ===============  ==========================================================================

Fitting sums EM sufficient statistics per partition on the executors (``mixture.e_step_stats``); the driver
adds one vector of K (1 + D + D^2) numbers per partition and holds a bounded initialisation sample
(``initSampleSize`` complete rows), never the data. Models save as JSON (Spark's params metadata plus the mixture).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model, Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (HasFeaturesCol, HasLabelCol, HasMaxIter, HasPredictionCol, HasProbabilityCol,
                                     HasSeed, HasTol)
from pyspark.ml.util import (DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter,
                             MLReadable, MLWritable)

from ..asteroids import mixture as mx
from ..asteroids.colours import solar_mags
from ..asteroids.labels import COMPLEXES, SEVEN_CLASSES, SEVEN_TO_COMPLEX
from ..errors import CatalogError, LsstSparkMLError

if TYPE_CHECKING:
    import pyarrow as pa

NO_COLOUR = 1 << 8
LOW_PROBABILITY = 1 << 9
UNUSUAL = 1 << 10
UNASSIGNED = "unassigned"


class AsteroidLabelError(LsstSparkMLError, ValueError):
    """A labelled class the model does not know."""


# ----------------------------------------------------------------------------- shared params

class _TaxonomyParams(HasFeaturesCol, HasPredictionCol, HasProbabilityCol, HasMaxIter, HasTol, HasSeed):
    errorsCol = Param(Params._dummy(), "errorsCol", "array<double> column of reflectance-magnitude errors",
                      TypeConverters.toString)
    bands = Param(Params._dummy(), "bands", "band names, in the order of the feature arrays",
                  TypeConverters.toListString)
    referenceBand = Param(Params._dummy(), "referenceBand", "band the model colours are relative to",
                          TypeConverters.toString)
    classCol = Param(Params._dummy(), "classCol", "output column of the class name", TypeConverters.toString)
    complexCol = Param(Params._dummy(), "complexCol", "output column of the complex name", TypeConverters.toString)
    flagsCol = Param(Params._dummy(), "flagsCol", "output column of the quality bits", TypeConverters.toString)
    maxProbabilityCol = Param(Params._dummy(), "maxProbabilityCol", "output: largest class probability",
                              TypeConverters.toString)
    logLikelihoodCol = Param(Params._dummy(), "logLikelihoodCol", "output: log marginal likelihood",
                             TypeConverters.toString)
    unusualScoreCol = Param(Params._dummy(), "unusualScoreCol", "output: -log10 chi2 tail under nearest component",
                            TypeConverters.toString)
    minProbability = Param(Params._dummy(), "minProbability", "below: LOW_PROBABILITY (clustering: unassigned)",
                           TypeConverters.toFloat)
    unusualThreshold = Param(Params._dummy(), "unusualThreshold", "unusual score above which UNUSUAL is set",
                             TypeConverters.toFloat)
    regCovar = Param(Params._dummy(), "regCovar", "added to covariance diagonals (mag^2)", TypeConverters.toFloat)
    initSampleSize = Param(Params._dummy(), "initSampleSize", "complete rows sampled to the driver for start values",
                           TypeConverters.toInt)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(featuresCol="refl_mag", errorsCol="refl_err", bands=["g", "r", "i", "z", "y"],
                         referenceBand="r", predictionCol="prediction", probabilityCol="probability",
                         classCol="asteroid_class", complexCol="asteroid_complex", flagsCol="asteroid_flags",
                         maxProbabilityCol="max_probability", logLikelihoodCol="log_likelihood",
                         unusualScoreCol="unusual_score", minProbability=0.5, unusualThreshold=3.0,
                         regCovar=1e-5, maxIter=100, tol=1e-4, seed=7, initSampleSize=20000)

    def _ref_index(self) -> int:
        bands, ref = self.getOrDefault(self.bands), self.getOrDefault(self.referenceBand)
        if ref not in bands:
            raise CatalogError(f"referenceBand {ref!r} is not one of bands {bands}")
        if not 2 <= len(bands) <= 8:
            raise CatalogError(f"asteroid models need 2 to 8 bands, got {bands}")
        return bands.index(ref)

    def _check_input(self, df, extra: list[str] = ()) -> None:
        from pyspark.sql.types import ArrayType, NumericType
        for p in (self.featuresCol, self.errorsCol):
            c = self.getOrDefault(p)
            if c not in df.columns:
                raise CatalogError(f"input has no column {c!r} ({p.name}); it has {df.columns}. "
                                   "ReflectanceFeatures builds it from per-band magnitudes")
            t = df.schema[c].dataType
            if not (isinstance(t, ArrayType) and isinstance(t.elementType, NumericType)):
                raise CatalogError(f"column {c!r} must be an array of numbers (one per band), got {t.simpleString()}")
        for c in extra:
            if c not in df.columns:
                raise CatalogError(f"input has no column {c!r}; it has {df.columns}")


def _arrays(batch, feat: str, err: str, n_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrow list columns -> (n, B) float arrays; nulls (whole array or element) become NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def dense(col):
        col = col.cast(pa.list_(pa.float64()))
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        out = np.full((len(col), n_bands), np.nan)
        good = lengths == n_bands
        if good.any():
            vals = pc.list_flatten(col.filter(pa.array(good))).to_numpy(zero_copy_only=False)
            out[good] = np.asarray(vals, dtype=float).reshape(-1, n_bands)
        return out, lengths

    m, lm = dense(batch.column(feat))
    e, le = dense(batch.column(err))
    bad = (lm != n_bands) & (lm != 0)
    if bad.any():
        raise CatalogError(f"column {feat!r} has arrays of length {int(lm[bad][0])}; the model has {n_bands} bands")
    return m, e


def arrow_columns(result: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """``classify_arrays``' result -> the Arrow columns ``transform`` appends, in its order, under the same
    keys: nulls where a row has no colour, ``probability`` as a list<double> per row."""
    import pyarrow as pa
    flags = np.asarray(result["asteroid_flags"], dtype=np.int64)
    none = (flags & NO_COLOUR) != 0
    probs = np.asarray(result["probability"], dtype=np.float64)
    n, n_classes = probs.shape
    offsets = np.arange(n + 1, dtype=np.int32) * n_classes
    return {"probability": pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.nan_to_num(probs).ravel()),
                                                    mask=pa.array(none)),
            "prediction": pa.array(result["prediction"], mask=none),
            "asteroid_class": pa.array(result["asteroid_class"].tolist(), pa.string()),
            "asteroid_complex": pa.array(result["asteroid_complex"].tolist(), pa.string()),
            "max_probability": pa.array(result["max_probability"], mask=none),
            "log_likelihood": pa.array(result["log_likelihood"], mask=none),
            "unusual_score": pa.array(result["unusual_score"], mask=none),
            "asteroid_flags": pa.array(flags, pa.int64())}


# ----------------------------------------------------------------------------- fitting on Spark

def _aggregate_stats(data, params: mx.MixtureParams, ref: int, n_bands: int, label_mask_by_class=None):
    """One EM pass: sufficient statistics summed per partition on the executors, then added on the driver.

    Like ``RDD.aggregate``: the driver receives one vector of K (1 + D + D^2) + 2 numbers per partition,
    never rows. (A groupBy-sum would add a shuffle per EM iteration for no gain at this size.)
    """
    import pyarrow as pa
    pj = json.dumps(params.to_dict())
    masks = None if label_mask_by_class is None else np.asarray(label_mask_by_class, bool)

    def fn(batches):
        p = mx.MixtureParams.from_dict(json.loads(pj))
        total = None
        for b in batches:
            m, e = _arrays(b, "m", "e", n_bands)
            lm = None
            if masks is not None:
                lab = np.asarray(b.column("lab").to_numpy(zero_copy_only=False), dtype=float)
                lab = np.where(np.isnan(lab), -1, lab).astype(int)
                lm = np.ones((len(lab), p.k), bool)
                lm[lab >= 0] = masks[lab[lab >= 0]]
            vec = mx.flatten_stats(mx.e_step_stats(p, m, e, ref, lm))
            total = vec if total is None else total + vec
        if total is not None:
            yield pa.RecordBatch.from_arrays([pa.array([total.tolist()], pa.list_(pa.float64()))], names=["s"])

    parts = data.mapInArrow(fn, "s array<double>").collect()
    vec = np.sum([np.asarray(r["s"]) for r in parts], axis=0) if parts else \
        mx.flatten_stats(mx.e_step_stats(params, np.zeros((0, n_bands)), np.zeros((0, n_bands)), ref))
    return mx.unflatten_stats(vec, params.k, params.d)


def _compact(df):
    """Cached EM input with a few partitions per core: each EM pass is one Spark job, and a join's 200
    shuffle partitions would cost more in task start-up than the E-step itself."""
    target = max(2, 2 * df.sparkSession.sparkContext.defaultParallelism)
    if df.rdd.getNumPartitions() > target:
        df = df.coalesce(target)
    return df.cache()


def _run_em(data, params, ref, n_bands, reg, max_iter, tol, masks=None, log=None):
    prev = -np.inf
    stats = None
    for it in range(max_iter):
        stats = _aggregate_stats(data, params, ref, n_bands, masks)
        ll = stats["loglik"]
        params = mx.m_step(params, stats, reg)
        if log:
            log(f"EM {it}: mean log-likelihood {ll / max(stats['rows'], 1):.5f}")
        if abs(ll - prev) <= tol * max(stats["rows"], 1):   # tol is per row
            break
        prev = ll
    # The log-likelihood of the final parameters (for BIC), one more pass.
    final = _aggregate_stats(data, params, ref, n_bands, masks)
    return params, final


def _init_sample(data, n_bands, ref, size, seed, with_label=False):
    """A bounded random sample of complete rows as colours relative to the reference band (driver side)."""
    from pyspark.sql import functions as F
    complete = data.where(F.forall("m", lambda x: ~F.isnan(x) & x.isNotNull())
                          & (F.size("m") == n_bands) & F.forall("e", lambda x: x > 0))
    n = complete.count()
    if n == 0:
        raise CatalogError("no row has every band usable; start values need some complete rows")
    frac = min(1.0, 1.2 * size / n)
    pdf = complete.sample(fraction=frac, seed=seed).limit(size).toPandas()
    m = np.stack(pdf["m"].to_numpy()).astype(float)
    colours = np.delete(m - m[:, [ref]], ref, axis=1)
    lab = pdf["lab"].to_numpy(float) if with_label else None
    return colours, lab


class _TaxonomyModelBase(Model, _TaxonomyParams, MLWritable, MLReadable):
    """Holds the mixture (JSON), the class names and the component -> class map."""

    def __init__(self, mixture: dict | None = None, classes: list[str] | None = None, info: dict | None = None):
        super().__init__()
        self._mixture = mx.MixtureParams.from_dict(mixture) if mixture else None
        self._classes = list(classes or [])
        self.info = dict(info or {})

    # -- public
    def getClasses(self) -> list[str]:
        return list(self._classes)

    @property
    def mixture(self) -> mx.MixtureParams:
        return self._mixture

    def _assign_unassigned(self) -> bool:
        return False

    def _complex_of(self, name: str | None) -> str | None:
        if name is None:
            return None
        if name in SEVEN_TO_COMPLEX:
            return SEVEN_TO_COMPLEX[name]
        return name if name in COMPLEXES else None

    # -- transform
    def _transform(self, dataset):
        from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType
        self._check_input(dataset)
        out_cols = [self.getOrDefault(p) for p in (self.probabilityCol, self.predictionCol, self.classCol,
                                                   self.complexCol, self.maxProbabilityCol, self.logLikelihoodCol,
                                                   self.unusualScoreCol, self.flagsCol)]
        clash = [c for c in out_cols if c in dataset.columns]
        if clash:
            raise CatalogError(f"input already has output column(s) {clash}; rename them or set the *Col params")
        schema = StructType(list(dataset.schema.fields) + [
            StructField(out_cols[0], ArrayType(DoubleType(), False), True),
            StructField(out_cols[1], DoubleType(), True), StructField(out_cols[2], StringType(), True),
            StructField(out_cols[3], StringType(), True), StructField(out_cols[4], DoubleType(), True),
            StructField(out_cols[5], DoubleType(), True), StructField(out_cols[6], DoubleType(), True),
            StructField(out_cols[7], LongType(), False)])
        return dataset.mapInArrow(self._mapper(out_cols), schema)

    def _mapper(self, out_cols):
        import pyarrow as pa
        classify = self._classifier()
        feat, err = self.getOrDefault(self.featuresCol), self.getOrDefault(self.errorsCol)
        n_bands = len(self.getOrDefault(self.bands))

        def fn(batches):
            for b in batches:
                cols = arrow_columns(classify(*_arrays(b, feat, err, n_bands)))
                yield pa.RecordBatch.from_arrays(list(b.columns) + list(cols.values()),
                                                 names=list(b.schema.names) + out_cols)

        return fn

    # -- arrays
    def classify_arrays(self, refl_mag, refl_err) -> dict[str, np.ndarray]:
        """Classify (N, B) reflectance magnitudes and their errors (B = ``bands``, in that order), no Spark.

        What ``transform`` computes for the same rows, as numpy arrays keyed by the default output column
        names: ``probability`` (N, C) in ``getClasses()`` order, ``prediction``, ``asteroid_class`` and
        ``asteroid_complex`` (object arrays), ``max_probability``, ``log_likelihood``, ``unusual_score`` and
        ``asteroid_flags`` (int64). A row without a colour (NO_COLOUR) has NaN and None where ``transform``
        has nulls; ``arrow_columns`` turns the result into the Arrow columns of ``transform``. NaN marks a
        missing magnitude or error, as in ``featuresCol``; ``ReflectanceFeatures`` says how to get
        reflectance magnitudes from apparent ones."""
        m, e = np.asarray(refl_mag, dtype=np.float64), np.asarray(refl_err, dtype=np.float64)
        n_bands = len(self.getOrDefault(self.bands))
        if m.ndim != 2 or m.shape[1] != n_bands or e.shape != m.shape:
            raise ValueError(f"expected magnitudes and errors of shape (N, {n_bands}) for bands "
                             f"{self.getOrDefault(self.bands)}, got {m.shape} and {e.shape}")
        return self._classifier()(m, e)

    def _classifier(self):
        """``classify_arrays`` without the checks, as a closure over plain data only (the mixture, class
        names and thresholds), so that ``transform`` ships it to the workers without the model object."""
        params = mx.MixtureParams.from_dict(self._mixture.to_dict())
        classes = list(self._classes)
        names = np.array(classes + [UNASSIGNED], dtype=object)
        complexes = np.array([self._complex_of(c) for c in classes] + [UNASSIGNED], dtype=object)
        ref = self._ref_index()
        pmin, uthr = self.getOrDefault(self.minProbability), self.getOrDefault(self.unusualThreshold)
        unassign = self._assign_unassigned()

        def classify(m: np.ndarray, e: np.ndarray) -> dict[str, np.ndarray]:
            probs, ll, tail, nused = mx.posterior(params, m, e, ref, len(classes))
            ok = nused >= 2
            flags = mx.pattern_codes(~mx.usable(m, e)).astype(np.int64)
            best = np.where(ok, np.nanargmax(np.where(ok[:, None], probs, 0.0), axis=1), 0)
            pmax = np.where(ok, np.nanmax(np.where(ok[:, None], probs, -1.0), axis=1), np.nan)
            score = -np.log10(np.maximum(tail, 1e-300))
            low = ok & (pmax < pmin)
            flags |= np.where(~ok, NO_COLOUR, 0) | np.where(low, LOW_PROBABILITY, 0)
            flags |= np.where(ok & (score > uthr), UNUSUAL, 0)
            idx = np.where(low & unassign, len(classes), best)
            return {"probability": np.where(ok[:, None], np.nan_to_num(probs), np.nan),
                    "prediction": np.where(ok, best.astype(float), np.nan),
                    "asteroid_class": np.where(ok, names[idx], None),
                    "asteroid_complex": np.where(ok, complexes[idx], None),
                    "max_probability": pmax, "log_likelihood": np.where(ok, ll, np.nan),
                    "unusual_score": np.where(ok, score, np.nan), "asteroid_flags": flags}

        return classify

    # -- persistence: Spark's params metadata JSON plus the mixture in extraMetadata; never pickle.
    def write(self):
        return _ModelWriter(self)

    @classmethod
    def read(cls):
        return _ModelReader(cls)


class _ModelWriter(DefaultParamsWriter):
    def saveImpl(self, path: str) -> None:
        m = self.instance
        DefaultParamsWriter.saveMetadata(m, path, self.sparkSession, extraMetadata={
            "mixture": m._mixture.to_dict(), "classes": m._classes, "info": m.info})


class _ModelReader(DefaultParamsReader):
    def load(self, path: str):
        meta = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        cls = DefaultParamsReader._DefaultParamsReader__get_class(meta["class"])
        inst = cls(mixture=meta["mixture"], classes=meta["classes"], info=meta.get("info"))
        inst._resetUid(meta["uid"])
        DefaultParamsReader.getAndSetParams(inst, meta)
        return inst


# ----------------------------------------------------------------------------- semi-supervised

class SemiSupervisedAsteroidGMMModel(_TaxonomyModelBase):
    pass


class SemiSupervisedAsteroidGMM(Estimator, _TaxonomyParams, HasLabelCol, DefaultParamsReadable,
                                DefaultParamsWritable):
    """Gaussian mixture in which labelled rows fix their class's components and unlabelled rows are marginalised.

    ``labelCol`` holds class names (null or "" = unlabelled); a name outside ``classes`` fails the fit,
    naming it. ``componentsPerClass`` Gaussians per class let a broad class (S with Q, A, R) be non-Gaussian.
    """
    classes = Param(Params._dummy(), "classes", "class names the labels use", TypeConverters.toListString)
    componentsPerClass = Param(Params._dummy(), "componentsPerClass", "Gaussians per class", TypeConverters.toInt)

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self._setDefault(labelCol="label", classes=list(SEVEN_CLASSES), componentsPerClass=1)
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**self._input_kwargs)

    def _fit(self, dataset):
        from pyspark.sql import functions as F
        label = self.getOrDefault(self.labelCol)
        self._check_input(dataset, [label])
        ref = self._ref_index()
        classes = self.getOrDefault(self.classes)
        n_bands = len(self.getOrDefault(self.bands))
        known = {c: i for i, c in enumerate(classes)}
        lab = F.when(F.trim(F.col(label).cast("string")) == "", None).otherwise(F.trim(F.col(label).cast("string")))
        seen = [r[0] for r in dataset.select(lab.alias("l")).where("l is not null").distinct().collect()]
        unknown = sorted(set(seen) - set(known))
        if unknown:
            raise AsteroidLabelError(f"labelled class(es) {unknown} unknown to the model (classes {classes}); "
                                     "map them (lsst_spark_ml.asteroids.labels) or add them to classes")
        if not seen:
            raise AsteroidLabelError(f"column {label!r} holds no label; SemiSupervisedAsteroidGMM needs some")
        mapping = F.create_map(*[x for c, i in known.items() for x in (F.lit(c), F.lit(float(i)))])
        data = dataset.select(F.col(self.getOrDefault(self.featuresCol)).cast("array<double>").alias("m"),
                              F.col(self.getOrDefault(self.errorsCol)).cast("array<double>").alias("e"),
                              F.coalesce(mapping[lab], F.lit(float("nan"))).alias("lab"))
        data = _compact(data)
        try:
            cpc = self.getOrDefault(self.componentsPerClass)
            rng = np.random.default_rng(self.getOrDefault(self.seed))
            colours, labs = _init_sample(data.where(~F.isnan("lab")), n_bands, ref,
                                         self.getOrDefault(self.initSampleSize), self.getOrDefault(self.seed), True)
            reg = self.getOrDefault(self.regCovar)
            params = mx.init_params(colours, labs.astype(int), len(classes), cpc, rng, reg)
            masks = params.component_class[None, :] == np.arange(len(classes))[:, None]
            params, final = _run_em(data, params, ref, n_bands, reg, self.getOrDefault(self.maxIter),
                                    self.getOrDefault(self.tol), masks)
        finally:
            data.unpersist()
        info = {"loglik": final["loglik"], "rows": final["rows"], "labelled_classes": sorted(seen)}
        model = SemiSupervisedAsteroidGMMModel(params.to_dict(), classes, info)
        return self._copyValues(model)


# ----------------------------------------------------------------------------- unsupervised

class AsteroidClusteringModel(_TaxonomyModelBase):
    """Clusters named by the labelled complex most of their labelled members belong to (``cluster_<k>``
    when no label was given); members below ``minProbability`` are "unassigned"."""

    def _assign_unassigned(self) -> bool:
        return True


class AsteroidClustering(Estimator, _TaxonomyParams, DefaultParamsReadable, DefaultParamsWritable):
    """Unsupervised mixture (missing bands and errors handled exactly) with K chosen by BIC in [kMin, kMax].

    ``namingLabelCol`` (optional): labels (any scheme, e.g. complexes) used only to name clusters after fit.
    """
    kMin = Param(Params._dummy(), "kMin", "smallest number of components tried", TypeConverters.toInt)
    kMax = Param(Params._dummy(), "kMax", "largest number of components tried", TypeConverters.toInt)
    namingLabelCol = Param(Params._dummy(), "namingLabelCol", "labels that name clusters ('' = none)",
                           TypeConverters.toString)

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self._setDefault(kMin=2, kMax=8, namingLabelCol="")
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**self._input_kwargs)

    def _fit(self, dataset):
        from pyspark.sql import functions as F
        naming = self.getOrDefault(self.namingLabelCol)
        self._check_input(dataset, [naming] if naming else [])
        ref = self._ref_index()
        n_bands = len(self.getOrDefault(self.bands))
        kmin, kmax = self.getOrDefault(self.kMin), self.getOrDefault(self.kMax)
        if not 1 <= kmin <= kmax:
            raise CatalogError(f"need 1 <= kMin <= kMax, got {kmin}, {kmax}")
        cols = [F.col(self.getOrDefault(self.featuresCol)).cast("array<double>").alias("m"),
                F.col(self.getOrDefault(self.errorsCol)).cast("array<double>").alias("e")]
        if naming:
            cols.append(F.col(naming).cast("string").alias("name"))
        data = _compact(dataset.select(*cols))
        reg = self.getOrDefault(self.regCovar)
        try:
            colours, _ = _init_sample(data, n_bands, ref, self.getOrDefault(self.initSampleSize),
                                      self.getOrDefault(self.seed))
            bic = {}
            best = None
            for k in range(kmin, kmax + 1):
                rng = np.random.default_rng(self.getOrDefault(self.seed) + k)
                params = mx.init_params(colours, None, k, 1, rng, reg)
                params, final = _run_em(data, params, ref, n_bands, reg, self.getOrDefault(self.maxIter),
                                        self.getOrDefault(self.tol))
                bic[k] = -2 * final["loglik"] + params.n_free() * np.log(max(final["rows"], 2))
                if best is None or bic[k] < bic[best[0]]:
                    best = (k, params, final)
            k, params, final = best
            names = self._name_clusters(data, params, ref, n_bands) if naming else [f"cluster_{i}" for i in range(k)]
        finally:
            data.unpersist()
        # Several clusters may share a name: classes are the distinct names, components map onto them.
        classes = sorted(set(names), key=names.index)
        params.component_class = np.array([classes.index(n) for n in names])
        info = {"bic": {str(kk): float(v) for kk, v in bic.items()}, "k": k, "cluster_names": names,
                "loglik": final["loglik"], "rows": final["rows"]}
        return self._copyValues(AsteroidClusteringModel(params.to_dict(), classes, info))

    @staticmethod
    def _name_clusters(data, params, ref, n_bands):
        """Sum each cluster's responsibilities per label (Spark aggregation); name = the label with most mass."""
        import pyarrow as pa
        from pyspark.sql import functions as F
        pj = json.dumps({**params.to_dict(), "component_class": list(range(params.k))})

        def fn(batches):
            p = mx.MixtureParams.from_dict(json.loads(pj))
            for b in batches:
                m, e = _arrays(b, "m", "e", n_bands)
                probs, *_ = mx.posterior(p, m, e, ref, p.k)
                names = b.column("name").to_pylist()
                keep = [i for i, n in enumerate(names) if n and np.isfinite(probs[i]).all()]
                if keep:
                    yield pa.RecordBatch.from_arrays(
                        [pa.array([names[i] for i in keep]),
                         pa.array([probs[i].tolist() for i in keep], pa.list_(pa.float64()))], names=["name", "r"])

        rows = (data.where(F.col("name").isNotNull() & (F.col("name") != ""))
                .mapInArrow(fn, "name string, r array<double>")
                .select("name", F.posexplode("r").alias("k", "q")).groupBy("name", "k").agg(F.sum("q").alias("q"))
                .collect())
        if not rows:
            return [f"cluster_{i}" for i in range(params.k)]
        labels = sorted({r["name"] for r in rows})
        mass = np.zeros((params.k, len(labels)))
        for r in rows:
            mass[r["k"], labels.index(r["name"])] = r["q"]
        # Majority of the labelled members' responsibility (Roh et al. name clusters by their known types).
        return [labels[int(np.argmax(mass[i]))] if mass[i].sum() > 0 else f"cluster_{i}" for i in range(params.k)]


# ----------------------------------------------------------------------------- features

class ReflectanceFeatures(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Per-band magnitude/error columns -> arrays of reflectance magnitudes (minus the Sun) and errors.

    A null, NaN or |m| >= 90 (sentinel) magnitude becomes NaN: the models marginalise that band.
    """
    bands = _TaxonomyParams.bands
    system = Param(Params._dummy(), "system", "lsst | sdss (solar colours, Willmer 2018)", TypeConverters.toString)
    magColTemplate = Param(Params._dummy(), "magColTemplate", "per-band magnitude column, e.g. mag_{band}",
                           TypeConverters.toString)
    errColTemplate = Param(Params._dummy(), "errColTemplate", "per-band error column, e.g. err_{band}",
                           TypeConverters.toString)
    outputCol = Param(Params._dummy(), "outputCol", "reflectance magnitudes column", TypeConverters.toString)
    errorsOutputCol = Param(Params._dummy(), "errorsOutputCol", "errors column", TypeConverters.toString)

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self._setDefault(bands=["g", "r", "i", "z", "y"], system="lsst", magColTemplate="mag_{band}",
                         errColTemplate="err_{band}", outputCol="refl_mag", errorsOutputCol="refl_err")
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.sql import functions as F
        bands = self.getOrDefault(self.bands)
        sun = solar_mags(bands, self.getOrDefault(self.system))
        mcols = [self.getOrDefault(self.magColTemplate).format(band=b) for b in bands]
        ecols = [self.getOrDefault(self.errColTemplate).format(band=b) for b in bands]
        missing = [c for c in mcols + ecols if c not in dataset.columns]
        if missing:
            raise CatalogError(f"input lacks column(s) {missing} for bands {bands}; it has {dataset.columns}")
        nan = F.lit(float("nan"))

        def mag(c, s):
            v = F.col(c).cast("double")
            return F.when(v.isNull() | F.isnan(v) | (F.abs(v) >= 90), nan).otherwise(v - F.lit(float(s)))

        def err(c):
            v = F.col(c).cast("double")
            return F.when(v.isNull(), nan).otherwise(v)

        out = dataset.withColumn(self.getOrDefault(self.outputCol), F.array(*[mag(c, s) for c, s in zip(mcols, sun)]))
        return out.withColumn(self.getOrDefault(self.errorsOutputCol), F.array(*[err(c) for c in ecols]))


__all__ = ["AsteroidClustering", "AsteroidClusteringModel", "AsteroidLabelError", "LOW_PROBABILITY", "NO_COLOUR",
           "ReflectanceFeatures", "SemiSupervisedAsteroidGMM", "SemiSupervisedAsteroidGMMModel", "UNASSIGNED",
           "UNUSUAL", "arrow_columns"]
