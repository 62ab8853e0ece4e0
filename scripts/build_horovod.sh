#!/usr/bin/env bash
# Builds Horovod 0.28.1 (its last release, June 2023) for the torch in .venv and installs it.
#
# Why a build step: 0.28.1 does not install as published. pip's isolated build has no torch
# ("Could NOT find Pytorch"), and with --no-build-isolation the compile fails because Horovod asks for
# C++14 while torch 2 headers need C++17 (horovod issues 3996 and 4014; fixed upstream, never released).
# We take the published sdist (sha256 pinned), switch the two CMAKE_CXX_STANDARD lines to 17, and build
# with Gloo only (no MPI, no TensorFlow, no MXNet). The wheel is cached per (horovod, torch, python),
# so the ~3-minute compile happens once per machine. The [spark] extra is NOT installed: it pins
# pyarrow < 11; horovod.spark.run works without it.
#
# On failure the log stays in .venv/horovod-build.log and the exit status is non-zero; bootstrap.sh
# carries on (everything else works without Horovod) and tests/test_training_horovod.py fails, quoting
# the log, so a torch that breaks the build is reported, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
VERSION=0.28.1
SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
LOG=.venv/horovod-build.log

if "$PY" -c "import horovod.torch" 2>/dev/null; then
    exit 0
fi
TORCH=$("$PY" -c "import torch; print(torch.__version__.replace('+', '_'))")
PYTAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
CACHE=${LSST_SPARK_ML_WHEEL_CACHE:-$HOME/.cache/lsst_spark_ml/wheels}/horovod-$VERSION-torch$TORCH-$PYTAG
mkdir -p "$CACHE"

# Build-time requirements of Horovod's setup.py (its runtime needs cloudpickle, psutil, pyyaml, packaging).
"$PY" -m pip install -q wheel cloudpickle psutil pyyaml packaging cffi >&2

if ! ls "$CACHE"/horovod-*.whl >/dev/null 2>&1; then
    echo "[horovod] building Horovod $VERSION against torch $TORCH (about 3 minutes, once per machine)" >&2
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    {
        "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$WORK"
        echo "$SDIST_SHA256  $WORK/horovod-$VERSION.tar.gz" | sha256sum -c -
        tar -xzf "$WORK/horovod-$VERSION.tar.gz" -C "$WORK"
        SRC=$WORK/horovod-$VERSION
        sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
            "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
        grep -q 'CMAKE_CXX_STANDARD 17' "$SRC/horovod/torch/CMakeLists.txt"
        HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
        HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
            "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/dist" "$SRC"
        cp "$WORK"/dist/horovod-*.whl "$CACHE/"
    } >"$LOG" 2>&1 || { echo "[horovod] build FAILED; log: $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
fi
"$PY" -m pip install -q --no-deps "$CACHE"/horovod-*.whl >&2
"$PY" -c "import horovod.torch" || { echo "[horovod] installed but 'import horovod.torch' fails" >&2; exit 1; }
echo "[horovod] Horovod $VERSION installed from $CACHE" >&2
