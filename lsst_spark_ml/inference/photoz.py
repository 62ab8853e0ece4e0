"""A loaded photo-z model: features, scaling and the MBRNN ensemble, applied to numpy arrays in batches.

Spark-free, so the same object serves the UDFs, the benchmarks' plain-torch baseline and the tests.
"""
from __future__ import annotations

import dataclasses
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
from .summaries import POINT_COLUMNS, summarize, summarize_torch


def scaled_features(values, errors, kind: str, bands: list[str], fs: FeatureSettings, scaler: MinMaxScaler,
                    ebv=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photometry -> (raw features, scaled features, flags with OUT_OF_RANGE), as every model reads them."""
    X, flags, _ = build_features(values, errors, kind, bands, fs, ebv)
    Xs, out_of_range = scaler.transform(X)
    return X, Xs, np.where(out_of_range, flags | F.OUT_OF_RANGE, flags)


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
    """``precision`` is the precision the predictor runs in (float32 or bfloat16), resolved at load time from
    the requested one (auto | float32 | bfloat16); ``precision_reason`` says why. Inference runs the
    BatchNorm-folded ensemble (``inference.fast.FoldedEnsemble``); ``ensemble`` keeps the model as trained."""
    ensemble: MBRNNEnsemble
    scaler: MinMaxScaler
    bands: list[str]
    features: FeatureSettings
    edges: np.ndarray
    sha256: str
    manifest: dict
    device: torch.device = torch.device("cpu")
    precision: str = "float32"
    runner: torch.nn.Module | None = None
    precision_reason: str = "requested"
    gate: object | None = None            # accuracy.GateResult when the bfloat16 gate ran

    def __post_init__(self):
        if self.runner is None:
            self.runner = self._make_runner(self.precision)

    def _make_runner(self, precision: str) -> torch.nn.Module:
        from .fast import FoldedEnsemble
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"a loaded predictor runs in float32 or bfloat16, not {precision!r}")
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        return FoldedEnsemble(self.ensemble, dtype).to(self.device)

    def with_precision(self, precision: str) -> "PhotozPredictor":
        """The same model in another (explicit) precision, sharing the trained weights."""
        if precision == self.precision:
            return self
        return dataclasses.replace(self, precision=precision, runner=self._make_runner(precision),
                                   precision_reason="requested", gate=None)

    @classmethod
    def from_artefact(cls, art: Artefact, device: str = "cpu", precision: str = "float32",
                      bf16_verified: bool | None = None, gate_kw: dict | None = None) -> "PhotozPredictor":
        """``precision='auto'``: bfloat16 where the hardware runs it natively (``fast.hardware_bf16``) and
        the accuracy gate passes (``inference.accuracy``), float32 otherwise. ``bf16_verified``: the gate's
        verdict when the caller (a job's driver) already ran it; None runs it here (cached per sha256) with
        ``gate_kw`` (tolerances, sample) passed to ``accuracy.bf16_gate``."""
        man = art.manifest
        if man.get("kind") != "mbrnn-ensemble":
            raise ValueError(f"{art.path} holds a {man.get('kind')!r} model, not an MBRNN photo-z ensemble")
        ens = ensemble_from_tensors(art.tensors, man["architecture"])
        dev = pick_device(device)
        ens.to(dev).eval()
        b = man["bins"]
        edges = np.linspace(b["z_min"], b["z_max"], b["n_bins"] + 1)
        pred = cls(ens, MinMaxScaler.from_dict(man["scaler"]), list(man["bands"]),
                   FeatureSettings(**man["features"]), edges, art.sha256, man, dev, "float32")
        from .accuracy import choose_precision
        return choose_precision(pred, precision, bf16_verified, gate_kw)

    @classmethod
    def load(cls, model_dir: str | Path, **kw) -> "PhotozPredictor":
        return cls.from_artefact(load_artefact(model_dir), **kw)

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def probabilities(self, X: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Scaled features (N, F) -> ensemble PDF (N, K) float32.

        ``batch_size`` rows go through the network at a time: 2048 keeps the widest activation
        (1024 x 2048 x 4 B = 8 MB) in the last-level cache; see benchmarks/inference_paths.py."""
        out = np.empty((len(X), self.n_bins), dtype=np.float32)
        X = np.ascontiguousarray(X, dtype=np.float32)
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            for s in range(0, len(X), batch_size):
                xb = torch.from_numpy(X[s:s + batch_size])      # zero-copy view of the numpy array
                if cuda:
                    # .cpu() waits for this batch, so the staging buffer is free again for the next one
                    out[s:s + batch_size] = self.runner(self._to_device(xb, batch_size)).cpu().numpy()
                else:
                    out[s:s + batch_size] = self.runner(xb).numpy()
        return out

    def _device_pdf_and_points(self, X: np.ndarray, batch_size: int) -> tuple[np.ndarray, dict]:
        """On a GPU: network and PDF summaries both on the device, so only the inputs, the PDFs and six
        numbers per row cross the bus (``summaries.summarize_torch``, equal to the numpy summaries)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        pdf = np.empty((len(X), self.n_bins), dtype=np.float32)
        points = {k: np.empty(len(X)) for k in POINT_COLUMNS}
        with torch.inference_mode():
            for s in range(0, len(X), batch_size):
                xb = torch.from_numpy(X[s:s + batch_size])
                p = self.runner(self._to_device(xb, batch_size))
                for k, v in summarize_torch(p, self.edges).items():
                    points[k][s:s + len(xb)] = v
                pdf[s:s + len(xb)] = p.cpu().numpy()
        return pdf, points

    def _to_device(self, xb: torch.Tensor, batch_size: int) -> torch.Tensor:
        """One pinned staging buffer per predictor: page-locked host memory lets the copy to the device run
        by DMA, asynchronously; allocating it per batch would cost more. The caller must wait for the batch
        (a .cpu()) before staging the next one."""
        stage = self._pinned(batch_size, xb.shape[1])[:len(xb)]
        stage.copy_(xb)
        return stage.to(self.device, non_blocking=True)

    def _pinned(self, rows: int, cols: int) -> torch.Tensor:
        buf = getattr(self, "_pinned_buf", None)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = torch.empty((rows, cols), dtype=torch.float32).pin_memory()
            self._pinned_buf = buf
        return buf

    def scaled_features(self, values, errors, kind: str, ebv=None):
        return scaled_features(values, errors, kind, self.bands, self.features, self.scaler, ebv)

    def predict(self, values: np.ndarray, errors: np.ndarray, kind: str, ebv=None,
                batch_size: int = 2048) -> dict[str, np.ndarray]:
        """Photometry (N, B) -> point estimates, PDF and flags. Rows without an estimate get NaN / null."""
        X, Xs, flags = self.scaled_features(values, errors, kind, ebv)
        ok = (flags & F.NO_ESTIMATE) == 0
        pdf = np.full((len(X), self.n_bins), np.nan, dtype=np.float32)
        result = {k: np.full(len(X), np.nan) for k in POINT_COLUMNS}
        if ok.any():
            if self.device.type == "cuda":
                pdf[ok], points = self._device_pdf_and_points(Xs[ok], batch_size)
            else:
                pdf[ok] = self.probabilities(Xs[ok], batch_size)
                points = summarize(pdf[ok], self.edges)
            for k, v in points.items():
                result[k][ok] = v
        result["pdf"] = pdf
        result["ok"] = ok
        result["flags"] = flags
        return result
