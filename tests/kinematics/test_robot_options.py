"""Robot options everywhere (issue 14 item 2): --ee-link, --gripper-joints, --package-dir, --base-pose on control,
simulate, datagen, view and the gym env, the same fields in the camera JSON, clear errors; and inputs at the
user's own size (resampled to the model's, K scaled, said so)."""

import json
import shutil

import numpy as np
import pybullet_data
import pytest

from kinema4d.cli import main
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.control import robot_from_json
from kinema4d.kinematics.robot import base_pose_matrix, load_robot

XARM_DIR = f"{pybullet_data.getDataPath()}/xarm"
JOINTS7 = [0.0, 0.066, -1.747, 0.0, 1.681, 0.0, 0.3]  # 6 arm joints + drive_joint


@pytest.fixture(scope="module")
def urdf(tmp_path_factory):
    """The xArm6 URDF copied away from its meshes: its package:// paths need --package-dir."""
    d = tmp_path_factory.mktemp("urdf")
    shutil.copy(f"{XARM_DIR}/xarm6_with_gripper.urdf", d / "arm.urdf")
    return d / "arm.urdf"


@pytest.fixture(scope="module")
def cam(tmp_path_factory):
    path = tmp_path_factory.mktemp("cam") / "cam.json"
    Camera.look_at(eye=[1.35, 0.35, 0.95], target=[0.35, 0.0, 0.3], width=48, height=32, fov_y_deg=50).save(path)
    return path


def _control(tmp_path, *args):
    np.save(tmp_path / "q.npy", np.array([JOINTS7, JOINTS7]))
    return main(["control", "--actions", str(tmp_path / "q.npy"), "--mode", "joint_pos", *args])


def test_control_urdf_with_options(tmp_path, urdf, cam, capsys):
    base = [0.1, -0.2, 0.05, 0.0, 0.0, 0.0, 1.0]
    args = ["--robot", str(urdf), "--camera", str(cam), "--ee-link", "xarm_gripper_base_link", "--gripper-joints",
            "drive_joint", "--package-dir", "/nonexistent_dir_a", "--out", str(tmp_path / "o")]
    assert _control(tmp_path, *args) == 2
    assert "--package-dir /nonexistent_dir_a: no such directory" in capsys.readouterr().err
    args[args.index("/nonexistent_dir_a")] = XARM_DIR
    assert _control(tmp_path, *args, "--package-dir", str(tmp_path), "--base-pose", *map(str, base)) == 0
    summary = json.loads((tmp_path / "o" / "control.json").read_text())
    assert summary["robot_options"]["ee_link"] == "xarm_gripper_base_link"
    assert summary["robot_options"]["package_dirs"] == [XARM_DIR, str(tmp_path)]
    np.testing.assert_allclose(np.asarray(summary["T_world_base"])[:3, 3], base[:3])
    z = np.load(tmp_path / "o" / "robot_pointmap.npz")
    assert z["mask"].any(axis=(1, 2)).all()
    # view rebuilds the URDF robot with the same options (its meshes need the package dir)
    assert main(["view", str(tmp_path / "o"), "--package-dir", XARM_DIR]) == 0
    assert (tmp_path / "o" / "robot_pointmap_view.rrd").is_file()
    assert main(["view", str(tmp_path / "o")]) == 2
    assert "xarm_description" in capsys.readouterr().err  # the mesh it could not find


def test_bad_names_list_what_exists(tmp_path, urdf, cam, capsys):
    common = ["--robot", str(urdf), "--camera", str(cam), "--package-dir", XARM_DIR, "--out", str(tmp_path / "o")]
    assert _control(tmp_path, *common, "--ee-link", "tool_tip") == 2
    err = capsys.readouterr().err
    assert "ee_link 'tool_tip' is not a link" in err and "xarm_gripper_base_link" in err
    assert _control(tmp_path, *common, "--gripper-joints", "finger") == 2
    err = capsys.readouterr().err
    assert "gripper joint 'finger'" in err and "drive_joint" in err
    assert _control(tmp_path, *common, "--base-pose", "0", "0", "0", "0", "0", "0", "2") == 2
    assert "quaternion" in capsys.readouterr().err
    assert _control(tmp_path, "--robot", "panda", "--ee-link", "x", "--out", str(tmp_path / "p")) == 2
    assert "builtin robot 'panda' fixes ee_link" in capsys.readouterr().err


def test_camera_json_robot_fields(tmp_path, urdf, cam):
    d = json.loads(cam.read_text())
    d["robot"] = {"robot": "arm.urdf", "ee_link": "xarm_gripper_base_link", "gripper_joints": ["drive_joint"],
                  "package_dirs": [XARM_DIR], "base_pose": [0, 0, 0.1, 0, 0, 0, 1]}
    shutil.copy(urdf, tmp_path / "arm.urdf")
    (tmp_path / "cam_robot.json").write_text(json.dumps(d))
    opts = robot_from_json(tmp_path / "cam_robot.json")
    assert opts["robot"] == str(tmp_path / "arm.urdf")  # relative to the JSON
    assert _control(tmp_path, "--camera", str(tmp_path / "cam_robot.json"), "--out", str(tmp_path / "j")) == 0
    s = json.loads((tmp_path / "j" / "control.json").read_text())
    assert s["config"]["robot"] == str(tmp_path / "arm.urdf")
    assert s["robot_options"]["ee_link"] == "xarm_gripper_base_link"
    np.testing.assert_allclose(np.asarray(s["T_world_base"])[2, 3], 0.1)
    # flags win over the JSON
    assert _control(tmp_path, "--camera", str(tmp_path / "cam_robot.json"), "--ee-link", "link6", "--out",
                    str(tmp_path / "k")) == 0
    assert json.loads((tmp_path / "k" / "control.json").read_text())["robot_options"]["ee_link"] == "link6"
    d["robot"]["tcp"] = "x"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"unknown robot fields \['tcp'\]"):
        robot_from_json(tmp_path / "bad.json")


