"""One train loop for every supervised model of the package: optimiser, schedule, clipping, best-validation
weights, early stopping, checkpoints and progress. Backends (training.backends) decide where it runs.

Under a distributed backend the same loop runs in every process. The current ``DistContext`` wraps the
model (DDP) or the optimiser (Horovod). By default each rank normalises with its own share of the batch
(standard DDP) and takes rank 0's BatchNorm buffers before each validation; with ``train.sync_batchnorm``
the statistics are taken over the global batch (``sync_batchnorm``), so N processes train the same model as
one process on the same batches, up to floating-point reduction order. Every rank validates the same
weights with the same buffers on the same data, so best-epoch, learning-rate and early-stopping decisions
agree without extra messages. Rank 0 alone logs and writes checkpoints.

With ``train.ema_decay`` the weights validated, kept as best and returned are an exponential moving average of
the trained ones (``torch.optim.swa_utils``; Polyak averaging, as FixMatch and Mean Teacher evaluate): on small,
noisy validation sets the raw weights of one epoch are a lottery ticket. Parameters are averaged after every
step; buffers (BatchNorm statistics) are the live model's. Under DDP every rank holds the same parameters, so
every rank holds the same average.
"""
from __future__ import annotations

import copy
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..config import TrainSettings
from . import checkpoint
from .progress import EpochBar, epoch_line
from .distributed import prepare
from .sync_batchnorm import to_plain

# A batch provider returns, for one epoch, an iterable of (inputs, targets) batches.
BatchProvider = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class TrainResult:
    best_state: dict
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    world_size: int = 1
    backend: str = "local"
    resumed_from_epoch: int = 0                  # 0: started fresh
    rank_digests: list[str] = field(default_factory=list)   # sha256 of each rank's final parameters
    # train.snapshot_every: {"epoch", "lr", "state"} along the trajectory, for TracIn (lsst_spark_ml.influence)
    snapshots: list[dict] = field(default_factory=list)


