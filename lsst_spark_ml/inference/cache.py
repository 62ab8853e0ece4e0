"""Per-Python-worker model cache keyed by the model's sha256.

Spark reuses Python workers (spark.python.worker.reuse=true), so a module-level dict survives from task to
task: each worker loads (and verifies) a model once, whatever the number of batches or tasks it serves.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()
LOAD_LOG_ENV = "LSST_SPARK_ML_LOAD_LOG"


def get_or_load(key: tuple, loader: Callable[[], object]):
    """Return the cached object for ``key`` (first element: model sha256), loading it once per process."""
    with _LOCK:
        obj = _CACHE.get(key)
        if obj is None:
            obj = loader()
            _CACHE[key] = obj
            # Appends one line per load to a file, so a test can count loads across worker processes.
            log_path = os.environ.get(LOAD_LOG_ENV)
            if log_path:
                with open(log_path, "a") as f:
                    f.write(f"{os.getpid()} {key[0]}\n")
        return obj


def clear() -> None:
    with _LOCK:
        _CACHE.clear()
