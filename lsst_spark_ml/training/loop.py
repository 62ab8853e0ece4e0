"""One train loop for every supervised model of the package: optimiser, schedule, clipping, best-validation
checkpoint, early stopping and per-epoch progress lines. Backends (training.backends) decide where it runs.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..config import TrainSettings

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


def evaluate_loss(model: torch.nn.Module, loss_fn, batches: Iterable) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            total += float(loss_fn(model(x), y)) * len(x)
            n += len(x)
    return total / max(n, 1)


def fit(model: torch.nn.Module, loss_fn, train_batches: BatchProvider, val_batches: Callable[[], Iterable],
        ts: TrainSettings, label: str = "", log=None, is_main: bool = True,
        wrap_optimizer: Callable | None = None) -> TrainResult:
    """Train ``model`` in place and return its best-validation state.

    ``wrap_optimizer`` lets a distributed backend wrap the optimiser (e.g. Horovod's DistributedOptimizer)
    without this loop knowing about it.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from .distributed import current
    ctx = current()
    device = torch.device(ctx.device if ctx is not None else "cpu")
    model.to(device)
    net = model
    if ctx is not None:
        # Same model code, data-parallel: DDP all-reduces gradients; each rank takes its share of a batch.
        net = torch.nn.parallel.DistributedDataParallel(model)
        is_main = is_main and ctx.rank == 0
    opt = torch.optim.Adam(model.parameters(), lr=ts.lr, betas=tuple(ts.betas), weight_decay=ts.weight_decay)
    if wrap_optimizer is not None:
        opt = wrap_optimizer(opt, model)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=ts.plateau_factor,
                                                       patience=ts.plateau_patience, min_lr=ts.min_lr)
    best, best_epoch, best_state, stale = math.inf, -1, copy.deepcopy(model.state_dict()), 0
    history: list[dict] = []
    t0 = time.time()
    epoch = 0
    for epoch in range(1, ts.max_epochs + 1):
        model.train()
        tot, n = 0.0, 0
        world = ctx.world_size if ctx is not None else 1
        for x, y in train_batches(epoch):
            # BatchNorm cannot train on one row; the test is on the whole batch so that every rank skips
            # the same batches (a rank stepping alone would wait forever for the others' gradients).
            if len(x) < 2 * world:
                continue
            if ctx is not None:
                x, y = x[ctx.rank::world].to(device), y[ctx.rank::world].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)
            opt.step()
            tot += loss.detach().item() * len(x)
            n += len(x)
        if ctx is not None:
            _sync_for_validation(model)
        val = evaluate_loss(model, loss_fn, ((x.to(device), y.to(device)) for x, y in val_batches()))
        if epoch >= ts.plateau_start_epoch:   # the paper starts the plateau schedule at epoch 10
            sched.step(val)
        improved = val < best
        if improved:
            best, best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        lr = opt.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_loss": tot / max(n, 1), "val_loss": val, "lr": lr})
        if is_main:
            log(f"[{label}] epoch {epoch:3d}/{ts.max_epochs}  train {tot / max(n, 1):.4f}  val {val:.4f}  "
                f"lr {lr:.1e}{'  *best' if improved else ''}")
        if ts.early_stop_patience is not None and stale >= ts.early_stop_patience:
            if is_main:
                log(f"[{label}] no improvement for {stale} epochs: stopping, best epoch {best_epoch}")
            break
    model.load_state_dict(best_state)
    model.to("cpu")      # the result travels back to a driver that may have no GPU
    best_state = {k: v.cpu() for k, v in best_state.items()}
    return TrainResult(best_state, best, best_epoch, epoch, history, time.time() - t0,
                       ctx.world_size if ctx is not None else 1)


def _sync_for_validation(model: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics, so validation, checkpoints and early stopping agree
    (the ranks saw different shards, and a rank that stopped alone would leave the others waiting)."""
    import torch.distributed as dist
    for buf in model.buffers():
        dist.broadcast(buf, src=0)
