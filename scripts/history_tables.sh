#!/usr/bin/env bash
# Print README's "How the object came to move" tables (sessions 7-8) and the fresh-seed policy table from the
# kinema4d eval reports that hold them (markdown on stdout; nothing is recomputed, scripts/readme_tables.py only
# reads and rounds). Each report directory comes from one command:
#
#   out/eval_hi/{test,ood}   kinema4d eval --checkpoint runs/held_input --baselines held_prior=runs/held_prior \
#                              bundled_default=S7 --data data/synth64 --split test|ood --out out/eval_hi/test|ood
#   out_s8/*                 CHECKPOINT=runs/held_gate bash scripts/eval_tables.sh (session 8's bundle; its out/
#                              directories, moved to out_s8/ when session 9 re-ran the script)
#   out/policy_s7, ranking_s7  kinema4d eval policy [--ranking] --checkpoint S7 --out out/policy_s7 | out/ranking_s7
#   out/policy_eval_held     kinema4d eval policy --checkpoint runs/held_prior --out out/policy_eval_held
#   out/policy_hi, ranking_hi  kinema4d eval policy [--ranking] --checkpoint runs/held_input --out ...
#   out/policy_heldout(_s9)  kinema4d eval policy --data data/policy_heldout --seed 5000 --out ... with the session-8
#                              bundle (out/policy_heldout) and the session-9 bundle (out/policy_heldout_s9)
#
# S7 = the session-7 bundle (preset base): git archive 1188045 src/kinema4d/assets/default_model | tar -x -C DIR.
#
#   bash scripts/history_tables.sh [OUT=out] [OUT_S8=out_s8]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
S8=${2:-out_s8}
T="scripts/readme_tables.py"
PY=${PYTHON:-.venv/bin/python}

for sp in test ood; do
  echo "### $sp"
  $PY $T --columns psnr ssim chamfer_l1 fscore adherence_mm object_endpoint_mm object_motion_recall \
    object_motion_precision --rows \
    "no prior (\`base\`, session 7)=$OUT/eval_hi/$sp:bundled_default" \
    "prior as channels (\`held_prior\`)=$OUT/eval_hi/$sp:held_prior" \
    "prior in the input (\`held_input\`)=$OUT/eval_hi/$sp:kinema4d" \
    "prior in the input + gate (\`held_gate\`)=$S8/eval_$sp:kinema4d" \
    "static=$OUT/eval_hi/$sp:static"
  echo
done
echo "### policy evaluation (3 setups x 50 episodes)"
$PY $T --policy --rows \
  "no prior (\`base\`)=$OUT/policy_s7:kinema4d" \
  "prior as channels (\`held_prior\`)=$OUT/policy_eval_held:kinema4d" \
  "prior in the input (\`held_input\`)=$OUT/policy_hi:kinema4d" \
  "prior in the input + gate (\`held_gate\`)=$S8/policy_eval:kinema4d"
echo
echo "### policy ranking (canonical, 5 policies x 50 episodes)"
$PY $T --ranking --rows \
  "no prior (\`base\`)=$OUT/ranking_s7:kinema4d" \
  "prior in the input (\`held_input\`)=$OUT/ranking_hi:kinema4d" \
  "prior in the input + gate (\`held_gate\`)=$S8/policy_ranking:kinema4d" \
  "judge on GT=$S8/policy_ranking:judge on GT"
echo
echo "### fresh policy episodes (seeds 5000-5002, generated after session 8's run)"
$PY $T --policy --rows \
  "session 8 (\`held_gate\`)=$OUT/policy_heldout:kinema4d" \
  "session 9 (\`default\`)=$OUT/policy_heldout_s9:kinema4d" \
  "judge on GT=$OUT/policy_heldout_s9:judge on GT"
