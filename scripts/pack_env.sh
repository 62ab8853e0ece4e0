#!/usr/bin/env bash
# Pack a virtual environment holding the project's wheel into an archive for spark-submit --archives.
#
#   scripts/pack_env.sh [--wheel WHEEL] [--out env.tar.gz] [--python PYTHON] [--base-site DIR] [--no-data]
#                       [-- PIP_ARGS...]
#
#   spark-submit --archives env.tar.gz#environment \
#       --conf spark.pyspark.python=./environment/bin/python ...   (docs/cluster.md)
#
# --wheel      default: build one with scripts/build_wheel.sh
# --python     the interpreter the environment is created from (default: .venv's own base interpreter).
#              The archive carries site-packages, NOT the interpreter: bin/python stays a symlink to this
#              interpreter's absolute path, which must exist on every executor (same image, or
#              VENV_PACK_ARGS="--python-prefix /usr" to relink it to another prefix of the same version).
# --base-site  install the wheel alone (--no-deps) and add a .pth naming DIR, a site-packages that already
#              holds the dependencies at that same path on every node (a shared image or mount). The archive
#              is then ~40 MB instead of ~900 MB; the packaging test uses it with .venv's site-packages.
#              venv-pack refuses such an environment (it takes any path line of a .pth file for an editable
#              install), so this mode is packed with tar.
# --no-data    leave out the data-only packages scripts/bootstrap.sh installs with --no-deps (pz-rail-base:
#              cosmoDC2 for the bfloat16 accuracy gate and the commands' default training sets; space-classy:
#              the asteroid spectra). Only the driver reads them; without them the gate cannot pass and
#              precision: auto runs float32.
# PIP_ARGS     passed to pip install (e.g. --index-url / --extra-index-url for a CPU-only torch).
#
# Packing uses venv-pack (PyPI; fixes script shebangs and activate for the new location): taken from .venv's
# environment if it has it, else installed into a throwaway directory. Without it (no index reachable) the
# environment is packed with tar, which is enough for PySpark (it runs bin/python, not console scripts).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOL_PY="$ROOT/.venv/bin/python"
WHEEL="" OUT="$PWD/env.tar.gz" BASE_SITE="" PY="" DATA=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheel) WHEEL="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --base-site) BASE_SITE="$2"; shift 2 ;;
        --no-data) DATA=0; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "pack_env.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
PIP_ARGS=("$@")
# The base interpreter, not .venv/bin/python: a venv made from a venv's python points at that venv.
PY="${PY:-$("$TOOL_PY" -c 'import sys; print(sys._base_executable)')}"
[[ -n "$WHEEL" ]] || WHEEL="$("$ROOT/scripts/build_wheel.sh" | tail -n 1)"
WHEEL="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")"
OUT="$(mkdir -p "$(dirname "$OUT")" && cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ENV="$WORK/environment"
"$PY" -m venv --without-pip "$ENV"
# .venv's pip installs into the new environment (pip --python): the environment itself needs no pip.
if [[ -n "$BASE_SITE" ]]; then
    "$TOOL_PY" -m pip --python "$ENV/bin/python" install --quiet --no-deps --no-compile "${PIP_ARGS[@]}" "$WHEEL"
    site="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # Lines of a .pth file are appended to sys.path after the environment's own site-packages, so the
    # wheel's lsst_spark_ml wins over any copy in DIR; .pth files inside DIR itself are not run.
    echo "$(cd "$BASE_SITE" && pwd)" > "$site/_lsst_spark_ml_base_site.pth"
else
    "$TOOL_PY" -m pip --python "$ENV/bin/python" install --quiet --no-compile "${PIP_ARGS[@]}" "$WHEEL"
    if [[ "$DATA" == 1 ]]; then
        # The pins bootstrap.sh uses, so the packed environment reads the same data as .venv.
        mapfile -t data < <(grep -oE '"(pz-rail-base|space-classy)==[^"]+"' "$ROOT/scripts/bootstrap.sh" | tr -d '"')
        [[ ${#data[@]} -eq 2 ]] || { echo "pack_env.sh: data package pins not found in bootstrap.sh" >&2; exit 1; }
        "$TOOL_PY" -m pip --python "$ENV/bin/python" install --quiet --no-compile --no-deps "${PIP_ARGS[@]}" \
            "${data[@]}"
    fi
fi
"$ENV/bin/python" -c 'import lsst_spark_ml, udfs, pyspark, torch; print("environment imports lsst_spark_ml",
    lsst_spark_ml.__version__, "from", lsst_spark_ml.__file__)' >&2

rm -f "$OUT"
if [[ -n "$BASE_SITE" ]]; then
    tar -czf "$OUT" -C "$ENV" .
elif "$TOOL_PY" -c 'import venv_pack' 2>/dev/null; then
    "$TOOL_PY" -m venv_pack --prefix "$ENV" --output "$OUT" --quiet ${VENV_PACK_ARGS:-}
elif "$TOOL_PY" -m pip install --quiet --no-deps --target "$WORK/tools" venv-pack >/dev/null 2>&1; then
    PYTHONPATH="$WORK/tools" "$TOOL_PY" -m venv_pack --prefix "$ENV" --output "$OUT" --quiet ${VENV_PACK_ARGS:-}
else
    echo "pack_env.sh: venv-pack unavailable; packing with tar (console scripts keep absolute shebangs)" >&2
    tar -czf "$OUT" -C "$ENV" .
fi
echo "packed $(du -h "$OUT" | cut -f1) into $OUT (python: $(readlink "$ENV/bin/python" || echo copy))" >&2
echo "$OUT"
