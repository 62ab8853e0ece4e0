#!/usr/bin/env bash
# Creates .venv/ and installs the project into it when missing or stale.
# Both README commands call this first, so each works on a fresh clone by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.lsst_spark_ml_installed
WANT=$(cat pyproject.toml scripts/bootstrap.sh scripts/build_horovod.sh | sha256sum | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi
echo "[bootstrap] installing lsst_spark_ml into .venv/ (first run builds the pyspark wheel, ~1-3 min)" >&2
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >&2
# torch is pinned to 2.13.0 in pyproject.toml: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q -e ".[test]" >&2
# Real cosmoDC2 photometry (training/validation files) ships inside this data package;
# --no-deps because we only read its files, its own dependency tree is large and unused.
.venv/bin/python -m pip install -q --no-deps "pz-rail-base==2.0.11" >&2
# Real asteroid reflectance spectra with taxonomic classes (Mahlke et al. 2022) ship inside space-classy;
# --no-deps for the same reason: its tree pulls tensorflow, and we only read its data files.
.venv/bin/python -m pip install -q --no-deps "space-classy==0.8.8" >&2
# The Horovod training backend: Horovod 0.28.1 must be built from source for this torch (see the script).
# A failed build does not stop the rest: the Horovod tests fail and quote .venv/horovod-build.log.
if [[ "${LSST_SPARK_ML_SKIP_HOROVOD:-0}" != "1" ]]; then
    scripts/build_horovod.sh || echo "[bootstrap] Horovod build failed; only train.backend=horovod is affected" >&2
fi
echo "$WANT" > "$STAMP"