@pytest.mark.parametrize("robot", ["panda", "xarm6", "kuka_iiwa", "kuka_iiwa_wsg50"])
def test_control_demo_every_builtin(tmp_path, cam, robot):
    assert main(["control", "--demo", "--robot", robot, "--camera", str(cam), "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "control.json").read_text())
    assert s["ik_max_pos_err_m"] < 1e-3 and s["robot_pixels_per_frame"] > 0


def test_base_pose_moves_the_robot():
    T = base_pose_matrix([0.5, 0, 0, 0, 0, 0.7071068, 0.7071068])
    r0, r1 = load_robot("panda"), load_robot("panda", base_pose=[0.5, 0, 0, 0, 0, 0.7071068, 0.7071068])
    q = r0.home[None]
    e0, e1 = r0.fk(q, [r0.ee_link])[r0.ee_link][0], r1.fk(q, [r1.ee_link])[r1.ee_link][0]
    np.testing.assert_allclose(e1, T @ e0, atol=1e-9)
    with pytest.raises(ValueError, match="7 finite numbers"):
        base_pose_matrix([0, 0, 0])


def test_datagen_robot_options_reach_the_scene():
    from kinema4d.data import scene
    from kinema4d.data.datagen import DatagenConfig, robot_options

    cfg = DatagenConfig(robot="panda", base_pose=(0.0, 0.1, 0.62, 0.0, 0.0, 0.0, 1.0))
    opts = robot_options(cfg)
    assert opts["base_pose"] == cfg.base_pose
    r = scene.make_robot("panda", **opts)
    np.testing.assert_allclose(r.T_world_base[:3, 3], [0.0, 0.1, 0.62])
    with pytest.raises(ValueError, match="builtin robot 'panda' fixes package_dirs"):
        scene.make_robot("panda", package_dirs=(XARM_DIR,))


def test_simulate_and_env_take_native_size_inputs(tmp_path, capsys):
    """The bundled model runs at 64x96; a camera, image and depth at 128x192 are resampled to it (K scaled), and
    simulate / the env say so."""
    import imageio.v2 as imageio

    from kinema4d.interactive.envs import Kinema4DEnv
    from kinema4d.simulator import demo_inputs

    d = demo_inputs()
    cam = Camera.load(d["camera"])
    big = cam.resized(2 * cam.width, 2 * cam.height)
    big.save(tmp_path / "big.json")
    img = imageio.imread(d["image"])[..., :3].repeat(2, 0).repeat(2, 1)
    imageio.imwrite(tmp_path / "big.png", img)
    depth = np.load(d["pointmap0"])[..., 2].repeat(2, 0).repeat(2, 1)
    np.save(tmp_path / "big_depth.npy", depth)
    np.save(tmp_path / "actions.npy", d["actions"])
    assert main(["simulate", "--camera", str(tmp_path / "big.json"), "--image", str(tmp_path / "big.png"),
                 "--pointmap0", str(tmp_path / "big_depth.npy"), "--actions", str(tmp_path / "actions.npy"),
                 "--steps", "2", "--out", str(tmp_path / "sim")]) == 0
    out = capsys.readouterr().out
    assert "resampled the image (192x128), the pointmap0 (192x128) to the model's 96x64 and scaled K" in out
    s = json.loads((tmp_path / "sim" / "simulate.json").read_text())
    assert s["rollout"]["resampled"]["to_wh"] == [96, 64]
    z = np.load(tmp_path / "sim" / "rollout.npz")
    assert z["rgb"].shape[1:3] == (64, 96)
    with pytest.warns(UserWarning, match="resampled"):
        env = Kinema4DEnv(camera=tmp_path / "big.json", image=img, pointmap0=depth, steps=2)
    obs, info = env.reset(seed=0)
    assert obs["rgb"].shape == (64, 96, 3) and info["resampled"] == {"image": [192, 128], "pointmap0": [192, 128]}


def test_env_robot_options(urdf):
    from kinema4d.interactive.envs import Kinema4DEnv

    env = Kinema4DEnv(robot=str(urdf), ee_link="xarm_gripper_base_link", gripper_joints=("drive_joint",),
                      package_dirs=(XARM_DIR,), base_pose=(0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 1.0), steps=2)
    assert env.robot.ee_link == "xarm_gripper_base_link" and env.robot.gripper_joint == "drive_joint"
    np.testing.assert_allclose(env.robot.T_world_base[2, 3], 0.05)
    obs, _ = env.reset(seed=0)
    assert obs["q"].shape == (7,)
    with pytest.raises(ValueError, match="build the simulator's robot"):
        Kinema4DEnv(simulator=env.simulator, ee_link="link6")
