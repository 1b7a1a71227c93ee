#!/usr/bin/env bash
# GPU check (issue 12): the CuPy and PyTorch-CUDA tests, then the per-phase table of
# lowrank_online.torch on the GPU. Budget: under 8 minutes on one GPU. Without a GPU it says
# so and exits 0. Run from anywhere:  bash benchmarks/gpu_check.sh [output-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
PY="${PYTHON:-python}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch; skipped"
    exit 0
fi
mkdir -p "$OUT"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/device.txt" 2>/dev/null || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rc=0

# 1. CuPy backend of the array-API core (the xp fixture's cupy parameter) and torch on CUDA.
#    -k cupy selects the CuPy-parametrised tests; test_torch_cuda.py is the torch-CUDA module.
timeout 240 "$PY" -m pytest -q -x -p no:cacheprovider -k "cupy" tests/ 2>&1 | tail -n 15 | tee "$OUT/cupy_tests.txt"
rc=$(( rc || PIPESTATUS[0] ))
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_torch_cuda.py tests/test_torch_kfac.py 2>&1 | tail -n 15 | tee "$OUT/torch_cuda_tests.txt"
rc=$(( rc || PIPESTATUS[0] ))

# 2. The per-phase table on the GPU (MLP 784-W-W-10 W = 1024, 4096, CNN; batch 256).
timeout 180 "$PY" evidence/torch_overhead.py --device cuda --widths 1024 4096 --repeat 5 --check-amortised 50 \
    --output-dir "$OUT" 2>&1 | grep -v Warning | tee "$OUT/torch_overhead.txt"
rc=$(( rc || PIPESTATUS[0] ))
echo "gpu_check: done (exit $rc); tables in $OUT/"
exit "$rc"
