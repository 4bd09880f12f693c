"""Robot kinematics checked against pybullet (independent implementation) and by round trips."""

import numpy as np
import pybullet as p
import pytest

from kinema4d.geometry import pose_to_matrix, rotation_angle
from kinema4d.kinematics.robot import Robot, action_dim, actions_to_joints, joints_to_ee_actions


@pytest.fixture(scope="module")
def panda():
    return Robot.builtin("panda")


def _pybullet_link_poses(robot: Robot, q: np.ndarray) -> dict[str, np.ndarray]:
    """World poses (4, 4) of every non-base link from pybullet's getLinkState (URDF link frame)."""
    cid = p.connect(p.DIRECT)
    try:
        body = p.loadURDF(str(robot.urdf_path), useFixedBase=True, physicsClientId=cid)
        name_to_joint = {}
        for j in range(p.getNumJoints(body, physicsClientId=cid)):
            info = p.getJointInfo(body, j, physicsClientId=cid)
            name_to_joint[info[1].decode()] = (j, info[12].decode())
        qfull = dict(zip(robot.joint_names, q, strict=True))
        qfull.update({name: qfull[m] * mult + off for name, (m, mult, off) in _mimics(robot).items()})
        for name, val in qfull.items():
            p.resetJointState(body, name_to_joint[name][0], val, physicsClientId=cid)
        out = {}
        for j, link in name_to_joint.values():
            st = p.getLinkState(body, j, computeForwardKinematics=True, physicsClientId=cid)
            out[link] = pose_to_matrix(np.array(st[4]), np.array(st[5]))
        return out
    finally:
        p.disconnect(cid)


def _mimics(robot):
    import xml.etree.ElementTree as ET

    out = {}
    for j in ET.parse(robot.urdf_path).getroot().iter("joint"):
        m = j.find("mimic")
        if m is not None:
            out[j.get("name")] = (m.get("joint"), float(m.get("multiplier", 1)), float(m.get("offset", 0)))
    return out


@pytest.mark.parametrize("name", ["panda", "kuka_iiwa", "xarm6"])
def test_fk_matches_pybullet(name):
    robot = Robot.builtin(name)
    rng = np.random.default_rng(0)
    qs = robot.random_q(5, rng)
    ours = robot.fk(qs)
    for t, q in enumerate(qs):
        ref = _pybullet_link_poses(robot, q)
        common = [n for n in ref if n in ours]
        assert len(common) >= robot.dof  # every moving link is compared
        for link in common:
            T_ref, T_ours = ref[link], ours[link][t]
            assert np.linalg.norm(T_ref[:3, 3] - T_ours[:3, 3]) < 1e-5, (name, link)
            assert rotation_angle(T_ref[:3, :3], T_ours[:3, :3]) < 1e-4, (name, link)


def test_fk_base_pose_and_shapes(panda):
    T_world_base = np.eye(4)
    T_world_base[:3, 3] = [0.3, -0.2, 0.6]
    moved = Robot.builtin("panda", T_world_base=T_world_base)
    q = panda.random_q(3, np.random.default_rng(1))
    a, b = panda.fk(q), moved.fk(q)
    assert set(a) == set(panda.link_names)
    assert a["panda_hand"].shape == (3, 4, 4)
    np.testing.assert_allclose(b["panda_hand"], T_world_base @ a["panda_hand"], atol=1e-12)


def test_panda_mimic_finger(panda):
    assert panda.dof == 8 and "panda_finger_joint2" not in panda.joint_names
    q = panda.home.copy()
    q[-1] = 0.03
    T = panda.fk(q)
    gap = np.linalg.norm(T["panda_leftfinger"][0, :3, 3] - T["panda_rightfinger"][0, :3, 3])
    assert gap == pytest.approx(0.06, abs=1e-9)


def _smooth_ee_path(robot, n=40):
    """A reachable smooth path: FK of a smooth joint path (so every target is reachable)."""
    s = np.linspace(0, 1, n)[:, None]
    q0 = robot.home
    q1 = robot.clip_to_limits(q0 + np.array([0.6, 0.3, -0.4, 0.5, 0.3, -0.4, 0.6, 0.0][: robot.dof]))
    q = q0 + (q1 - q0) * (0.5 - 0.5 * np.cos(np.pi * s))
    return robot.fk(q, [robot.ee_link])[robot.ee_link], q


@pytest.mark.parametrize("name", ["panda", "kuka_iiwa"])
def test_ik_smooth_path(name):
    robot = Robot.builtin(name)
    T, q_true = _smooth_ee_path(robot)
    res = robot.ik(T, q_init=robot.home)
    T_back = robot.fk(res.q, [robot.ee_link])[robot.ee_link]
    pos = np.linalg.norm(T_back[:, :3, 3] - T[:, :3, 3], axis=1)
    rot = rotation_angle(T_back[:, :3, :3], T[:, :3, :3])
    assert pos.max() < 1e-3 and rot.max() < 1e-2
    assert res.converged.all()
    np.testing.assert_allclose(res.pos_err, pos, atol=1e-9)
    # continuity: no branch jumps, consecutive solutions stay as close as the true path's steps allow
    step_true = np.abs(np.diff(q_true, axis=0)).max()
    assert np.abs(np.diff(res.q, axis=0)).max() < 3 * step_true + 1e-3


