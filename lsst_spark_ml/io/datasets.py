"""Real data that ships inside installed packages (no network at run time)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import CatalogError


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError(
            f"data package {name!r} is not installed; run scripts/bootstrap.sh (it installs pz-rail-base --no-deps)")
    return Path(spec.submodule_search_locations[0])


def dc2_paths() -> dict[str, Path]:
    """cosmoDC2 training/validation photometry (LSST DESC, pz-rail-base, MIT): DESC HDF5 layout."""
    root = _package_dir("rail") / "examples_data" / "testdata"
    return {
        "train": root / "test_dc2_training_9816.hdf5",
        "validation": root / "test_dc2_validation_9816.hdf5",
        "rubin_example": root / "rubin_dm_dc2_example.pq",
    }
