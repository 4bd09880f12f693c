#!/usr/bin/env bash
# Reproduce README's Tab. 4 ablation table: four variants of the `default` recipe, one switch each, trained to step
# 400 of the default's 1200-step schedule (--stop-at 400), then scored with the default run's own step-400
# checkpoint on the first 30 test episodes. Needs runs/default (from `kinema4d train default`) and data/synth64.
# Trainings resume (--resume) if a previous call was cut off. Usage: bash scripts/ablations.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
declare -A SWITCH=([no_mask]="--model.mask none" [soft_0]="--model.mask binary" [soft_50]="--model.soft-ratio 0.5"
                   [rgb_only]="--model.output rgb_only")
PIDS=()
for name in no_mask soft_0 soft_50 rgb_only; do
  # shellcheck disable=SC2086  # SWITCH holds "--flag value"
  .venv/bin/kinema4d train default --out-dir "runs/ablation_$name" --stop-at 400 --resume --no-progress \
    ${SWITCH[$name]} > "runs/ablation_$name.log" 2>&1 &
  PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid"; done   # fails (set -e) if a training failed
.venv/bin/kinema4d eval --checkpoint runs/default/ckpt/step_0000400 --data data/synth64 --split test --episodes 30 \
  --out out/eval_ablations --no-progress --baselines \
  no_mask=runs/ablation_no_mask/ckpt/step_0000400 soft_0=runs/ablation_soft_0/ckpt/step_0000400 \
  soft_50=runs/ablation_soft_50/ckpt/step_0000400 rgb_only=runs/ablation_rgb_only/ckpt/step_0000400
cat out/eval_ablations/report.md
