#!/usr/bin/env bash
# The device rehearsal (issue 28): scripts/gpu_check.sh's CPU dry run in a fresh Python 3.12 environment
# that holds only what the lent GPU machine holds, at its versions, with the carried wheels installed as the
# machine would install them. Run it by hand, where PyPI is reachable (not in CI: it downloads GBs).
#
#     scripts/device_rehearsal.sh [VENV]    # default ./.rehearsal-venv (git-ignored); 10-30 minutes
#     scripts/device_rehearsal.sh --smoke   # print the plan and the machine's packages it would install
#     REUSE_VENV=1 scripts/device_rehearsal.sh   # an existing VENV as it is (its carried wheels removed
#                                                # first): the dry run again, in minutes
#
# 1. wheels: scripts/build_wheels.sh, when ./wheels is missing or fails scripts/check_wheels.py;
# 2. a fresh venv from Python 3.12 (PYTHON312, default python3.12);
# 3. into it, the machine's packages that noisypref and the wheels require (check_wheels.py
#    --device-requirements), with every version scripts/device_packages.txt knows as a constraint:
#    torch 2.11.0 (PyPI's CUDA build, which runs on the CPU too), transformers 5.17.0, huggingface-hub
#    1.33.0, accelerate 1.15.0, numpy 2.5.2, tokenizers 0.23.2, ...; packages of unknown version there
#    (pandas, pyarrow, scipy, matplotlib, peft, ...) get the newest release pip finds that fits those;
# 4. GPU_CHECK_CPU=1 scripts/gpu_check.sh with that venv's python3, into runs/device_rehearsal/ (emptied
#    first): its install step installs the wheels with pip install --no-index --find-links ./wheels
#    --no-deps, as on the machine.
# Prints the packages of the venv that scripts/device_packages.txt does not list (pip brings them as
# dependencies; the machine may lack them), the wall time of each phase and the load average; exit
# status: the dry run's.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
    SMOKE=1
    shift
fi
VENV="${1:-./.rehearsal-venv}"
PY312="${PYTHON312:-python3.12}"
HOST_PY="${PYTHON:-python3}"
WHEELS=./wheels

CONSTRAINTS=$(grep -E '^[A-Za-z0-9._-]+==' scripts/device_packages.txt)
echo "device rehearsal: venv $VENV from $PY312; wheels $WHEELS; constraints (the machine's known versions):"
echo "$CONSTRAINTS" | sed 's/^/  /'
if [ "$SMOKE" = "1" ]; then
    REQUIREMENTS=$("$HOST_PY" scripts/check_wheels.py --device-requirements "$WHEELS")
    echo "the machine's packages it installs:"
    echo "$REQUIREMENTS" | sed 's/^/  /'
    printf '{"constraints": %d, "device_requirements": %d}\n' "$(echo "$CONSTRAINTS" | wc -l)" \
        "$(echo "$REQUIREMENTS" | wc -l)"
    exit 0
fi

declare -a TIMES
phase() {  # phase NAME COMMAND...: run, record the wall time and the load average at the end
    local name="$1" started status=0
    shift
    started=$(date +%s)
    echo "=== $name"
    "$@" || status=$?
    TIMES+=("$(printf '%-22s %5d s   exit %d, %s' "$name" "$(($(date +%s) - started))" "$status" \
        "$(uptime | sed 's/.*load average/load average/')")")
    return "$status"
}

wheels() {
    "$HOST_PY" scripts/check_wheels.py "$WHEELS" >/dev/null 2>&1 || scripts/build_wheels.sh "$WHEELS"
}

venv() {
    rm -rf "$VENV"
    "$PY312" -m venv "$VENV"
    "$VENV/bin/python3" -m pip install --quiet --upgrade pip
}

device_packages() {
    local constraints requirements
    constraints="$(mktemp)"
    requirements="$(mktemp)"
    echo "$CONSTRAINTS" > "$constraints"
    "$HOST_PY" scripts/check_wheels.py --device-requirements "$WHEELS" > "$requirements"
    cat "$requirements"
    "$VENV/bin/python3" -m pip install --quiet -c "$constraints" -r "$requirements"
    rm -f "$constraints" "$requirements"
}

reuse_venv() {  # the carried packages out again, so that the dry run installs them as the machine would
    local carried
    carried=$(sed -e 's/#.*//' -e 's/==.*//' -e 's/[[:space:]]//g' -e '/^$/d' scripts/carried_wheels.txt | grep -vx setuptools)
    # shellcheck disable=SC2086  # names
    "$VENV/bin/python3" -m pip uninstall --quiet --yes $carried
}

not_on_device() {
    "$VENV/bin/python3" - <<'EOF'
import re
from importlib import metadata

from packaging.utils import canonicalize_name

listed = set()
for name in ("scripts/device_packages.txt", "scripts/carried_wheels.txt"):
    for line in open(name, encoding="utf-8"):
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if match:
            listed.add(canonicalize_name(match[1]))
extra = sorted({canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()} - listed - {"pip"})
print(f"packages in the venv that the machine's list does not name ({len(extra)}): {', '.join(extra) or 'none'}")
EOF
}

dry_run() {  # into fresh folders, as on a fresh machine (gpu_check.sh itself resumes the studies it finds)
    rm -rf runs/device_rehearsal
    GPU_CHECK_CPU=1 PYTHON="$VENV/bin/python3" WHEELS="$WHEELS" OUT=runs/device_rehearsal/out \
        WORK=runs/device_rehearsal/work scripts/gpu_check.sh
}

phase wheels wheels
if [ "${REUSE_VENV:-0}" = "1" ] && [ -x "$VENV/bin/python3" ]; then
    phase "reused venv" reuse_venv
else
    phase "venv (python 3.12)" venv
    phase "device packages" device_packages
fi
not_on_device
status=0
phase "gpu_check dry run" dry_run || status=$?
echo
echo "device rehearsal: $("$VENV/bin/python3" --version), torch $("$VENV/bin/python3" -c 'import torch; print(torch.__version__)')"
printf '%s\n' "${TIMES[@]}"
uptime
exit "$status"
