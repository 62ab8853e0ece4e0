"""Controlled label noise for testing influence: wrong spectroscopic redshifts of a known set of rows."""
from __future__ import annotations

import numpy as np


def corrupt_redshifts(z: np.ndarray, fraction: float, seed: int = 0, min_dz: float = 0.15,
                      max_tries: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``fraction`` of the redshifts by another row's redshift that is catastrophically different
    (|dz| / (1 + z) > ``min_dz``), the way a wrong line identification or a swapped fibre corrupts a
    spectroscopic sample. The new values follow the sample's own n(z), so the corruption is not
    detectable from the label distribution alone. Returns (corrupted copy, bool mask of corrupted rows)."""
    z = np.asarray(z, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_bad = int(round(fraction * len(z)))
    idx = rng.choice(len(z), n_bad, replace=False)
    new = z.copy()
    todo = idx
    for _ in range(max_tries):
        if len(todo) == 0:
            break
        new[todo] = z[rng.integers(0, len(z), len(todo))]
        todo = todo[np.abs(new[todo] - z[todo]) / (1 + z[todo]) <= min_dz]
    if len(todo):
        raise ValueError(f"{len(todo)} rows found no redshift differing by more than {min_dz} (1 + z)")
    mask = np.zeros(len(z), bool)
    mask[idx] = True
    return new, mask
