"""The held-object prior: where the world's points near the gripper would be if the gripper carried them.

Beyond the paper. The paper's 14B backbone brings object permanence and "things move with the hand that holds
them" from video pretraining; a small model trained from scratch on a few thousand episodes does not learn to move
a 4x4-pixel object across the image (measured: object-motion recall 0.02 after 1200 steps). This module turns the
question into a local one. From the kinematics alone (the commanded end-effector poses and gripper openings) and
the frame-0 observation (I0 + its pointmap, which ``world_anchor`` models already take), it computes, for every
output frame, the image and pointmap of a *hypothesis*: the points standing within ``radius`` of the grasp point
when the gripper closes move rigidly with the end effector until it opens again, and stay where it released them.
The model gets the hypothesis as extra input channels, pixel-aligned with its output, and decides per episode
whether physics agrees (a grasp that missed carries nothing; a slipping grasp drops it).

Nothing here reads the future: the hypothesis is a function of the actions and of frame 0, the same at training
time (recorded actions) and at inference (the user's actions), and the same function serves both.

Written by hand (numpy): no library offers "rigidly carry a point set with a pose sequence and z-buffer splat it",
and it is a few vectorized lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinema4d.geometry import invert_rigid, pose_to_matrix

GRIPPER_CLOSED_BELOW = 0.5  # action column 7 (opening in [0, 1], 1 = open) below this = closed
HELD_RADIUS = 0.05  # metres: points within this distance of the grasp point may be carried
SUPPORT_MARGIN = 0.01  # metres: only points this far above the lowest point of that ball (the support) are carried
# metres: the grasp gate of ModelConfig.held_gate. The carried points' centroid, in the end-effector frame when the
# gripper closes, must lie within (|x|, |y|) < gate; y = the fingers' closing direction (the Panda's finger joint
# axis in panda_grasptarget). Across the closing direction the 1.8 cm finger pads must close on the central part
# of a 4-5 cm object (2 cm); along it the closing fingers centre the object from anywhere inside the 8 cm opening
# minus a finger (3 cm). Chosen from that geometry (the training split cannot tell: its failures come from noise
# after the grasp, and the gate changes its agreement with physics by 0.01).
GRASP_GATE = (0.02, 0.03)


@dataclass(frozen=True)
class HeldPrior:
    """The hypothesis for T output frames (H x W): ``mask`` bool (T, H, W) pixels the carried points land on,
    ``vacated`` bool (T, H, W) frame-0 pixels of the carried points that no carried point covers now (where the
    object stood), ``rgb`` float32 (T, 3, H, W) in [0, 1] and ``xyz`` float32 (T, 3, H, W) camera metres: on
    ``mask`` the carried points, on ``vacated`` the uncovered support (the support's colour around the grasp and
    the pixel ray's intersection with the support plane), 0 elsewhere; ``grasp_frame`` / ``release_frame``
    (indices into the action sequence, -1 = none)."""

    rgb: np.ndarray
    xyz: np.ndarray
    mask: np.ndarray
    vacated: np.ndarray
    grasp_frame: int
    release_frame: int


def grasp_interval(gripper: np.ndarray, closed_below: float = GRIPPER_CLOSED_BELOW) -> tuple[int, int]:
    """(grasp, release) action indices from the gripper column (N,) (1 = open): grasp = the first index where the
    gripper is closed after having been open, release = the first open index after it (N if it never opens).
    (-1, -1) if the gripper never closes after being open."""
    closed = np.asarray(gripper) < closed_below
    starts = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    if len(starts) == 0:
        return -1, -1
    g = int(starts[0])
    opens = np.flatnonzero(~closed[g:])
    return g, (g + int(opens[0]) if len(opens) else len(closed))


def _check_gate(gate) -> tuple[float, float] | None:
    """``gate`` as (across, along) floats, or None; a ValueError naming ``gate`` unless it is None or two positive
    finite numbers (a zero, negative, NaN or missing entry would silently carry nothing or everything)."""
    if gate is None:
        return None
    try:
        vals = [float(g) for g in gate if not isinstance(g, (bool, np.bool_))]
        ok = len(vals) == len(gate) == 2 and all(np.isfinite(v) and v > 0 for v in vals)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"held_object_prior: gate must be None or two positive finite metres (across, along), "
                         f"got {gate!r}")
    return vals[0], vals[1]


def held_object_prior(rgb0: np.ndarray, pointmap0: np.ndarray, robot_mask0: np.ndarray, actions: np.ndarray,
                      T_cam_world: np.ndarray, K: np.ndarray, frames: np.ndarray | None = None,
                      radius: float = HELD_RADIUS, support_margin: float = SUPPORT_MARGIN,
                      gate: tuple[float, float] | None = None) -> HeldPrior:
    """The held-object hypothesis (see the module docstring).

    rgb0 (H, W, 3) float in [0, 1] = I0; pointmap0 (H, W, 3) camera metres of frame 0 (z <= 0 = empty);
    robot_mask0 (H, W) bool, robot pixels of frame 0 (never carried); actions (N, 8) ee_pose actions at the episode
    rate: xyz + quaternion xyzw of the ee link (the grasp point) in the world, gripper opening (1 = open);
    T_cam_world (4, 4); K (3, 3) pixels for this H x W; frames (T,) indices into the N actions of the output frames
    (default: all N); gate (across, along) metres or None: carry nothing unless the carried points' centroid lies
    within that distance of the grasp point across / along the closing direction (the end effector's x / y at the
    grasp; see ``GRASP_GATE``). Returns a :class:`HeldPrior`.
    """
    gate = _check_gate(gate)
    rgb0, pm0 = np.asarray(rgb0, np.float32), np.asarray(pointmap0, np.float64)
    H, W = pm0.shape[:2]
    actions = np.asarray(actions, np.float64)
    if rgb0.shape != (H, W, 3) or pm0.shape != (H, W, 3) or np.shape(robot_mask0) != (H, W):
        raise ValueError(f"held_object_prior: rgb0 {rgb0.shape}, pointmap0 {pm0.shape}, robot_mask0 "
                         f"{np.shape(robot_mask0)} must be (H, W, 3), (H, W, 3), (H, W)")
    if actions.ndim != 2 or actions.shape[1] != 8:
        raise ValueError(f"held_object_prior: actions must be (N, 8) ee_pose + gripper, got {actions.shape}")
    frames = np.arange(len(actions)) if frames is None else np.asarray(frames, dtype=int)
    if len(frames) and (frames.min() < 0 or frames.max() >= len(actions)):
        raise ValueError(f"held_object_prior: frames {frames.tolist()} out of range for {len(actions)} actions")
    T = len(frames)
    out = HeldPrior(rgb=np.zeros((T, 3, H, W), np.float32), xyz=np.zeros((T, 3, H, W), np.float32),
                    mask=np.zeros((T, H, W), bool), vacated=np.zeros((T, H, W), bool), grasp_frame=-1,
                    release_frame=-1)
    g, r = grasp_interval(actions[:, 7])
    if g < 0:
        return out
    out = HeldPrior(out.rgb, out.xyz, out.mask, out.vacated, g, r)

    # candidate points: frame-0 scene points (not robot) within `radius` of the grasp point, above the local support
    T_world_cam = invert_rigid(np.asarray(T_cam_world, np.float64))
    valid = (pm0[..., 2] > 0) & ~np.asarray(robot_mask0, bool)
    rows, cols = np.nonzero(valid)
    p_world = pm0[rows, cols] @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    near = np.linalg.norm(p_world - actions[g, :3], axis=1) < radius
    if not near.any():
        return out
    support_z = p_world[near, 2].min()  # the lowest point of the ball around the grasp point: the support
    near &= p_world[:, 2] > support_z + support_margin
    if not near.any():
        return out
    T_world_ee = pose_to_matrix(actions[:, :3], actions[:, 3:7])  # (N, 4, 4)
    T_ee_world_grasp = invert_rigid(T_world_ee[g])
    if gate is not None:  # the fingers must close on the points' middle, else the grasp misses or slips
        c_ee = T_ee_world_grasp[:3, :3] @ p_world[near].mean(0) + T_ee_world_grasp[:3, 3]
        if abs(c_ee[0]) >= gate[0] or abs(c_ee[1]) >= gate[1]:
            return out
    bg_rgb = _support_colour(rgb0[rows, cols], p_world, near, actions[g, :3], support_z, radius, support_margin)
    rows, cols, p_world = rows[near], cols[near], p_world[near]
    colours = rgb0[rows, cols]  # (M, 3)
    bg_xyz = _support_points(rows, cols, pm0[rows, cols], support_z, T_world_cam, K)  # (M, 3) camera metres

    for k, f in enumerate(frames):
        if f < g:
            continue
        T_world_world = T_world_ee[min(f, r - 1)] @ T_ee_world_grasp  # carried until release (r > g always)
        T_cam = np.asarray(T_cam_world, np.float64) @ T_world_world
        p_cam = p_world @ T_cam[:3, :3].T + T_cam[:3, 3]
        z = p_cam[:, 2]
        uv = p_cam @ np.asarray(K, np.float64).T
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = np.round(uv[:, 0] / z).astype(np.int64), np.round(uv[:, 1] / z).astype(np.int64)
        ok = (z > 1e-6) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        if ok.any():
            # z-buffer: per pixel keep the nearest point (sort by pixel, then depth; the first of each pixel wins)
            idx = np.flatnonzero(ok)
            lin = v[idx] * W + u[idx]
            srt = np.lexsort((z[idx], lin))
            first = np.ones(len(srt), bool)
            first[1:] = lin[srt][1:] != lin[srt][:-1]
            order = idx[srt[first]]
            out.rgb[k][:, v[order], u[order]] = colours[order].T
            out.xyz[k][:, v[order], u[order]] = p_cam[order].T
            out.mask[k][v[order], u[order]] = True
        out.vacated[k][rows, cols] = True
        out.vacated[k] &= ~out.mask[k]
        vac = out.vacated[k][rows, cols]
        out.rgb[k][:, rows[vac], cols[vac]] = bg_rgb[:, None]
        out.xyz[k][:, rows[vac], cols[vac]] = bg_xyz[vac].T
    return out


def _support_colour(colours: np.ndarray, p_world: np.ndarray, carried: np.ndarray, grasp: np.ndarray,
                    support_z: float, radius: float, margin: float) -> np.ndarray:
    """(3,) the colour an uncovered support shows: the median colour of the support points (z within ``margin`` of
    ``support_z``) at horizontal distance [radius, 2 radius) from the grasp point; falls back to every support
    point within 2 radius, then to every point that is not carried. colours (P, 3), p_world (P, 3) metres,
    carried (P,) bool."""
    d_xy = np.linalg.norm(p_world[:, :2] - grasp[:2], axis=1)
    low = (p_world[:, 2] <= support_z + margin) & ~carried
    for sel in (low & (d_xy >= radius) & (d_xy < 2 * radius), low & (d_xy < 2 * radius), ~carried):
        if sel.any():
            return np.median(colours[sel], axis=0).astype(np.float32)
    return np.zeros(3, np.float32)


def _support_points(rows: np.ndarray, cols: np.ndarray, p_cam: np.ndarray, support_z: float,
                    T_world_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(M, 3) camera metres: where the rays of pixels (rows, cols) meet the horizontal plane z = ``support_z``
    (world), i.e. what they see once the object above the support is gone; a ray that does not meet the plane in
    front of the camera keeps its frame-0 point ``p_cam`` (M, 3)."""
    d_cam = np.stack([cols, rows, np.ones_like(rows)], axis=1).astype(np.float64) @ np.linalg.inv(K).T  # z = 1
    d_world_z = d_cam @ T_world_cam[2, :3]
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = (support_z - T_world_cam[2, 3]) / d_world_z  # z-depth: d_cam has z = 1
    ok = np.isfinite(depth) & (depth > 0)
    return np.where(ok[:, None], d_cam * np.where(ok, depth, 0.0)[:, None], p_cam)
