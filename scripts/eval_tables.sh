#!/usr/bin/env bash
# Reproduce README's evaluation tables: the bundled kinema4d model (or CHECKPOINT=dir) against the static,
# binary-mask and action-embedding baselines (trained by `kinema4d train baseline_binary_mask` /
# `baseline_action_embedding` under the default's budget) on the test and OOD splits, and the policy evaluation
# (Tab. 3; generates data/policy/<setup> with the data engine on first use). One process per report, 1 thread each
# (2 cores). Usage: bash scripts/eval_tables.sh [BINARY_MASK_RUN] [ACTION_EMBEDDING_RUN]
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=(--baselines "binary_mask=${1:-runs/baseline_binary_mask}" "action_embedding=${2:-runs/baseline_action_embedding}")
CK=()
[ -n "${CHECKPOINT:-}" ] && CK=(--checkpoint "$CHECKPOINT")
export OMP_NUM_THREADS=1
PIDS=()
for split in test ood; do
  .venv/bin/kinema4d eval "${CK[@]}" "${BASE[@]}" --data data/synth --split "$split" --out "out/eval_$split" \
    --no-progress &
  PIDS+=($!)
done
.venv/bin/kinema4d eval policy "${CK[@]}" "${BASE[@]}" --out out/policy_eval --no-progress &
PIDS+=($!)
for pid in "${PIDS[@]}"; do wait "$pid"; done   # fails (set -e) if any report failed
cat out/eval_test/report.md out/eval_ood/report.md out/policy_eval/policy.md
