#!/usr/bin/env bash
# One check of noisypref on a lent CUDA machine (one GPU, no network), ending within BUDGET_S seconds.
#
#     scripts/gpu_check.sh [WHEELS]          # on the GPU machine; WHEELS: scripts/build_wheels.sh's folder
#     scripts/gpu_check.sh --plan            # print the plan (steps, their time limits; then as JSON) and exit
#     GPU_CHECK_CPU=1 scripts/gpu_check.sh   # the dry run: the same steps on the CPU, tiny sizes
#
# Steps, in this order (STEPS="pytest-gpu throughput" runs a subset, e.g. for a rerun):
#   install     pip install --no-index --find-links WHEELS --no-deps (when the folder exists; into
#               $WORK/site, put on PYTHONPATH, where the interpreter's environment is not writable), then
#               pip check, pip list, the versions of torch / CUDA / flash-attn and the imports every later
#               step needs (the step fails when one is missing)
#   pytest-gpu  pytest -m gpu on the test files that use the marker (tests/test_gpu.py: bf16 autocast
#               step, packed vs padded log-probs under SDPA, flex attention and FlashAttention-2, a resumed
#               run with dropout, LoRA with a live reference)
#   throughput  benchmarks/throughput.py --device cuda: random Qwen2-0.5B and 1.5B against TRL's
#               DPOTrainer (live and precomputed reference) and the γ overhead; --smoke on the CPU (explicit
#               options: an unknown one ends it at once)
#   study       a random Qwen2-0.5B-shaped model (scripts/random_qwen2_model.py) trained on testbed pairs
#               (configs/gpu_check.yaml: DPO and γ-DPO at 0 and 40 % flips, 4 runs)
#   text        a random SmolLM2-135M-shaped Llama with a BPE tokenizer trained on the HH-RLHF slice of
#               scripts/device_data.py (device_data/, carried with the call; made from ../shared/data where
#               that is) (scripts/random_text_model.py), DPO and γ-DPO on that slice, 2 runs;
#               flash_attention_2 when flash-attn imports, SDPA otherwise
# No step launches several processes: the machines lent have one GPU, NCCL refuses two processes on one
# GPU, and a launch of one process joins no process group (FSDP2 in one process trains unsharded), so
# torchrun and FSDP2 are left to tests/test_distributed.py (gloo, on the CPU).
# The steps share BUDGET_S less a fixed reserve (the probes of the GPU and of the environment, the kill
# grace of every step and the summary): each step's limit is its share of the time the steps still have when it starts (so a step
# that ends early leaves its time to the later ones), and the whole check ends within BUDGET_S by
# construction. The plan, with the limits each step gets when every step uses its whole limit, is
# printed first. A failing step is reported and the next one still runs: every step runs with this
# tree on PYTHONPATH, so none depends on an install of noisypref. Exit status 0 when no step failed.
# $OUT gets one log per step and summary.txt (6 files; a lent machine returns at most 8).
#
# Settings (environment):
#   WHEELS    folder of wheels (default ./wheels)
#   OUT       output folder (default runs/gpu_check_out)
#   WORK      scratch folder of models, study files and study folders (default runs/gpu_check_work)
#   BUDGET_S  seconds for the whole check (default 480 on a GPU, 900 in the CPU dry run)
#   STEPS     the steps to run, space- or comma-separated (default: all); their shares are rescaled
#   PYTHON    interpreter (default python3, the lent machine's)
#   GPU_CHECK_CPU=1   the dry run on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

PLAN_ONLY=0
if [ "${1:-}" = "--plan" ]; then
    PLAN_ONLY=1
    shift
