"""A loaded photo-z model: features, scaling and the MBRNN ensemble, applied to numpy arrays in batches.

Spark-free, so the same object serves the UDFs, the benchmarks' plain-torch baseline and the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artefacts import Artefact, load_artefact
from ..config import FeatureSettings
from ..features import flags as F
from ..features.photometry import build_features
from ..features.scaling import MinMaxScaler
from ..models import MBRNN, MBRNNEnsemble
from .summaries import POINT_COLUMNS, summarize


def pick_device(device: str) -> torch.device:
    if device.startswith("cuda:") or device == "cpu":
        return torch.device(device)
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("inference.device is 'cuda' but this worker has no CUDA device")
        return torch.device(f"cuda:{_task_gpu()}")
    return torch.device("cpu")


def _task_gpu() -> int:
    """The GPU Spark assigned to the running task (spark.task.resource.gpu.amount), else 0."""
    try:
        from pyspark import TaskContext
        ctx = TaskContext.get()
        if ctx is not None and "gpu" in ctx.resources():
            return int(ctx.resources()["gpu"].addresses[0])
    except Exception:  # noqa: BLE001 - outside a task, or a Spark without resources(): the default GPU
        pass
    return 0


def ensemble_from_tensors(tensors: dict[str, torch.Tensor], arch: dict) -> MBRNNEnsemble:
    members = []
    for i in range(arch["n_members"]):
        m = MBRNN(arch["n_in"], arch["n_bins"], arch["hidden"])
        prefix = f"member{i}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        members.append(m)
    return MBRNNEnsemble(members, tensors["ensemble.weights"])


@dataclass
class PhotozPredictor:
    ensemble: MBRNNEnsemble
    scaler: MinMaxScaler
    bands: list[str]
    features: FeatureSettings
    edges: np.ndarray
    sha256: str
    manifest: dict
    device: torch.device = torch.device("cpu")
    precision: str = "float32"

    @classmethod
    def from_artefact(cls, art: Artefact, device: str = "cpu", precision: str = "float32") -> "PhotozPredictor":
        man = art.manifest
        if man.get("kind") != "mbrnn-ensemble":
            raise ValueError(f"{art.path} holds a {man.get('kind')!r} model, not an MBRNN photo-z ensemble")
        ens = ensemble_from_tensors(art.tensors, man["architecture"])
        dev = pick_device(device)
        ens.to(dev).eval()
        b = man["bins"]
        edges = np.linspace(b["z_min"], b["z_max"], b["n_bins"] + 1)
        return cls(ens, MinMaxScaler.from_dict(man["scaler"]), list(man["bands"]),
                   FeatureSettings(**man["features"]), edges, art.sha256, man, dev, precision)

    @classmethod
    def load(cls, model_dir: str | Path, **kw) -> "PhotozPredictor":
        return cls.from_artefact(load_artefact(model_dir), **kw)

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def probabilities(self, X: np.ndarray, batch_size: int = 10000) -> np.ndarray:
        """Scaled features (N, F) -> ensemble PDF (N, K) float32."""
        out = np.empty((len(X), self.n_bins), dtype=np.float32)
        autocast = self.precision == "bfloat16"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            for s in range(0, len(X), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(X[s:s + batch_size])).to(self.device)
                out[s:s + batch_size] = self.ensemble(xb).float().cpu().numpy()
        return out

    def predict(self, values: np.ndarray, errors: np.ndarray, kind: str, ebv=None,
                batch_size: int = 10000) -> dict[str, np.ndarray]:
        """Photometry (N, B) -> point estimates, PDF and flags. Rows without an estimate get NaN / null."""
        X, flags, _ = build_features(values, errors, kind, self.bands, self.features, ebv)
        Xs, out_of_range = self.scaler.transform(X)
        flags = np.where(out_of_range, flags | F.OUT_OF_RANGE, flags)
        ok = (flags & F.NO_ESTIMATE) == 0
        pdf = np.full((len(X), self.n_bins), np.nan, dtype=np.float32)
        if ok.any():
            pdf[ok] = self.probabilities(Xs[ok], batch_size)
        result = {k: np.full(len(X), np.nan) for k in POINT_COLUMNS}
        if ok.any():
            for k, v in summarize(pdf[ok], self.edges).items():
                result[k][ok] = v
        result["pdf"] = pdf
        result["ok"] = ok
        result["flags"] = flags
        return result
