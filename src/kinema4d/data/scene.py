"""Synthetic 4D data engine on pybullet (paper Sec. 3.3, Supp. B.2): table-top pick-and-place with any robot
that has a gripper (builtin: the Franka Panda, the default, the xArm6 with its gripper and the KUKA iiwa with a
WSG50-style gripper; or a URDF).

One :class:`Scene` = one pybullet DIRECT client (several coexist in a process). It holds a table
(``table/table.urdf``, top at z = 0.625), the robot loaded from the same URDF as its :class:`Robot` at the
same base pose (:func:`make_robot`), a goal pad (visual only), a target object and 0-2 distractors (box /
cylinder / capsule / hexagonal prism primitives with distinct colours). The arm is position-controlled towards
joint targets from kinema4d's seeded IK of end-effector pose actions; the fingers follow the gripper channel
(:class:`Drive`: motor limits per robot); objects react physically.

The scene description and its randomization per split are :mod:`kinema4d.data.scene_spec`, the scripted expert,
its failure variants and the policy family :mod:`kinema4d.data.expert`; their names are importable from here
too.

Success (:meth:`Scene.evaluate`): after the episode the target object's centre is within ``SUCCESS_XY_TOL``
(5 cm) of the pad centre in xy, it rests upright on the table (centre height within ``SUCCESS_Z_TOL``, 1.5 cm, of its
resting height) and it touches no robot link.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import pybullet as p
import pybullet_data

from kinema4d.data.expert import (  # noqa: F401  (re-exported: the data engine's names stay importable from here)
    FAILURE_SIGMAS,
    N_SEGMENTS,
    PHASES,
    POLICIES,
    PolicySpec,
    down_quat,
    offset_grasp,
    perturb_actions,
    policy_actions,
    scripted_pick_place,
)
from kinema4d.data.scene_spec import (  # noqa: F401  (re-exported, as above)
    BASE_XYZ,
    CAM_TARGET,
    OOD_RANGES,
    PALETTE,
    SHAPE_NAMES,
    SPLITS,
    TABLE_TOP,
    TRAIN_RANGES,
    ObjectSpec,
    Ranges,
    SceneSpec,
    sample_camera,
    sample_scene,
    split_ranges,
)
from kinema4d.geometry import matrix_to_pose, pose_to_matrix
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.meshes import DEFAULT_MAX_FACES_PER_LINK, simplified_urdf
from kinema4d.kinematics.robot import BUILTIN_ROBOTS, Robot, base_pose_matrix, load_robot


# ---------------------------------------------------------------------- physics scene
@dataclass
class Episode:
    """One simulated episode, T recorded frames at the camera's H x W.

    ``rgb`` (T, H, W, 3) uint8; ``world_pointmap`` (T, H, W, 3) float32 camera metres from the depth buffer, 0 on
    background; ``robot_mask`` (T, H, W) bool from segmentation; ``robot_pointmap`` (T, H, W, 3) float32 and
    ``robot_render_mask`` (T, H, W) bool rendered kinematically (``render_robot``) from ``q``; ``robot_rgb``
    (T, H, W, 3) uint8 the same render's shaded colours (black background: the robot-RGB condition); ``q`` (T, dof)
    joint positions read from pybullet (``robot.joint_names`` order); ``actions`` (T, 8) commanded ee_pose +
    gripper; ``object_poses`` (T, N, 7) xyz + quat xyzw world; ``meta`` JSON-able metadata (scene, success, ...).
    """

    rgb: np.ndarray
    world_pointmap: np.ndarray
    robot_mask: np.ndarray
    robot_pointmap: np.ndarray | None
    robot_render_mask: np.ndarray | None
    robot_rgb: np.ndarray | None
    q: np.ndarray
    actions: np.ndarray
    object_poses: np.ndarray
    camera: Camera
    success: bool
    meta: dict
    timing: dict


def _hexprism_mesh(radius: float, height: float, n: int = 6):
    ang = np.arange(n) * 2 * np.pi / n
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)
    verts = np.concatenate([np.c_[ring, np.full(n, -height / 2)], np.c_[ring, np.full(n, height / 2)],
                            [[0, 0, -height / 2], [0, 0, height / 2]]])
    idx = []
    for i in range(n):
        j = (i + 1) % n
        idx += [i, j, n + j, i, n + j, n + i]  # side
        idx += [2 * n, j, i, 2 * n + 1, n + i, n + j]  # bottom, top
    return verts.tolist(), idx


@dataclass(frozen=True)
class Drive:
    """pybullet motor limits of one robot: ``arm_forces`` per arm joint (N m / N; None = the URDF effort limits),
    ``finger_force`` per gripper joint, ``finger_friction`` lateral friction of the gripper links."""

    arm_forces: tuple[float, ...] | None = None
    finger_force: float = 40.0
    finger_friction: float = 1.5
    mimic_follow_force: float | None = 100.0
    """Not None: only the gripper joint is driven towards the command (``finger_force``); every mimic joint is
    re-targeted at the gripper joint's measured value each physics step with this stronger force, so a 1-DoF
    linkage opened up into a tree (the xArm gripper) moves as one rigid mechanism and its fingers stay parallel
    when the object blocks them. None: every finger joint is position-controlled to the commanded value (the
    Panda's two prismatic fingers, as its data were generated)."""


SUCCESS_XY_TOL = 0.05  # metres: the object's centre from the pad centre, in xy
SUCCESS_Z_TOL = 0.015  # metres: the object's centre from its resting height (upright on the table)

DRIVES = {
    "panda": Drive((87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0), 40.0, mimic_follow_force=None),
    "xarm6": Drive(None, 1.0),
    "kuka_iiwa_wsg50": Drive(None, 5.0),  # pybullet's KUKA grasping env: 2 / 2.5 N m; 5 holds cylinders in the carry
}


class Scene:
    """A pybullet DIRECT world built from a :class:`SceneSpec`. Call :meth:`close` (or use ``with``) when done.

    ``physics_hz`` is the simulation rate, ``control_hz`` the rate at which :meth:`apply_action` is called.
    Any robot with a gripper joint works: the gripper joint and the joints that mimic it
    (``robot.mimic_joints``) are position-controlled together; motor limits come from :data:`DRIVES` by robot
    name, else from the URDF.
    """

    def __init__(self, robot: Robot, spec: SceneSpec, physics_hz: float = 240.0, control_hz: float = 20.0,
                 near: float = 0.05, far: float = 5.0, visual_max_faces: int | None = DEFAULT_MAX_FACES_PER_LINK):
        if robot.gripper_joint is None:
            raise ValueError(f"the pick-and-place scene needs a robot with a gripper; {robot.name!r} has no gripper "
                             f"joint (URDF robots: name it with --gripper-joints; actuated joints: "
                             f"{robot.joint_names})")
        self.robot, self.spec, self.near, self.far = robot, spec, near, far
        self.drive = DRIVES.get(robot.name, Drive())
        self.substeps = max(1, int(round(physics_hz / control_hz)))
        self.cid = p.connect(p.DIRECT)
        c = self.cid
        try:
            p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
            p.setGravity(0, 0, -9.81, physicsClientId=c)
            p.setTimeStep(1.0 / physics_hz, physicsClientId=c)
            self.table = p.loadURDF("table/table.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=c)
            pos, quat = matrix_to_pose(robot.T_world_base)
            # the robot is drawn with the decimated link meshes the kinematic renderer uses (meshes.simplified_urdf):
            # ~6x cheaper in TinyRenderer and pixel-consistent with the robot pointmap; None = original meshes
            urdf = robot.urdf_path if visual_max_faces is None else simplified_urdf(robot, visual_max_faces)
            self.body = p.loadURDF(str(urdf), pos.tolist(), quat.tolist(), useFixedBase=True,
                                   flags=p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES, physicsClientId=c)
            names = {p.getJointInfo(self.body, j, physicsClientId=c)[1].decode(): j
                     for j in range(p.getNumJoints(self.body, physicsClientId=c))}
            self.q_joints = [names[n] for n in robot.joint_names]  # pybullet indices in robot.joint_names order
            self.arm_joints = [names[n] for n in robot.arm_joint_names]
            # the gripper joint, then the joints that mimic it: (pybullet index, multiplier, offset)
            fingers = [(robot.gripper_joint, 1.0, 0.0)] + [(n, m, o) for n, (g, m, o) in robot.mimic_joints.items()
                                                           if g == robot.gripper_joint]
            self.finger_joints = [names[n] for n, _, _ in fingers]
            self._finger_mult = np.array([m for _, m, _ in fingers])
            self._finger_offset = np.array([o for _, _, o in fingers])
            self.arm_forces = list(self.drive.arm_forces or [
                p.getJointInfo(self.body, j, physicsClientId=c)[10] or 100.0 for j in self.arm_joints])
            if len(self.arm_forces) != len(self.arm_joints):
                raise ValueError(f"Drive of {robot.name!r} gives {len(self.arm_forces)} arm forces for "
                                 f"{len(self.arm_joints)} arm joints")
            for j, v in zip(self.q_joints, robot.home, strict=True):
                p.resetJointState(self.body, j, v, physicsClientId=c)
            g_home = robot.home[robot.joint_names.index(robot.gripper_joint)]
            for j, v in zip(self.finger_joints, self._finger_targets(g_home), strict=True):
                p.resetJointState(self.body, j, v, physicsClientId=c)
            for j in self._gripper_links():
                p.changeDynamics(self.body, j, lateralFriction=self.drive.finger_friction, spinningFriction=0.01,
                                 physicsClientId=c)
            self.driven_fingers = self.finger_joints
            if self.drive.mimic_follow_force is not None and len(self.finger_joints) > 1:
                self.driven_fingers = self.finger_joints[:1]
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[0.06, 0.06, 0.0015],
                                      rgbaColor=[*PALETTE[spec.pad_colour], 1], physicsClientId=c)
            self.pad = p.createMultiBody(0, -1, vis, [spec.goal_xy[0], spec.goal_xy[1], TABLE_TOP + 0.0015],
                                         physicsClientId=c)
            self.objects = [self._add_object(o) for o in spec.objects]
        except Exception:
            p.disconnect(physicsClientId=c)
            raise
        self.q_target = robot.home.copy()
        for _ in range(24):  # let the objects settle on the table
            p.stepSimulation(physicsClientId=self.cid)
        self._state0 = p.saveState(physicsClientId=self.cid)

    def _gripper_links(self) -> list[int]:
        """pybullet link indices moved by a finger joint: the finger links and everything attached below them
        (e.g. fingertips on fixed joints), in index order."""
        c, fingers = self.cid, set(self.finger_joints)
        parent = {j: p.getJointInfo(self.body, j, physicsClientId=c)[16]
                  for j in range(p.getNumJoints(self.body, physicsClientId=c))}
        out = []
        for j in parent:
            k = j
            while k >= 0 and k not in fingers:
                k = parent[k]
            if k >= 0:
                out.append(j)
        return out

    def _finger_targets(self, value: float) -> list[float]:
        """Gripper joint value -> targets of ``finger_joints`` (the gripper joint and its mimics)."""
        return (self._finger_mult * value + self._finger_offset).tolist()

    def _drive(self, q: np.ndarray) -> None:
        """Position targets: q (dof,) in ``robot.joint_names`` order (the gripper joint drives its mimics)."""
        r, c = self.robot, self.cid
        q_arm = [q[r.joint_names.index(n)] for n in r.arm_joint_names]
        p.setJointMotorControlArray(self.body, self.arm_joints, p.POSITION_CONTROL, targetPositions=q_arm,
                                    forces=self.arm_forces, physicsClientId=c)
        n = len(self.driven_fingers)
        p.setJointMotorControlArray(self.body, self.driven_fingers, p.POSITION_CONTROL,
                                    targetPositions=self._finger_targets(q[r.joint_names.index(r.gripper_joint)])[:n],
                                    forces=[self.drive.finger_force] * n, physicsClientId=c)

    def reset(self) -> None:
        """Back to the initial (settled) state, so one scene can run several episodes (e.g. failure variants)."""
        p.restoreState(stateId=self._state0, physicsClientId=self.cid)
        self.q_target = self.robot.home.copy()
        self._drive(self.robot.home)

    def _add_object(self, o: ObjectSpec) -> int:
        c = self.cid
        w, _, h = o.size
        if o.shape == "box":
            col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[w / 2, w / 2, h / 2], physicsClientId=c)
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[w / 2, w / 2, h / 2], rgbaColor=o.rgba,
                                      physicsClientId=c)
        elif o.shape == "cylinder":
            col = p.createCollisionShape(p.GEOM_CYLINDER, radius=w / 2, height=h, physicsClientId=c)
            vis = p.createVisualShape(p.GEOM_CYLINDER, radius=w / 2, length=h, rgbaColor=o.rgba, physicsClientId=c)
        elif o.shape == "capsule":  # total height h: cylinder part h - w
            col = p.createCollisionShape(p.GEOM_CAPSULE, radius=w / 2, height=max(h - w, 0.005), physicsClientId=c)
            vis = p.createVisualShape(p.GEOM_CAPSULE, radius=w / 2, length=max(h - w, 0.005), rgbaColor=o.rgba,
                                      physicsClientId=c)
        elif o.shape == "hexprism":
            verts, idx = _hexprism_mesh(w / 2, h)
            col = p.createCollisionShape(p.GEOM_MESH, vertices=verts, physicsClientId=c)
            vis = p.createVisualShape(p.GEOM_MESH, vertices=verts, indices=idx, rgbaColor=o.rgba, physicsClientId=c)
        else:
            raise ValueError(f"unknown object shape {o.shape!r}")
        quat = p.getQuaternionFromEuler([0, 0, o.yaw])
        body = p.createMultiBody(0.1, col, vis, [o.xy[0], o.xy[1], TABLE_TOP + h / 2 + 1e-4], quat,
                                 physicsClientId=c)
        p.changeDynamics(body, -1, lateralFriction=1.0, spinningFriction=0.005, rollingFriction=0.0005,
                         physicsClientId=c)
        return body

    # -------------------------------------------------------------- control
    def apply_action(self, action: np.ndarray, ik_kwargs=None) -> None:
        """One control step: ee_pose action (8,) -> seeded IK -> joint position targets; then simulate 1/control_hz."""
        a = np.asarray(action, dtype=np.float64)
        T = pose_to_matrix(a[:3], a[3:7] / np.linalg.norm(a[3:7]))
        kw = {"max_iters": 30, "restarts": 0} | (ik_kwargs or {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreachable (perturbed) targets: the closest solution is fine
            q = self.robot.ik(T, q_init=self.q_target, **kw).q[0]
        self.q_target = q
        q_cmd = q.copy()
        q_cmd[self.robot.joint_names.index(self.robot.gripper_joint)] = float(self.robot.gripper_to_joint(a[7]))
        self._drive(q_cmd)
        follow = len(self.driven_fingers) < len(self.finger_joints)
        for _ in range(self.substeps):
            if follow:
                self._follow_gripper()
            p.stepSimulation(physicsClientId=self.cid)

    def _follow_gripper(self) -> None:
        """Re-target the mimic joints at the gripper joint's measured value (see :attr:`Drive.mimic_follow_force`)."""
        c = self.cid
        g = p.getJointState(self.body, self.finger_joints[0], physicsClientId=c)[0]
        p.setJointMotorControlArray(self.body, self.finger_joints[1:], p.POSITION_CONTROL,
                                    targetPositions=self._finger_targets(g)[1:],
                                    forces=[self.drive.mimic_follow_force] * (len(self.finger_joints) - 1),
                                    positionGains=[1.0] * (len(self.finger_joints) - 1), physicsClientId=c)

    def joint_positions(self) -> np.ndarray:
        """(dof,) current joint positions in ``robot.joint_names`` order."""
        return np.array([s[0] for s in p.getJointStates(self.body, self.q_joints, physicsClientId=self.cid)])

    def object_poses(self) -> np.ndarray:
        """(N, 7) xyz + quat xyzw (world) of the objects, ``spec.objects`` order."""
        return np.array([np.r_[pq[0], pq[1]] for pq in
                         (p.getBasePositionAndOrientation(b, physicsClientId=self.cid) for b in self.objects)])

    def render(self, camera: Camera | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TinyRenderer image -> (rgb (H, W, 3) uint8, z-depth (H, W) float32 metres (0 background),
        body id (H, W) int32, -1 background)."""
        cam = camera or self.spec.camera
        view, proj = cam.pybullet_matrices(self.near, self.far)
        _, _, rgba, d, seg = p.getCameraImage(cam.width, cam.height, view, proj, renderer=p.ER_TINY_RENDERER,
                                              flags=p.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX,
                                              physicsClientId=self.cid)
        rgba = np.asarray(rgba, np.uint8).reshape(cam.height, cam.width, 4)
        seg = np.asarray(seg, np.int64).reshape(cam.height, cam.width)
        d = np.asarray(d, np.float64).reshape(cam.height, cam.width)
        body = np.where(seg < 0, -1, seg & 0xFFFFFF).astype(np.int32)
        z = Camera.opengl_depth_to_z(d, self.near, self.far)
        z = np.where(body < 0, 0.0, z).astype(np.float32)
        return rgba[..., :3].copy(), z, body

    # -------------------------------------------------------------- outcome
    def evaluate(self, xy_tol: float = SUCCESS_XY_TOL, z_tol: float = SUCCESS_Z_TOL) -> dict:
        """Success of the pick-and-place from the target object's current pose (see module docstring)."""
        c = self.cid
        pos, _ = p.getBasePositionAndOrientation(self.objects[0], physicsClientId=c)
        o = self.spec.objects[0]
        xy_err = float(np.hypot(pos[0] - self.spec.goal_xy[0], pos[1] - self.spec.goal_xy[1]))
        z_err = float(abs(pos[2] - (TABLE_TOP + o.size[2] / 2)))
        touching = len(p.getContactPoints(self.objects[0], self.body, physicsClientId=c)) > 0
        return {"success": bool(xy_err <= xy_tol and z_err <= z_tol and not touching), "xy_err": xy_err,
                "z_err": z_err, "touching_robot": touching}

    def close(self) -> None:
        if self.cid is not None:
            p.disconnect(physicsClientId=self.cid)
            self.cid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: pybullet may be gone
            pass


def record_indices(n_steps: int, frames: int) -> np.ndarray:
    """Uniform temporal downsampling: (frames,) control-step indices from 0 to n_steps - 1."""
    if frames < 1 or n_steps < 1:
        raise ValueError(f"need frames >= 1 and n_steps >= 1, got {frames}, {n_steps}")
    return np.round(np.linspace(0, n_steps - 1, frames)).astype(int)


def run_episode(robot: Robot, spec: SceneSpec, actions: np.ndarray, frames: int = 49, control_hz: float = 20.0,
                physics_hz: float = 240.0, render_robot_pm: bool = True, robot_backend: str = "auto",
                scene: Scene | None = None) -> Episode:
    """Execute ``actions`` (N, 8) in ``scene`` (reset first) or a fresh :class:`Scene` and record ``frames``
    uniformly spaced frames.

    Frame k is captured after control step ``record_indices(N, frames)[k]`` (frame 0 after the first step, i.e.
    the initial image up to 1/control_hz of motion). The robot pointmap is rendered from the recorded ``q``.
    """
    t0 = time.perf_counter()
    timing = {"physics": 0.0, "render_sim": 0.0, "render_robot": 0.0}
    rec = record_indices(len(actions), frames)
    cam = spec.camera
    H, W = cam.height, cam.width
    rgb = np.zeros((frames, H, W, 3), np.uint8)
    depth = np.zeros((frames, H, W), np.float32)
    rmask = np.zeros((frames, H, W), bool)
    q = np.zeros((frames, robot.dof))
    poses = np.zeros((frames, len(spec.objects), 7))
    own = scene is None
    if own:
        scene = Scene(robot, spec, physics_hz=physics_hz, control_hz=control_hz)
    elif scene.spec is not spec:
        raise ValueError("run_episode: scene was built from a different SceneSpec")
    else:
        scene.reset()
    try:
        k = 0
        for step, a in enumerate(actions):
            scene.apply_action(a)
            while k < frames and rec[k] == step:
                t1 = time.perf_counter()
                rgb[k], depth[k], body = scene.render()
                rmask[k] = body == scene.body
                timing["render_sim"] += time.perf_counter() - t1
                q[k] = scene.joint_positions()
                poses[k] = scene.object_poses()
                k += 1
        outcome = scene.evaluate()
    finally:
        if own:
            scene.close()
    timing["physics"] = time.perf_counter() - t0 - timing["render_sim"]
    world_pm = cam.depth_to_pointmap(depth)
    robot_pm = robot_rmask = robot_rgb = None
    if render_robot_pm:
        from kinema4d.kinematics.render import render_robot

        t1 = time.perf_counter()
        rr = render_robot(robot, q, cam, rgb=True, backend=robot_backend)
        robot_pm, robot_rmask, robot_rgb = rr.pointmap, rr.mask, rr.rgb
        timing["render_robot"] = time.perf_counter() - t1
    meta = {"scene": spec.to_dict(), "instruction": spec.instruction, "outcome": outcome,
            "success": outcome["success"], "frames": frames, "control_hz": control_hz, "physics_hz": physics_hz,
            "n_control_steps": len(actions), "record_steps": rec.tolist()}
    return Episode(rgb=rgb, world_pointmap=world_pm, robot_mask=rmask, robot_pointmap=robot_pm,
                   robot_render_mask=robot_rmask,
                   robot_rgb=robot_rgb, q=q.astype(np.float32), actions=actions[rec].astype(np.float32),
                   object_poses=poses.astype(np.float32), camera=cam, success=outcome["success"], meta=meta,
                   timing=timing)


def execute(scene: Scene, actions: np.ndarray) -> dict:
    """Physics only: reset ``scene``, apply ``actions`` (N, 8) and return :meth:`Scene.evaluate` (no rendering)."""
    scene.reset()
    for a in actions:
        scene.apply_action(a)
    return scene.evaluate()


def make_robot(robot: str = "panda", **options) -> Robot:
    """The robot standing on the table top at ``BASE_XYZ`` (x shifted by ``BASE_SHIFT_X``): a builtin name (panda,
    xarm6, kuka_iiwa_wsg50; the plain kuka_iiwa has no gripper) or a URDF path with ``options`` of
    :func:`kinema4d.kinematics.robot.load_robot` (ee_link, gripper_joints, gripper_open, gripper_closed,
    package_dirs; base_pose replaces the stand). The pick-and-place needs a gripper (checked here)."""
    T_world_base = np.eye(4)
    T_world_base[:3, 3] = BASE_XYZ
    T_world_base[0, 3] += BASE_SHIFT_X.get(robot, 0.0)
    if options.get("base_pose") is not None:  # the user's stand instead of the default one (--base-pose)
        T_world_base = base_pose_matrix(options.pop("base_pose"))
    options.pop("base_pose", None)
    if robot == "kuka_iiwa":
        raise ValueError("kuka_iiwa (pybullet_data's kuka_iiwa/model.urdf) has no gripper; use --robot "
                         "kuka_iiwa_wsg50, the KUKA iiwa with the WSG50-style gripper of "
                         "kuka_iiwa/kuka_with_gripper2.sdf (converted to URDF by kinema4d.kinematics.sdf)")
    r = load_robot(robot, T_world_base=T_world_base, **options)
    if r.gripper_joint is None:
        raise ValueError(f"the pick-and-place needs a gripper; {robot!r} has none. Name its gripper joints with "
                         f"--gripper-joints (actuated joints: {r.joint_names})")
    if robot not in BUILTIN_ROBOTS:  # a URDF has no start pose: put the grasp point where the builtins start
        r.home = workspace_home(r)
    return r


# metres: a robot whose gripper is too long to reach the near workspace edge at table height stands further back
# (the KUKA's 26 cm gripper and +-120 deg elbow reach no closer than ~42 cm); the scenes are the same for all robots
BASE_SHIFT_X = {"kuka_iiwa_wsg50": -0.08}
HOME_XYZ_BASE = (0.48, 0.0, 0.41)  # metres in the robot base frame: the grasp point of the start pose


def workspace_home(robot: Robot) -> np.ndarray:
    """(dof,) start configuration of a URDF robot: ``robot.ee_link`` at :data:`HOME_XYZ_BASE` pointing straight
    down (the builtins' start pose), gripper open; seeded IK with restarts. Raises if the pose is out of reach."""
    T_world_ee = robot.T_world_base @ pose_to_matrix(np.array(HOME_XYZ_BASE), down_quat(0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = robot.ik(T_world_ee, q_init=robot.home, max_iters=300, restarts=32)
    if not res.converged[0] and (res.pos_err[0] > 0.005 or res.rot_err[0] > 0.05):
        raise ValueError(f"{robot.name}: ee link {robot.ee_link!r} cannot reach the start pose (grasp point "
                         f"{HOME_XYZ_BASE} m in the base frame, pointing down; IK error {res.pos_err[0] * 1000:.1f} "
                         f"mm, {res.rot_err[0]:.3f} rad); is --ee-link the link between the fingers?")
    q = res.q[0].copy()
    q[robot.joint_names.index(robot.gripper_joint)] = robot.gripper_open
    return q
