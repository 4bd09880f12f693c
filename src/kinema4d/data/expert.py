"""Synthetic 4D data engine on pybullet (paper Sec. 3.3, Supp. B.2): table-top pick-and-place with any robot
that has a gripper (builtin: the Franka Panda, the default, the xArm6 with its gripper and the KUKA iiwa with a
WSG50-style gripper; or a URDF).

One :class:`Scene` = one pybullet DIRECT client (several coexist in a process). It holds a table
(``table/table.urdf``, top at z = 0.625), the robot loaded from the same URDF as its :class:`Robot` at the
same base pose (:func:`make_robot`), a goal pad (visual only), a target object and 0-2 distractors (box /
cylinder / capsule / hexagonal prism primitives with distinct colours). The arm is position-controlled towards
joint targets from kinema4d's seeded IK of end-effector pose actions; the fingers follow the gripper channel
(:class:`Drive`: motor limits per robot); objects react physically.

Randomization ranges per split (:func:`split_ranges`): train / val / test share the ranges (disjoint seeds);
``ood`` uses unseen shapes (capsule, hexagonal prism), unseen colours and a camera outside the training range;
``ood_embodiment`` uses the test ranges with a robot the default model was not trained on (xarm6 by default).
Main camera (oblique top-down, medial-frontal, looking from the far side of the table back at the robot):
look-at target ``(-0.16, 0, 0.70)`` +- 3 cm; azimuth about world z (0 = straight in front of the robot),
elevation above the horizontal, distance to the target and vertical FOV are sampled uniformly from the ranges.
The framing is tight (vertical FOV 36-40 deg at 0.95-1.05 m): the workspace fills the image, so a 4-5 cm object
covers ~4 pixels at 64x96 (with the earlier 50-58 deg framing it covered ~2.5 and the sky filled the top third).

Failures (Supp. B.2, :func:`perturb_actions`): the episode's control steps are split into 3 equal temporal
segments; in one segment a Gaussian random walk is added to the 6-DoF ee pose (position and a world-frame
rotation vector), accumulated from the segment's start so the error grows progressively and held afterwards.
Per-step increments are scaled so that the accumulated offset at the segment's end has a per-axis standard
deviation of ``sigma * pos_scale`` metres (default 8 cm) and ``sigma * rot_scale`` radians (default 0.3 rad);
sigma in {0.5, 0.8, 1.2}. The gripper channel is never perturbed; the commanded grasp point is kept >= 1 cm above
the table top (a workspace limit). 3 segments x 3 sigmas = 9 failure variants per demonstration.

Policy family (:data:`POLICIES`, for ranking policies of different quality as SimplerEnv ranks real policies):
the scripted expert with a lateral grasp offset (the pick approaches, descends, grasps and lifts at a point shifted
horizontally by ``grasp_offset`` metres in a random direction; the offset ramps in over the approach and out over
the carry, so the place is aimed at the pad) and action noise (:func:`perturb_actions` on segment 0, i.e. the
approach and descent, held afterwards). ``expert`` is the clean scripted policy; p1-p4 increase both. The random
direction and noise come from one generator per scene, drawn in the same order for every member, so the members
share their random numbers and differ only in magnitude (:func:`policy_actions`).

Success (:meth:`Scene.evaluate`): after the episode the target object's centre is within ``success_xy_tol``
(5 cm) of the pad centre in xy, it rests upright on the table (centre height within 1.5 cm of its resting height)
and it touches no robot link.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pybullet as p
import pybullet_data
from scipy.spatial.transform import Rotation, Slerp

from kinema4d.geometry import matrix_to_pose, pose_to_matrix
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.meshes import DEFAULT_MAX_FACES_PER_LINK, simplified_urdf
from kinema4d.kinematics.robot import BUILTIN_ROBOTS, Robot

SPLITS = ("train", "val", "test", "ood", "ood_embodiment")
TABLE_TOP = 0.625
BASE_XYZ = (-0.6, 0.0, TABLE_TOP)
CAM_TARGET = (-0.16, 0.0, 0.70)  # the workspace centre region, so the workspace fills the image
FAILURE_SIGMAS = (0.5, 0.8, 1.2)
N_SEGMENTS = 3

PALETTE = {  # name -> rgb in [0, 1]
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.15), "blue": (0.1, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1),
    "orange": (1.0, 0.5, 0.0), "purple": (0.55, 0.15, 0.7),
    # ood only
    "cyan": (0.0, 0.85, 0.85), "magenta": (0.95, 0.1, 0.75), "white": (0.95, 0.95, 0.95),
    "brown": (0.5, 0.3, 0.1), "pink": (1.0, 0.6, 0.7),
}
SHAPE_NAMES = {"box": "cube", "cylinder": "cylinder", "capsule": "capsule", "hexprism": "hexagonal prism"}


@dataclass(frozen=True)
class Ranges:
    """Randomization ranges of one split. Angles in degrees, lengths in metres."""

    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    cam_azimuth_deg: tuple[tuple[float, float], ...]  # one or more intervals, one is picked uniformly
    cam_elevation_deg: tuple[float, float]
    cam_distance: tuple[float, float]
    cam_fov_deg: tuple[float, float] = (36.0, 40.0)
    object_size: tuple[float, float] = (0.04, 0.05)  # cube side / cylinder diameter
    object_height: tuple[float, float] = (0.04, 0.06)
    n_distractors: tuple[int, int] = (0, 2)
    workspace_x: tuple[float, float] = (0.38, 0.62)  # robot base frame (metres in front of the base)
    workspace_y: tuple[float, float] = (-0.25, 0.25)


TRAIN_RANGES = Ranges(shapes=("box", "cylinder"), colours=("red", "green", "blue", "yellow", "orange", "purple"),
                      cam_azimuth_deg=((-25.0, 25.0),), cam_elevation_deg=(45.0, 60.0), cam_distance=(0.95, 1.05))
OOD_RANGES = Ranges(shapes=("capsule", "hexprism"), colours=("cyan", "magenta", "white", "brown", "pink"),
                    cam_azimuth_deg=((-45.0, -30.0), (30.0, 45.0)), cam_elevation_deg=(63.0, 72.0),
                    cam_distance=(1.1, 1.2), cam_fov_deg=(33.0, 35.0))


def split_ranges(split: str) -> Ranges:
    """Randomization ranges of ``split`` (train/val/test share them; ood is disjoint in shape, colour, camera;
    ood_embodiment has the test ranges: only the robot differs, see ``kinema4d.data.datagen``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return OOD_RANGES if split == "ood" else TRAIN_RANGES


# ---------------------------------------------------------------------- scene description
@dataclass(frozen=True)
class ObjectSpec:
    """One object: ``shape`` in box|cylinder|capsule|hexprism, ``size`` (x, y, z) extents metres, pose on the table."""

    shape: str
    colour: str
    size: tuple[float, float, float]
    xy: tuple[float, float]  # world metres
    yaw: float  # radians

    @property
    def rgba(self) -> tuple[float, float, float, float]:
        return (*PALETTE[self.colour], 1.0)

    @property
    def name(self) -> str:
        return f"{self.colour} {SHAPE_NAMES[self.shape]}"

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "rgba": list(self.rgba), "size": list(self.size),
                "xy": list(self.xy), "yaw": self.yaw, "name": self.name}


