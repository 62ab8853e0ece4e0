"""Generate notebooks/*.ipynb from the Databricks source files notebooks/*.py (the source of truth).

    .venv/bin/python scripts/notebooks_to_ipynb.py [--check]

Databricks source format: ``# Databricks notebook source`` first, cells separated by ``# COMMAND ----------``,
markdown cells as ``# MAGIC %md`` lines. ``--check`` fails when an .ipynb is missing or out of date (tests run it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"


def cells(source: str) -> list[dict]:
    if not source.startswith(HEADER):
        raise ValueError(f"not a Databricks source notebook (first line must be {HEADER!r})")
    out = []
    for block in source[len(HEADER):].split(SEPARATOR):
        lines = block.strip("\n").splitlines()
        if not lines:
            continue
        if all(line.startswith("# MAGIC") for line in lines):
            text = [line[len("# MAGIC"):].removeprefix(" ") for line in lines]
            text[0] = text[0].removeprefix("%md").lstrip()
            if not text[0]:
                text = text[1:]
            out.append({"cell_type": "markdown", "metadata": {}, "source": _join(text)})
        else:
            out.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                        "source": _join(lines)})
    return out


def _join(lines: list[str]) -> list[str]:
    return [line + "\n" for line in lines[:-1]] + lines[-1:]


def to_ipynb(source: str) -> str:
    nb = {"cells": cells(source), "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                               "name": "python3"},
                                               "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for src in sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.py")):
        want = to_ipynb(src.read_text())
        target = src.with_suffix(".ipynb")
        if check:
            if not target.exists() or target.read_text() != want:
                stale.append(str(target))
        else:
            target.write_text(want)
            print(f"wrote {target}")
    if stale:
        print("out of date (run scripts/notebooks_to_ipynb.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
