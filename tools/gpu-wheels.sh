#!/usr/bin/env bash
# The wheels tools/bench-gpu-device.sh installs on a borrowed GPU machine, into .whl/: the
# project's GPU-side dependencies that such a machine lacks (it has torch, and older
# transformers and accelerate), at the versions this checkout's virtualenv runs, so the GPU
# measures the code the tests passed on. pip matches manylinux tags exactly, hence the list.
# Usage: tools/gpu-wheels.sh [PYTHON_VERSION]   (default 3.12: the borrowed machine's Python)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_VERSION=${1:-3.12}
VENV_PY=${VENV_PY:-.venv/bin/python}
DEST=.whl
# transformers 5 needs kernels, huggingface_hub 2 needs httpx2: both are hard dependencies
DISTS=(
  diffusers peft transformers accelerate tokenizers huggingface_hub hf-xet safetensors regex
  kernels pydantic pydantic_core annotated-types typing-inspection typing_extensions ftfy wcwidth
  pillow_heif importlib_metadata filelock fsspec httpx2 httpcore2 h11 anyio click truststore
  tomlkit
)

if [[ ! -x $VENV_PY ]]; then
  echo "gpu-wheels: $VENV_PY is missing; run 'make install' first (the versions come from it)" >&2
  exit 2
fi
exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# one interpreter for all the pins; a distribution missing from the venv is named and fatal
mapfile -t pins < <("$VENV_PY" - "${DISTS[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for dist in sys.argv[1:]:
    try:
        print(f"{dist}=={version(dist)}")
    except PackageNotFoundError:
        sys.exit(f"gpu-wheels: {dist} is not installed in {sys.executable}")
PY
)
if ((${#pins[@]} != ${#DISTS[@]})); then
  exit 2
fi

platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 \
  manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done

rm -rf "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYTHON_VERSION" "${platforms[@]}" -d "$DEST" "${pins[@]}"
echo "gpu-wheels: ${#pins[@]} wheels for Python $PYTHON_VERSION in $DEST ($(du -sh "$DEST" | cut -f1)):"
ls "$DEST"
