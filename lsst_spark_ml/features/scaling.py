"""Min-max scaling to [-1, 1] fitted on the training set (as in the MBRNN paper), saved with the model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROBUST_PERCENTILES = (0.5, 99.5)
OUT_OF_RANGE_MARGIN = 1.0   # a full half-range beyond [-1, 1] before a row is flagged


@dataclass
class MinMaxScaler:
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "MinMaxScaler":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError("scaler needs a non-empty 2-D feature array")
        # Percentiles, not the raw extremes: one 33-mag u-band outlier would otherwise squeeze the bulk
        # of a colour into a sliver of [-1, 1]. Values beyond map a little outside and are flagged if far.
        lo, hi = (np.nanpercentile(X, q, axis=0) for q in ROBUST_PERCENTILES)
        hi = np.where(hi > lo, hi, lo + 1.0)   # a constant feature maps to -1 rather than dividing by 0
        return cls(lo, hi)

    def transform(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (scaled float32, out_of_range bool per row)."""
        Z = 2.0 * (np.asarray(X, dtype=np.float64) - self.lo) / (self.hi - self.lo) - 1.0
        out = (np.abs(Z) > 1.0 + OUT_OF_RANGE_MARGIN).any(axis=1)
        # Clipping keeps a wild input from driving the network far outside anything it was trained on.
        Z = np.clip(Z, -1.0 - OUT_OF_RANGE_MARGIN, 1.0 + OUT_OF_RANGE_MARGIN)
        return Z.astype(np.float32), out

    def to_dict(self) -> dict:
        return {"kind": "minmax[-1,1] on percentiles 0.5-99.5, clipped at +-2",
                "min": self.lo.tolist(), "max": self.hi.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMaxScaler":
        return cls(np.asarray(d["min"], dtype=np.float64), np.asarray(d["max"], dtype=np.float64))
