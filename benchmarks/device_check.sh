#!/usr/bin/env bash
# One accelerator session (about 15 minutes of device time): versions, a GPU parity subset, then the benchmarks:
# mixed float32 first (never measured on a GPU before), mixed bfloat16 on a corpus-sized workload (the cuDNN
# attention kernel and the cold compile of all shapes show in its output), dense float32 and bfloat16.
# Usage (repo root): OUT=/some/dir bash benchmarks/device_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/berta-jax-device}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# one BERTA-shaped checkpoint for the tests and the benchmarks (tests/conftest.py and benchmarks/ both look
# for berta-shaped-seed0 under these folders), built once
export BERTA_JAX_BENCH_DIR=/tmp/berta-bench BERTA_JAX_TEST_CACHE=/tmp/berta-bench BERTA_JAX_CACHE_DIR=/tmp/berta-xla
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, torch, transformers, sentence_transformers as st; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'st', st.__version__)"
} 2>&1 | tee "$OUT/versions.txt"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_parity.py tests/test_attention.py \
  -k "berta_shaped or odd or kernel or fused" 2>&1 | tail -15 | tee "$OUT/parity.txt"
timeout 120 python3 benchmarks/throughput.py --mode mixed --dtype float32 2>&1 | grep -v Loading | tee "$OUT/mixed-float32.txt"
timeout 120 python3 benchmarks/throughput.py --mode mixed --dtype bfloat16 --texts 4096 2>&1 | grep -v Loading | tee "$OUT/mixed-bfloat16.txt"
for dtype in float32 bfloat16; do
  timeout 70 python3 benchmarks/throughput.py --mode dense --dtype $dtype 2>&1 | grep -v Loading | tee "$OUT/dense-$dtype.txt"
done