@dataclass(frozen=True)
class SceneSpec:
    """Everything that defines an episode's initial state. ``objects[0]`` is the object to pick."""

    objects: tuple[ObjectSpec, ...]
    goal_xy: tuple[float, float]  # pad centre, world metres
    pad_colour: str
    camera: Camera
    grasp_yaw: float  # gripper yaw about world z (radians) for the grasp
    split: str
    seed: list = field(default_factory=list)  # entropy used to sample it (for the record)

    @property
    def instruction(self) -> str:
        return f"pick up the {self.objects[0].name} and place it on the {self.pad_colour} pad"

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "goal_xy": list(self.goal_xy),
                "pad_colour": self.pad_colour, "camera": self.camera.to_dict(), "grasp_yaw": self.grasp_yaw,
                "split": self.split, "seed": list(self.seed), "instruction": self.instruction}


def sample_camera(rng: np.random.Generator, ranges: Ranges, width: int, height: int) -> Camera:
    """Main camera: oblique top-down, medial-frontal, pose sampled from ``ranges`` (see module docstring)."""
    lo, hi = ranges.cam_azimuth_deg[rng.integers(len(ranges.cam_azimuth_deg))]
    az = np.deg2rad(rng.uniform(lo, hi))
    el = np.deg2rad(rng.uniform(*ranges.cam_elevation_deg))
    dist = rng.uniform(*ranges.cam_distance)
    target = np.array(CAM_TARGET) + rng.uniform(-0.03, 0.03, 3)
    eye = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    return Camera.look_at(eye, target, width=width, height=height, fov_y_deg=rng.uniform(*ranges.cam_fov_deg))


