"""Automatic success judge for pick-and-place from a 4D rollout (policy evaluation, paper Tab. 3).

The judge sees what a world model produces: RGB frames and a camera-space pointmap in metres. It finds the target
object by its colour, lifts its pixels to 3D with the pointmap and applies the simulator's success rule
(:meth:`kinema4d.data.scene.Scene.evaluate`): the object's centre within ``xy_tol`` of the goal pad in xy and resting on
the table (not held up).

The object's reference colour is read from the initial image I0 at the object's known initial position, so the
shading of the renderer (or of the generated video) is part of the reference; no palette value is assumed.

At low resolution (the 32x48 CPU model) a 4-5 cm object covers one or two pixels, blended with the goal pad it
lands on, and colour finding fails (measured on ground-truth frames of the policy-evaluation setups: the colour
judge agrees with physics on 42-70 % of episodes at 32x48, 92-100 % at 64x96). :func:`judge_place_height` uses
the geometry instead, which only a 4D world model provides: success = something of the object's height stands on
the goal pad in the last frame, robot pixels (known from the kinematics) excluded; 96-100 % agreement at both sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinema4d.geometry import transform_points
from kinema4d.kinematics.camera import Camera


@dataclass
class Judgement:
    success: bool
    xy_err: float  # metres from the goal; inf when the object was not found
    z_above_table: float  # metres of the object's top surface points above the table; nan when not found
    pixels: int  # object pixels found in the judged frames


def reference_colour(rgb0: np.ndarray, camera: Camera, p_world: np.ndarray, radius_px: int = 2,
                     background_radius_px: int = 8, min_contrast: float = 40.0) -> np.ndarray | None:
    """The object's colour (3,) float in I0 ``rgb0`` (H, W, 3) uint8 near the projection of ``p_world`` (3,) m.

    Objects may cover only a few pixels at low resolution, so the window around the projection also holds table:
    the background colour is the median of a wider window, and the reference is the median of the window pixels
    at least ``min_contrast`` (0-255 Euclidean) away from it. None when no such pixel exists (object unresolved).
    """
    uv, z = camera.project(np.asarray(p_world, np.float64)[None])
    if z[0] <= 0:
        raise ValueError(f"reference point {p_world} is behind the camera")
    c, r = np.round(uv[0]).astype(int)
    if not (0 <= c < camera.width and 0 <= r < camera.height):
        raise ValueError(f"reference point {p_world} projects outside the image at (u, v) = {uv[0].round(1)}")

    def window(rad):
        w = rgb0[max(r - rad, 0): r + rad + 1, max(c - rad, 0): c + rad + 1]
        return w.reshape(-1, 3).astype(np.float64)

    background = np.median(window(background_radius_px), axis=0)
    near = window(radius_px)
    obj = near[np.linalg.norm(near - background, axis=1) >= min_contrast]
    return np.median(obj, axis=0) if len(obj) else None


def judge_place(rgb: np.ndarray, world_pm: np.ndarray, camera: Camera, ref_rgb: np.ndarray, goal_xy,
                table_z: float, object_height: float, xy_tol: float = 0.05, colour_tol: float = 40.0,
                last_frames: int = 2, min_pixels: int = 2) -> Judgement:
    """Judge a rollout: ``rgb`` (T, H, W, 3) uint8 and ``world_pm`` (T, H, W, 3) camera-frame metres (0 = empty).

    Object pixels: RGB within ``colour_tol`` (Euclidean, 0-255 scale) of ``ref_rgb`` in the last ``last_frames``
    frames, whose 3D points (world frame) lie between the table top and 1.5 object heights above it (points held up
    by the gripper or on the robot are excluded). Success: at least ``min_pixels`` such pixels and their median
    xy within ``xy_tol`` metres of ``goal_xy``.
    """
    rgb, world_pm = np.asarray(rgb), np.asarray(world_pm, np.float64)
    if rgb.shape != world_pm.shape or rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb {rgb.shape} and world_pm {world_pm.shape} must both be (T, H, W, 3)")
    if rgb.shape[1:3] != (camera.height, camera.width):
        raise ValueError(f"frames are {rgb.shape[1:3]} but the camera is {(camera.height, camera.width)}")
    rgb, pm = rgb[-last_frames:], world_pm[-last_frames:]
    near = np.linalg.norm(rgb.astype(np.float64) - np.asarray(ref_rgb, np.float64), axis=-1) < colour_tol
    valid = near & np.any(pm != 0, axis=-1)
    if not valid.any():
        return Judgement(False, float("inf"), float("nan"), 0)
    p_world = transform_points(camera.T_world_cam, pm[valid])
    h = p_world[:, 2] - table_z
    on_table = (h > -0.01) & (h < 1.5 * object_height)
    if on_table.sum() < min_pixels:
        return Judgement(False, float("inf"), float(np.median(h)), int(on_table.sum()))
    xy = np.median(p_world[on_table, :2], axis=0)
    err = float(np.linalg.norm(xy - np.asarray(goal_xy, np.float64)))
    return Judgement(err <= xy_tol, err, float(np.median(h[on_table])), int(on_table.sum()))


def judge_place_height(world_pm: np.ndarray, robot_mask: np.ndarray, camera: Camera, goal_xy, table_z: float,
                       object_height: float, xy_tol: float = 0.05, height_range: tuple[float, float] = (0.5, 1.5),
                       last_frames: int = 1, min_pixels: int = 1, search_margin: float = 0.05) -> Judgement:
    """Judge a rollout by geometry: ``world_pm`` (T, H, W, 3) camera-frame metres (0 = empty), ``robot_mask``
    (T, H, W) bool robot pixels (excluded: a gripper above the pad is not a placed object).

    Object points: points within ``xy_tol + search_margin`` metres of ``goal_xy`` (world xy) at a height above
    ``table_z`` between ``height_range`` x ``object_height`` (the top or the side of an object; the pad itself is
    flat). Success: in each of the last ``last_frames`` frames at least ``min_pixels`` such points, and their median
    xy within ``xy_tol`` of the goal -- the object's centre, as the simulator's rule has it: an object whose centre
    misses the pad by 6 cm still has surface points within 5 cm (measured: 3 of 10 episodes misjudged at 64x96
    when any single point counted). ``xy_err`` is the largest per-frame distance of that median (inf when no
    point), ``z_above_table`` the points' median height.
    """
    world_pm, robot_mask = np.asarray(world_pm, np.float64), np.asarray(robot_mask, bool)
    if world_pm.ndim != 4 or world_pm.shape[-1] != 3 or robot_mask.shape != world_pm.shape[:3]:
        raise ValueError(f"world_pm {world_pm.shape} must be (T, H, W, 3) and robot_mask {robot_mask.shape} (T, H, W)")
    if world_pm.shape[1:3] != (camera.height, camera.width):
        raise ValueError(f"frames are {world_pm.shape[1:3]} but the camera is {(camera.height, camera.width)}")
    goal = np.asarray(goal_xy, np.float64)
    found, errs, heights = [], [], []
    for pm, rm in zip(world_pm[-last_frames:], robot_mask[-last_frames:], strict=True):
        valid = np.any(pm != 0, axis=-1) & ~rm
        p = transform_points(camera.T_world_cam, pm[valid])
        dz = p[:, 2] - table_z
        d = np.linalg.norm(p[:, :2] - goal, axis=1)
        near = (d <= xy_tol + search_margin) & (dz > height_range[0] * object_height) & \
            (dz < height_range[1] * object_height)
        found.append(int(near.sum()))
        errs.append(float(np.linalg.norm(np.median(p[near, :2], axis=0) - goal)) if near.any() else float("inf"))
        heights.extend(dz[near].tolist())
    err = max(errs)
    return Judgement(min(found) >= min_pixels and err <= xy_tol, err,
                     float(np.median(heights)) if heights else float("nan"), min(found))


def judge_episode(rgb: np.ndarray, world_pm: np.ndarray, attrs: dict, rgb0: np.ndarray | None = None,
                  method: str = "colour", robot_mask: np.ndarray | None = None, **kwargs) -> Judgement:
    """:func:`judge_place` (``method="colour"``) or :func:`judge_place_height` (``method="height"``, needs
    ``robot_mask`` (T, H, W)) with the scene description of a data-engine episode (``Dataset4D.attrs(i)``).

    ``rgb0`` is the initial image the reference colour is read from (default ``rgb[0]``).
    """
    if method not in ("colour", "height"):
        raise ValueError(f"judge method must be 'colour' or 'height', got {method!r}")
    camera = Camera.from_dict(attrs["camera"])
    if rgb.shape[1:3] != (camera.height, camera.width):
        camera = camera.resized(rgb.shape[2], rgb.shape[1])
    obj = attrs["objects"][0]
    if method == "height":
        if robot_mask is None:
            raise ValueError("the height judge needs robot_mask (T, H, W): the robot's pixels are not the object")
        return judge_place_height(world_pm, robot_mask, camera, attrs["goal_xy"], attrs["table_top_z"],
                                  obj["size"][2], **kwargs)
    top = np.array([*obj["xy"], attrs["table_top_z"] + obj["size"][2]])
    ref = reference_colour(rgb[0] if rgb0 is None else rgb0, camera, top)
    if ref is None:
        return Judgement(False, float("inf"), float("nan"), 0)
    return judge_place(rgb, world_pm, camera, ref, attrs["goal_xy"], attrs["table_top_z"], obj["size"][2], **kwargs)


def object_reference(rgb0: np.ndarray, pointmap0: np.ndarray, camera: Camera, attrs: dict,
                     robot_mask0: np.ndarray | None = None, colour_tol: float = 40.0,
                     check_tol: float = 0.03) -> np.ndarray | None:
    """Reference colour (3,) of the target object ``attrs["objects"][0]`` for locating it in later frames
    (:func:`kinema4d.eval.metrics.locate_object`), or None when I0 does not resolve the object.

    ``rgb0`` (H, W, 3) uint8 is I0, ``pointmap0`` (H, W, 3) its camera-frame pointmap in metres (0 = empty),
    ``camera`` at that size, ``robot_mask0`` (H, W) the robot's pixels. The colour is :func:`reference_colour` at
    the object's top centre (as :func:`judge_episode` reads it); it is accepted only if it identifies the object
    in I0 itself: located with it in I0 (same rule as in later frames), the object lies within ``check_tol``
    metres of its known initial xy. At low resolution an object covers a pixel or two blended with the table, and
    the colour read there can match large parts of the scene instead (seen at 32x48: hundreds of pixels, located
    0.4 m away); such an episode counts as 'not found' for every method.
    """
    from kinema4d.eval.metrics import locate_object

    obj = attrs["objects"][0]
    top = np.array([*obj["xy"], attrs["table_top_z"] + obj["size"][2]])
    try:
        ref = reference_colour(rgb0, camera, top)
    except ValueError:  # behind the camera or outside the image
        return None
    if ref is None:
        return None
    xy, _ = locate_object(rgb0, pointmap0, camera, ref, robot_mask0, colour_tol=colour_tol)
    if xy is None or np.linalg.norm(xy - np.asarray(obj["xy"], np.float64)) > check_tol:
        return None
    return ref