def parameter_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def averaged(model: torch.nn.Module, decay: float | None):
    """The EMA of ``model``'s parameters, or None; buffers are copied from the live model before each use."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def averaged_with_live_buffers(model: torch.nn.Module, ema) -> torch.nn.Module:
    """The averaged module with ``model``'s buffers (BatchNorm statistics are not averaged); ``model`` without an
    average."""
    if ema is None:
        return model
    with torch.no_grad():
        for b_avg, b in zip(ema.module.buffers(), model.buffers()):
            b_avg.copy_(b)
    return ema.module


def evaluate_loss(model: torch.nn.Module, loss_fn, batches: Iterable) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            total += float(loss_fn(model(x), y)) * len(x)
            n += len(x)
    return total / max(n, 1)


def fit(model: torch.nn.Module, loss_fn, train_batches: BatchProvider, val_batches: Callable[[], Iterable],
        ts: TrainSettings, label: str = "", log=None, is_main: bool = True, *,
        checkpoint_dir: str | None = None, fingerprint: str = "", sharded: bool = False,
        progress: bool = True, forward=None, monitor=None) -> TrainResult:
    """Train ``model`` in place and return its best-validation state.

    ``train_batches(epoch)`` yields the whole batch, which each rank slices (``x[rank::world]``), or with
    ``sharded=True`` this rank's own batches (e.g. a ``ParquetLoader`` with ``even_batches=True``; every
    rank must then yield the same number of batches). With ``checkpoint_dir`` the state is saved after every
    epoch and a run with the same ``fingerprint`` resumes after the last saved epoch; a finished run
    returns at once. Batch order must depend on (seed, epoch) only for a resumed run to equal an
    uninterrupted one. ``forward(net, x, y)`` replaces ``net(x)`` for the training batches (a teacher that
    answers some rows); validation always calls the judged model itself. A ``forward`` with ``state_dict`` /
    ``load_state_dict`` has its state checkpointed and resumed with the model's. ``monitor(epoch, judged)``, on
    the main rank after each validation, returns a dict of numbers merged into that epoch's history row: it sees
    the weights the loop judges (the average with ``ema_decay``) in eval mode, and never decides anything.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from .distributed import current
    ctx = current()
    world = ctx.world_size if ctx is not None else 1
    device = torch.device(ctx.device if ctx is not None else "cpu")
    is_main = is_main and (ctx is None or ctx.rank == 0)
    model.to(device)

    best, best_epoch, best_state, stale, stopped_early = math.inf, -1, None, 0, False
    history: list[dict] = []
    snapshots: list[dict] = []
    start = 1
    # Every rank reads the same file, so all resume from the same epoch with the same weights and state.
    state = checkpoint.load(checkpoint_dir, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
    net, opt = prepare(model, ts)               # optimiser state is loaded below, into the wrapped one
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=ts.plateau_factor,
                                                       patience=ts.plateau_patience, min_lr=ts.min_lr)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        best, best_epoch, stale = state["best"], state["best_epoch"], state["stale"]
        best_state, history = state["best_state"], state["history"]
        snapshots = state.get("snapshots", [])
        stopped_early = state["stopped_early"]
        start = state["epoch"] + 1
        if is_main:
            log(f"[{label}] resuming from the checkpoint of epoch {state['epoch']} in {checkpoint_dir}")
    if best_state is None:
        best_state = copy.deepcopy(model.state_dict())
    ema = averaged(model, getattr(ts, "ema_decay", None))
    if ema is not None and state is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    if state is not None and state.get("forward") is not None:
        forward.load_state_dict(state["forward"])

    def clip():
        torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)

    t0 = time.time()
    epoch = start - 1
    for epoch in range(start, ts.max_epochs + 1):
        if stopped_early:
            epoch -= 1
            break
        model.train()
        t_ep = time.time()
        batches = train_batches(epoch)
        bar = EpochBar(label, epoch, ts.max_epochs, len(batches) if hasattr(batches, "__len__") else None,
                       enabled=progress and is_main)
        tot, n = 0.0, 0
        for x, y in batches:
            if not sharded:
                # BatchNorm cannot train on one row; the test is on the whole batch so that every rank
                # skips the same batches (a rank stepping alone would wait forever for the others).
                if len(x) < 2 * world:
                    continue
                if ctx is not None:
                    x, y = x[ctx.rank::world], y[ctx.rank::world]
            x, y = x.to(device), y.to(device)
            opt.zero_grad()    # set_to_none by default; Horovod's optimiser takes no arguments
            loss = loss_fn(net(x) if forward is None else forward(net, x, y), y)
            loss.backward()
            if ctx is not None:
                ctx.step(opt, clip)
            else:
                clip()
                opt.step()
            if ema is not None:
                ema.update_parameters(model)
            tot += loss.detach().item() * len(x)
            n += len(x)
            bar.update(len(x))
        bar.close()
        if ctx is not None:
            parts = ctx.all_gather_object((tot, n))
            tot, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
            ctx.broadcast_buffers(model)
        if n == 0:
            raise RuntimeError(f"[{label}] epoch {epoch} had no training batches: empty or too small data")
        judged = averaged_with_live_buffers(model, ema)
        val = evaluate_loss(judged, loss_fn, ((x.to(device), y.to(device)) for x, y in val_batches()))
        if epoch >= ts.plateau_start_epoch:   # the paper starts the plateau schedule at epoch 10
            sched.step(val)
        improved = val < best
        if improved:
            best, best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(judged.state_dict())
        else:
            stale += 1
        seconds = time.time() - t_ep
        h = {"epoch": epoch, "train_loss": tot / n, "val_loss": val, "lr": opt.param_groups[0]["lr"],
             "samples_per_s": n / max(seconds, 1e-9), "epoch_seconds": seconds, "world_size": world}
        if monitor is not None and is_main:
            judged.eval()
            with torch.no_grad():
                h.update(monitor(epoch, judged) or {})
        history.append(h)
        if ts.snapshot_every and (epoch - 1) % ts.snapshot_every == 0:
            # The learning rate the next steps will use is TracIn's step size for this snapshot.
            snapshots.append({"epoch": epoch, "lr": h["lr"],
                              "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}})
        if is_main:
            log(epoch_line(label, h, ts.max_epochs, improved))
        stopped_early = ts.early_stop_patience is not None and stale >= ts.early_stop_patience
        if is_main and checkpoint_dir is not None:
            checkpoint.save(checkpoint_dir, {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best": best,
                "best_epoch": best_epoch, "stale": stale, "best_state": best_state, "history": history,
                "stopped_early": stopped_early, "snapshots": snapshots,
                "ema": ema.state_dict() if ema is not None else None,
                "forward": forward.state_dict() if hasattr(forward, "state_dict") else None})
        if stopped_early:
            if is_main:
                log(f"[{label}] no improvement for {stale} epochs: stopping, best epoch {best_epoch}")
            break

    digests = [parameter_digest(model)]
    if ctx is not None:
        digests = ctx.all_gather_object(digests[0])
        to_plain(model)
    model.load_state_dict(best_state)
    model.to("cpu")      # the result travels back to a driver that may have no GPU
    best_state = {k: v.cpu() for k, v in best_state.items()}
    return TrainResult(best_state, best, best_epoch, epoch, history, time.time() - t0, world,
                       ctx.backend if ctx is not None else "local", start - 1 if state is not None else 0,
                       digests, snapshots)

