#!/usr/bin/env bash
# Every GPU check of the project in one prepared run, for a lent GPU machine (about 3 minutes on an H200, 170 s measured):
#
#     bash benchmarks/gpu_session.sh                  # writes five files into $OUT (the device tool's folder) or benchmarks/results
#     DEVICE=cpu SIZE=tiny bash benchmarks/gpu_session.sh   # the same steps as a smoke run on a CPU
#
# 1. tests/test_cuda.py: no host synchronisation in a forward or a training step, every row equal to the row alone
# 2. benchmarks/gpu_checks.py: mixed == alone, threads, both checkpointings with two forwards before one backward
#    (backward on the autograd device thread), bf16 steps, host synchronisations counted
# 3. benchmarks/run.py --size gpu: the README's GPU column (bf16, hidden 2048, 16 layers, seq 512) against PEFT
# 4. benchmarks/run.py --profile: a training step of each method op by op (where the overhead goes)
# The machine needs torch (CUDA), transformers and peft installed; hyperlight runs from this checkout.
set -uo pipefail
out=${OUT:-benchmarks/results}
device=${DEVICE:-cuda}
size=${SIZE:-gpu}
python=${PYTHON:-python}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1 HYPERLIGHT_DEVICE="$device"
status=0

"$python" - <<'EOF' | tee "$out/gpu_env.txt"
import torch, transformers, peft
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
EOF
if [ "$device" = cuda ]; then
    timeout 180 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15 | tee "$out/test_cuda.log"
    status=$((status | PIPESTATUS[0]))
fi
timeout 240 "$python" benchmarks/gpu_checks.py 2>&1 | tee "$out/gpu_checks.log"
status=$((status | PIPESTATUS[0]))
timeout 420 "$python" benchmarks/run.py --size "$size" --device "$device" --skip memory size 2>&1 | tee "$out/gpu_bench.md"
status=$((status | PIPESTATUS[0]))
timeout 120 "$python" benchmarks/run.py --size "$size" --device "$device" --profile >"$out/gpu_profile.txt" 2>&1
status=$((status | $?))
exit "$status"
