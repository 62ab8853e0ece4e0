"""A loaded DCP model: OOD score from the TS2 pair, photo-z from the TS3 pair, on numpy arrays in batches.

Spark-free, like ``inference.photoz``: the UDFs, the estimator's transform, the benchmarks and the tests all
use this one object.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..artefacts import Artefact
from ..config import FeatureSettings
from ..features import flags as F
from ..features.scaling import MinMaxScaler
from ..models import DCPPair, MBRNNEnsemble, dcp_score
from .photoz import pick_device, scaled_features
from .summaries import POINT_COLUMNS, summarize

KIND = "dcp-ood"
OOD_COLUMNS = ("ood_score", "ood_flag", "ood_tercile")


def pair_from_tensors(tensors: dict[str, torch.Tensor], prefix: str, arch: dict) -> DCPPair:
    pair = DCPPair(arch["n_in"], arch["n_bins"], arch["hidden"])
    pair.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return pair.eval()


@dataclass
class DCPPredictor:
    """``ts2``/``ts3`` keep the pairs as trained; inference runs them BatchNorm-folded (``fast.FoldedEnsemble``:
    equal up to float32 rounding), in ``precision`` (float32, or bfloat16 inner layers where the hardware
    has it and the accuracy gate passes: ``inference.accuracy``, which for DCP also bounds the flag changes)."""
    ts2: DCPPair
    ts3: DCPPair
    scaler: MinMaxScaler
    bands: list[str]
    features: FeatureSettings
    edges: np.ndarray
    thresholds: dict
    sha256: str
    manifest: dict
    device: torch.device = torch.device("cpu")
    precision: str = "float32"
    precision_reason: str = "requested"
    gate: object | None = None

    def __post_init__(self):
        from .fast import FoldedEnsemble
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"a loaded predictor runs in float32 or bfloat16, not {self.precision!r}")
        dt = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
        self._runners = tuple(FoldedEnsemble(MBRNNEnsemble([p.he, p.le]), dt).to(self.device)
                              for p in (self.ts2, self.ts3))

    def with_precision(self, precision: str) -> "DCPPredictor":
        if precision == self.precision:
            return self
        return dataclasses.replace(self, precision=precision, precision_reason="requested", gate=None)

    @classmethod
    def from_artefact(cls, art: Artefact, device: str = "cpu", precision: str = "float32",
                      bf16_verified: bool | None = None, gate_kw: dict | None = None) -> "DCPPredictor":
        """``precision``: auto | float32 | bfloat16, as ``PhotozPredictor.from_artefact``."""
        man = art.manifest
        if man.get("kind") != KIND:
            raise ValueError(f"{art.path} holds a {man.get('kind')!r} model, not a DCP OOD model")
        dev = pick_device(device)
        arch = man["architecture"]
        b = man["bins"]
        pred = cls(pair_from_tensors(art.tensors, "ts2.", arch).to(dev),
                   pair_from_tensors(art.tensors, "ts3.", arch).to(dev),
                   MinMaxScaler.from_dict(man["scaler"]), list(man["bands"]), FeatureSettings(**man["features"]),
                   np.linspace(b["z_min"], b["z_max"], b["n_bins"] + 1), dict(man["thresholds"]), art.sha256, man,
                   dev)
        from .accuracy import choose_precision
        return choose_precision(pred, precision, bf16_verified, gate_kw)

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def score_and_pdf(self, Xs: np.ndarray, batch_size: int = 10000) -> tuple[np.ndarray, np.ndarray]:
        """Scaled features -> (L_DCP from TS2, mean of the two TS3 PDFs)."""
        score = np.empty(len(Xs), dtype=np.float64)
        pdf = np.empty((len(Xs), self.n_bins), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(Xs), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(Xs[s:s + batch_size], dtype=np.float32)).to(self.device)
                score[s:s + batch_size] = dcp_score(*self._runners[0].member_logits(xb)).double().cpu().numpy()
                he, le = self._runners[1].member_logits(xb)
                p = 0.5 * (torch.softmax(he.float(), 1) + torch.softmax(le.float(), 1))
                pdf[s:s + batch_size] = p.cpu().numpy()
        return score, pdf

    def predict(self, values: np.ndarray, errors: np.ndarray, kind: str, ebv=None,
                batch_size: int = 10000) -> dict[str, np.ndarray]:
        """Every row gets a score. Rows the photo-z cannot use (NO_ESTIMATE) keep their score, get null
        photo-z and ``ood_flag`` set: whatever their score, the network's answer is not to be trusted."""
        X, Xs, flags = scaled_features(values, errors, kind, self.bands, self.features, self.scaler, ebv)
        ok = (flags & F.NO_ESTIMATE) == 0
        score, pdf = self.score_and_pdf(Xs, batch_size)
        t = self.thresholds
        result = {k: np.full(len(X), np.nan) for k in POINT_COLUMNS}
        if ok.any():
            for k, v in summarize(pdf[ok], self.edges).items():
                result[k][ok] = v
        pdf[~ok] = np.nan
        result.update({"pdf": pdf, "ok": ok, "flags": flags, "ood_score": score,
                       "ood_flag": (score > t["flag"]) | ~ok,
                       "ood_tercile": (score > t["tercile_1"]).astype(np.int32) + (score > t["tercile_2"])})
        return result
