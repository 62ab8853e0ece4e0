"""Morphology predictions from band cutouts: inputs built where the model runs, class probabilities out.

The cutout table stores only the bands; the object mask and the NaN masks are built here
(``morphology.inputs.build_inputs``), so a table written once serves any model version. Rows the builder
flags (wrong shape, missing or all-NaN band) get null probabilities and their flags, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artefacts import Artefact, load_artefact
from ..errors import ModelIntegrityError
from .fast import resolve_precision
from .photoz import pick_device

KIND = "morphology-classifier"


@dataclass
class MorphologyPredictor:
    model: torch.nn.Module
    manifest: dict
    sha256: str
    device: torch.device
    precision: str                     # float32 | bfloat16

    @classmethod
    def from_artefact(cls, art: Artefact, device: str = "cpu", precision: str = "float32") -> "MorphologyPredictor":
        from ..models.dat import build_morphology_model
        if art.manifest.get("kind") != KIND:
            raise ModelIntegrityError(f"{art.path}: a {art.manifest.get('kind')!r} model, not a {KIND!r} model")
        model = build_morphology_model(art.manifest["network"], art.manifest["architecture"])
        model.load_state_dict(art.tensors)
        dev = pick_device(device)
        model.to(dev).eval()
        return cls(model, art.manifest, art.sha256, dev, resolve_precision(precision, dev))

    @classmethod
    def load(cls, model_dir: str | Path, **kw) -> "MorphologyPredictor":
        return cls.from_artefact(load_artefact(model_dir), **kw)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def forward(self, x: np.ndarray, attention: bool = False, batch_size: int = 64):
        """Probabilities (n, C) float32 and, with ``attention``, the maps (n, H, W) float32 in [0, 1]."""
        probs = np.empty((len(x), len(self.classes)), dtype=np.float32)
        maps = np.empty((len(x),) + x.shape[2:], dtype=np.float32) if attention else None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")
        with torch.inference_mode(), autocast:
            for s in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32))
                xb = xb.to(self.device, non_blocking=True)
                if attention:
                    logits, attn = self.model.forward_with_attention(xb)
                    maps[s:s + len(xb)] = attn.float().cpu().numpy()
                else:
                    logits = self.model(xb)
                probs[s:s + len(xb)] = torch.softmax(logits.float(), 1).cpu().numpy()
        return probs, maps

    def predict(self, bands: np.ndarray, flags: np.ndarray | None = None, attention: bool = False,
                batch_size: int = 64) -> dict[str, np.ndarray]:
        """``bands`` (n, 5, S, S) float32 (NaN = missing pixel); ``flags`` from decoding (0 = fine).

        Returns probs (n, C; NaN rows where a ``BAD_ROW`` flag is set), class_id (-1 there), confidence,
        flags (``morphology.inputs``) and optionally attention (n, S, S).
        """
        from ..morphology.inputs import BAD_ROW, build_inputs
        n = len(bands)
        x, in_flags = build_inputs(bands, self.image_size)
        flags = (np.zeros(n, np.int32) if flags is None else np.asarray(flags, np.int32)) | np.asarray(in_flags,
                                                                                                      np.int32)
        ok = (flags & BAD_ROW) == 0          # NO_OBJECT is informational: such rows are still classified
        probs = np.full((n, len(self.classes)), np.nan, dtype=np.float32)
        maps = np.zeros((n,) + x.shape[2:], dtype=np.float32) if attention else None
        if ok.any():
            p, m = self.forward(x[ok], attention, batch_size)
            probs[ok] = p
            if attention:
                maps[ok] = m
        class_id = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(1), -1).astype(np.int32)
        confidence = np.where(ok, np.nan_to_num(probs, nan=0.0).max(1), np.nan).astype(np.float32)
        return {"probs": probs, "class_id": class_id, "confidence": confidence, "flags": flags,
                "attention": maps}
