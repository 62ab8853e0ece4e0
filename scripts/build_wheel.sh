#!/usr/bin/env bash
# Build the project's wheel (lsst_spark_ml, udfs and the shipped models) and check what went into it.
#
#   scripts/build_wheel.sh [OUT_DIR]        # default: dist/ ; prints the wheel's path on its last line
#
# PYTHON (default .venv/bin/python) must have setuptools and wheel: `python -m build` is not a dependency,
# and pip's isolated build would fetch setuptools from an index, so the build runs without isolation.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"

# Built from a copy: setuptools writes build/ and an egg-info where it builds, and in the working tree these
# would sit beside the editable install's metadata and race with anything else using the tree.
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
(cd "$ROOT" && tar --exclude='__pycache__' --exclude='*.pyc' -cf - pyproject.toml setup.cfg README.md \
    lsst_spark_ml udfs) | tar -xf - -C "$SRC"

version="$("$PY" -c 'import ast,sys; t=ast.parse(open(sys.argv[1]).read());
print(next(n.value.value for n in t.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"))' \
    "$SRC/lsst_spark_ml/__init__.py")"
wheel="$OUT/lsst_spark_ml-$version-py3-none-any.whl"
rm -f "$wheel"
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$OUT" "$SRC" >&2

# A model the wheel lacks would only show up on a cluster, as a missing file on the driver: fail here.
"$PY" - "$wheel" "$SRC" <<'EOF'
import hashlib, sys, zipfile
from pathlib import Path
wheel, src = Path(sys.argv[1]), Path(sys.argv[2])
z = zipfile.ZipFile(wheel)
names = set(z.namelist())
want = [p for p in (src / "lsst_spark_ml" / "resources").rglob("*") if p.is_file()]
bad = [str(p.relative_to(src)) for p in want if str(p.relative_to(src)) not in names
       or hashlib.sha256(z.read(str(p.relative_to(src)))).digest() != hashlib.sha256(p.read_bytes()).digest()]
for must in ("lsst_spark_ml/__init__.py", "lsst_spark_ml/cli.py", "udfs/__init__.py", "udfs/photoz.py"):
    if must not in names:
        bad.append(must)
if bad:
    sys.exit(f"{wheel.name} lacks or alters: {bad}")
models = sorted({n.split("/")[3] for n in names if n.startswith("lsst_spark_ml/resources/models/")})
print(f"{wheel.name}: {len(names)} files, {wheel.stat().st_size / 2**20:.1f} MiB, models {models}", file=sys.stderr)
EOF
echo "$wheel"
