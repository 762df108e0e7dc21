#!/usr/bin/env bash
# The GPU check: finetune.py on random-init Llama models (~125 M, ~1 B), bf16, full / LoRA / QLoRA:
# tokens/s, MFU, peak memory beside jobs/memory.py's estimate. One command, under 8 minutes on one GPU.
#   bench/gpu_check.sh            (on a CUDA machine)
#   bench/gpu_check.sh --dry-run  (anywhere: the plan and the estimates, no training)
# PYTHON picks the interpreter (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec timeout 480 "$PYTHON" bench/gpu_check.py "$@"