fi
WHEELS="${1:-${WHEELS:-./wheels}}"
OUT="${OUT:-runs/gpu_check_out}"
WORK="${WORK:-runs/gpu_check_work}"
PY="${PYTHON:-python3}"
CPU_DRY_RUN="${GPU_CHECK_CPU:-0}"
ALL_STEPS=(install pytest-gpu throughput study text)
declare -A SHARE=([install]=10 [pytest-gpu]=22 [throughput]=30 [study]=22 [text]=16)  # percent
KILL_GRACE_S=5       # after a step's limit, SIGTERM; SIGKILL this much later
PROBE_S=30           # before the first step: nvidia-smi and whether the environment is writable, 15 s each
SUMMARY_S=30         # the summary's tables

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [ "$CPU_DRY_RUN" = "1" ]; then
    BUDGET_S="${BUDGET_S:-900}"
    MODE=cpu
    SHAPE=tiny TEXT_SHAPE=tiny TEXT_VOCABULARY="--vocabulary 1024"
    RUN_DEVICE="--workers 1"
    THROUGHPUT_OPTIONS="--smoke --device cpu"
else
    BUDGET_S="${BUDGET_S:-480}"
    MODE=gpu
    SHAPE=0.5b TEXT_SHAPE=smollm2-135m TEXT_VOCABULARY=""
    RUN_DEVICE="--devices 0"
    THROUGHPUT_OPTIONS="--device cuda --models qwen2-0.5b qwen2-1.5b --steps 12 --warmup-steps 3"
fi

