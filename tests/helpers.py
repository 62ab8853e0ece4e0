"""Small real inputs shared by the tests: DC2 photometry and a tiny MBRNN trained for a few epochs."""
from __future__ import annotations

import h5py
import numpy as np

from lsst_spark_ml.io.datasets import dc2_paths

BANDS = list("ugrizy")


def load_dc2(which: str = "train", n: int | None = None):
    with h5py.File(dc2_paths()[which], "r") as h:
        g = h["photometry"]
        sl = slice(0, n)
        values = np.column_stack([g[f"mag_{b}_lsst"][sl] for b in BANDS]).astype(np.float64)
        errors = np.column_stack([g[f"mag_err_{b}_lsst"][sl] for b in BANDS]).astype(np.float64)
        return values, errors, g["redshift"][sl].astype(np.float64), g["id"][sl]


def tiny_config(**over):
    from lsst_spark_ml.config import load_config
    base = {"model": {"hidden": [32, 32], "gammas": [0.0, 2.0], "n_bins": 32},
            "train": {"max_epochs": 3, "ensemble_epochs": 20, "batch_size": 512, "backend": "local"},
            "catalog": {"truth_col": "redshift"}}
    for k, v in over.items():
        base.setdefault(k, {}).update(v)
    return load_config(overrides=base)
