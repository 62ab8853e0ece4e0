"""Per-epoch lines for logs, and an in-place progress bar when stderr is a terminal (not in Spark logs)."""
from __future__ import annotations

import sys
import time


class EpochBar:
    def __init__(self, label: str, epoch: int, max_epochs: int, total: int | None, enabled: bool):
        self.label, self.epoch, self.max_epochs, self.total = label, epoch, max_epochs, total
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = self._last = time.time()
        self.done = self.rows = 0

    def update(self, rows: int) -> None:
        self.done += 1
        self.rows += rows
        now = time.time()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        rate = self.rows / max(now - self.t0, 1e-9)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            pos = f"[{bar}] {self.done}/{self.total}"
        else:
            pos = f"batch {self.done}"
        sys.stderr.write(f"\r[{self.label}] epoch {self.epoch}/{self.max_epochs} {pos} {rate:,.0f} rows/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def epoch_line(label: str, h: dict, max_epochs: int, improved: bool) -> str:
    return (f"[{label}] epoch {h['epoch']:3d}/{max_epochs}  train {h['train_loss']:.4f}  val {h['val_loss']:.4f}  "
            f"lr {h['lr']:.1e}  {h['samples_per_s']:,.0f} samples/s{'  *best' if improved else ''}")
