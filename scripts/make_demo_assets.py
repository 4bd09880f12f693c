"""Write the bundled demo inputs (``src/kinema4d/assets/demo``) from one data-engine episode at a model's size.

    .venv/bin/kinema4d datagen --out data/synth64 --split test --episodes 60 --seed 0 --resolution 64x96
    .venv/bin/python scripts/make_demo_assets.py --data data/synth64/test --episode 0 --size 64 96

Writes init.png (frame 0, area-resized), pointmap0.npy (the frame-0 world pointmap, nearest-resized, camera metres),
camera.json (the episode camera resized, expressed in the robot base frame), actions.npy (all recorded ee_pose
actions + gripper, in the robot base frame: one per recorded frame, the rate ``Simulator.rollout`` expects by
default) and demo.json (q0 = the recorded joints of frame 0, the instruction, the source).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kinema4d.data.episodes import Dataset4D
from kinema4d.geometry import invert_rigid, matrix_to_pose, pose_to_matrix
from kinema4d.kinematics.camera import Camera


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a dataset split directory")
    ap.add_argument("--episode", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), required=True)
    ap.add_argument("--out", type=Path, default=Path("src/kinema4d/assets/demo"))
    args = ap.parse_args()
    H, W = args.size
    ds = Dataset4D(args.data)
    e = ds.read_episode(args.episode, keys=("rgb", "world_pointmap", "q", "actions"))
    attrs = e["attrs"]
    T_world_base = np.asarray(attrs["T_world_base"], np.float64)
    T_base_world = invert_rigid(T_world_base)
    cam: Camera = e["camera"].resized(W, H)
    cam_base = Camera(K=cam.K, T_cam_world=cam.T_cam_world @ T_world_base, width=W, height=H)
    rgb0 = torch.from_numpy(e["rgb"][0]).permute(2, 0, 1)[None].float()
    img = F.interpolate(rgb0, size=(H, W), mode="area")[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    pm0 = torch.from_numpy(e["world_pointmap"][0]).permute(2, 0, 1)[None]
    pm0 = F.interpolate(pm0, size=(H, W), mode="nearest-exact")[0].permute(1, 2, 0).numpy().astype(np.float32)
    acts = e["actions"].astype(np.float64)
    pos, quat = matrix_to_pose(T_base_world @ pose_to_matrix(acts[:, :3], acts[:, 3:7]))  # (N, 3), (N, 4)
    actions = np.concatenate([pos, quat, acts[:, 7:]], axis=1).astype(np.float32)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    import imageio.v2 as imageio

    imageio.imwrite(out / "init.png", img)
    np.save(out / "pointmap0.npy", pm0)
    np.save(out / "actions.npy", actions)
    cam_base.save(out / "camera.json")
    (out / "demo.json").write_text(json.dumps({
        "robot": attrs["robot"], "mode": "ee_pose", "q0": e["q"][0].astype(float).tolist(),
        "source": f"kinema4d datagen {attrs['split']} split, episode {args.episode} of {args.data}, all "
                  f"{len(actions)} recorded frames' actions, image resized to {H}x{W}; camera and actions expressed "
                  "in the robot base frame (scripts/make_demo_assets.py)",
        "instruction": attrs["instruction"],
        "pointmap0": f"pointmap0.npy: frame-0 world pointmap of the same episode, ({H}, {W}, 3) float32 camera-space "
                     "metres (OpenCV frame), 0 = no geometry"}, indent=2) + "\n")
    print(f"wrote {out}: {len(actions)} actions, {W}x{H}")


if __name__ == "__main__":
    main()
