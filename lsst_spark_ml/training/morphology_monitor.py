"""Per-epoch scores of a morphology run on a labelled table the training never reads: the trajectory on the
survey domain that the labelled validation loss cannot show (``training.loop.fit(monitor=...)``).

A diagnostic for whoever tunes a recipe (``scripts/trace_morphology.py``), never a selection criterion: the
best epoch is still chosen on the labelled validation rows. Besides macro-F1 and accuracy it records two
label-free numbers a target-aware selection could use (the mean entropy of the predictions and the predicted
class mix), so their agreement with the labelled scores can be checked on rendered sets first, and how often
the predictions at or above FixMatch's confidence threshold are right (what its pseudo-labels are worth).
"""
from __future__ import annotations

import numpy as np
import torch


class SurveyMonitor:
    """Scores the judged model on ``table`` (a cutout table with ``label_col``) after every validation.

    The table is read at the first call, in the training process, so the monitor pickles small."""

    def __init__(self, table: str, image_size: int, classes: list[str], label_col: str = "label",
                 batch_size: int = 250, threshold: float = 0.7):
        self.table, self.image_size, self.classes = table, image_size, list(classes)
        self.threshold = threshold
        self.label_col, self.batch_size = label_col, batch_size
        self._x = self._y = None

    def _load(self):
        from .morphology import default_mask_cache, read_cutout_set
        cs = read_cutout_set(self.table, self.image_size, label_col=self.label_col, mask_cache=default_mask_cache())
        keep = cs.labels >= 0
        self._x, self._y = cs.x[torch.from_numpy(keep)], cs.labels[keep]

    def __call__(self, epoch: int, model: torch.nn.Module) -> dict:
        from ..pipelines.morphology import classification_metrics
        if self._x is None:
            self._load()
        device = next(model.parameters()).device
        p = torch.cat([torch.softmax(model(self._x[s:s + self.batch_size].to(device, torch.float32)), 1).cpu()
                       for s in range(0, len(self._x), self.batch_size)]).numpy()
        pred = p.argmax(1)
        m = classification_metrics(self._y, pred, self.classes)
        # what FixMatch's pseudo-labels would be worth on these rows: right how often where confident enough
        sure = p.max(1) >= self.threshold
        return {"monitor_macro_f1": m["macro_f1"], "monitor_accuracy": m["accuracy"],
                "monitor_entropy": float(-(p * np.log(np.clip(p, 1e-12, None))).sum(1).mean()),
                "monitor_class_mix": (np.bincount(pred, minlength=len(self.classes)) / len(pred)).round(4).tolist(),
                "monitor_confident_fraction": float(sure.mean()),
                "monitor_confident_accuracy": float((pred == self._y)[sure].mean()) if sure.any() else None}
