"""Morphology training: supervised, or semi-supervised (FixMatch) with an S/N curriculum, on Parquet cutouts.

Data: cutout tables (``lsst_spark_ml.morphology.cutouts``) are read with the project's Parquet loader, whose
transform decodes the band bytes and builds the 11-channel inputs in its prefetch thread. Each process keeps
the whole labelled table (it is small: that is the point of semi-supervision) and its own share of the
unlabelled table's row groups, as float16 inputs in memory. Rows the input builder marks unusable
(``inputs.BAD_ROW``: wrong shape, a missing or all-NaN band) are left out of training and counted.

Steps: a step draws ``batch_size`` labelled rows (weak view, and with ``labelled_strong`` also the strong
view, in both modes) and, in semi mode, ``mu x batch_size`` unlabelled rows from the curriculum's admitted
pool, each as a weak and a strong view (``morphology.augment``). One forward pass covers all three (with
``pseudo_labels: ema`` the weak views go through the moving-average teacher instead, ``EMATeacher``); the loss
(``fixmatch_loss``) is the class-weighted cross-entropy of the labelled rows plus lambda_u times the
cross-entropy of the strong views against the weak views' argmax, kept where the weak view's confidence
reaches tau (with ``relative_threshold``: AdaMatch's tau x the labelled rows' mean confidence, after
distribution alignment). Rows are told apart by their code in the target tensor: a class index, ``WEAK`` or
``STRONG``; the i-th WEAK row pairs with the i-th STRONG row.

Curriculum (``morphology.curriculum = snr``): the unlabelled pool is ordered by the image S/N inside the
object mask (``morphology.difficulty``); the first epoch admits the easiest ``curriculum_start`` fraction,
and the admitted fraction grows linearly until every row is admitted after ``curriculum_ramp`` of the epochs.

Same compute: with ``budget_images`` the number of steps is the budget divided by the images one step puts
through the network (``batch_size`` x 2 with ``labelled_strong``, plus ``2 mu batch_size`` in semi mode), so
the two modes can be compared at equal cost (the teacher's forward-only weak views count as whole images: the
comparison never favours semi mode). With ``warmup_fraction`` that share of the budget trains on the
labelled rows alone before the unlabelled rows join; with ``distribution_alignment`` the pseudo-labels are
aligned to the labelled class mix (``DistributionAlignment``); with ``ema_decay`` the validated and saved
weights are a moving average (``training.loop``). README, "Averaged weights, a labelled warm-up and
distribution alignment", has what each was for and what they measured.

Early stopping and the best epoch use the labelled validation split as observed plus the same rows degraded
towards the survey (the strong view with fixed draws). The loop, checkpoints and the backends are the project's
(``training.loop.fit``, ``training.backends``): ``train.backend=torch-distributor`` trains with DDP.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..artefacts import save_artefact
from ..config import Config, MorphologySettings
from ..errors import CatalogError, ConfigError
from ..morphology import augment
from ..morphology.colours import mask_photometry, measured_shift
from ..morphology.difficulty import difficulty, snr_from_photometry
from . import backends
from .loop import averaged, averaged_with_live_buffers, fit

WEAK, STRONG = -1, -2
KIND = "morphology-classifier"
TRAINING_LOG = "training_log.json"


@dataclass
class CutoutSet:
    """One process's rows of a cutout table, inputs built."""
    x: torch.Tensor            # float16 (n, 11, S, S)
    labels: np.ndarray         # int64 (n,), -1 where the table has no label
    snr: np.ndarray            # float64 (n,)
    fluxes: np.ndarray         # float64 (n, bands): sky-subtracted flux in the object mask (morphology.colours)
    ids: np.ndarray            # int64 (n,)
    n_flagged: int             # rows the input builder flagged, not included above
    n_read: int


