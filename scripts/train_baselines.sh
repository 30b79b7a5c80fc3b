#!/usr/bin/env bash
# Train each model family on full Multi30k de->en for a fixed wall-clock budget, then evaluate it.
# Usage: scripts/train_baselines.sh [MINUTES] [OUT_DIR] [extra Hydra overrides...]
# Re-running skips models already evaluated, so a cut run continues where it stopped.
set -euo pipefail
minutes=${1:-20}
out=${2:-runs/baselines}
shift $(( $# > 2 ? 2 : $# )) || true
python=${PYTHON:-.venv/bin/python}
for model in rnn rnn_attention transformer; do
  run="$out/$model"
  if [ -f "$run/eval/test.json" ]; then echo "skip $model: $run/eval/test.json exists"; continue; fi
  if [ -f "$run/best.pt" ] && grep -q "done:" "$run/train.log" 2>/dev/null; then
    echo "$model trained; evaluating"
  else
    rm -rf "$run"
    "$python" -m translate.train model="$model" trainer.max_minutes="$minutes" hydra.run.dir="$run" "$@"
  fi
  "$python" -m translate.evaluate run="$run"
done
