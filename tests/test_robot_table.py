"""scripts/robot_table.py: the lines it prints for failed clean runs (README's one KUKA failure comes from them)."""

import importlib.util
from pathlib import Path

import numpy as np

from kinema4d.data import episodes as kdata
from kinema4d.kinematics.camera import Camera

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("robot_table", ROOT / "scripts" / "robot_table.py")
robot_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(robot_table)


def test_clean_failures_lists_failed_clean_runs_only(tmp_path):
    T, H, W = 2, 8, 12
    cam = Camera.look_at([1.0, 0.2, 1.0], [0.0, 0.0, 0.6], width=W, height=H)
    z = np.ones((T, H, W), np.float32)
    mask = np.zeros((T, H, W), bool)
    arrays = {"rgb": np.zeros((T, H, W, 3), np.uint8), "world_pointmap": cam.depth_to_pointmap(z),
              "robot_pointmap": np.zeros((T, H, W, 3), np.float32), "robot_mask": mask, "robot_render_mask": mask,
              "q": np.zeros((T, 8)), "actions": np.zeros((T, 8)), "object_poses": np.zeros((T, 1, 7))}
    cases = [("clean", True, 0.01), ("clean_failed", False, 0.057), ("perturbed", False, 0.2)]
    root = kdata.init_dataset(tmp_path / "ood", "ood")
    for ep, (kind, success, xy_err) in enumerate(cases):
        attrs = {"success": success, "split": "ood", "camera": cam.to_dict(), "variant": {"kind": kind}, "frames": T,
                 "objects": [{"name": "white capsule"}],
                 "outcome": {"success": success, "xy_err": xy_err, "z_err": 0.001, "touching_robot": False}}
        kdata.write_episode(root, ep, arrays, attrs)
    kdata.write_index(root, "ood")
    assert robot_table.clean_failures(root) == [
        "episode 1: white capsule 5.7 cm from the pad centre, 0.1 cm off its resting height, not touching the robot"]
