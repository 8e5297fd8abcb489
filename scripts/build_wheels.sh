#!/usr/bin/env bash
# Download the wheels that the lent GPU machine lacks, for scripts/gpu_check.sh to install there.
#
#     scripts/build_wheels.sh [DIR]          # default ./wheels (git-ignored); then carry DIR to the machine
#     scripts/build_wheels.sh --smoke        # print the plan and check placeholder wheels; downloads nothing
#
# Run it where PyPI is reachable, with any Python that has pip. It takes exactly the packages pinned in
# scripts/carried_wheels.txt (what noisypref, its GPU check and benchmarks/throughput.py need that the
# machine's image, scripts/device_packages.txt, does not hold), each without its dependencies, as binary
# wheels for CPython 3.12 on manylinux x86-64 (the machine runs Ubuntu 24.04's Python 3.12.3, glibc 2.39),
# into a fresh folder; then scripts/check_wheels.py checks tags, versions and the 48 MiB limit (the working
# tree that travels holds 64 MiB in all) and prints the list and size. Exit status 0 when the folder passes.
#   PYTHON   interpreter whose pip downloads (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
    SMOKE=1
    shift
fi
WHEELS="${1:-${WHEELS:-./wheels}}"
PY="${PYTHON:-python3}"

mapfile -t PINS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' scripts/carried_wheels.txt)
PLATFORMS=()
for minor in 39 35 34 31 28 27 24 17; do
    PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64")
done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
DOWNLOAD=("$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
          --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}")

echo "carrying ${#PINS[@]} packages to $WHEELS: ${PINS[*]}"
if [ "$SMOKE" = "1" ]; then
    echo "smoke: would run ${DOWNLOAD[*]} --dest $WHEELS ..."
    exec "$PY" scripts/check_wheels.py --smoke
fi

# A fresh folder: a wheel left from an older list would travel and could stop the install.
STAGING="$(mktemp -d "${TMPDIR:-/tmp}/noisypref-wheels.XXXXXX")"
trap 'rm -rf "$STAGING"' EXIT
"${DOWNLOAD[@]}" --dest "$STAGING" "${PINS[@]}"
"$PY" scripts/check_wheels.py "$STAGING"
rm -rf "$WHEELS"
mkdir -p "$(dirname "$WHEELS")"
mv "$STAGING" "$WHEELS"
trap - EXIT
echo "wheels ready in $WHEELS"