def sample_scene(rng: np.random.Generator, split: str, width: int, height: int, seed=(),
                 n_distractors: tuple[int, int] | None = None) -> SceneSpec:
    """Random scene of ``split``: target object, goal pad >= 15 cm away, distractors >= 10 cm from both.

    ``n_distractors`` (min, max) overrides the split's range (policy-evaluation setups: cluttered, dense). Then the
    target and pad colours come from the split's palette and the distractors' from the rest of :data:`PALETTE`
    (repeats allowed, never the target's colour, so a colour judge stays unambiguous); with more than 3
    distractors they keep 7 cm instead of 10 cm apart so that dense scenes fit the workspace.
    """
    r = split_ranges(split)
    override = n_distractors is not None
    if override:
        lo, hi = n_distractors
        if not 0 <= lo <= hi <= 8:
            raise ValueError(f"n_distractors must be (min, max) with 0 <= min <= max <= 8, got {n_distractors}")
    n_range = n_distractors if override else r.n_distractors
    n_obj = 1 + int(rng.integers(n_range[0], n_range[1] + 1))
    if override:
        tc, pc = rng.choice(len(r.colours), size=2, replace=False)
        others = [c for c in PALETTE if c not in (r.colours[tc], r.colours[pc])]
        names = [r.colours[tc], *[others[k] for k in rng.integers(len(others), size=n_obj - 1)], r.colours[pc]]
    else:
        names = [r.colours[k] for k in rng.choice(len(r.colours), size=n_obj + 1, replace=False)]
    pad_colour = names[-1]
    gap = 0.07 if override and n_obj - 1 > 3 else 0.10
    bx, by = BASE_XYZ[0], BASE_XYZ[1]

    def rand_xy():
        return np.array([bx + rng.uniform(*r.workspace_x), by + rng.uniform(*r.workspace_y)])

    taken: list[tuple[np.ndarray, float]] = []
    objects = []
    goal = None
    for i in range(n_obj + 1):  # objects[0], then the goal, then distractors
        need = 0.15 if i == 1 else gap
        for _ in range(200):
            xy = rand_xy()
            if all(np.linalg.norm(xy - t) >= max(need, d) for t, d in taken):
                break
        else:
            raise RuntimeError(f"could not place object {i} of the {split} scene without overlap")
        taken.append((xy, need))
        if i == 1:
            goal = xy
            continue
        shape = r.shapes[rng.integers(len(r.shapes))]
        w = rng.uniform(*r.object_size)
        h = rng.uniform(*r.object_height)
        colour = names[0 if i == 0 else i - 1]
        objects.append(ObjectSpec(shape=shape, colour=colour, size=(float(w), float(w), float(h)),
                                  xy=(float(xy[0]), float(xy[1])), yaw=float(rng.uniform(-np.pi, np.pi))))
    target = objects[0]
    if target.shape in ("box", "hexprism"):  # grasp across parallel faces; |yaw| <= pi/4 keeps joint 7 in range
        period = np.pi / 2 if target.shape == "box" else np.pi / 3
        grasp_yaw = (target.yaw + period / 2) % period - period / 2
    else:
        grasp_yaw = rng.uniform(-0.5, 0.5)
    return SceneSpec(objects=tuple(objects), goal_xy=(float(goal[0]), float(goal[1])), pad_colour=pad_colour,
                     camera=sample_camera(rng, r, width, height), grasp_yaw=float(grasp_yaw), split=split,
                     seed=list(seed))


# ---------------------------------------------------------------------- scripted policy and failures
def _min_jerk(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 0.0, 1.0)
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def down_quat(yaw: float) -> np.ndarray:
    """Quaternion xyzw of a gripper pointing straight down with yaw ``yaw`` about world z."""
    R = Rotation.from_euler("z", yaw).as_matrix() @ np.diag([1.0, -1.0, -1.0])
    return Rotation.from_matrix(R).as_quat()


# (phase, seconds) of the scripted pick-and-place
PHASES = (("approach", 2.0), ("descend", 1.0), ("grasp", 0.6), ("lift", 1.0), ("carry", 2.0), ("lower", 1.0),
          ("release", 0.5), ("retreat", 0.8), ("settle", 0.4))


