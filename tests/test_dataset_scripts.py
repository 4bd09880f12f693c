"""scripts/robot_table.py and scripts/import_agreement.py on tiny hand-written splits: the lines robot_table prints
for failed clean runs (README's one KUKA failure comes from them) and import_agreement's mask IoU per episode."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kinema4d.data import episodes as kdata
from kinema4d.kinematics.camera import Camera

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


robot_table, import_agreement = _script("robot_table"), _script("import_agreement")
T, H, W = 2, 8, 12


def _split(root: Path, cases: list[dict], masks: list[np.ndarray] | None = None) -> Path:
    """A split of len(cases) episodes with attrs ``cases[i]`` (+ the required ones) and robot masks ``masks[i]``."""
    cam = Camera.look_at([1.0, 0.2, 1.0], [0.0, 0.0, 0.6], width=W, height=H)
    root = kdata.init_dataset(root, "ood")
    for ep, extra in enumerate(cases):
        mask = np.zeros((T, H, W), bool) if masks is None else masks[ep]
        arrays = {"rgb": np.zeros((T, H, W, 3), np.uint8), "world_pointmap": cam.depth_to_pointmap(np.ones((T, H, W))),
                  "robot_pointmap": np.zeros((T, H, W, 3), np.float32), "robot_mask": mask, "robot_render_mask": mask,
                  "q": np.zeros((T, 8)), "actions": np.zeros((T, 8)), "object_poses": np.zeros((T, 1, 7))}
        attrs = {"success": False, "split": "ood", "camera": cam.to_dict(), "frames": T, **extra}
        kdata.write_episode(root, ep, arrays, attrs)
    kdata.write_index(root, "ood")
    return root


def test_clean_failures_lists_failed_clean_runs_only(tmp_path):
    cases = [("clean", True, 0.01), ("clean_failed", False, 0.057), ("perturbed", False, 0.2)]
    root = _split(tmp_path / "ood", [
        {"success": success, "variant": {"kind": kind}, "objects": [{"name": "white capsule"}],
         "outcome": {"success": success, "xy_err": xy_err, "z_err": 0.001, "touching_robot": False}}
        for kind, success, xy_err in cases])
    assert robot_table.clean_failures(root) == [
        "episode 1: white capsule 5.7 cm from the pad centre, 0.1 cm off its resting height, not touching the robot"]


def test_import_agreement_iou_per_episode(tmp_path):
    a = np.zeros((T, H, W), bool)
    a[:, 2:6, 3:7] = True  # 16 pixels per frame
    b = a.copy()
    b[:, 2:6, 7] = True  # 4 more per frame: IoU 16 / 20
    src = _split(tmp_path / "src", [{}, {}], [a, a])
    imp = _split(tmp_path / "imp", [{}, {}], [a, b])
    r = import_agreement.agreement(imp, src)
    assert r == {"episodes": 2, "iou_min": pytest.approx(0.8), "iou_mean": pytest.approx(0.9)}
    with pytest.raises(SystemExit, match="1 episodes"):
        import_agreement.agreement(_split(tmp_path / "one", [{}], [a]), src)
