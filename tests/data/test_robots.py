"""Any robot in the data engine (issue 14): the xArm6 with its gripper end to end, a URDF given by path, errors."""

from pathlib import Path

import numpy as np
import pybullet_data
import pytest

from kinema4d.data import episodes as kdata
from kinema4d.data import scene as sim
from kinema4d.data.datagen import DatagenConfig, datagen_main, dataset_info

TINY = {"resolution": "24x32", "frames": 4, "progress": False}
PANDA_URDF = Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"


@pytest.fixture(scope="module")
def xarm_split(tmp_path_factory):
    """One clean xarm6 block (1 clean demo + 1 perturbed variant) of the ood_embodiment split at 24x32."""
    out = tmp_path_factory.mktemp("xarm")
    info = datagen_main(DatagenConfig(out=out, split="ood_embodiment", episodes=2, failures_per_success=1, **TINY))
    return out / "ood_embodiment", info


def test_xarm_episode_is_valid_and_clean_demo_succeeds(xarm_split):
    root, info = xarm_split
    assert info["robot"] == "xarm6" and info["episodes"] == 2 and info["clean"] == 1 and info["perturbed"] == 1
    ds = kdata.Dataset4D(root)
    e, attrs = ds.read_episode(0), ds.attrs(0)
    assert attrs["robot"] == "xarm6" and attrs["split"] == "ood_embodiment" and attrs["ee_link"] == "xarm_grasptarget"
    assert attrs["variant"]["kind"] == "clean" and attrs["success"], attrs["outcome"]  # the scripted expert succeeds
    assert attrs["joint_names"] == ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "drive_joint"]
    assert e["rgb"].shape == (4, 24, 32, 3) and e["q"].shape == (4, 7) and e["actions"].shape == (4, 8)
    assert e["robot_pointmap"].shape == e["world_pointmap"].shape == (4, 24, 32, 3)
    # the gripper closed on the object: frame 2 (mid-episode, carrying) has the drive joint well away from open
    assert e["q"][2, -1] > 0.2 and e["q"][0, -1] < 0.05


def test_xarm_episode_has_the_panda_schema(xarm_split, tmp_path):
    datagen_main(DatagenConfig(out=tmp_path, split="test", episodes=1, failures_per_success=0, **TINY))
    panda = kdata.Dataset4D(tmp_path / "test")
    xarm = kdata.Dataset4D(xarm_split[0])
    a, b = panda.read_episode(0), xarm.read_episode(0)
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            assert v.dtype == b[k].dtype and v.ndim == b[k].ndim, k
    assert set(panda.attrs(0)) == set(xarm.attrs(0))


def test_stored_xarm_robot_pointmap_matches_pybullet(xarm_split):
    """Mirror of test_scene.test_kinematic_robot_matches_pybullet on the stored xarm6 episodes: the kinematic
    render of the recorded q (robot_render_mask, robot_pointmap) against pybullet's segmentation (robot_mask) and
    depth buffer (world_pointmap), float16 as stored. Measured on 25 stored ood_embodiment episodes at 64x96 (1225
    frames): IoU min 0.965, median 0.998 (the Panda's test split: 0.964, 0.997), median |dz| 0 after float16;
    the bound here is looser because at 24x32 one pixel is a large share of the robot."""
    ds = kdata.Dataset4D(xarm_split[0])
    for i in range(len(ds)):
        e = ds.read_episode(i)
        seg, ren = e["robot_mask"], e["robot_render_mask"]
        z_pb, z_kin = e["world_pointmap"][..., 2], e["robot_pointmap"][..., 2]
        for t in range(len(seg)):
            both = seg[t] & ren[t]
            assert both.sum() >= 20, f"episode {i} frame {t}: the robot is in view"
            iou = both.sum() / (seg[t] | ren[t]).sum()
            assert iou >= 0.9, f"episode {i} frame {t}: IoU {iou:.3f}"
            dz = np.abs(z_pb[t][both].astype(np.float64) - z_kin[t][both])
            assert np.median(dz) <= 1e-3, f"episode {i} frame {t}: median |dz| {np.median(dz) * 1000:.2f} mm"
            np.testing.assert_array_equal(e["robot_pointmap"][t][~ren[t]], 0)