def scripted_pick_place(robot: Robot, spec: SceneSpec, control_hz: float = 20.0) -> tuple[np.ndarray, list]:
    """Pick ``spec.objects[0]`` and place it on the pad: ee_pose actions (N, 8) at ``control_hz``.

    Columns: xyz (m) + quaternion xyzw of ``robot.ee_link`` in the world + gripper opening in [0, 1] (1 open).
    Returns (actions, phases) with phases a list of (name, first_step, end_step).
    """
    T_home = robot.fk(robot.home, [robot.ee_link])[robot.ee_link][0]
    p_home, q_home = matrix_to_pose(T_home)
    obj = spec.objects[0]
    h = obj.size[2]
    z_grasp = TABLE_TOP + max(0.5 * h, 0.02)
    z_above = TABLE_TOP + h + 0.12
    z_lift = TABLE_TOP + h + 0.16
    o = np.array([obj.xy[0], obj.xy[1]])
    g = np.array(spec.goal_xy)
    q_down = down_quat(spec.grasp_yaw)
    keys = [  # (position at the end of the phase, quaternion, gripper at the end)
        (np.r_[o, z_above], q_down, 1.0),
        (np.r_[o, z_grasp], q_down, 1.0),
        (np.r_[o, z_grasp], q_down, 0.0),
        (np.r_[o, z_lift], q_down, 0.0),
        (np.r_[g, z_lift], q_down, 0.0),
        (np.r_[g, z_grasp + 0.005], q_down, 0.0),
        (np.r_[g, z_grasp + 0.005], q_down, 1.0),
        (np.r_[g, z_above + 0.05], q_down, 1.0),
        (np.r_[g, z_above + 0.05], q_down, 1.0),
    ]
    # row 0 holds the start pose, so frame 0 (recorded after step 0) is the initial image I0
    rows, phases = [np.r_[p_home, q_home, 1.0][None]], [("start", 0, 1)]
    prev = (p_home, q_home, 1.0)
    step = 1
    for (name, dur), key in zip(PHASES, keys, strict=True):
        n = max(1, int(round(dur * control_hz)))
        s = _min_jerk(np.arange(1, n + 1) / n)
        pos = prev[0] + s[:, None] * (key[0] - prev[0])
        rots = Slerp([0.0, 1.0], Rotation.from_quat([prev[1], key[1]]))(s).as_quat()
        grip = prev[2] + s * (key[2] - prev[2])
        rows.append(np.concatenate([pos, rots, grip[:, None]], axis=1))
        phases.append((name, step, step + n))
        step += n
        prev = key
    return np.concatenate(rows).astype(np.float64), phases


def perturb_actions(actions: np.ndarray, segment: int, sigma: float, rng: np.random.Generator,
                    n_segments: int = N_SEGMENTS, pos_scale: float = 0.08, rot_scale: float = 0.3,
                    z_min: float = TABLE_TOP + 0.01) -> np.ndarray:
    """Failure synthesis (Supp. B.2): Gaussian random walk on the 6-DoF pose inside one temporal segment.

    ``actions`` (N, 8) ee_pose. The steps are split into ``n_segments`` equal parts; inside part ``segment`` the
    pose offset is a random walk started at 0 whose per-axis std at the part's end is ``sigma * pos_scale`` m
    (position) and ``sigma * rot_scale`` rad (world-frame rotation vector); the final offset is held afterwards.
    The gripper column is untouched; the commanded z is clipped to >= ``z_min``. Returns a new (N, 8) array.
    """
    a = np.array(actions, dtype=np.float64)
    if not (0 <= segment < n_segments):
        raise ValueError(f"segment must be in [0, {n_segments}), got {segment}")
    seg = np.array_split(np.arange(len(a)), n_segments)[segment]
    n = len(seg)
    step_std = sigma / np.sqrt(n)
    dpos = np.cumsum(rng.normal(0.0, step_std * pos_scale, (n, 3)), axis=0)
    drot = np.cumsum(rng.normal(0.0, step_std * rot_scale, (n, 3)), axis=0)
    off_p = np.zeros((len(a), 3))
    off_r = np.zeros((len(a), 3))
    off_p[seg], off_r[seg] = dpos, drot
    off_p[seg[-1] + 1:], off_r[seg[-1] + 1:] = dpos[-1], drot[-1]
    a[:, :3] += off_p
    a[:, 2] = np.maximum(a[:, 2], z_min)
    a[:, 3:7] = (Rotation.from_rotvec(off_r) * Rotation.from_quat(a[:, 3:7])).as_quat()
    return a