def _label_column(table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, -1, dtype=np.int64)
    col = table.column(name).combine_chunks()
    return np.asarray(col.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def default_mask_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lsst_spark_ml" / "morphology_masks"


def mask_cache_dir(ts) -> str:
    return ts.cache_dir and str(Path(ts.cache_dir) / "morphology_masks") or str(default_mask_cache())


def _cached_masks(table, cache_dir: Path, compute):
    """Object masks of a row group, from ``cache_dir`` when these exact cutout bytes were seen before.

    The mixture fits of the object mask cost far more than the network at 64 px, and every training run (and
    every rank of it) reads the same tables: the masks are cached by the sha256 of the mask code and of the
    row group's cutout bytes, so a changed table or algorithm is never served stale masks. Bit-packed: 512
    bytes per 64 px cutout.
    """
    from ..morphology import masks as mask_code
    h = hashlib.sha256(Path(mask_code.__file__).read_bytes())     # new mask code: new cache entries
    for chunk in table.column("cutout").chunks:
        for buf in chunk.buffers():
            if buf is not None:
                h.update(buf)
    path = cache_dir / f"{h.hexdigest()}.npz"
    if path.is_file():
        with np.load(path) as z:
            return np.unpackbits(z["bits"], count=int(np.prod(z["shape"]))).reshape(z["shape"]).astype(bool)
    masks = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, bits=np.packbits(masks.ravel()), shape=np.array(masks.shape))
    os.replace(tmp, path)
    return masks


def read_cutout_set(path: str, image_size: int, *, label_col: str | None = "label", rank: int = 0,
                    world: int = 1, bands: list[str] | None = None,
                    mask_cache: str | Path | None = None) -> CutoutSet:
    """Rows of a cutout table this process trains on, through ``ParquetLoader`` (row groups by rank).

    ``mask_cache``: directory of cached object masks (``_cached_masks``); None computes them every time."""
    from ..morphology.cutouts import check_cutout_table, decode_cutouts
    from ..morphology.inputs import BAD_ROW, build_inputs
    from .loader import ParquetLoader
    info = check_cutout_table(path)
    if bands is not None and list(info.bands) != list(bands):
        raise CatalogError(f"{path}: cutout bands {list(info.bands)}, the model needs {list(bands)}")
    expected = (len(info.bands), image_size, image_size)

    def transform(table) -> dict[str, np.ndarray]:
        imgs, flags = decode_cutouts(table.column("cutout"), table.column("cutout_shape"),
                                     table.column("cutout_dtype"), expected)
        if mask_cache is None:
            x, flags = build_inputs(imgs, image_size, flags_in=flags)
        else:
            masks = _cached_masks(table, Path(mask_cache),
                                  lambda: build_inputs(imgs, image_size, flags_in=flags)[0][:, 5] > 0.5)
            x, flags = build_inputs(imgs, image_size, masks=masks, flags_in=flags)
        fluxes, var = mask_photometry(imgs, x[:, 5])
        out = {"x": x.astype(np.float16), "flags": flags.astype(np.int64),
               "snr": snr_from_photometry(fluxes, var), "fluxes": fluxes,
               "id": np.asarray(table.column("objectId").to_numpy(), dtype=np.int64)}
        out["label"] = _label_column(table, label_col) if label_col else np.full(table.num_rows, -1, np.int64)
        return out

    loader = ParquetLoader(path, None, batch_size=4096, shuffle=False, rank=rank, world_size=world,
                           dtype={"x": torch.float16, "snr": torch.float64, "fluxes": torch.float64},
                           transform=transform)
    parts = list(loader.epoch(0))
    if not parts:
        raise CatalogError(f"{path}: no rows for rank {rank} of {world}")
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    ok = (cat["flags"] & BAD_ROW) == 0         # NO_OBJECT rows (faint galaxies) stay in
    return CutoutSet(cat["x"][ok], cat["label"][ok].numpy(), cat["snr"][ok].numpy(), cat["fluxes"][ok].numpy(),
                     cat["id"][ok].numpy(), int((~ok).sum()), int(len(ok)))