@pytest.mark.parametrize("name", ["xarm6", "kuka_iiwa_wsg50"])
def test_render_matches_pybullet_at_higher_resolution(name):
    """The same check before storage at 96x128 (more pixels, no float16), and the clean scripted run succeeds."""
    robot = sim.make_robot(name)
    spec = sim.sample_scene(np.random.default_rng(7), "test", 128, 96)
    actions, _ = sim.scripted_pick_place(robot, spec)
    ep = sim.run_episode(robot, spec, actions, frames=5)
    assert ep.success, ep.meta["outcome"]
    ious = []
    for t in range(5):
        seg, ren = ep.robot_mask[t], ep.robot_render_mask[t]
        both = seg & ren
        ious.append(both.sum() / (seg | ren).sum())
        dz = np.abs(ep.world_pointmap[t][..., 2][both] - ep.robot_pointmap[t][..., 2][both])
        assert np.median(dz) <= 5e-5 and np.percentile(dz, 90) <= 5e-4, t
    assert min(ious) >= 0.97, np.round(ious, 4)


def test_urdf_path_with_ee_link_and_gripper_joints(tmp_path):
    """A robot given by URDF path (the Panda's own file) with --ee-link and --gripper-joints runs datagen."""
    cfg = DatagenConfig(out=tmp_path, split="test", episodes=1, failures_per_success=0, robot=str(PANDA_URDF),
                        ee_link="panda_grasptarget", gripper_joints=("panda_finger_joint1", "panda_finger_joint2"),
                        **TINY)
    info = datagen_main(cfg)
    assert info["episodes"] == 1
    attrs = kdata.Dataset4D(tmp_path / "test").attrs(0)
    assert attrs["robot_urdf"] == str(PANDA_URDF.resolve()) and attrs["gripper_joint"] == "panda_finger_joint1"
    assert attrs["ee_link"] == "panda_grasptarget" and (attrs["gripper_open"], attrs["gripper_closed"]) == (0.04, 0.0)
    assert dataset_info(tmp_path)["splits"]["test"]["expert_success_per_scene"] is not None


def test_bad_robot_options_name_what_exists(tmp_path):
    base = {"out": tmp_path, "split": "test", "episodes": 1, **TINY}
    with pytest.raises(ValueError, match=r"ee_link 'nope' is not a link of panda.urdf; links: .*panda_grasptarget"):
        datagen_main(DatagenConfig(robot=str(PANDA_URDF), ee_link="nope", gripper_joints=("panda_finger_joint1",),
                                   **base))
    with pytest.raises(ValueError, match=r"gripper joint 'bogus' is not a movable joint .*panda_finger_joint1"):
        datagen_main(DatagenConfig(robot=str(PANDA_URDF), gripper_joints=("panda_finger_joint1", "bogus"), **base))
    with pytest.raises(ValueError, match=r"'panda_finger_joint2' mimics 'panda_finger_joint1'.*driving joint"):
        datagen_main(DatagenConfig(robot=str(PANDA_URDF), gripper_joints=("panda_finger_joint2",), **base))
    with pytest.raises(ValueError, match=r"needs a gripper.*--gripper-joints \(actuated joints: .*panda_joint1"):
        datagen_main(DatagenConfig(robot=str(PANDA_URDF), ee_link="panda_grasptarget", **base))
    with pytest.raises(ValueError, match=r"fixes ee_link; pass a URDF path"):
        datagen_main(DatagenConfig(robot="xarm6", ee_link="link6", **base))
    with pytest.raises(ValueError, match=r"kuka_iiwa .*has no gripper; use --robot kuka_iiwa_wsg50"):
        datagen_main(DatagenConfig(robot="kuka_iiwa", **base))
    with pytest.raises(ValueError, match=r"ood_embodiment.*not trained on"):
        datagen_main(DatagenConfig(robot="panda", split="ood_embodiment", out=tmp_path, episodes=1, **TINY))
    with pytest.raises(ValueError, match=r"SDF file"):
        datagen_main(DatagenConfig(robot=str(tmp_path / "kuka.sdf"), **base))


