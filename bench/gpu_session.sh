#!/usr/bin/env bash
# The device calls that gather every GPU number the docs report: CUDA tests, the up-GEMM sweeps, the kernel profile,
# the single-GPU layer sweeps (uniform and typed experts) and the expert-parallel runs. Each step has its own time
# limit so one failure cannot eat the call; STEPS picks steps (one device command may run 10 minutes, so the layer
# sweeps go in a call of their own).
#   OUT=dir STEPS="tests sweeps profile" bash bench/gpu_session.sh
#   OUT=dir STEPS="layers" bash bench/gpu_session.sh
#   OUT=dir STEPS="distributed" NPROCS="2 4" bash bench/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
STEPS=${STEPS:-"tests sweeps profile layers"}
log="$OUT/session.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$log"
step() { [[ " $STEPS " == *" $1 "* ]]; }
if step tests; then
    timeout 150 python3 -m pytest tests/cuda -q -p no:cacheprovider 2>&1 | tail -25 | tee -a "$log"
fi
if step sweeps; then
    for types in language typed; do
        timeout 150 python3 bench/up_epilogue.py --tokens 65536 --expert-types "$types" \
            --json "$OUT/up-epilogue-$types.json" 2>&1 | grep -v -i "warn" | tee -a "$log"
    done
fi
if step profile; then
    timeout 150 python3 bench/kernel_profile.py --tokens 512,2048,65536 --graph-max-tokens 65536 \
        --json "$OUT/kernel-profile.json" 2>&1 | grep -v -i "warn" | tee -a "$log"
fi
if step layers; then
    sweep="--device cuda --tokens 512,2048,8192,32768,65536 --graph --graph-max-tokens 65536 --check --repeats 30"
    # bench.backends: `python -m pimoe bench` that also knows the benchmark-only cuda_grouped_mm and cuda_hybrid
    timeout 300 python3 -m bench.backends $sweep --expert-types language --compare cuda_grouped_mm,sorted \
        --json "$OUT/layer-uniform.json" 2>&1 | grep -v "it/s" | tee -a "$log"
    timeout 270 python3 -m bench.backends $sweep --compare cuda_fused_up,cuda_grouped_mm \
        --json "$OUT/layer-typed.json" 2>&1 | grep -v "it/s" | tee -a "$log"
fi
if step distributed; then
    for n in ${NPROCS-2}; do
        timeout 200 torchrun --nproc-per-node "$n" bench/distributed_bench.py --out "$OUT/distributed-${n}gpu.json" \
            2>&1 | grep -v -i "warning" | tail -12 | tee -a "$log"
    done
fi
