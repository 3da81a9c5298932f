#!/usr/bin/env bash
# One device call that gathers every GPU number the docs report: CUDA tests, the single-GPU layer sweep (uniform and
# typed experts) and the expert-parallel runs. Each step has its own time limit so one failure cannot eat the call.
#   OUT=dir NPROCS="2 4" SKIP_TESTS=1 bash bench/gpu_session.sh   (NPROCS="" on a one-GPU machine)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
log="$OUT/session.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$log"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    timeout 120 python3 -m pytest tests/cuda -q -p no:cacheprovider 2>&1 | tail -25 | tee -a "$log"
fi
timeout 120 python3 bench/kernel_profile.py --tokens 512,2048,65536 --graph-max-tokens 65536 \
    --json "$OUT/kernel-profile.json" 2>&1 | grep -v -i "warn" | tee -a "$log"
sweep="--device cuda --tokens 512,2048,8192,32768,65536 --graph --graph-max-tokens 65536 --check --repeats 30"
timeout 200 python3 -m pimoe bench $sweep --expert-types language --compare cuda_grouped_mm,sorted \
    --json "$OUT/layer-uniform.json" 2>&1 | grep -v "it/s" | tee -a "$log"
timeout 150 python3 -m pimoe bench $sweep --json "$OUT/layer-typed.json" 2>&1 | grep -v "it/s" | tee -a "$log"
for n in ${NPROCS-2}; do  # NPROCS="" skips the distributed runs
    timeout 200 torchrun --nproc-per-node "$n" bench/distributed_bench.py --out "$OUT/distributed-${n}gpu.json" 2>&1 \
        | grep -v -i "warning" | tail -12 | tee -a "$log"
done