def test_ik_unreachable_warns_without_nan(panda):
    T = np.eye(4)[None].repeat(3, 0)
    T[:, :3, 3] = [[2.0, 0, 0.5], [2.1, 0, 0.5], [2.2, 0, 0.5]]  # 2 m away: out of reach
    with pytest.warns(UserWarning, match="IK did not reach"):
        res = panda.ik(T)
    assert np.all(np.isfinite(res.q)) and not res.converged.any()
    assert np.all(res.pos_err > 0.5)
    lo, hi = panda.joint_limits.T
    assert np.all(res.q >= lo - 1e-12) and np.all(res.q <= hi + 1e-12)


def test_actions_modes_roundtrip(panda):
    _, q = _smooth_ee_path(panda, n=12)
    q[:, -1] = np.linspace(0.0, 0.04, 12)
    # ee_pose actions from FK map back to the same end-effector poses
    a = joints_to_ee_actions(panda, q)
    assert a.shape == (12, action_dim(panda, "ee_pose")) == (12, 8)
    traj = actions_to_joints(panda, a, "ee_pose", q0=q[0])
    T_a = panda.fk(traj.q, [panda.ee_link])[panda.ee_link]
    T_b = panda.fk(q, [panda.ee_link])[panda.ee_link]
    assert np.abs(T_a[:, :3, 3] - T_b[:, :3, 3]).max() < 1e-3
    np.testing.assert_allclose(traj.q[:, -1], q[:, -1], atol=1e-12)  # gripper channel -> finger joint
    # joint_pos passes through
    jp = np.concatenate([q[:, :7], panda.joint_to_gripper(q[:, 7:])], axis=1)
    np.testing.assert_allclose(actions_to_joints(panda, jp, "joint_pos").q, q, atol=1e-12)
    # joint_vel integrates finite differences back to the path
    dt = 0.05
    qd = np.diff(q[:, :7], axis=0, prepend=q[:1, :7]) / dt
    jv = np.concatenate([qd, jp[:, 7:]], axis=1)
    np.testing.assert_allclose(actions_to_joints(panda, jv, "joint_vel", q0=q[0], dt=dt).q, q, atol=1e-9)


def test_integrate_clips_to_limits(panda):
    qdot = np.zeros((5, panda.dof))
    qdot[:, 0] = 10.0
    with pytest.warns(UserWarning, match="limits"):
        q = panda.integrate(qdot, 0.1, panda.home)
    assert q[-1, 0] == pytest.approx(panda.joint_limits[0, 1])


# ---------------------------------------------------------------------- bad input
def test_missing_urdf(tmp_path):
    with pytest.raises(FileNotFoundError, match="URDF not found"):
        Robot.from_urdf(tmp_path / "nope.urdf")


def test_malformed_urdf(tmp_path):
    f = tmp_path / "bad.urdf"
    f.write_text("<robot name='x'><link name='a'></robot>")
    with pytest.raises(ValueError, match="malformed URDF"):
        Robot.from_urdf(f)


def test_missing_mesh(tmp_path):
    f = tmp_path / "r.urdf"
    f.write_text("""<robot name="r">
      <link name="base"><visual><geometry><mesh filename="package://foo/missing.stl"/></geometry></visual></link>
      <link name="l1"/>
      <joint name="j1" type="revolute"><parent link="base"/><child link="l1"/><axis xyz="0 0 1"/>
        <limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
    </robot>""")
    with pytest.raises(FileNotFoundError, match="missing.stl.*link 'base'"):
        Robot.from_urdf(f)


def test_primitive_urdf_and_unknown_builtin(tmp_path):
    f = tmp_path / "r.urdf"
    f.write_text("""<robot name="r">
      <material name="red"><color rgba="1 0 0 1"/></material>
      <link name="base"><visual><geometry><box size="0.1 0.2 0.3"/></geometry><material name="red"/></visual></link>
      <link name="l1"><visual><origin xyz="0 0 0.1"/><geometry><cylinder radius="0.02" length="0.2"/></geometry>
      </visual></link>
      <joint name="j1" type="revolute"><parent link="base"/><child link="l1"/><axis xyz="0 0 1"/>
        <limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
    </robot>""")
    r = Robot.from_urdf(f)
    assert r.dof == 1 and r.ee_link == "l1"
    meshes = r.link_meshes
    np.testing.assert_allclose(meshes["base"].extents, [0.1, 0.2, 0.3], atol=1e-9)
    assert tuple(meshes["base"].visual.vertex_colors[0]) == (255, 0, 0, 255)
    with pytest.raises(ValueError, match="unknown builtin robot"):
        Robot.builtin("r2d2")


def test_wrong_joint_count_and_nan(panda):
    with pytest.raises(ValueError, match=r"shape \(T, 8\)"):
        panda.fk(np.zeros((3, 7)))
    q = np.zeros((4, 8))
    q[2, 3] = np.nan
    with pytest.raises(ValueError, match="frame 2, joint 'panda_joint4'"):
        panda.fk(q)
    a = np.zeros((5, 8))
    a[:, 6] = 1
    a[3, 1] = np.inf
    with pytest.raises(ValueError, match="frame 3, column 1"):
        actions_to_joints(panda, a, "ee_pose")
    with pytest.raises(ValueError, match=r"shape \(T, 8\)"):
        actions_to_joints(panda, np.zeros((5, 7)), "joint_pos")
    with pytest.raises(ValueError, match="unknown action mode"):
        actions_to_joints(panda, np.zeros((5, 8)), "torque")


def test_non_rigid_pose_rejected(panda):
    T = np.eye(4)[None].repeat(2, 0)
    T[1, :3, :3] *= 2.0
    with pytest.raises(ValueError, match=r"T_world_ee\[1\] is not a rigid transform"):
        panda.ik(T)
    T[1] = np.eye(4)
    T[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match=r"T_world_ee\[1\] contains NaN"):
        panda.ik(T)
