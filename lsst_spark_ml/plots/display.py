"""Show a saved figure where the code runs: inline in a notebook, as its path elsewhere."""
from __future__ import annotations


def show(path) -> None:
    """Display the PNG at ``path`` inline under IPython (Jupyter, Databricks); elsewhere (plain Python,
    spark-submit) print its path, the file being the output.

    Returns None, so that ``show(...)`` as a cell's last line does not echo anything after the image."""
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        from IPython.display import Image, display
        display(Image(filename=str(path)))
    else:
        print(path)
