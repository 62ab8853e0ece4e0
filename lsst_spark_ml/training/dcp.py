"""The three training stages of DCP (Lee & Shin 2022), Spark-free; runs under any ``training.backends`` backend.

* TS1: supervised only, anchor(HE) + anchor(LE) on labelled galaxies.
* TS2 (after ``ts1_patience`` validation checks without improvement): in 2 of every 3 steps an unlabelled
  batch joins and the loss gains max(0, m - mean_UL(H_HE - H_LE)). The TS2 checkpoint is kept when the
  validation loss improves or the gap between unlabelled and labelled validation discrepancies grows.
* TS3 (after ``ts2_patience`` checks without either): supervised only again, from the TS2 checkpoint.

Validation runs every ``check_every`` steps (the paper's 200). Each stage also ends after
``max_checks_per_stage`` checks, so a run is bounded. The OOD score comes from the TS2 weights, the photo-z
from the TS3 weights.

Labelled and unlabelled rows of a step go through the networks in one forward pass: DistributedDataParallel
allows one forward per backward, and BatchNorm then sees both populations, as in other semi-supervised
recipes that interleave labelled and unlabelled batches.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..config import Config
from ..models import DCPPair, anchor_loss, discrepancy, discrepancy_loss
from .distributed import current, prepare
from .loop import parameter_digest
from .sync_batchnorm import to_plain


@dataclass
class ArrayStream:
    """Unlabelled features held in memory (tests, small regions): endless seeded global batches."""
    X: torch.Tensor

    def batches(self, batch_size: int, seed: int, rank: int, world: int) -> Iterator[torch.Tensor]:
        epoch = 0
        while True:
            order = torch.randperm(len(self.X), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            for s in range(0, len(self.X) - batch_size + 1, batch_size):
                yield self.X[order[s:s + batch_size]][rank::world]
            epoch += 1


@dataclass
class ParquetStream:
    """Unlabelled features in the Parquet cache (column ``x``): each rank streams its own row groups."""
    path: str

    def batches(self, batch_size: int, seed: int, rank: int, world: int) -> Iterator[torch.Tensor]:
        from .loader import ParquetLoader
        loader = ParquetLoader(self.path, ["x"], max(2, batch_size // world), seed=seed, rank=rank,
                               world_size=world, even_batches=True, drop_last=True)
        if loader.num_batches(0) == 0:
            raise ValueError(f"{self.path}: fewer unlabelled rows per process than one batch of {batch_size}")
        epoch = 0
        while True:
            for b in loader.epoch(epoch):
                yield b["x"]
            epoch += 1


@dataclass
class DCPTrainResult:
    ts2_state: dict
    ts3_state: dict
    stage_end_steps: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    world_size: int = 1
    rank_digests: list[str] = field(default_factory=list)


def _labelled_batches(X, y, batch_size, seed, rank, world):
    epoch = 0
    while True:
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for s in range(0, len(X) - batch_size + 1, batch_size):   # full batches: equal shares per rank
            i = order[s:s + batch_size]
            yield X[i][rank::world], y[i][rank::world]
        epoch += 1


def _mean_discrepancy(pair: DCPPair, X: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.cat([discrepancy(*pair(X[s:s + 8192])) for s in range(0, len(X), 8192)]).mean())


def _val_loss(pair: DCPPair, X, y, gamma) -> float:
    with torch.no_grad():
        total = 0.0
        for s in range(0, len(X), 8192):
            he, le = pair(X[s:s + 8192])
            total += float(anchor_loss(he, y[s:s + 8192], gamma) + anchor_loss(le, y[s:s + 8192], gamma)) * len(he)
        return total / len(X)


def train_dcp(X_tr: torch.Tensor, y_tr: torch.Tensor, X_val: torch.Tensor, y_val: torch.Tensor,
              unlabelled: ArrayStream | ParquetStream, X_ul_val: torch.Tensor, cfg: Config, log=None) -> DCPTrainResult:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    o, ts, ms = cfg.ood, cfg.train, cfg.model
    ctx = current()
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    is_main = rank == 0
    if o.batch_size % world or o.unlabelled_batch_size % world:
        raise ValueError(f"ood.batch_size {o.batch_size} and ood.unlabelled_batch_size {o.unlabelled_batch_size} "
                         f"must divide by the {world} training processes")
    if len(X_tr) < o.batch_size:
        raise ValueError(f"{len(X_tr)} labelled training rows, fewer than one batch of {o.batch_size}")
    torch.manual_seed(ts.seed)
    pair = DCPPair(X_tr.shape[1], ms.n_bins, ms.hidden)
    net, opt = prepare(pair, ts)

    def clip():
        torch.nn.utils.clip_grad_norm_(pair.parameters(), ts.grad_clip)

    margin = cfg.ood_margin()
    lab = _labelled_batches(X_tr, y_tr, o.batch_size, ts.seed, rank, world)
    ul = unlabelled.batches(o.unlabelled_batch_size, ts.seed, rank, world)
    stage, step, checks, stale = 1, 0, 0, 0
    best_val, best_gap = math.inf, -math.inf
    best_state = copy.deepcopy(pair.state_dict())
    ts2_state = ts3_state = None
    history, ends = [], {}
    t0 = t_check = time.time()
    rows = 0
    while True:
        pair.train()
        x, y = next(lab)
        use_ul = stage == 2 and step % 3 != 0
        xin = torch.cat([x, next(ul)]) if use_ul else x
        he, le = net(xin)
        n = len(x)
        loss = anchor_loss(he[:n], y, o.gamma) + anchor_loss(le[:n], y, o.gamma)
        if use_ul:
            loss = loss + discrepancy_loss(he[n:], le[n:], margin)
        opt.zero_grad()
        loss.backward()
        if ctx is not None:
            ctx.step(opt, clip)
        else:
            clip()
            opt.step()
        step += 1
        rows += len(xin)
        if step % o.check_every:
            continue

        # ---- validation check: identical on every rank (same weights, rank 0's BatchNorm buffers)
        if ctx is not None:
            ctx.broadcast_buffers(pair)
        pair.eval()
        val = _val_loss(pair, X_val, y_val, o.gamma)
        gap = _mean_discrepancy(pair, X_ul_val) - _mean_discrepancy(pair, X_val)
        checks += 1
        improved = val < best_val
        better = improved or (stage == 2 and gap > best_gap)
        if improved:
            best_val = val
        if stage == 2 and gap > best_gap:
            best_gap = gap
        if better:
            stale = 0
            best_state = copy.deepcopy(pair.state_dict())
        else:
            stale += 1
        now = time.time()
        h = {"step": step, "stage": stage, "val_loss": val, "gap": gap, "train_loss": float(loss.detach()),
             "samples_per_s": rows * world / max(now - t_check, 1e-9), "checkpoint": better}
        history.append(h)
        rows, t_check = 0, now
        if is_main:
            log(f"[dcp] TS{stage} step {step:6d}  val {val:.4f}  UL-ID gap {gap:+.3f}  "
                f"{h['samples_per_s']:,.0f} samples/s{'  *checkpoint' if better else ''}")
        patience = {1: o.ts1_patience, 2: o.ts2_patience, 3: o.ts3_patience}[stage]
        if stale >= patience or checks >= o.max_checks_per_stage:
            ends[f"ts{stage}"] = step
            pair.load_state_dict(best_state)       # the next stage starts from this stage's checkpoint
            if stage == 2:
                ts2_state = copy.deepcopy(best_state)
            if stage == 3:
                ts3_state = copy.deepcopy(best_state)
                break
            if is_main:
                log(f"[dcp] TS{stage} ends at step {step} ({'patience' if stale >= patience else 'check limit'})"
                    f"; TS{stage + 1} starts from its checkpoint")
            stage, checks, stale, best_val, best_gap = stage + 1, 0, 0, math.inf, -math.inf
            best_state = copy.deepcopy(pair.state_dict())

    digests = [parameter_digest(pair)]
    if ctx is not None:
        digests = ctx.all_gather_object(digests[0])
        to_plain(pair)
    cpu = lambda s: {k: v.detach().cpu() for k, v in s.items()}  # noqa: E731
    return DCPTrainResult(cpu(ts2_state), cpu(ts3_state), ends, history, time.time() - t0, world, digests)


def id_thresholds(scores: np.ndarray, quantile: float) -> dict:
    """Thresholds on the scores of labelled validation galaxies: terciles (the paper's 1/3 and 2/3 points)
    and the user's flag quantile (the fraction of in-distribution galaxies left unflagged)."""
    q1, q2, qf = np.quantile(scores, [1 / 3, 2 / 3, quantile])
    return {"tercile_1": float(q1), "tercile_2": float(q2), "flag": float(qf), "flag_quantile": float(quantile),
            "n_validation": int(len(scores))}
