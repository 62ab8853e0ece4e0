"""Where a train function runs. ``local`` runs it in this process; the distributed backends
(torch-distributor, horovod) register here and call the same function unchanged.
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError

_BACKENDS: dict[str, Callable[..., Any]] = {}


def register(name: str):
    def deco(fn):
        _BACKENDS[name] = fn
        return fn
    return deco


@register("local")
def _local(train_fn: Callable[..., Any], *args, **kwargs):
    return train_fn(*args, **kwargs)


def run(backend: str, train_fn: Callable[..., Any], *args, options: dict | None = None, **kwargs):
    """Run ``train_fn(*args, **kwargs)`` under ``backend``; ``options`` configure the backend itself."""
    from . import distributed, horovod_backend  # noqa: F401  (register the distributed backends)
    if backend not in _BACKENDS:
        raise ConfigError(f"train.backend {backend!r} is not available; choose one of {sorted(_BACKENDS)}")
    if backend == "local":
        return train_fn(*args, **kwargs)
    return _BACKENDS[backend](train_fn, *args, **(options or {}), **kwargs)
