"""The scripted pick-and-place expert of the data engine, its failure variants and the policy family (paper
Sec. 3.3, Supp. B.2). Actions are ee_pose actions (N, 8) for a :class:`kinema4d.data.scene_spec.SceneSpec`; the
physics that executes them is :mod:`kinema4d.data.scene`.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from kinema4d.data.scene_spec import TABLE_TOP, SceneSpec
from kinema4d.geometry import matrix_to_pose
from kinema4d.kinematics.robot import Robot

FAILURE_SIGMAS = (0.5, 0.8, 1.2)
N_SEGMENTS = 3


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
