"""Every notebook in notebooks/ runs top to bottom as plain Python, and its .ipynb is generated from it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def test_ipynb_files_are_generated_from_the_sources():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "notebooks_to_ipynb.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(notebook, tmp_path):
    env = {**os.environ, "LSST_SPARK_ML_NOTEBOOK_ROWS": "20000", "LSST_SPARK_ML_NOTEBOOK_OUT": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(notebook)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "quickstart_plots.png").is_file() or "quickstart" not in notebook.stem


def test_show_prints_the_path_outside_ipython(tmp_path, capsys):
    from lsst_spark_ml.plots import show
    png = tmp_path / "figure.png"
    assert show(png) is None
    assert capsys.readouterr().out == f"{png}\n"
