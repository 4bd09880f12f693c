#!/usr/bin/env bash
# README "Your robot, your data", steps 0-5 as written (the xArm6 URDF given by path, the sample data of step 0,
# `--steps 4 --batch-size 2` on train to check the chain), under OUT (default /tmp/k4d_your_robot). Prints each
# step's wall seconds, the total, and the imported robot masks' IoU with the data engine's renders
# (scripts/import_agreement.py).
#   bash scripts/your_robot.sh [OUT]
set -euo pipefail
OUT=${1:-/tmp/k4d_your_robot}
K=${KINEMA4D:-.venv/bin/kinema4d}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
PD=$($PY -c "import pybullet_data; print(pybullet_data.getDataPath())")
URDF=(--robot "$PD/xarm/xarm6_with_gripper.urdf" --ee-link xarm_gripper_base_link --gripper-joints drive_joint
      --gripper-open 0 --gripper-closed 0.85 --package-dir "$PD/xarm")
declare -a TIMES=()
step() {  # step NAME CMD...: run, log, record seconds
  local name=$1 t0=$SECONDS
  shift
  "$@" > "$OUT/log_$name.txt" 2>&1 || { echo "step $name failed: $OUT/log_$name.txt" >&2; exit 1; }
  TIMES+=("$name $((SECONDS - t0))")
}
T0=$SECONDS
step control "$K" control --demo "${URDF[@]}" --out "$OUT/my_arm"
step view "$K" view "$OUT/my_arm" --package-dir "$PD/xarm" --mp4
step datagen_train "$K" datagen --out "$OUT/xarm_sim" --split train --robot xarm6 --episodes 20 --resolution 64x96 \
    --workers 2
step datagen_test "$K" datagen --out "$OUT/xarm_sim" --split test --robot xarm6 --episodes 10 --resolution 64x96
for s in train test; do
  step "export_$s" "$K" dataset export lerobot "$OUT/xarm_sim/$s" --out "$OUT/lerobot_xarm/$s"
  step "import_$s" "$K" dataset import lerobot "$OUT/lerobot_xarm/$s" --out "$OUT/mine/$s" --split "$s" "${URDF[@]}" \
      --camera-key observation.images.main --depth-key observation.depth --resolution 64x96
done
step info "$K" dataset info "$OUT/mine"
step preview "$K" dataset preview "$OUT/mine/test" --episode 0
step train "$K" train default --data "$OUT/mine" --preload-cache "$OUT/cache/mine.safetensors" --val-split test \
    --out-dir "$OUT/runs/mine" --steps 4 --batch-size 2
step eval "$K" eval --checkpoint "$OUT/runs/mine" --data "$OUT/mine" --split test --out "$OUT/eval_mine"
step demo_assets "$PY" scripts/make_demo_assets.py --data "$OUT/mine/test" --episode 0 --size 128 192 \
    --out "$OUT/my_inputs"
step simulate "$K" simulate --checkpoint "$OUT/runs/mine" "${URDF[@]}" --camera "$OUT/my_inputs/camera.json" \
    --image "$OUT/my_inputs/init.png" --pointmap0 "$OUT/my_inputs/pointmap0.npy" \
    --actions "$OUT/my_inputs/actions.npy" --out "$OUT/sim_mine"
step export_generated "$K" dataset export lerobot "$OUT/sim_mine/rollout.npz" --out "$OUT/lerobot_generated"
TOTAL=$((SECONDS - T0))
for t in "${TIMES[@]}"; do echo "$t s"; done
echo "total $TOTAL s ($((TOTAL / 60)) min $((TOTAL % 60)) s), load average $(cut -d' ' -f1-3 /proc/loadavg)"
$PY scripts/import_agreement.py "$OUT/mine" "$OUT/xarm_sim"
