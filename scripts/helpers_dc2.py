"""cosmoDC2 validation photometry for the evaluation scripts (DESC HDF5, magnitudes)."""
import h5py
import numpy as np

from lsst_spark_ml.io.datasets import dc2_paths

BANDS = list("ugrizy")


def load_validation():
    with h5py.File(dc2_paths()["validation"], "r") as h:
        g = h["photometry"]
        v = np.column_stack([g[f"mag_{b}_lsst"][()] for b in BANDS]).astype(np.float64)
        e = np.column_stack([g[f"mag_err_{b}_lsst"][()] for b in BANDS]).astype(np.float64)
        return v, e, g["redshift"][()].astype(np.float64)
