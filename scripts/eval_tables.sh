#!/usr/bin/env bash
# Reproduce README's evaluation tables for the bundled default model (or CHECKPOINT=dir):
#   1. test and OOD splits of data/synth64 (video, geometry and object tables; the dataset's robot pointmaps);
#   2. the full pipeline on test (--robot-input pipeline: commanded actions -> IK -> render -> model);
#   3. policy evaluation (Tab. 3: 3 setups x 50 episodes) and policy ranking (5 policies x 50 episodes, canonical
#      setup; Pearson r, MMRV, per-episode agreement); both generate data/policy/... on first use.
# Every report also scores static (I0 and the frame-0 pointmap repeated). Baselines join when their runs exist
# (`kinema4d train baseline_binary_mask` / `baseline_action_embedding`, the default's budget); a missing run is
# named and left out. Needs data/synth64/{test,ood} (README: data engine). Three lanes of reports at a time,
# 1 thread each.
# The zero-shot embodiment test (xarm6, test ranges) joins when data/synth64/ood_embodiment exists
# (`kinema4d datagen --split ood_embodiment`, README: data engine).
# More models join with EXTRA="name=run_dir ..." (e.g. EXTRA="held_input=runs/held_input").
# Usage: bash scripts/eval_tables.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CK=()
[ -n "${CHECKPOINT:-}" ] && CK=(--checkpoint "$CHECKPOINT")
BASE=()
for name in baseline_binary_mask baseline_action_embedding; do
  if [ -f "runs/$name/ckpt/latest.json" ]; then
    BASE+=("${name#baseline_}=runs/$name")
  else
    echo "eval_tables: runs/$name not found (train it with: kinema4d train $name); left out" >&2
  fi
done
for nr in ${EXTRA:-}; do
  BASE+=("$nr")
done
[ ${#BASE[@]} -gt 0 ] && BASE=(--baselines "${BASE[@]}")
export OMP_NUM_THREADS=1
K="${CK[*]:-} ${BASE[*]:-}"
run() { echo "+ kinema4d $*" >&2; .venv/bin/kinema4d "$@" --no-progress > /dev/null; }
EMB=()
[ -f data/synth64/ood_embodiment/zarr.json ] && EMB=("ood_embodiment (xarm6)=out/eval_ood_embodiment")
[ ${#EMB[@]} -eq 0 ] && echo "eval_tables: data/synth64/ood_embodiment not found (kinema4d datagen --split" \
  "ood_embodiment); left out" >&2
# Three lanes side by side (the ranking is the longest job): ~35-50 min on 2 cores with two baselines.
# shellcheck disable=SC2086  # K holds the checkpoint and baseline options
{
  ( run eval $K --data data/synth64 --split test --out out/eval_test
    run eval $K --data data/synth64 --split test --robot-input pipeline --out out/eval_test_pipeline
    if [ ${#EMB[@]} -gt 0 ]; then run eval $K --data data/synth64 --split ood_embodiment --out out/eval_ood_embodiment; fi
  ) &
  P1=$!
  ( run eval $K --data data/synth64 --split ood --out out/eval_ood
    run eval policy $K --out out/policy_eval ) &
  P2=$!
  run eval policy --ranking $K --out out/policy_ranking &
  P3=$!
  wait $P1 && wait $P2 && wait $P3
}
[ ${#EMB[@]} -gt 0 ] && cat out/eval_ood_embodiment/report.md
cat out/eval_test/report.md out/eval_ood/report.md out/eval_test_pipeline/report.md out/policy_eval/policy.md \
  out/policy_ranking/policy_ranking.md
echo "## README tables"
.venv/bin/python scripts/readme_tables.py test=out/eval_test ood=out/eval_ood "test, pipeline=out/eval_test_pipeline" \
  "${EMB[@]}"
