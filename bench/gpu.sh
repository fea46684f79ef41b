#!/usr/bin/env bash
# One call on a lent GPU: build, test on CUDA tensors, time the kernels, and compile each kernel
# configuration for sm_80 and sm_90 (registers, spills, shared memory, compile time). The log goes to
# bench/results/<gpu>-<date>.txt (and to $OUT when the device tool sets it).
set -uo pipefail
cd "$(dirname "$0")/.."
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-')
log="bench/results/${gpu}-$(date +%F).txt"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python -m pip install -q --no-build-isolation -e . 2>&1 | tail -2
  python -m pytest -q -p no:cacheprovider tests/test_triton_noise.py tests/test_triton_perturb.py \
    tests/test_triton_projected_adam.py tests/test_triton_optimizers.py tests/test_rsvd_cuda.py \
    tests/test_one_trajectory.py tests/test_fallback.py tests/test_gpu_compile.py 2>&1 | tail -5
  python -c "from bench import rsvd; rsvd.run(shapes=((4096, 4096), (4096, 11008)), rank=128)"
  python -c "from bench import kernels; kernels.run('cuda')"
  python -c "from bench import gpu_compile; gpu_compile.run()"
} 2>&1 | tee "$log"
[ -n "${OUT:-}" ] && cp "$log" "$OUT/"
