#!/usr/bin/env bash
# Copy the EMA weights of a finished `kinema4d train default` run into the package as the bundled default model
# (src/kinema4d/assets/default_model): model.safetensors (= the run's ema.safetensors, stored as float16 to halve the
# package size; loading casts back to float32, and README's tables are measured on this very file),
# model_config.json, train_config.json and the training log (metrics.csv). Usage: bash scripts/bundle_default.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/default}
CKPT=$RUN/ckpt/$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['path'])" "$RUN/ckpt/latest.json")
DST=src/kinema4d/assets/default_model
mkdir -p "$DST.tmp"
.venv/bin/python - "$CKPT/ema.safetensors" "$DST.tmp/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() and k != "latent_stats" else v).contiguous()
           for k, v in sd.items()}, sys.argv[2])
PY
cp "$CKPT/model_config.json" "$CKPT/train_config.json" "$DST.tmp/"
cp "$RUN/metrics.csv" "$DST.tmp/training_log.csv"
chmod 644 "$DST.tmp"/*
rm -rf "$DST" && mv "$DST.tmp" "$DST"
du -sh "$DST"
