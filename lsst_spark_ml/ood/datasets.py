"""The embedded default data of the OOD stage, all offline and reproducible.

* labelled: the cosmoDC2 training file (10,225 galaxies with redshifts);
* ``region``: an unlabelled "sky region" -- the even rows of the cosmoDC2 validation file plus synthetic
  stars, quasars and galaxies beyond z = 3.1 (``labelled_ood``, seed 100), without labels;
* ``evaluation``: the odd rows of the validation file (in-distribution, with redshifts) and a labelled OOD
  set drawn with another seed (200), so no evaluated object was seen in training, labelled or not.

The LOOD errors follow the error model fitted to the cosmoDC2 files (``error_model="dc2"``), so that the
photometric errors cannot give a star away.
"""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from ..io.datasets import dc2_paths
from .labelled_ood import BANDS, generate_all


def dc2_frame(which: str) -> pd.DataFrame:
    with h5py.File(dc2_paths()[which], "r") as h:
        g = h["photometry"]
        d = {f"mag_{b}_lsst": g[f"mag_{b}_lsst"][:].astype(np.float64) for b in BANDS}
        d.update({f"mag_err_{b}_lsst": g[f"mag_err_{b}_lsst"][:].astype(np.float64) for b in BANDS})
        d["redshift"] = g["redshift"][:].astype(np.float64)
        d["id"] = g["id"][:].astype(np.int64)
    return pd.DataFrame(d)


def region(n_lood_per_kind: int = 1500, seed: int = 100) -> pd.DataFrame:
    gal = dc2_frame("validation").iloc[0::2].assign(kind="galaxy")
    lood = generate_all(n_lood_per_kind, seed, error_model="dc2")
    return pd.concat([gal, lood], ignore_index=True).drop(columns=["redshift"])


def evaluation(n_lood_per_kind: int = 3000, seed: int = 200) -> pd.DataFrame:
    gal = dc2_frame("validation").iloc[1::2].assign(kind="galaxy")
    lood = generate_all(n_lood_per_kind, seed, error_model="dc2")
    return pd.concat([gal, lood], ignore_index=True)
