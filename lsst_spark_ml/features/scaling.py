"""Min-max scaling to [-1, 1] fitted on the training set (as in the MBRNN paper), saved with the model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OUT_OF_RANGE_MARGIN = 0.1   # 10 % of the half-range beyond [-1, 1] before a row is flagged


@dataclass
class MinMaxScaler:
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "MinMaxScaler":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError("scaler needs a non-empty 2-D feature array")
        lo, hi = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
        hi = np.where(hi > lo, hi, lo + 1.0)   # a constant feature maps to -1 rather than dividing by 0
        return cls(lo, hi)

    def transform(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (scaled float32, out_of_range bool per row)."""
        Z = 2.0 * (np.asarray(X, dtype=np.float64) - self.lo) / (self.hi - self.lo) - 1.0
        out = (np.abs(Z) > 1.0 + OUT_OF_RANGE_MARGIN).any(axis=1)
        return Z.astype(np.float32), out

    def to_dict(self) -> dict:
        return {"kind": "minmax[-1,1]", "min": self.lo.tolist(), "max": self.hi.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMaxScaler":
        return cls(np.asarray(d["min"], dtype=np.float64), np.asarray(d["max"], dtype=np.float64))
