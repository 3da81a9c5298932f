#!/usr/bin/env bash
# One device call (<= 9 minutes) for issue 18, training on the fast path: the CUDA tests of the differentiable path,
# the training-step benchmark, a short bf16 run of the GPU preset, then the inference fast-path tests as a regression
# check. Each step has its own time limit and a failure is logged, never fatal, so later steps still run.
#   OUT=dir bash bench/gpu_train_session.sh
# Writes (8 files): session.log, tests-train.log, tests-compile.log, train-step.json, train-step.log, train-gpu.log,
# train-gpu-metadata.json, tests-fast-path.log. Step limits add up to 500 s.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
OUT=${OUT:?set OUT to the output folder}
log="$OUT/session.log"
started=$(date +%s)
note() { echo "[$(( $(date +%s) - started ))s] $*" | tee -a "$log"; }
run_step() {  # run_step NAME LIMIT_S LOGFILE COMMAND...
    local name=$1 limit=$2 file=$3; shift 3
    note "start $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$file" 2>&1
    local rc=$?
    note "end $name rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)')"
    tail -30 "$file" >> "$log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} >> "$log" 2>&1

run_step tests-train 80 "$OUT/tests-train.log" \
    python3 -m pytest tests/cuda/test_train_cuda.py tests/cuda/test_train_path.py -q -p no:cacheprovider \
    -k "not compiled" --durations=8 -rfE
# Inductor compiles take most of this step's time (a layer, then PiMoE-LM, forward and backward)
run_step tests-compile 130 "$OUT/tests-compile.log" \
    python3 -m pytest tests/cuda/test_train_cuda.py -q -p no:cacheprovider -k compiled --durations=4 -rfE
run_step bench 150 "$OUT/train-step.log" \
    python3 bench/train_step.py --device cuda --profile 65536 --json "$OUT/train-step.json"
run_step train-gpu 100 "$OUT/train-gpu.log" \
    python3 -m pimoe train --device cuda --preset gpu --batch-size 32 --seq-len 512 --steps 40 --warmup 5 \
    --num-train 3000 --num-val 40 --no-progress --threads 0 --out /tmp/pimoe-gpu.safetensors
cp /tmp/pimoe-gpu.json "$OUT/train-gpu-metadata.json" 2>/dev/null || note "no checkpoint metadata to copy"
run_step tests-fast-path 40 "$OUT/tests-fast-path.log" \
    python3 -m pytest tests/cuda/test_fast_path.py -q -p no:cacheprovider -x -rfE
note "session done"