def test_resume_of_a_dataset_written_before_robot_selection(tmp_path):
    """A datagen_config.json without 'robot' (older runs) resumes as the Panda, and refuses another robot."""
    import json

    datagen_main(DatagenConfig(out=tmp_path, split="test", episodes=1, failures_per_success=0, **TINY))
    path = tmp_path / "test" / "datagen_config.json"
    cfg = json.loads(path.read_text())
    for k in ("robot", "ee_link", "gripper_joints", "gripper_open", "gripper_closed"):
        cfg.pop(k)
    path.write_text(json.dumps(cfg))
    assert datagen_main(DatagenConfig(out=tmp_path, split="test", episodes=1, failures_per_success=0,
                                      **TINY))["episodes"] == 1
    with pytest.raises(ValueError, match="different config"):
        datagen_main(DatagenConfig(out=tmp_path, split="test", episodes=1, failures_per_success=0, robot="xarm6",
                                   **TINY))


def test_sdf_conversion_matches_pybullet_sdf():
    """kuka_iiwa_wsg50 (kuka_with_gripper2.sdf converted to URDF) against pybullet's own SDF import: every link's
    pose for random joints (the converted URDF fixes the gripper roll and the finger tips at 0)."""
    import pybullet as p
    from scipy.spatial.transform import Rotation

    from kinema4d.kinematics.robot import Robot
    from kinema4d.kinematics.sdf import sdf_to_urdf_tree

    robot = Robot.builtin("kuka_iiwa_wsg50")
    assert robot.dof == 8 and robot.gripper_joint == "base_left_finger_joint"
    assert robot.mimic_joints == {"base_right_finger_joint": ("base_left_finger_joint", -1.0, 0.0)}
    cid = p.connect(p.DIRECT)
    try:
        body = p.loadSDF(str(Path(pybullet_data.getDataPath()) / "kuka_iiwa" / "kuka_with_gripper2.sdf"),
                         physicsClientId=cid)[0]
        info = [p.getJointInfo(body, j, physicsClientId=cid) for j in range(p.getNumJoints(body, physicsClientId=cid))]
        joint = {i[1].decode(): i[0] for i in info}
        link = {i[12].decode(): i[0] for i in info}
        for q in robot.random_q(3, np.random.default_rng(0)):
            for name, v in zip(robot.joint_names, q, strict=True):
                p.resetJointState(body, joint[name], v, physicsClientId=cid)
            p.resetJointState(body, joint["base_right_finger_joint"], -q[-1], physicsClientId=cid)
            T = robot.fk(q)
            for name, j in link.items():
                s = p.getLinkState(body, j, computeForwardKinematics=True, physicsClientId=cid)
                np.testing.assert_allclose(s[4], T[name][0][:3, 3], atol=1e-6, err_msg=name)
                R = Rotation.from_quat(s[5]).as_matrix()
                assert np.abs(R - T[name][0][:3, :3]).max() < 1e-6, name
    finally:
        p.disconnect(physicsClientId=cid)
    with pytest.raises(ValueError, match=r"no joints \['nope'\]"):
        sdf_to_urdf_tree(Path(pybullet_data.getDataPath()) / "kuka_iiwa" / "kuka_with_gripper2.sdf", ["nope"])


def test_kuka_stands_back_to_reach_the_near_workspace_edge(monkeypatch):
    """README: the KUKA stands BASE_SHIFT_X (8 cm) further back because its 26 cm gripper and +-120 deg elbow cannot
    bring the grasp point down to the table at the workspace's near edge. Target: the grasp point 2 cm above the
    table (the expert's lowest grasp height), pointing down, at the near edge of the workspace (workspace_x[0] in
    front of the unshifted base), in line with the base. Measured: 44.7 mm short without the shift, reached with it."""
    import warnings

    from scipy.spatial.transform import Rotation

    from kinema4d.data.expert import down_quat
    from kinema4d.data.scene_spec import BASE_XYZ, TABLE_TOP, split_ranges

    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(down_quat(0.0)).as_matrix()
    T[:3, 3] = (BASE_XYZ[0] + split_ranges("test").workspace_x[0], BASE_XYZ[1], TABLE_TOP + 0.02)
    assert sim.BASE_SHIFT_X["kuka_iiwa_wsg50"] == pytest.approx(-0.08)
    for shift, reached in ((sim.BASE_SHIFT_X["kuka_iiwa_wsg50"], True), (0.0, False)):
        monkeypatch.setitem(sim.BASE_SHIFT_X, "kuka_iiwa_wsg50", shift)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unreachable target warns
            err = sim.make_robot("kuka_iiwa_wsg50").ik(T).pos_err[0]
        assert (err < 1e-3) if reached else (err > 0.01), f"shift {shift}: {1000 * err:.1f} mm"
