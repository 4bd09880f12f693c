"""The control stage end to end, through the CLI entry point."""

import json

import numpy as np
import pytest

from kinema4d.cli import main
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.control import demo_actions
from kinema4d.kinematics.robot import Robot


@pytest.fixture(scope="module")
def small_cam(tmp_path_factory):
    path = tmp_path_factory.mktemp("cam") / "cam.json"
    Camera.look_at(eye=[1.35, 0.35, 0.95], target=[0.35, 0.0, 0.3], width=96, height=64, fov_y_deg=50).save(path)
    return path


def test_control_ee_pose_cli(tmp_path, small_cam):
    robot = Robot.builtin("panda")
    actions = demo_actions(robot, T=9)
    np.save(tmp_path / "a.npy", actions)
    rc = main(["control", "--robot", "panda", "--actions", str(tmp_path / "a.npy"), "--mode", "ee_pose",
               "--camera", str(small_cam), "--out", str(tmp_path / "out")])
    assert rc == 0
    z = np.load(tmp_path / "out" / "robot_pointmap.npz")
    assert z["pointmap"].shape == (9, 64, 96, 3) and z["mask"].shape == (9, 64, 96)
    assert z["q"].shape == (9, 8)
    assert z["mask"].any(axis=(1, 2)).all()  # the robot is in view on every frame
    # pointmap is camera-space: its z equals the depth, and zero off the robot
    np.testing.assert_allclose(z["pointmap"][..., 2], z["depth"], atol=1e-6)
    assert np.all(z["pointmap"][~z["mask"]] == 0)
    assert Camera.from_dict(json.loads(str(z["camera"]))).width == 96
    summary = json.loads((tmp_path / "out" / "control.json").read_text())
    assert summary["ik_max_pos_err_m"] < 1e-3
    assert (tmp_path / "out" / "robot_pointmap.mp4").stat().st_size > 1000


def test_control_joint_modes_agree(tmp_path, small_cam):
    """joint_pos and the equivalent joint_vel actions give the same pointmaps."""
    robot = Robot.builtin("panda")
    T, dt = 6, 0.1
    q = robot.home[None, :7] + np.linspace(0, 0.3, T)[:, None]
    jp = np.concatenate([q, np.ones((T, 1))], axis=1)
    qd = np.diff(q, axis=0, prepend=robot.home[None, :7]) / dt
    jv = np.concatenate([qd, np.ones((T, 1))], axis=1)
    outs = []
    for mode, a in (("joint_pos", jp), ("joint_vel", jv)):
        np.save(tmp_path / f"{mode}.npy", a)
        assert main(["control", "--actions", str(tmp_path / f"{mode}.npy"), "--mode", mode, "--dt", str(dt),
                     "--camera", str(small_cam), "--out", str(tmp_path / mode)]) == 0
        outs.append(np.load(tmp_path / mode / "robot_pointmap.npz")["pointmap"])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_control_bad_input(tmp_path, small_cam, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((5, 3)))
    rc = main(["control", "--actions", str(tmp_path / "bad.npy"), "--mode", "ee_pose", "--camera", str(small_cam),
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "shape (T, 8)" in capsys.readouterr().err
    assert not (tmp_path / "o" / "robot_pointmap.npz").exists()  # nothing half-written
    rc = main(["control", "--actions", str(tmp_path / "missing.npy"), "--camera", str(small_cam)])
    assert rc == 2 and "actions file not found" in capsys.readouterr().err
    rc = main(["control", "--robot", "r2d2", "--demo"])
    assert rc == 2 and "r2d2" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
