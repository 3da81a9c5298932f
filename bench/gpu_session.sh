#!/usr/bin/env bash
# One device call that gathers every GPU number the docs report: CUDA tests, the single-GPU layer sweep (uniform and
# typed experts) and the 2-GPU expert-parallel run. Each step has its own time limit so one failure cannot eat the
# call. Usage on a 2-GPU machine: OUT=/some/dir bash bench/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpus.txt"
timeout 120 python3 -m pytest tests/cuda -q -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/cuda-tests.txt"
sweep="--device cuda --tokens 512,2048,8192,32768,65536 --graph --check --repeats 30"
timeout 140 python3 -m pimoe bench $sweep --expert-types language --compare cuda_grouped_mm,cuda_hybrid,sorted \
    --json "$OUT/layer-uniform.json" 2>&1 | grep -v "it/s" | tee "$OUT/layer-uniform.txt"
timeout 90 python3 -m pimoe bench $sweep --json "$OUT/layer-typed.json" 2>&1 | grep -v "it/s" | tee "$OUT/layer-typed.txt"
timeout 200 torchrun --nproc-per-node 2 bench/distributed_bench.py --out "$OUT/distributed-2gpu.json" 2>&1 | tail -30 \
    | tee "$OUT/distributed.txt"