SELECTED=()
for name in ${STEPS:-${ALL_STEPS[*]}}; do
    for part in ${name//,/ }; do
        [ -n "${SHARE[$part]+set}" ] || { echo "STEPS: unknown step '$part' (steps: ${ALL_STEPS[*]})"; exit 2; }
        SELECTED+=("$part")
    done
done
[[ "$BUDGET_S" =~ ^[0-9]+$ ]] || { echo "BUDGET_S=$BUDGET_S is not a whole number of seconds"; exit 2; }
TOTAL_SHARE=0
for name in "${SELECTED[@]}"; do TOTAL_SHARE=$((TOTAL_SHARE + SHARE[$name])); done
RESERVE_S=$((PROBE_S + SUMMARY_S + KILL_GRACE_S * ${#SELECTED[@]}))
STEPS_S=$((BUDGET_S - RESERVE_S))
if [ "$STEPS_S" -lt $((20 * ${#SELECTED[@]})) ]; then
    echo "BUDGET_S=$BUDGET_S leaves $STEPS_S s for ${#SELECTED[@]} step(s) after the ${RESERVE_S} s reserve; give at least $((RESERVE_S + 20 * ${#SELECTED[@]}))"
    exit 2
fi
declare -A LIMIT
for name in "${SELECTED[@]}"; do LIMIT[$name]=$((STEPS_S * SHARE[$name] / TOTAL_SHARE)); done

WHEEL_COUNT=0
[ -d "$WHEELS" ] && WHEEL_COUNT=$(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l)
declare -A WHAT=(
    [install]="$([ "$WHEEL_COUNT" -gt 0 ] && echo "pip install $WHEEL_COUNT wheels from $WHEELS, " || echo "no wheels in $WHEELS; ")pip check, pip list, imports"
    [pytest-gpu]="pytest -m gpu $(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')"
    [throughput]="benchmarks/throughput.py $THROUGHPUT_OPTIONS"
    [study]="random Qwen2 ($SHAPE) + configs/gpu_check.yaml, 4 runs"
    [text]="random SmolLM2-135M-shaped Llama ($TEXT_SHAPE) on the HH-RLHF slice, 2 runs"
)
plan() {
    echo "noisypref GPU check ($MODE): budget $BUDGET_S s = steps $STEPS_S s + reserve $RESERVE_S s (probes $PROBE_S, kill grace $KILL_GRACE_S per step, summary $SUMMARY_S); python: $PY"
    printf '  %-11s %6s   %s\n' step limit what
    local sum=0
    for name in "${SELECTED[@]}"; do
        printf '  %-11s %4d s   %s\n' "$name" "${LIMIT[$name]}" "${WHAT[$name]}"
        sum=$((sum + LIMIT[$name]))
    done
    printf '  %-11s %4d s   (at most %d s with the kill grace, within the budget of %d s)\n' total "$sum" \
        "$((sum + RESERVE_S))" "$BUDGET_S"
}
plan_json() {
    local limits=""
    for name in "${SELECTED[@]}"; do limits+="${limits:+, }\"$name\": ${LIMIT[$name]}"; done
    printf '{"mode": "%s", "budget_s": %d, "steps_s": %d, "reserve_s": %d, "step_limits_s": {%s}}\n' \
        "$MODE" "$BUDGET_S" "$STEPS_S" "$RESERVE_S" "$limits"
}
plan
if [ "$PLAN_ONLY" = "1" ]; then
    plan_json
    exit 0
fi

STARTED=$(date +%s)
mkdir -p "$OUT" "$WORK"
WORK="$(cd "$WORK" && pwd)"
CACHE_DIR="$WORK/cache"
# The wheels go into the interpreter's environment; where that is not writable, into $WORK/site, which
# every step then has on PYTHONPATH.
SITE=""
if ! timeout 15 "$PY" -c "import os, sys, sysconfig; sys.exit(not os.access(sysconfig.get_paths()['purelib'], os.W_OK))"; then
    SITE="$WORK/site"
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi
SUMMARY=()
FAILED=0
plan > "$OUT/summary.txt"

if [ "$CPU_DRY_RUN" != "1" ]; then
    timeout 15 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || { echo "no GPU answers nvidia-smi; for a dry run on the CPU set GPU_CHECK_CPU=1"; exit 2; }
fi

STEPS_END=$(($(date +%s) + STEPS_S))
SHARE_LEFT=$TOTAL_SHARE

# step NAME COMMAND...: run under the step's limit, log to $OUT/NAME.log, record the outcome. The limit
# is the step's share of what the steps have left; the time past STEPS_END is the reserve.
step() {
    local name="$1"
    shift
    local started status outcome
    started=$(date +%s)
    LIMIT[$name]=$(((STEPS_END - started) * SHARE[$name] / SHARE_LEFT))
    [ "${LIMIT[$name]}" -ge 1 ] || LIMIT[$name]=1
    SHARE_LEFT=$((SHARE_LEFT - SHARE[$name]))
    echo "=== $name (limit ${LIMIT[$name]} s)"
    timeout --kill-after="$KILL_GRACE_S" "${LIMIT[$name]}" "$@" 2>&1 | tee "$OUT/$name.log"
    status=${PIPESTATUS[0]}
    case "$status" in
        0) outcome="ok" ;;
        124 | 137) outcome="TIMED OUT"; FAILED=1 ;;
        *) outcome="FAILED (exit $status)"; FAILED=1 ;;
    esac
    SUMMARY+=("$(printf '%-11s %-18s %5d s  %4d s   %s' "$name" "$outcome" "$(($(date +%s) - started))" \
        "${LIMIT[$name]}" "$OUT/$name.log")")
}

install_step() {
    if [ "$WHEEL_COUNT" -gt 0 ]; then
        local target=()
        [ -n "$SITE" ] && target=(--target "$SITE") && echo "the environment is not writable: installing into $SITE"
        "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps --no-cache-dir --disable-pip-version-check \
            "${target[@]}" "$WHEELS"/*.whl || return 1
    else
        echo "no wheels in $WHEELS: nothing installed"
    fi
    echo "--- pip check (requirements that installed packages do not meet; for information)"
    "$PY" -m pip check || true
    echo "--- pip list"
    "$PY" -m pip list --disable-pip-version-check
    echo "--- versions and imports"
    "$PY" - <<'EOF'
import importlib
import platform
import sys

import torch

print(f"python {platform.python_version()} at {sys.executable}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
missing = []
for name in ("transformers", "datasets", "accelerate", "trl", "peft", "alpaca_eval.metrics.glm_winrate",
             "pandas", "pyarrow", "scipy", "matplotlib", "yaml", "pytest", "hypothesis",
             "noisypref.benchmark.run.execute", "flash_attn"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')} ({getattr(module, '__file__', '')})")
    except Exception as error:  # noqa: BLE001  (every failure to import is reported alike)
        print(f"  {name}: cannot import: {type(error).__name__}: {error}")
        missing += [] if name == "flash_attn" else [name]  # optional: the text step then runs SDPA
sys.exit(f"missing: {', '.join(missing)}" if missing else 0)
EOF
}

throughput_step() {
    # Explicit options only, never a probe of --help: an unknown option (argparse) or a broken import
    # ends the script in seconds, not at the step's limit.
    # shellcheck disable=SC2086  # the options are words
    "$PY" benchmarks/throughput.py $THROUGHPUT_OPTIONS
}

text_attention() {
    if [ "$CPU_DRY_RUN" != "1" ] && "$PY" -c "import flash_attn" 2>/dev/null; then
        echo flash_attention_2
    else
        echo sdpa
    fi
}

studies() {  # writes $WORK/studies/{study,text}.yaml
    "$PY" scripts/gpu_check_studies.py "$WORK/studies" --mode "$MODE" --model "$WORK/qwen2-$SHAPE" \
        --text-model "$WORK/text-$TEXT_SHAPE" --attn "$(text_attention)"
}

study_step() {
    studies && "$PY" scripts/random_qwen2_model.py "$WORK/qwen2-$SHAPE" --shape "$SHAPE" \
        && "$PY" -m noisypref run "$WORK/studies/study.yaml" --out "$WORK/study" --cache-dir "$CACHE_DIR" \
            --force --no-report $RUN_DEVICE
}

text_step() {
    studies && "$PY" scripts/random_text_model.py "$WORK/text-$TEXT_SHAPE" --shape "$TEXT_SHAPE" $TEXT_VOCABULARY \
        && "$PY" -m noisypref run "$WORK/studies/text.yaml" --out "$WORK/text" --cache-dir "$CACHE_DIR" \
            --force --no-report $RUN_DEVICE
}

pytest_gpu_step() {
    # only the files that use the marker: collecting the whole suite imports every test module
    local files
    mapfile -t files < <(grep -l "mark.gpu" tests/test_*.py)
    "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs "${files[@]}"
}

print_results() {
    "$PY" - "$@" <<'EOF'
import sys

import pandas as pd

for folder in sys.argv[1:]:
    try:
        frame = pd.read_parquet(f"{folder}/results.parquet")
    except OSError:
        continue
    columns = [c for c in ("method_label", "target_flip_rate", "status", "final_loss", "heldout_accuracy",
                           "noise_detection_auroc", "gold_win_rate", "wall_time_s") if c in frame]
    print(f"\n{folder}/results.parquet")
    print(frame[columns].to_string(index=False, float_format=lambda value: f"{value:.3f}"))
EOF
}

export PY WHEELS WHEEL_COUNT WORK SITE MODE SHAPE TEXT_SHAPE TEXT_VOCABULARY CACHE_DIR CPU_DRY_RUN RUN_DEVICE THROUGHPUT_OPTIONS
export -f print_results install_step pytest_gpu_step throughput_step text_attention studies study_step text_step
for name in "${SELECTED[@]}"; do
    step "$name" bash -c "${name//-/_}_step"
done

{
    echo
    echo "noisypref GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $MODE), $(($(date +%s) - STARTED)) s of the $BUDGET_S s budget"
    printf '%-11s %-18s %7s %7s   %s\n' step outcome time limit log
    printf '%s\n' "${SUMMARY[@]}"
    timeout "$SUMMARY_S" bash -c 'print_results "$@"' _ "$WORK/study" "$WORK/text" 2>&1
    if [ -f "$OUT/throughput.log" ]; then
        echo
        echo "throughput (last line, JSON):"
        tail -n 1 "$OUT/throughput.log"
    fi
} | tee -a "$OUT/summary.txt"
exit "$FAILED"
