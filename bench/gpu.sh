#!/usr/bin/env bash
# All GPU training measurements in one go, for one GPU and a few minutes of its time:
# the f16 paper configuration (MAR KL-16 architecture, LoRA r32, CODA V=16384, LPIPS-VGG, PatchGAN)
# at 256^2, batch 16: fp32 vs TF32 vs bf16 autocast vs channels_last vs torch.compile,
# images/s (median over the timed steps) and peak allocated memory. Prints one table.
#
#   bash bench/gpu.sh                 # about 5 minutes on an H200 (most of it compiling)
#   OPTIONS=fp32,bf16 STEPS=6 bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BATCH=${BATCH:-16}
STEPS=${STEPS:-8}
OPTIONS=${OPTIONS:-fp32,tf32,bf16,bf16+channels_last,compile,bf16+compile}
LOG=${LOG:-$(mktemp -t coda-bench-gpu.XXXXXX.log)}
export HF_HUB_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
echo "training progress goes to $LOG"
# The table is on stdout; the trainer's progress bars (stderr) go to the log.
timeout "${TIMEOUT:-900}" "$PY" bench/train.py --device cuda --batch "$BATCH" --steps "$STEPS" --warmup 2 \
    --options "$OPTIONS" 2>"$LOG"

# The generator at paper size (VAR-d16 on the f16 tokens, V = 16384): its training step in fp32 and
# bf16, and sampling with the KV cache against without it (same tokens).
for opt in "" "--bf16"; do
    timeout "${TIMEOUT:-900}" "$PY" bench/generation.py --paper --device cuda --batch "${GEN_BATCH:-32}" \
        --steps "${GEN_STEPS:-5}" --samples "${GEN_SAMPLES:-64}" $opt 2>>"$LOG" | grep -v '^\s*$'
done
