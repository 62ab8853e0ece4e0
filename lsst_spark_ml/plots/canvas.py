"""Figures without pyplot: a ``matplotlib.figure.Figure`` on its own Agg canvas.

pyplot keeps global state (the current figure, the backend): ``matplotlib.use("Agg")`` from a library call
switches a Jupyter kernel's inline backend off, and figures left open leak between Spark driver threads.
A Figure with its own canvas touches neither; notebooks show the saved PNG (``plots.show``).
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def figure(**kw) -> Figure:
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
