"""Typed configuration: YAML files in conf/ plus command-line overrides, validated before any Spark job.

Precedence (later wins): dataclass defaults < each ``--conf`` YAML file in order < ``--set key.sub=value``.
Unknown keys are errors, not silently ignored: a typo in a 37-billion-row job must fail at once.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

LSST_BANDS = ("u", "g", "r", "i", "z", "y")
# LSST 10-year 1-sigma point-source depths, the values RAIL's estimators use by default for
# non-detections (rail.core.common_params mag_limits); a non-detected band is set to its limit.
LSST_1SIGMA_LIMITS = {"u": 27.79, "g": 29.04, "r": 29.06, "i": 28.62, "z": 27.98, "y": 27.05}


@dataclass
class SparkSettings:
    master: str | None = None          # None: local[*] unless spark-submit already set a master
    app_name: str = "lsst_spark_ml"
    ui: bool = False                   # the UI URL is printed when True
    log_level: str = "WARN"
    progress: bool = True              # Spark's console progress bar
    arrow_batch_rows: int = 10000      # spark.sql.execution.arrow.maxRecordsPerBatch
    conf: dict[str, Any] = field(default_factory=dict)


@dataclass
class CatalogSettings:
    path: str | None = None
    format: str = "auto"               # auto | parquet | hats | fits | hdf5
    photometry: str = "auto"           # auto | flux (nJy) | mag (AB)
    bands: list[str] = field(default_factory=lambda: list(LSST_BANDS))
    flux_type: str = "cModel"          # Rubin Object table: cModel | gaap1p0 | psf ...
    flux_col: str = "{band}_{flux_type}Flux"
    flux_err_col: str = "{band}_{flux_type}FluxErr"
    mag_col: str = "mag_{band}_lsst"
    mag_err_col: str = "mag_err_{band}_lsst"
    id_col: str | None = None          # None: first of objectId, id, object_id
    ra_col: str | None = None          # None: first of coord_ra, ra
    dec_col: str | None = None         # None: first of coord_dec, dec, decl
    truth_col: str | None = None       # spectroscopic/true redshift, when present
    ebv_col: str | None = None         # E(B-V), when present
    hdf5_group: str = "photometry"
    keep_cols: list[str] = field(default_factory=list)


@dataclass
class FeatureSettings:
    reference_band: str | None = "i"   # magnitude fed beside the colours; None: colours only
    use_ebv: bool = False
    nondetect_limits: dict[str, float] = field(default_factory=lambda: dict(LSST_1SIGMA_LIMITS))
    nondetect_mag_err: float = 1.0     # error given to a band replaced by its limit
    max_mag_err: float = 1.0           # measured errors are capped here (scaling stability)
    min_detected_bands: int = 2        # fewer detected bands: no estimate, NO_ESTIMATE flag


@dataclass
class MBRNNSettings:
    n_bins: int = 64
    z_min: float = 0.0
    z_max: float = 3.1                 # cosmoDC2 reaches z = 3.03; the paper's 2.0 is too shallow for LSST
    hidden: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 512, 256, 128, 32])
    gammas: list[float] = field(default_factory=lambda: [0.0, 2.0, 5.0, 8.0])


@dataclass
class TrainSettings:
    backend: str = "local"              # local | torch-distributor | horovod
    num_processes: int = 2              # distributed backends: training processes
    use_gpu: bool = False               # torch-distributor: NCCL on GPUs (cluster mode)
    local_mode: bool = True             # torch-distributor: processes on the driver (True) or in barrier tasks
    # BatchNorm statistics over the global batch (exact 1-vs-N equivalence). Off by default on CPU: with gloo
    # its 16 small all-reduces per step cost as much as the second process saves (measured, README).
    sync_batchnorm: bool = False
    checkpoint_dir: str | None = None   # None: <model dir>/_checkpoints; shared storage on a cluster
    keep_checkpoints: bool = False      # False: removed once the model directory is written
    data_loader: str = "memory"         # memory: arrays in each process | parquet: Spark -> Parquet cache
    cache_dir: str | None = None        # parquet loader cache (shared filesystem / object store on a cluster)
    lr: float = 8e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 5e-5
    grad_clip: float = 5.0
    batch_size: int = 1024
    max_epochs: int = 100
    plateau_start_epoch: int = 10
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    min_lr: float = 1e-6
    early_stop_patience: int | None = 30   # None: always run max_epochs (the paper); best checkpoint kept
    val_fraction: float = 0.15
    noise_augmentation: bool = False       # redraw magnitudes within their errors each epoch
    ensemble_epochs: int = 300
    seed: int = 1234
    threads: int | None = None
    # Keep the weights every k epochs (0: none) in <model>/tracin/ for training-sample influence (TracIn).
    snapshot_every: int = 0
    # Validate, keep and return an exponential moving average of the weights (training.loop); None: the raw ones
    ema_decay: float | None = None


@dataclass
class OODSettings:
    """DCP out-of-distribution scoring (Lee & Shin 2022); network shape and bins come from ``model``."""
    margin: float | None = None         # None: ln(model.n_bins) - 0.059, the paper's 4.1 for 64 bins
    gamma: float = 0.0                  # anchor-loss gamma of both networks
    check_every: int = 200              # steps between validation checks (the paper's 200)
    ts1_patience: int = 10              # checks without improvement before TS2 (the paper's 10)
    ts2_patience: int = 20              # checks without improvement or gap growth before TS3 (the paper's 20)
    ts3_patience: int = 10
    max_checks_per_stage: int = 60      # bounds every stage
    batch_size: int = 256               # labelled rows per step
    unlabelled_batch_size: int = 1024   # unlabelled rows per TS2 step (the paper's 1024)
    flag_quantile: float = 0.99         # ood_flag: score above this quantile of labelled validation scores
    max_unlabelled_rows: int = 1_000_000   # unlabelled rows sampled (on the executors) for training
    unlabelled_val_rows: int = 4096     # unlabelled rows held out for the TS2 gap check
    val_fraction: float = 0.1           # labelled rows held out (the paper's 80/10/10 split)
    cache_dir: str | None = None        # Parquet cache of unlabelled features; shared storage on a cluster


@dataclass
class InferenceSettings:
    batch_size: int = 2048             # rows per network call: the widest activation stays in cache (issue 10)
    device: str = "auto"               # auto | cpu | cuda
    # auto: bfloat16 on AMX / AVX-512 BF16 CPUs and bf16 GPUs if the accuracy gate passes
    # (lsst_spark_ml.inference.accuracy), else float32 | float32 | bfloat16 (forced, no gate)
    precision: str = "auto"
    threads: int | None = None         # None: the Spark task's cores
    pdf_format: str = "float32"        # float32 (array<float>, 256 B for 64 bins) | uint8 (64 B; inference.compact_pdf)
    batch_mb: float | None = 16.0      # Arrow batch by bytes: maxRecordsPerBatch = batch_mb / row width; None: rows
    # rows per network call on a GPU: on an H200, 65,536 gave 1.6-2.5x the whole-row rate of 2,048
    # (benchmarks/gpu_results.md)
    gpu_batch_size: int = 65536
    # concurrent tasks sharing one GPU (task gpu amount 1/n): the per-row host work (features, Arrow) is
    # single-threaded per task, so one task cannot feed a GPU; None: the executor's cores per GPU
    tasks_per_gpu: int | None = None


@dataclass
class OutputSettings:
    path: str | None = None
    hats_order: int = 3                # HEALPix order of the output partitions when coordinates exist
    mode: str = "overwrite"            # overwrite | error
    write_pdf: bool = True


@dataclass
class BayesSettings:
    """Bayesian template-fitting follow-up of flagged rows (lsst_spark_ml.bayes; ``lsst-spark-ml bayes run``)."""
    method: str = "vi"                 # grid | mcmc | vi
    where: str | None = None           # Spark SQL predicate choosing the rows; None: the flag_col column
    flag_col: str = "ood_flag"
    templates: list[str] = field(default_factory=lambda: [
        "El_B2004a", "Sbc_B2004a", "Scd_B2004a", "Im_B2004a", "SB3_B2004a", "SB2_B2004a"])
    template_dir: str | None = None    # None: pz-rail-base's estimation_data/data/SED
    filter_prefix: str = "lsst2023"    # speclite filter family: {prefix}-{band}
    z_min: float = 0.0
    z_max: float = 3.1
    dz: float = 0.002                  # fine grid the model fluxes are tabulated on (linear in between)
    # grid method: template-mixture nodes between adjacent templates; 3 left 6 % of the grid's own medians
    # > 0.01(1+z) from a converged t integral (benchmarks/bayes_results.md)
    n_interp: int = 7
    flux_err_floor: float = 0.03       # fractional error added in quadrature: template mismatch
    prior: str = "bpz-hdfn"            # bpz-hdfn | flat
    prior_band: str = "i"
    batch_size: int = 256              # objects advanced together by one array operation
    seed: int = 1234
    mcmc_walkers: int = 16
    mcmc_burn: int = 150
    mcmc_steps: int = 250
    mcmc_rhat_max: float = 1.1
    mcmc_min_ess: float = 100.0
    vi_components: int = 6
    vi_steps: int = 100                # Adam steps, step size decaying linearly to 5 % (bayes/vi.py)
    vi_samples: int = 8
    vi_lr: float = 0.08
    # iterative (per-object VI from the coarse scan) | amortised (one forward pass of an inference network
    # trained once per configuration, bayes/amortised.py) | semi-amortised (the network, then per-object VI
    # where its importance-sampling check fails)
    vi_mode: str = "iterative"
    # amortised VI: objects per network call (one forward pass and 48 posterior evaluations each); the per-call
    # overhead dominates at batch_size (measured on this CPU: 12.7-15.0k objects/s at 256, 18.6-19.2k at 1024,
    # 10.7-12.9k at 4096, where the batch leaves the cache)
    vi_amortised_batch_size: int = 1024
    threads: int | None = None         # torch threads per task; None: the task's cores


@dataclass
class AsteroidSettings:
    """Asteroid taxonomy (issue 7; lsst_spark_ml.asteroids, ``lsst-spark-ml asteroids``)."""
    bands: list[str] = field(default_factory=lambda: ["g", "r", "i", "z", "y"])
    system: str = "lsst"               # lsst | sdss (solar colours and filter curves; sdss: Roh et al. griz)
    reference_band: str = "r"          # model colours are relative to it (a missing one is still handled)
    input: str = "wide"                # wide: one row per asteroid | observations: one row per epoch
    id_col: str = "id"
    mag_col: str = "mag_{band}"        # wide input
    err_col: str = "err_{band}"
    obs_band_col: str = "band"         # observations input
    obs_mag_col: str = "mag"
    obs_err_col: str = "mag_err"
    obs_r_col: str | None = None       # heliocentric distance (au), to reduce magnitudes to unit distances
    obs_delta_col: str | None = None   # observer distance (au)
    obs_phase_col: str | None = None   # phase angle (deg)
    phase_slope: float = 0.04          # mag/deg, shared by all bands
    label_col: str = "class_"          # space-classy label: class_ (Mahlke 2022) | class_previous
    level: str = "seven"               # seven (C D K L S V X) | complex (C D S V X): the classes fitted
    components_per_class: int = 2
    k_min: int = 2                     # AsteroidClustering: components tried, best by BIC
    k_max: int = 8
    max_iter: int = 100
    tol: float = 1e-5                  # per-row change of the log-likelihood that stops EM
    reg_covar: float = 1e-5
    min_probability: float = 0.5       # below: LOW_PROBABILITY (clustering: "unassigned")
    unusual_threshold: float = 3.0     # unusual score (-log10 chi2 tail) above which UNUSUAL is set
    n_unusual: int = 100               # rows in the ranked list of unusual objects
    # The labelled set's LSST-like photometry (spectra.simulate_observations) and the evaluation split.
    sim_r_min: float = 18.0            # apparent r, uniform
    sim_r_max: float = 22.0
    sim_mean_epochs: float = 30.0      # per band over the survey (Poisson)
    sim_max_amplitude: float = 0.15    # lightcurve semi-amplitude, uniform in [0, this] (0.3 mag peak to peak)
    test_fraction: float = 0.3
    label_fraction: float = 0.1        # semi-supervised versus clustering comparison: labels kept
    seed: int = 2022


@dataclass
class InfluenceSettings:
    """Training-sample influence and spectroscopic target selection (issue 6; lsst_spark_ml.influence)."""
    # influence-function: final weights, output layer, inverse damped Gauss-Newton Hessian (no snapshots);
    # tracin: gradient dot products summed over the snapshots kept by train.snapshot_every.
    method: str = "influence-function"
    damping: float = 0.01              # influence-function: lambda = damping x mean diagonal of the Hessian
    hessian_rows: int = 200_000        # influence-function: training rows sampled for the Hessian
    top_k: int = 10                    # helpful and harmful training rows kept per query
    layers: int = 1                    # tracin: trailing Linear layers whose gradients enter; 1: exact, factorised
    projection_dim: int = 0            # layers > 1: random projection of each gradient (0: none)
    members: list[int] | None = None   # ensemble members used (None: all)
    max_queries: int = 100_000         # query gradients are broadcast: this bounds their size
    seed: int = 1234
    # Target selection: priority = uncertainty^a * density^b, then greedy diverse choice (k-center).
    n_targets: int = 100
    uncertainty_weight: float = 1.0    # a
    density_weight: float = 1.0        # b
    density_k: int = 10                # neighbours for the unlabelled density
    density_sample: int = 20_000       # unlabelled rows broadcast as the density reference
    candidate_factor: int = 20         # rows passed from Spark to the greedy step: factor * n_targets
    uncertainty: str = "auto"          # auto (ood_score if a DCP model is given, else entropy) | entropy | ood


@dataclass
class MorphologySettings:
    """Galaxy morphology on 5-band cutouts (issue 8; lsst_spark_ml.morphology, ``lsst-spark-ml morphology``)."""
    network: str = "dat"               # dat (deformable attention transformer) | cnn (the convolutional baseline)
    preset: str = "tiny_cpu"           # tiny_cpu (trains on 2 cores at 64 px) | dat_tiny (the paper's DAT-Tiny)
    image_size: int = 64               # cutout side in pixels; every cutout of a table must have it
    # supervised: labelled rows only | semi: FixMatch consistency with pseudo-labels on the unlabelled table
    mode: str = "semi"
    # snr: unlabelled rows admitted easiest first by the image's signal-to-noise in its object mask | none
    curriculum: str = "snr"
    curriculum_start: float = 0.3      # fraction of the unlabelled rows admitted in the first epoch
    curriculum_ramp: float = 0.5       # fraction of the epochs after which every unlabelled row is admitted
    unlabelled_ratio: int = 3          # FixMatch mu: unlabelled rows per labelled row in a step
    threshold: float = 0.7             # FixMatch tau: pseudo-labels kept when the weak view's confidence >= tau
    unlabelled_weight: float = 1.0     # FixMatch lambda_u
    # AdaMatch's answers to the covariate shift: tau relative to the labelled rows' mean confidence, and the
    # unlabelled predictions aligned to the labelled class distribution (training.morphology.fixmatch_loss).
    # Off: measured to collapse onto few classes here (README, morphology).
    relative_threshold: bool = False
    # ReMixMatch's distribution alignment alone (running mean of the unlabelled predictions, aligned to the labelled
    # class frequencies; training.morphology.DistributionAlignment)
    distribution_alignment: bool = False
    # semi: this fraction of budget_images (or of the epochs) trains on the labelled rows alone first
    warmup_fraction: float = 0.0
    # semi: where the pseudo-labels come from. student: the model being trained (FixMatch) | ema: a moving
    # average of it with decay teacher_decay (Mean Teacher; self-ensembling for domain adaptation), whose weak
    # views are a forward pass without gradients (training.morphology.EMATeacher)
    pseudo_labels: str = "student"
    teacher_decay: float = 0.99
    labelled_strong: bool = False      # labelled rows also enter as strong (survey-like) views, in both modes
    # strong views also redder, as at the survey's higher redshifts (morphology.augment.redshift_colours)
    colour_shift: bool = False
    # semi: the unlabelled rows' strong views reddened too. They are survey galaxies already, so the shift takes
    # them beyond the survey's redshifts, where consistency could teach the network to ignore g - r (measured
    # off: +0.4 points, within the scatter; README, morphology); true replays the earlier runs
    colour_shift_unlabelled: bool = True
    # where the colour shift's vector comes from. templates: the CWW k-correction from z 0.07 to 0.30
    # (morphology.augment.REDSHIFT_COLOUR_SHIFT) | unlabelled: measured, the median colours of the unlabelled
    # (survey) rows against the labelled rows' (morphology.colours), drawn so that its mean is that difference
    colour_shift_source: str = "templates"
    class_weighting: str = "inverse-sqrt"   # none | inverse | inverse-sqrt (of the labelled class frequencies)
    batch_size: int = 32               # labelled rows per step (per process)
    steps_per_epoch: int = 40          # an epoch is this many steps (the labelled set is small and resampled)
    # Images through the network per process (forward and backward; a FixMatch step costs 1 + 2 mu of them):
    # supervised and semi runs with the same budget had the same compute. None: train.max_epochs epochs.
    budget_images: int | None = None
    epochs: int = 30                   # used when budget_images is None
    lr: float = 1e-3
    weight_decay: float = 1e-4         # Adam's L2 term (the project's optimiser, training.distributed.prepare)
    early_stop_patience: int | None = 12   # epochs without a better labelled-validation loss
    # EMA of the weights for validation and the saved model (train.ema_decay); None: the raw weights
    ema_decay: float | None = None
    val_fraction: float = 0.15         # labelled rows held out for early stopping
    seed: int = 8
    # Inference
    batch_size_predict: int = 64       # images per network call
    precision: str = "float32"         # float32 | bfloat16 (autocast; benchmarks/morphology_inference.py)
    device: str = "auto"               # auto | cpu | cuda
    batch_mb: float = 64.0             # Arrow batches sized by bytes (a 480 px float16 cutout is 2.3 MB)
    # concurrent tasks sharing one GPU: the object masks are built on the host, one core per task, at ~15
    # images/s against ~460 images/s of DAT-Tiny on an H200; None: the executor's cores per GPU
    tasks_per_gpu: int | None = None
    attention: bool = False            # predict: also write each galaxy's attention map (float16, feature grid)
    keep_cutout: bool = False          # predict: carry the cutout bytes into the output table
    # make-cutouts: the rendered sets (lsst_spark_ml.morphology.render)
    n_labelled: int = 600
    n_unlabelled: int = 5400
    n_test: int = 1500
    render_seed: int = 2022


@dataclass
class ReleaseStageSettings:
    """One stage of an annual release (issue 9; lsst_spark_ml.release)."""
    name: str = ""                     # photoz | ood | bayes (morphology and asteroids: not yet)
    input: str = "objects"             # key of release.inputs the stage reads
    model: str | None = None           # model directory; None: the shipped model of the stage
    model_sha256: str | None = None    # pin: the stage refuses a model whose manifest hashes differently


@dataclass
class ReleaseSettings:
    """The annual reprocessing job (``lsst-spark-ml release run``); see lsst_spark_ml/release/."""
    id: str | None = None              # names the output directory: <output_root>/<id>/
    output_root: str = "outputs/releases"
    inputs: dict[str, str] = field(default_factory=dict)      # name -> HATS catalog (or Parquet directory)
    stages: list[ReleaseStageSettings] = field(default_factory=list)
    join: str = "per-stage"            # per-stage: one catalog per stage | joined: one catalog, joined on the id
    synthetic_rows: int = 0            # > 0: an input that does not exist is generated (release synth) first
    synthetic_order: int = 3           # HEALPix order of that generated input
    max_rounds: int = 3                # partitions lost to a crashed task/worker are retried this many times


@dataclass
class Config:
    spark: SparkSettings = field(default_factory=SparkSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    model: MBRNNSettings = field(default_factory=MBRNNSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    ood: OODSettings = field(default_factory=OODSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    asteroids: AsteroidSettings = field(default_factory=AsteroidSettings)
    bayes: BayesSettings = field(default_factory=BayesSettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    influence: InfluenceSettings = field(default_factory=InfluenceSettings)
    morphology: MorphologySettings = field(default_factory=MorphologySettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> "Config":
        c = self.catalog
        if c.format not in ("auto", "parquet", "hats", "fits", "hdf5"):
            raise ConfigError(f"catalog.format must be auto|parquet|hats|fits|hdf5, got {c.format!r}")
        if c.photometry not in ("auto", "flux", "mag"):
            raise ConfigError(f"catalog.photometry must be auto|flux|mag, got {c.photometry!r}")
        if len(c.bands) < 2:
            raise ConfigError(f"catalog.bands needs at least two bands to form a colour, got {c.bands}")
        if len(set(c.bands)) != len(c.bands):
            raise ConfigError(f"catalog.bands has duplicates: {c.bands}")
        f = self.features
        if f.reference_band is not None and f.reference_band not in c.bands:
            raise ConfigError(f"features.reference_band {f.reference_band!r} is not in catalog.bands {c.bands}")
        missing = [b for b in c.bands if b not in f.nondetect_limits]
        if missing:
            raise ConfigError(f"features.nondetect_limits has no limit for band(s) {missing}")
        m = self.model
        if m.n_bins < 2 or not m.z_max > m.z_min:
            raise ConfigError(f"model needs n_bins >= 2 and z_max > z_min, got {m.n_bins}, [{m.z_min}, {m.z_max}]")
        if not m.gammas:
            raise ConfigError("model.gammas must list at least one ensemble member")
        if self.inference.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"inference.device must be auto|cpu|cuda, got {self.inference.device!r}")
        if self.inference.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"inference.precision must be auto|float32|bfloat16, got {self.inference.precision!r}")
        if self.inference.pdf_format not in ("float32", "uint8"):
            raise ConfigError(f"inference.pdf_format must be float32|uint8, got {self.inference.pdf_format!r}")
        if self.inference.batch_mb is not None and not self.inference.batch_mb > 0:
            raise ConfigError(f"inference.batch_mb must be > 0 or null, got {self.inference.batch_mb}")
        if self.inference.gpu_batch_size < 1 or (self.inference.tasks_per_gpu is not None
                                                 and self.inference.tasks_per_gpu < 1):
            raise ConfigError("inference.gpu_batch_size must be >= 1 and inference.tasks_per_gpu >= 1 or null, got "
                              f"{self.inference.gpu_batch_size}, {self.inference.tasks_per_gpu}")
        if self.inference.batch_size < 1 or self.spark.arrow_batch_rows < 1:
            raise ConfigError("inference.batch_size and spark.arrow_batch_rows must be positive")
        if not 0 <= self.output.hats_order <= 19:
            raise ConfigError(f"output.hats_order must be in 0..19, got {self.output.hats_order}")
        if self.output.mode not in ("overwrite", "error"):
            raise ConfigError(f"output.mode must be overwrite|error, got {self.output.mode!r}")
        t = self.train
        if t.backend not in ("local", "torch-distributor", "horovod"):
            raise ConfigError(f"train.backend must be local|torch-distributor|horovod, got {t.backend!r}")
        if t.data_loader not in ("memory", "parquet"):
            raise ConfigError(f"train.data_loader must be memory|parquet, got {t.data_loader!r}")
        if t.data_loader == "parquet" and t.noise_augmentation:
            raise ConfigError("train.noise_augmentation needs train.data_loader=memory (the Parquet cache holds "
                              "fixed features)")
        if t.batch_size < 2 or t.max_epochs < 1 or t.num_processes < 1:
            raise ConfigError("train.batch_size must be >= 2 (BatchNorm), train.max_epochs and "
                              "train.num_processes >= 1")
        for name, v in (("train.threads", t.threads), ("inference.threads", self.inference.threads)):
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be a positive integer or null, got {v}")
        if self.spark.log_level.upper() not in ("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF", "TRACE"):
            raise ConfigError(f"spark.log_level must be a log4j level (WARN, INFO, ...), got {self.spark.log_level!r}")
        if not 1 <= f.min_detected_bands <= len(c.bands):
            raise ConfigError(f"features.min_detected_bands must be in 1..{len(c.bands)}, got {f.min_detected_bands}")
        if len(c.bands) > 8:
            raise ConfigError(f"at most 8 bands fit the flag bit layout, got {len(c.bands)}")
        if not m.hidden or any(h < 1 for h in m.hidden):
            raise ConfigError(f"model.hidden must list positive layer widths, got {m.hidden}")
        if not 0 < self.train.val_fraction < 1:
            raise ConfigError(f"train.val_fraction must be in (0, 1), got {self.train.val_fraction}")
        for key, d in (("train.ema_decay", self.train.ema_decay), ("morphology.ema_decay", self.morphology.ema_decay)):
            if d is not None and not 0 < d < 1:
                raise ConfigError(f"{key} must be in (0, 1) or null, got {d}")
        self._validate_ood()
        self._validate_influence()
        self._validate_bayes()
        self._validate_asteroids()
        self._validate_morphology()
        return self

    def _validate_morphology(self) -> None:
        m = self.morphology
        if m.network not in ("dat", "cnn"):
            raise ConfigError(f"morphology.network must be dat|cnn, got {m.network!r}")
        if m.preset not in ("tiny_cpu", "dat_tiny"):
            raise ConfigError(f"morphology.preset must be tiny_cpu|dat_tiny, got {m.preset!r}")
        if m.precision not in ("float32", "bfloat16") or m.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"morphology.precision must be float32|bfloat16 and morphology.device auto|cpu|cuda, "
                              f"got {m.precision!r}, {m.device!r}")
        if m.tasks_per_gpu is not None and m.tasks_per_gpu < 1:
            raise ConfigError(f"morphology.tasks_per_gpu must be >= 1 or null, got {m.tasks_per_gpu}")
        if m.mode not in ("supervised", "semi"):
            raise ConfigError(f"morphology.mode must be supervised|semi, got {m.mode!r}")
        if m.curriculum not in ("none", "snr"):
            raise ConfigError(f"morphology.curriculum must be none|snr, got {m.curriculum!r}")
        if m.class_weighting not in ("none", "inverse", "inverse-sqrt"):
            raise ConfigError(f"morphology.class_weighting must be none|inverse|inverse-sqrt, "
                              f"got {m.class_weighting!r}")
        if m.image_size < 16 or m.image_size % 4:
            raise ConfigError(f"morphology.image_size must be a multiple of 4 and >= 16, got {m.image_size}")
        if not 0 < m.curriculum_start <= 1 or not 0 < m.curriculum_ramp <= 1:
            raise ConfigError("morphology.curriculum_start and curriculum_ramp must be in (0, 1]")
        if m.colour_shift_source not in ("templates", "unlabelled"):
            raise ConfigError(f"morphology.colour_shift_source must be templates|unlabelled, got "
                              f"{m.colour_shift_source!r}")
        if m.pseudo_labels not in ("student", "ema"):
            raise ConfigError(f"morphology.pseudo_labels must be student|ema, got {m.pseudo_labels!r}")
        if not 0 < m.teacher_decay < 1:
            raise ConfigError(f"morphology.teacher_decay must be in (0, 1), got {m.teacher_decay}")
        if not 0 <= m.warmup_fraction < 1:
            raise ConfigError(f"morphology.warmup_fraction must be in [0, 1), got {m.warmup_fraction}")
        if not 0 < m.threshold < 1 or m.unlabelled_ratio < 1 or m.unlabelled_weight < 0:
            raise ConfigError("morphology needs 0 < threshold < 1, unlabelled_ratio >= 1, unlabelled_weight >= 0")
        if m.batch_size < 2 or m.steps_per_epoch < 1 or m.batch_size_predict < 1 or not m.batch_mb > 0:
            raise ConfigError("morphology needs batch_size >= 2, steps_per_epoch >= 1, batch_size_predict >= 1, "
                              "batch_mb > 0")
        if m.budget_images is not None and m.budget_images < m.batch_size * m.steps_per_epoch:
            raise ConfigError(f"morphology.budget_images {m.budget_images} is less than one epoch "
                              f"({m.batch_size} x {m.steps_per_epoch} images)")
        if not 0 < m.val_fraction < 1 or not m.lr > 0 or m.weight_decay < 0 or m.epochs < 1:
            raise ConfigError("morphology needs val_fraction in (0, 1), lr > 0, weight_decay >= 0, epochs >= 1")
        if min(m.n_labelled, m.n_unlabelled, m.n_test) < 1:
            raise ConfigError("morphology.n_labelled, n_unlabelled and n_test must be >= 1")

    def _validate_influence(self) -> None:
        n = self.influence
        if n.method not in ("influence-function", "tracin"):
            raise ConfigError(f"influence.method must be influence-function|tracin, got {n.method!r}")
        if n.method == "influence-function" and n.layers != 1:
            raise ConfigError("influence.layers > 1 needs influence.method=tracin (the Hessian is the output layer's)")
        if not n.damping > 0 or n.hessian_rows < 1:
            raise ConfigError("influence.damping must be > 0 and influence.hessian_rows >= 1")
        if n.top_k < 1 or n.layers < 1 or n.projection_dim < 0 or n.max_queries < 1:
            raise ConfigError("influence needs top_k >= 1, layers >= 1, projection_dim >= 0, max_queries >= 1")
        if n.layers > len(self.model.hidden) + 1:
            raise ConfigError(f"influence.layers {n.layers} exceeds the {len(self.model.hidden) + 1} Linear layers")
        if n.uncertainty not in ("auto", "entropy", "ood"):
            raise ConfigError(f"influence.uncertainty must be auto|entropy|ood, got {n.uncertainty!r}")
        if n.n_targets < 1 or n.density_k < 1 or n.density_sample < n.density_k + 1 or n.candidate_factor < 1:
            raise ConfigError("influence needs n_targets >= 1, density_k >= 1, density_sample > density_k, "
                              "candidate_factor >= 1")
        if n.uncertainty_weight < 0 or n.density_weight < 0:
            raise ConfigError("influence.uncertainty_weight and density_weight must be >= 0")
        if self.train.snapshot_every < 0:
            raise ConfigError(f"train.snapshot_every must be >= 0, got {self.train.snapshot_every}")

    def _validate_asteroids(self) -> None:
        a = self.asteroids
        if a.system not in ("lsst", "sdss"):
            raise ConfigError(f"asteroids.system must be lsst|sdss, got {a.system!r}")
        allowed = "ugrizy" if a.system == "lsst" else "ugriz"
        bad = [b for b in a.bands if b not in allowed]
        if bad or len(set(a.bands)) != len(a.bands) or not 2 <= len(a.bands) <= 8:
            raise ConfigError(f"asteroids.bands must be 2-8 distinct {a.system} bands ({', '.join(allowed)}), "
                              f"got {a.bands}")
        if a.reference_band not in a.bands:
            raise ConfigError(f"asteroids.reference_band {a.reference_band!r} is not in asteroids.bands {a.bands}")
        if a.input not in ("wide", "observations"):
            raise ConfigError(f"asteroids.input must be wide|observations, got {a.input!r}")
        if a.level not in ("seven", "complex"):
            raise ConfigError(f"asteroids.level must be seven|complex, got {a.level!r}")
        if a.label_col not in ("class_", "class_previous"):
            raise ConfigError(f"asteroids.label_col must be class_|class_previous, got {a.label_col!r}")
        if a.components_per_class < 1 or not 1 <= a.k_min <= a.k_max or a.max_iter < 1:
            raise ConfigError("asteroids needs components_per_class >= 1, 1 <= k_min <= k_max, max_iter >= 1")
        if not 0 < a.test_fraction < 1 or not 0 < a.label_fraction <= 1 or not 0 <= a.min_probability < 1:
            raise ConfigError("asteroids.test_fraction in (0, 1), label_fraction in (0, 1], min_probability in [0, 1)")
        if a.sim_r_max <= a.sim_r_min or a.sim_mean_epochs <= 0 or a.tol <= 0 or a.reg_covar < 0:
            raise ConfigError("asteroids needs sim_r_max > sim_r_min, sim_mean_epochs > 0, tol > 0, reg_covar >= 0")

    def _validate_bayes(self) -> None:
        b = self.bayes
        if b.method not in ("grid", "mcmc", "vi"):
            raise ConfigError(f"bayes.method must be grid|mcmc|vi, got {b.method!r}")
        if b.vi_mode not in ("iterative", "amortised", "semi-amortised"):
            raise ConfigError(f"bayes.vi_mode must be iterative|amortised|semi-amortised, got {b.vi_mode!r}")
        if b.vi_amortised_batch_size < 1:
            raise ConfigError(f"bayes.vi_amortised_batch_size must be >= 1, got {b.vi_amortised_batch_size}")
        if b.prior not in ("bpz-hdfn", "flat"):
            raise ConfigError(f"bayes.prior must be bpz-hdfn|flat, got {b.prior!r}")
        if not (b.z_max > b.z_min >= 0) or not 0 < b.dz < (b.z_max - b.z_min) / 10:
            raise ConfigError(f"bayes needs 0 <= z_min < z_max and 0 < dz < (z_max - z_min)/10, got "
                              f"[{b.z_min}, {b.z_max}], dz={b.dz}")
        if len(b.templates) < 2:
            raise ConfigError(f"bayes.templates needs at least two templates to interpolate, got {b.templates}")
        if b.prior_band not in self.catalog.bands:
            raise ConfigError(f"bayes.prior_band {b.prior_band!r} is not in catalog.bands {self.catalog.bands}")
        if b.mcmc_walkers < 4 or b.mcmc_walkers % 2 or b.mcmc_steps < 10 or b.mcmc_burn < 0:
            raise ConfigError("bayes.mcmc_walkers must be an even number >= 4, bayes.mcmc_steps >= 10, "
                              "bayes.mcmc_burn >= 0")
        if b.vi_components < 1 or b.vi_steps < 1 or b.vi_samples < 1 or not b.vi_lr > 0:
            raise ConfigError("bayes.vi_components, vi_steps, vi_samples and vi_lr must be positive")
        if b.batch_size < 1 or b.n_interp < 0 or b.flux_err_floor < 0:
            raise ConfigError("bayes.batch_size must be positive, bayes.n_interp and flux_err_floor >= 0")
        if b.threads is not None and b.threads < 1:
            raise ConfigError(f"bayes.threads must be a positive integer or null, got {b.threads}")

    def ood_margin(self) -> float:
        import math
        return self.ood.margin if self.ood.margin is not None else math.log(self.model.n_bins) - 0.059

    def _validate_ood(self) -> None:
        import math
        o = self.ood
        if o.margin is not None and not 0 < o.margin < math.log(self.model.n_bins):
            raise ConfigError(f"ood.margin must be in (0, ln model.n_bins = {math.log(self.model.n_bins):.3f}), "
                              f"got {o.margin}")
        if min(o.check_every, o.ts1_patience, o.ts2_patience, o.ts3_patience, o.max_checks_per_stage) < 1:
            raise ConfigError("ood.check_every, ood.ts*_patience and ood.max_checks_per_stage must be >= 1")
        if o.batch_size < 2 or o.unlabelled_batch_size < 2 or o.unlabelled_val_rows < 1 or o.max_unlabelled_rows < 1:
            raise ConfigError("ood.batch_size and ood.unlabelled_batch_size must be >= 2, ood.unlabelled_val_rows "
                              "and ood.max_unlabelled_rows >= 1")
        if not 0 < o.flag_quantile < 1 or not 0 < o.val_fraction < 1:
            raise ConfigError(f"ood.flag_quantile and ood.val_fraction must be in (0, 1), got {o.flag_quantile}, "
                              f"{o.val_fraction}")

def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args or tp is Any:
            return None
        raise ConfigError(f"{where} may not be null")
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): (_coerce(args[1], v, f"{where}.{k}") if args[1] is not Any else v) for k, v in value.items()}
    return value


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'configuration'}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "conf":
            out[k] = _deep_merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    value = yaml.safe_load(raw) if raw.strip() else ""
    # spark.conf keys contain dots themselves: everything after "spark.conf." is one key.
    if parts[:2] == ["spark", "conf"] and len(parts) > 2:
        return {"spark": {"conf": {".".join(parts[2:]): raw}}}
    out: dict = value
    for p in reversed(parts):
        out = {p: out}
    return out


def load_config(paths: list[str | Path] | None = None, overrides: list[str] | dict | None = None) -> Config:
    merged: dict = {}
    for p in paths or []:
        p = Path(p)
        if not p.is_file():
            raise ConfigError(f"configuration file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {p} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"configuration file {p} must hold a mapping at the top level")
        merged = _deep_merge(merged, data)
    if isinstance(overrides, dict):
        merged = _deep_merge(merged, overrides)
    else:
        for o in overrides or []:
            merged = _deep_merge(merged, parse_override(o))
    return _build(Config, merged, "").validate()


def config_hash(cfg: Config) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()
