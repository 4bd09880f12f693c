#!/usr/bin/env bash
# Copy the EMA weights of a finished `kinema4d train default` run into the package as the bundled default model
# (src/kinema4d/assets/default_model): model.safetensors (= the run's ema.safetensors, float32 as trained: README's
# tables are measured on the run's EMA weights, so the bundle is the same file; 23 MB for the 5.7 M parameters),
# model_config.json, train_config.json and the training log (metrics.csv). Usage: bash scripts/bundle_default.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/default}
CKPT=$RUN/ckpt/$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['path'])" "$RUN/ckpt/latest.json")
DST=src/kinema4d/assets/default_model
mkdir -p "$DST.tmp"
cp "$CKPT/ema.safetensors" "$DST.tmp/model.safetensors"
cp "$CKPT/model_config.json" "$CKPT/train_config.json" "$DST.tmp/"
cp "$RUN/metrics.csv" "$DST.tmp/training_log.csv"
chmod 644 "$DST.tmp"/*
rm -rf "$DST" && mv "$DST.tmp" "$DST"
du -sh "$DST"
