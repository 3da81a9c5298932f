#!/usr/bin/env bash
# One device call for issue 18, training on the fast path: the CUDA tests of the differentiable path, the Inductor
# tests, the training-step benchmark with its kernel profile and a short bf16 run of the GPU preset.
#   OUT=dir bash bench/gpu_train_session.sh
exec env STEPS="${STEPS:-train-tests compile-tests train-bench train-gpu tests}" bash "$(dirname "$0")/device_round.sh"