@dataclass(frozen=True)
class PolicySpec:
    """One member of the scripted policy family (see module docstring)."""

    grasp_offset: float  # metres: horizontal shift of the grasp point, in a random direction per scene
    sigma: float  # perturb_actions sigma on segment 0 (approach / descent); 0 = no noise

    def describe(self) -> str:
        if self.grasp_offset == 0 and self.sigma == 0:
            return "clean scripted expert"
        return f"grasp offset {self.grasp_offset * 100:g} cm, noise sigma {self.sigma:g} on segment 0"


# Measured physics success on canonical test scenes (no distractor, scenes resampled until the expert succeeds,
# 40 scenes): expert 1.0, p1 ~0.8, p2 ~0.5, p3 ~0.3, p4 ~0.1.
POLICIES: dict[str, PolicySpec] = {
    "expert": PolicySpec(grasp_offset=0.0, sigma=0.0),
    "p1": PolicySpec(grasp_offset=0.015, sigma=0.15),
    "p2": PolicySpec(grasp_offset=0.02, sigma=0.2),
    "p3": PolicySpec(grasp_offset=0.03, sigma=0.3),
    "p4": PolicySpec(grasp_offset=0.04, sigma=0.5),
}


def offset_grasp(actions: np.ndarray, phases: list, offset_xy) -> np.ndarray:
    """Shift the pick of a :func:`scripted_pick_place` trajectory horizontally by ``offset_xy`` (2,) metres.

    The offset ramps in over the ``approach`` phase (min-jerk), is held through ``descend``, ``grasp`` and
    ``lift`` (so the grasp point moves by exactly ``offset_xy``) and ramps out over ``carry``; the start pose and
    the place are unchanged. Returns a new (N, 8) array.
    """
    a = np.array(actions, dtype=np.float64)
    span = {name: (s, e) for name, s, e in phases}
    w = np.zeros(len(a))
    s, e = span["approach"]
    w[s:e] = _min_jerk(np.arange(1, e - s + 1) / (e - s))
    w[e:span["lift"][1]] = 1.0
    s, e = span["carry"]
    w[s:e] = 1.0 - _min_jerk(np.arange(1, e - s + 1) / (e - s))
    a[:, :2] += w[:, None] * np.asarray(offset_xy, np.float64)[None]
    return a


def policy_actions(robot: Robot, spec: SceneSpec, policy: str | PolicySpec, rng: np.random.Generator,
                   control_hz: float = 20.0) -> tuple[np.ndarray, dict]:
    """ee_pose actions (N, 8) of the family member ``policy`` (a :data:`POLICIES` name or a spec) on ``spec``.

    ``rng`` draws the offset direction (uniform angle), then the noise of :func:`perturb_actions` (segment 0);
    both are drawn for every member, so the same ``rng`` state gives every member the same direction and noise
    shape. Returns (actions, info) with info = {"grasp_offset_xy": [dx, dy] metres, "sigma": float}.
    """
    p_ = POLICIES[policy] if isinstance(policy, str) else policy
    actions, phases = scripted_pick_place(robot, spec, control_hz)
    theta = rng.uniform(-np.pi, np.pi)
    off = p_.grasp_offset * np.array([np.cos(theta), np.sin(theta)])
    if p_.grasp_offset > 0:
        actions = offset_grasp(actions, phases, off)
    if p_.sigma > 0:
        actions = perturb_actions(actions, 0, p_.sigma, rng)
    return actions, {"grasp_offset_xy": off.tolist(), "sigma": float(p_.sigma)}


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
    def evaluate(self, xy_tol: float = 0.05, z_tol: float = 0.015) -> dict:
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
    :func:`kinema4d.kinematics.control.load_robot` (ee_link, gripper_joints, gripper_open, gripper_closed,
    package_dirs; base_pose replaces the stand). The pick-and-place needs a gripper (checked here)."""
    from kinema4d.kinematics.control import load_robot

    T_world_base = np.eye(4)
    T_world_base[:3, 3] = BASE_XYZ
    T_world_base[0, 3] += BASE_SHIFT_X.get(robot, 0.0)
    if options.get("base_pose") is not None:  # the user's stand instead of the default one (--base-pose)
        from kinema4d.kinematics.control import base_pose_matrix

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