def class_weights(labels: np.ndarray, n_classes: int, how: str) -> torch.Tensor:
    """Cross-entropy weights against class imbalance, mean 1 over the labelled rows."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if how == "none":
        w = np.ones(n_classes)
    else:
        w = 1.0 / np.maximum(counts, 1.0)
        if how == "inverse-sqrt":
            w = np.sqrt(w)
    w = w / (w[labels].mean() if len(labels) else 1.0)
    return torch.tensor(w, dtype=torch.float32)


class DistributionAlignment:
    """ReMixMatch's distribution alignment (Berthelot et al. 2020): before the argmax, the unlabelled class
    probabilities are multiplied by p(y) / p~(y) and renormalised, p(y) being the labelled rows' class frequencies
    and p~(y) a running mean of the model's predictions on unlabelled rows (``momentum`` per step, i.e. about the
    last 1 / (1 - momentum) steps; ReMixMatch keeps the last 128 batches).

    Why here: the survey domain is a covariate shift (fainter, smaller, blurrier; same class mix), under which a
    model trained on the labelled domain sees washed-out disks and predicts one class earlier along the Hubble
    sequence (measured: the confusion matrices of the supervised runs are shifted below the diagonal).
    Pseudo-labels then confirm the shift; aligning them to the known class mix pulls them back."""

    def __init__(self, labels: np.ndarray, n_classes: int, momentum: float = 0.99):
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64) + 1.0
        self.prior = torch.tensor(counts / counts.sum(), dtype=torch.float32)
        self.running = self.prior.clone()
        self.momentum = momentum

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        self.running = self.momentum * self.running + (1 - self.momentum) * p.mean(0).cpu()
        q = p * (self.prior / self.running.clamp_min(1e-6)).to(p.device)
        return q / q.sum(1, keepdim=True)


class EMATeacher:
    """Pseudo-labels from an exponential moving average of the model being trained (``morphology.pseudo_labels:
    ema``): Mean Teacher (Tarvainen & Valpola 2017), and the self-ensembling of French et al. 2018 that adapts
    a classifier across a domain shift with exactly this teacher, a confidence threshold and class balancing.

    Why: FixMatch's pseudo-labels come from the weights of the last step, which move by up to 0.7 in validation
    loss between epochs on these small labelled sets (README, morphology); an average is the steadier model
    (the loop validates and keeps one too, ``ema_decay``; this one starts where the unlabelled rows join). The
    weak views pass through the teacher only, without gradients, so a step costs less than FixMatch's joint
    forward (measured: 330 s against 342 s for the same 150,000 images at mu = 1).

    Used as ``training.loop.fit(forward=...)``: rows coded ``WEAK`` get the teacher's logits, the others the
    student's. The average starts as a copy of the student at the first step that has unlabelled rows (after
    the warm-up) and is updated before each such step; buffers are the student's. The loop checkpoints it
    (``state_dict``), so a resumed run goes on with the same teacher."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model, self.decay, self.avg = model, decay, None

    def _build(self):
        self.avg = averaged(self.model, self.decay)       # on the device the loop has moved the model to

    def state_dict(self) -> dict | None:
        return None if self.avg is None else self.avg.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._build()
        self.avg.load_state_dict(state)

    def __call__(self, net, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        weak = codes == WEAK
        if not weak.any():
            return net(x)
        if self.avg is None:
            self._build()
        self.avg.update_parameters(self.model)
        out = net(x[~weak])
        teacher = averaged_with_live_buffers(self.model, self.avg)
        teacher.eval()
        with torch.no_grad():
            t = teacher(x[weak]).to(out.dtype)
        logits = out.new_empty((len(x), out.shape[1]))
        logits[~weak] = out
        logits[weak] = t
        return logits


def fixmatch_loss(logits: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor | None, tau: float,
                  lam: float, stats: dict | None = None, relative: bool = True,
                  align: DistributionAlignment | None = None) -> torch.Tensor:
    """Supervised cross-entropy of the coded rows plus the FixMatch term (module docstring).

    ``relative`` (AdaMatch, Berthelot et al. 2022, for a covariate shift between the labelled and unlabelled
    sets): the unlabelled class probabilities are aligned to the labelled rows' mean prediction before the
    argmax (against collapse onto the classes the shift favours), and the confidence cut is tau times the
    labelled rows' mean confidence (a model that is unsure on the shifted set still keeps its surest
    pseudo-labels). ``align``: distribution alignment against the labelled class frequencies with a running
    mean (``DistributionAlignment``), applied before the threshold."""
    lab = codes >= 0
    loss = F.cross_entropy(logits[lab], codes[lab], weight=weights) if lab.any() else logits.sum() * 0
    weak_rows, strong_rows = codes == WEAK, codes == STRONG
    if weak_rows.any():
        with torch.no_grad():
            p = torch.softmax(logits[weak_rows].float(), 1)
            if align is not None:
                p = align(p)
            cut = tau
            if relative and lab.any():
                p_lab = torch.softmax(logits[lab].float(), 1)
                p = p * (p_lab.mean(0) / p.mean(0).clamp_min(1e-6))
                p = p / p.sum(1, keepdim=True)
                cut = tau * float(p_lab.max(1).values.mean())
            conf, pseudo = p.max(1)
            keep = (conf >= cut).float()
        per_row = F.cross_entropy(logits[strong_rows], pseudo, reduction="none")
        loss = loss + lam * (per_row * keep).mean()
        if stats is not None:
            stats["kept"] = stats.get("kept", 0) + int(keep.sum())
            stats["seen"] = stats.get("seen", 0) + int(keep.numel())
    return loss


def admitted(order: np.ndarray, epoch: int, epochs: int, ms: MorphologySettings) -> np.ndarray:
    """Indices of the unlabelled rows admitted in ``epoch`` (1-based); ``order`` is easiest first."""
    if ms.curriculum == "none":
        return order
    ramp_epochs = max(1.0, ms.curriculum_ramp * epochs)
    frac = min(1.0, ms.curriculum_start + (1 - ms.curriculum_start) * (epoch - 1) / ramp_epochs)
    return order[:max(1, int(math.ceil(frac * len(order))))]


def _images_per_step(ms: MorphologySettings) -> tuple[int, int]:
    """-> images one step puts through the network: (labelled rows only, with the unlabelled rows of semi mode)."""
    sup = ms.batch_size * (2 if ms.labelled_strong else 1)
    return sup, sup + (2 * ms.batch_size * ms.unlabelled_ratio if ms.mode == "semi" else 0)


def warmup_epochs(ms: MorphologySettings) -> int:
    """Semi mode: the first epochs train on the labelled rows alone (``warmup_fraction`` of the budget), so that
    the pseudo-labels start from a model that is confident on something: without it most of a short run's
    unlabelled images pass the network with no pseudo-label kept (measured: under 6 % kept in the first 7 of 14
    epochs at tau 0.7)."""
    if ms.mode != "semi" or not ms.warmup_fraction:
        return 0
    sup, _ = _images_per_step(ms)
    if ms.budget_images is None:
        return int(round(ms.warmup_fraction * ms.epochs))
    return int(ms.warmup_fraction * ms.budget_images // (sup * ms.steps_per_epoch))


def plan_epochs(ms: MorphologySettings) -> tuple[int, int]:
    """-> (epochs, images per step of the full steps) for the mode and the compute budget; the warm-up epochs
    (``warmup_epochs``) are the first of them, at the labelled-only cost."""
    sup, per_step = _images_per_step(ms)
    if ms.budget_images is None:
        return ms.epochs, per_step
    w = warmup_epochs(ms)
    rest = ms.budget_images - w * sup * ms.steps_per_epoch
    return w + max(1, int(rest // (per_step * ms.steps_per_epoch))), per_step


def images_seen(ms: MorphologySettings, epochs_run: int) -> int:
    sup, per_step = _images_per_step(ms)
    w = min(epochs_run, warmup_epochs(ms))
    return ms.steps_per_epoch * (w * sup + (epochs_run - w) * per_step)


def network_config(ms: MorphologySettings, n_classes: int) -> dict:
    from ..models.dat import DATConfig
    from ..models.morph_cnn import CNNConfig
    base = DATConfig if ms.network == "dat" else CNNConfig
    preset = getattr(base, ms.preset, None)
    if preset is None:
        raise ConfigError(f"morphology.preset {ms.preset!r} does not exist for network {ms.network!r}")
    return preset(num_classes=n_classes).to_dict()


def strong_views(ms: MorphologySettings, colour_mags=augment.REDSHIFT_COLOUR_SHIFT):
    """-> (strong view of the labelled and validation rows, strong view of the unlabelled rows). The colour shift
    moves a labelled galaxy to the survey's redshifts; an unlabelled one is there already, and reddening it
    further may make consistency teach colour blindness, so ``colour_shift_unlabelled`` can leave it out.
    ``colour_mags``: the whole shift per band (``colour_shift_mags``)."""
    return (functools.partial(augment.strong, colour_shift=ms.colour_shift, colour_mags=colour_mags),
            functools.partial(augment.strong, colour_shift=ms.colour_shift and ms.colour_shift_unlabelled,
                              colour_mags=colour_mags))


# Rows of the unlabelled table whose colours are measured (a sample of whole row groups): the median of a few
# thousand colours is known to a few millimag, and a survey table may hold billions.
COLOUR_SAMPLE_ROWS = 5000


def colour_shift_mags(labelled: str, unlabelled: str | None, ms: MorphologySettings, mask_cache: str,
                      log=None) -> tuple[float, ...] | None:
    """The whole colour shift the strong views draw from (``augment.redshift_colours``), or None without one.

    ``colour_shift_source: unlabelled``: twice the measured median colour difference (``colours.measured_shift``),
    so that t ~ U(0, 1) of it averages to the difference itself, as the template vector's half does to the
    k-correction between the two sets' middle redshifts."""
    from ..morphology.cutouts import check_cutout_table
    if not ms.colour_shift:
        return None
    if ms.colour_shift_source == "templates":
        return augment.REDSHIFT_COLOUR_SHIFT
    info = check_cutout_table(unlabelled)
    world = max(1, min(info.n_row_groups, math.ceil(info.n_rows / COLOUR_SAMPLE_ROWS)))
    lab = read_cutout_set(labelled, ms.image_size, mask_cache=mask_cache)
    unl = read_cutout_set(unlabelled, ms.image_size, label_col=None, rank=0, world=world, mask_cache=mask_cache)
    try:
        half = measured_shift(lab.fluxes, unl.fluxes)
    except ValueError as e:
        raise CatalogError(f"morphology.colour_shift_source=unlabelled: {e} ({labelled}, {unlabelled})") from None
    if log:
        log(f"colour shift measured on {len(lab.fluxes)} labelled and {len(unl.fluxes)} unlabelled rows: "
            f"median colours differ by {half} mag (grizy, r fixed)")
    return tuple(round(2 * v, 4) for v in half)


def _train_process(labelled: str, unlabelled: str | None, ms: MorphologySettings, ts, net_cfg: dict,
                   n_classes: int, checkpoint_dir: str | None, fingerprint: str, label: str, monitor=None,
                   colour_mags=augment.REDSHIFT_COLOUR_SHIFT):
    """Runs in each training process (``backends.run``)."""
    from ..models.dat import build_morphology_model
    from .distributed import current
    ctx = current()
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    torch.manual_seed(ms.seed)
    cache = mask_cache_dir(ts)
    lab = read_cutout_set(labelled, ms.image_size, mask_cache=cache)
    if (lab.labels < 0).any():
        keep = lab.labels >= 0
        lab = dataclasses.replace(lab, x=lab.x[torch.from_numpy(keep)], labels=lab.labels[keep], snr=lab.snr[keep],
                                  fluxes=lab.fluxes[keep], ids=lab.ids[keep])
    rng = np.random.default_rng(ms.seed)
    idx = rng.permutation(len(lab.labels))
    n_val = max(n_classes, int(round(ms.val_fraction * len(idx))))
    val_idx, tr_idx = np.sort(idx[:n_val]), np.sort(idx[n_val:])
    y_all = torch.from_numpy(lab.labels)
    weights = class_weights(lab.labels[tr_idx], n_classes, ms.class_weighting)
    unl = None
    if ms.mode == "semi":
        unl = read_cutout_set(unlabelled, ms.image_size, label_col=None, rank=rank, world=world, mask_cache=cache)
        order = np.argsort(difficulty(unl.snr), kind="stable")
    epochs, per_step = plan_epochs(ms)
    warm = warmup_epochs(ms)
    log(f"[{label}] {len(tr_idx)} labelled training rows, {len(val_idx)} validation "
        f"({lab.n_flagged} flagged rows left out); "
        + (f"{len(unl.labels)} unlabelled rows on this process ({unl.n_flagged} flagged left out), "
           f"curriculum {ms.curriculum}; " if unl is not None else "")
        + f"{epochs} epochs x {ms.steps_per_epoch} steps x {per_step} images"
        + (f" (the first {warm} on labelled rows only)" if warm else ""))
    stats: dict = {}
    strong, strong_unl = strong_views(ms, colour_mags)      # colour_mags is None only without a colour shift

    def batches(epoch: int):
        g = torch.Generator().manual_seed(ms.seed * 1_000_003 + epoch * 7919 + rank)
        pool = admitted(order, epoch - warm, epochs - warm, ms) if unl is not None and epoch > warm else None
        if stats.get("seen"):
            log(f"[{label}]   pseudo-labels kept in epoch {epoch - 1}: {stats['kept'] / stats['seen']:.1%}"
                + (f"; curriculum admits {len(pool)}/{len(order)} unlabelled rows" if pool is not None else ""))
        stats.clear()
        for _ in range(ms.steps_per_epoch):
            li = torch.from_numpy(tr_idx)[torch.randint(0, len(tr_idx), (ms.batch_size,), generator=g)]
            xl = lab.x[li].float()
            xs = [augment.weak(xl, g)]
            ys = [y_all[li]]
            if ms.labelled_strong:
                # The labelled rows also as the survey would show them (AdaMatch trains the source on both
                # views): correct labels for the look of the shifted set.
                xs.append(strong(xl, g))
                ys.append(y_all[li])
            if pool is not None:
                ui = torch.from_numpy(pool)[torch.randint(0, len(pool), (ms.batch_size * ms.unlabelled_ratio,),
                                                          generator=g)]
                u = unl.x[ui].float()
                xs += [augment.weak(u, g), strong_unl(u, g)]
                ys += [torch.full((len(ui),), WEAK), torch.full((len(ui),), STRONG)]
            yield torch.cat(xs), torch.cat(ys)

    # Early stopping and the best epoch are chosen on the validation rows as observed and on the same rows
    # degraded towards the survey (the strong view, fixed draws): the model is for the survey, and the
    # labelled domain alone rewards overfitting it.
    g_val = torch.Generator().manual_seed(ms.seed + 17)
    x_val = torch.cat([lab.x[torch.from_numpy(val_idx)].float(),
                       strong(lab.x[torch.from_numpy(val_idx)].float(), g_val)])
    y_val = torch.cat([y_all[torch.from_numpy(val_idx)]] * 2)

    def val_batches():
        for s in range(0, len(x_val), 128):
            yield x_val[s:s + 128], y_val[s:s + 128]

    align = (DistributionAlignment(lab.labels[tr_idx], n_classes) if ms.mode == "semi" and ms.distribution_alignment
             else None)

    def loss_fn(logits, codes):
        # Validation batches carry no WEAK rows, so the running class mean only sees training steps.
        return fixmatch_loss(logits, codes, weights.to(logits.device), ms.threshold, ms.unlabelled_weight, stats,
                             relative=ms.relative_threshold, align=align)

    model = build_morphology_model(ms.network, net_cfg)
    fit_ts = dataclasses.replace(ts, lr=ms.lr, betas=[0.9, 0.999], weight_decay=ms.weight_decay,
                                 # with a warm-up the budget bounds the run: a labelled-only plateau must
                                 # not end it before the unlabelled rows join
                                 max_epochs=epochs, early_stop_patience=None if warm else ms.early_stop_patience,
                                 plateau_start_epoch=max(2, epochs // 3), plateau_patience=3,
                                 sync_batchnorm=False, snapshot_every=0, ema_decay=ms.ema_decay)
    teacher = EMATeacher(model, ms.teacher_decay) if unl is not None and ms.pseudo_labels == "ema" else None
    res = fit(model, loss_fn, batches, val_batches, fit_ts, label=label, checkpoint_dir=checkpoint_dir,
              fingerprint=fingerprint, sharded=True, log=log, forward=teacher, monitor=monitor)
    meta = {"n_labelled_train": int(len(tr_idx)), "n_val": int(len(val_idx)),
            "n_labelled_flagged": lab.n_flagged, "class_weights": weights.tolist(),
            "n_unlabelled_rank0": int(len(unl.labels)) if unl is not None else 0,
            "epochs_planned": epochs, "images_per_step": per_step,
            "warmup_epochs": warm, "images_seen": images_seen(ms, res.epochs_run) * res.world_size}
    return res, meta


def _fingerprint(labelled: str, unlabelled: str | None, ms: MorphologySettings, net_cfg: dict) -> str:
    blob = json.dumps({"labelled": str(labelled), "unlabelled": str(unlabelled),
                       "settings": dataclasses.asdict(ms), "net": net_cfg}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def train_morphology(labelled: str, unlabelled: str | None, cfg: Config, out_dir: str, log=None,
                     monitor=None) -> dict:
    """Train the configured network and write a model directory (safetensors + sha256 manifest). ``monitor``:
    ``training.loop.fit``'s per-epoch hook (``training.morphology_monitor.SurveyMonitor``); its numbers go into
    the training log."""
    from ..morphology.cutouts import check_cutout_table
    from ..morphology.render import CLASSES
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    ms, ts = cfg.morphology, cfg.train
    info = check_cutout_table(labelled)          # before any training process starts
    if tuple(info.shape[1:]) != (ms.image_size, ms.image_size):
        raise CatalogError(f"{labelled}: cutouts are {tuple(info.shape)}, morphology.image_size is {ms.image_size}")
    if ms.mode == "semi" or (ms.colour_shift and ms.colour_shift_source == "unlabelled"):
        if not unlabelled:
            raise CatalogError("morphology.mode=semi and morphology.colour_shift_source=unlabelled need an "
                               "unlabelled cutout table")
        uinfo = check_cutout_table(unlabelled)
        if tuple(uinfo.shape) != tuple(info.shape) or list(uinfo.bands) != list(info.bands):
            raise CatalogError(f"{unlabelled}: cutouts {tuple(uinfo.shape)} {list(uinfo.bands)} differ from the "
                             f"labelled table's {tuple(info.shape)} {list(info.bands)}")
    world = ts.num_processes if ts.backend != "local" else 1
    if ms.mode == "semi" and uinfo.n_row_groups < world:
        # Each process reads whole row groups of the unlabelled table; one with none would hang DDP.
        raise CatalogError(f"{unlabelled} has {uinfo.n_row_groups} row group(s) for {world} training processes; "
                           "write it with smaller row groups (make-cutouts --rows-per-group)")
    torch.set_num_threads(ts.threads or os.cpu_count() or 1)
    classes = list(CLASSES)
    net_cfg = network_config(ms, len(classes))
    label = f"morphology {ms.network}/{ms.mode}" + (f"+{ms.curriculum}" if ms.mode == "semi" else "")
    ckpt = ts.checkpoint_dir or str(Path(out_dir) / "_checkpoints")
    t0 = time.time()
    mags = colour_shift_mags(labelled, unlabelled, ms, mask_cache_dir(ts), log)
    res, meta = backends.run(ts.backend, _train_process, labelled, unlabelled if ms.mode == "semi" else None, ms,
                             ts, net_cfg, len(classes), ckpt, _fingerprint(labelled, unlabelled, ms, net_cfg),
                             label, monitor, mags, options={"num_processes": ts.num_processes, "use_gpu": ts.use_gpu,
                                             "local_mode": ts.local_mode})
    manifest = {
        "kind": KIND, "network": ms.network, "architecture": net_cfg, "classes": classes,
        "bands": list(info.bands), "image_size": ms.image_size,
        "inputs": "11 channels: 5 arcsinh-stretched bands, object mask, 5 NaN masks (lsst_spark_ml.morphology.inputs)",
        "training": {"mode": ms.mode, "curriculum": ms.curriculum if ms.mode == "semi" else None,
                     "settings": dataclasses.asdict(ms), "labelled": str(labelled),
                     "unlabelled": str(unlabelled) if ms.mode == "semi" else None,
                     "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                     "best_val_loss": res.best_val_loss, "seconds": round(time.time() - t0, 1),
                     "backend": res.backend, "world_size": res.world_size, "colour_shift_mags": mags, **meta},
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / TRAINING_LOG).write_text(json.dumps({"history": res.history}, indent=1, default=float) + "\n")
    sha = save_artefact(out_dir, res.best_state, manifest)
    if not ts.keep_checkpoints:
        import shutil
        shutil.rmtree(ckpt, ignore_errors=True)
    log(f"[{label}] model {sha[:16]}... written to {out_dir} in {time.time() - t0:.0f} s "
        f"(best epoch {res.best_epoch}, validation loss {res.best_val_loss:.4f})")
    return {"model_dir": str(out_dir), "model_sha256": sha, "manifest": manifest}
