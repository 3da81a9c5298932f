#!/usr/bin/env bash
# One device call: the named steps, each with its own time limit; a failure is logged, never fatal, so later steps
# still run. Logs and JSON land in $OUT (at most 8 files come back: the logs are packed into one archive).
#   STEPS="tests train-tests compile-tests hf-tests" OUT=dir bash bench/device_round.sh
#   STEPS="train-bench hf-bench train-gpu backends" OUT=dir bash bench/device_round.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.:${PYTHONPATH:-} TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
OUT=${OUT:?set OUT to the output folder}
logs=/tmp/device-logs; mkdir -p "$logs"
summary="$OUT/summary.log"
started=$(date +%s)
note() { echo "[$(( $(date +%s) - started ))s] $*" | tee -a "$summary"; }
run_step() {  # run_step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2; shift 2
    note "start $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    note "end $name rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)')"
    tail -25 "$logs/$name.log" >> "$summary"
    tar -czf "$OUT/logs.tgz" -C "$logs" .  # after every step: a call cut off at its limit still returns the logs
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  date -u; } >> "$summary" 2>&1
PYTEST="python3 -m pytest -q -p no:cacheprovider -rfE"
for step in ${STEPS:?name the steps}; do
    case $step in
        tests) run_step tests 120 $PYTEST tests/cuda/test_fast_path.py tests/cuda/test_auto_graph.py tests/cuda/test_tuning.py tests/cuda/test_grouped_cpu.py \
                   tests/layer tests/test_architecture.py tests/bench --durations=5 ;;
        train-tests) run_step train-tests 160 $PYTEST tests/cuda/test_train_cuda.py tests/cuda/test_train_path.py tests/cuda/test_train_graph.py \
                   -k "not compiled" --durations=8 ;;
        graph-probe) run_step graph-probe 90 python3 bench/train_graph_probe.py ;;
        compile-tests) run_step compile-tests 300 $PYTEST tests/cuda/test_train_cuda.py tests/cuda/test_train_path.py -k compiled --durations=4 ;;
        hf-tests) run_step hf-tests 90 $PYTEST tests/hf --durations=5 ;;
        train-bench) run_step train-bench 170 python3 bench/train_step.py --device cuda --profile 65536 \
                   --json "$OUT/train-step.json" ;;
        forward-bench) run_step forward-bench 120 python3 bench/train_step.py --device cuda --tokens 2048 \
                   --json "$OUT/train-step-forward.json" ;;
        hf-bench) run_step hf-bench 100 python3 bench/hf_moe_block.py --graphs --out "$OUT/hf-moe-block.json" ;;
        train-gpu) run_step train-gpu 110 python3 -m pimoe train --device cuda --preset gpu --batch-size 32 --seq-len 512 \
                   --steps 30 --warmup 5 --num-train 3000 --num-val 40 --no-progress --threads 0 \
                   --out /tmp/pimoe-gpu.safetensors
                   cp /tmp/pimoe-gpu.json "$OUT/train-gpu-metadata.json" 2>/dev/null ;;
        train-gpu-graph) run_step train-gpu-graph 110 python3 -m pimoe train --device cuda --preset gpu --batch-size 64 \
                   --seq-len 512 --steps 30 --warmup 5 --num-train 3000 --num-val 40 --no-progress --threads 0 \
                   --cuda-graph --heldout-count 0 --out /tmp/pimoe-gpu-graph.safetensors
                   cp /tmp/pimoe-gpu-graph.json "$OUT/train-gpu-graph-metadata.json" 2>/dev/null ;;
        train-gpu-compile) run_step train-gpu-compile 240 python3 -m pimoe train --device cuda --preset gpu --batch-size 32 \
                   --seq-len 512 --steps 40 --warmup 5 --num-train 3000 --num-val 40 --no-progress --threads 0 --compile \
                   --heldout-count 0 --out /tmp/pimoe-gpu-compiled.safetensors
                   cp /tmp/pimoe-gpu-compiled.json "$OUT/train-gpu-compiled-metadata.json" 2>/dev/null ;;
        preset-steps) run_step preset-steps 200 python3 bench/train_preset_steps.py --json "$OUT/preset-steps.json"
                   run_step preset-steps-64 200 python3 bench/train_preset_steps.py --batch-size 64 --steps 20 \
                   --json "$OUT/preset-steps-64.json" ;;
        graph-steps) run_step graph-steps 150 python3 bench/train_preset_steps.py --batch-size 64 --steps 20 \
                   --modes eager,graph --json "$OUT/preset-steps-graph.json"
                   run_step graph-train-test 90 $PYTEST tests/cuda/test_train_cuda.py -k whole_step --durations=2 ;;
        size-sweep) # shapes of 70-100 M parameters (the "tens of millions" of issue 18): does a wider preset reach 35% MFU?
                   for size in "512 1024 6 8" "1024 512 6 16" "1536 512 3 24" "2048 512 2 32" "1024 1024 4 16" "768 768 6 12"; do
                       set -- $size
                       run_step "size-$1-$2-$3" 100 python3 bench/train_preset_steps.py --batch-size 64 --steps 16 \
                       --modes graph --hidden $1 --intermediate $2 --layers $3 --heads $4 --json "$logs/size-$1-$2-$3.json"
                   done ;;
        shape-check) # SHAPE="H F L HEADS": the dense reference there, and what it learns in 400 steps beside the preset
                   set -- ${SHAPE:?set SHAPE="hidden intermediate layers heads"}
                   run_step "dense-$1" 150 python3 bench/dense_lm_mfu.py --hidden $1 --intermediate $2 --layers $3 \
                   --heads $4 --modes graph,compile --json "$OUT/dense-lm-mfu-h$1.json"
                   run_step "ablation-$1" 250 python3 bench/preset_ablation.py --cuda-graph --steps 400 --variant "" \
                   --variant "hidden_size=$1,intermediate_size=$2,num_layers=$3,num_heads=$4" \
                   --json "$OUT/preset-ablation-h$1.json" ;;
        float32) # the grouped-rows kernels (Tuning.grouped_rows_kernels, off until this step has run): GPU tests, then
                   # the float32 step: per-expert loop eager, the kernels eager, the kernels in a whole-step graph
                   run_step float32-tests 150 $PYTEST tests/cuda/test_train_cuda.py -k grouped_rows --durations=3
                   run_step float32-steps 200 python3 bench/train_preset_steps.py --precision float32 --batch-size 16 \
                   --steps 12 --modes eager --try "" --try grouped_rows_kernels=1 --json "$OUT/float32-eager.json"
                   run_step float32-graph 150 python3 bench/train_preset_steps.py --precision float32 --batch-size 16 \
                   --steps 12 --modes graph --try grouped_rows_kernels=1 --json "$OUT/float32-graph.json" ;;
        repro) run_step repro 200 python3 bench/repro_check.py --cuda-graph --steps 30 --json "$OUT/repro-check.json" ;;
        graph-pair) run_step graph-new 140 python3 bench/train_preset_steps.py --batch-size 64 --steps 16 --modes graph \
                   --json "$OUT/graph-new.json"
                   run_step graph-old 140 bash -c "cd .old && python3 bench/train_preset_steps.py --batch-size 64 \
                   --steps 16 --modes graph --json $OUT/graph-old.json" ;;  # .old: an earlier tree's pimoe/ and bench/
        preset-profile) run_step preset-profile 120 python3 bench/preset_profile.py --ops 30 --json "$OUT/preset-profile.json" ;;
        preset-profile-old) run_step preset-profile-old 120 bash -c "cd .old && python3 bench/preset_profile.py \
                   --json $OUT/preset-profile-old.json" ;;  # .old: an earlier tree's pimoe/ and bench/
        act-tiles) run_step act-tiles 90 python3 bench/act_tiles.py --json "$OUT/act-tiles.json" ;;
        train-bench-old) run_step train-bench-old 170 bash -c "cd .old && python3 bench/train_step.py --device cuda \
                   --profile 65536 --json $OUT/train-step-old.json" ;;  # .old: an earlier tree's pimoe/ and bench/
        sum-tiles) run_step sum-tiles 90 python3 bench/segment_sums_tiles.py --json "$OUT/sum-tiles.json" ;;
        backends) run_step backends 60 python3 -m bench.backends --device cuda --tokens 512,65536 --graph --check \
                   --compare cuda_grouped_mm,cuda_hybrid,sorted ;;
        baseline) run_step baseline-old 70 bash -c "cd .old && python3 -m pimoe bench --device cuda --tokens 512,65536 \
                   --graph --no-loop --json $OUT/layer-old.json"
                   run_step baseline-new 70 python3 -m pimoe bench --device cuda --tokens 512,65536 --graph --no-loop \
                   --json "$OUT/layer-new.json" ;;
        app) run_step app 200 $PYTEST tests/app --durations=5 ;;
        live-train) run_step live-train-cuda 60 python3 bench/live_training_rate.py --device cuda --seconds 20 \
                   --json "$OUT/live-training-cuda.json"
                   run_step live-train-cpu 60 python3 bench/live_training_rate.py --device cpu --seconds 20 \
                   --json "$OUT/live-training-cpu.json" ;;
        host-profile) run_step host-profile 240 python3 -m bench.host_profile --case hf4096 --case hf512 --case fwd512 \
                   --case train8192 --case train65536 --case typed512 --case train2048 --python 50 --out "$OUT/host-profile.json" ;;
        *) note "unknown step $step" ;;
    esac
done
tar -czf "$OUT/logs.tgz" -C "$logs" .
note "done"
