"""A small train function for the backend tests: it records which rows each rank trained on, per epoch."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from lsst_spark_ml.training.distributed import current
from lsst_spark_ml.training.loop import fit


def settings(**kw):
    from lsst_spark_ml.config import TrainSettings
    return TrainSettings(**{"max_epochs": 3, "early_stop_patience": None, "lr": 3e-3, "sync_batchnorm": True, **kw})


def data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    cls = ((X[:, 0] + 0.5 * X[:, 1] ** 2) > 0.3).long()
    return X, torch.stack([cls, torch.arange(n)], 1)      # column 1: the row id, for the coverage check


def batches(X, Y, batch_size, seed, epoch):
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    for s in range(0, len(X), batch_size):
        i = order[s:s + batch_size]
        yield X[i], Y[i]


def train(out_dir: str, ts, n: int = 512, seed: int = 0, checkpoint_dir: str | None = None):
    ctx = current()
    rank = ctx.rank if ctx is not None else 0
    torch.set_num_threads(1)
    X, Y = data(n, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.Softplus(), nn.Linear(32, 2))
    seen, epoch_now = [], [0]

    def loss_fn(out, y):
        if model.training:
            seen.append(np.stack([np.full(len(y), epoch_now[0]), y[:, 1].numpy()], 1))
        return nn.functional.cross_entropy(out, y[:, 0])

    def train_batches(epoch):
        epoch_now[0] = epoch
        return batches(X, Y, 64, seed, epoch)

    res = fit(model, loss_fn, train_batches, lambda: [(X, Y)], ts, label="probe", log=lambda m: None,
              progress=False, checkpoint_dir=checkpoint_dir, fingerprint=f"probe-{n}-{seed}")
    if seen:
        np.save(os.path.join(out_dir, f"seen-rank{rank}.npy"), np.concatenate(seen))
    return res


if __name__ == "__main__":     # the kill-and-resume test runs this in a subprocess and kills it
    import sys
    train(sys.argv[1], settings(max_epochs=int(sys.argv[3])), n=int(sys.argv[4]), checkpoint_dir=sys.argv[2])
