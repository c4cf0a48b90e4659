#!/usr/bin/env bash
# One device call: kernel tests on the GPU, then the kernel benchmark; results under $OUT (or ./gpu_out).
# The device image has torch + triton + transformers but no torchao: the package runs from the checkout via
# PYTHONPATH (mqcompile never imports torchao), so nothing needs installing there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 python -m pytest -q -p no:cacheprovider tests/kernels/test_triton_kernels.py tests/test_lowering.py \
    2>&1 | tee "$OUT/tests.log" | tail -5
timeout 400 python tools/bench_kernels.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -40
