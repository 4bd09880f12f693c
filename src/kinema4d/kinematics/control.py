"""Kinematic control stage (paper Sec. 3.1): actions -> joints (FK / seeded IK) -> robot pointmap sequence.

``kinema4d control`` writes ``robot_pointmap.npz`` (pointmap, mask, depth, link_id, q, camera) and
``robot_pointmap.mp4`` (shaded robot | pseudo-coloured pointmap | mask).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tyro.conf import UseAppendAction

from kinema4d.geometry import matrix_to_pose, save_atomic_npz, save_atomic_text
from kinema4d.kinematics.camera import Camera, demo_camera
from kinema4d.kinematics.robot import ACTION_MODES, Robot, actions_to_joints, load_robot


@dataclass(frozen=True, kw_only=True)
class RobotArgs:
    """The robot options of ``control``, ``simulate`` and ``view`` (``datagen`` and the importers spell them alike).
    A camera JSON may carry the same fields under ``"robot"`` (:func:`robot_from_json`); flags override them."""

    ee_link: str | None = None
    """URDF robots: the end-effector link the ee_pose actions drive (default: the deepest link)."""
    gripper_joints: tuple[str, ...] | None = None
    """URDF robots: the gripper joints; the first is driven (the actions' gripper column), the others follow it 1:1
    (URDF mimic joints of the first follow it anyway)."""
    gripper_open: float | None = None
    """URDF robots: first gripper joint's value when open (default: its upper limit)."""
    gripper_closed: float | None = None
    """URDF robots: first gripper joint's value when closed (default: its lower limit)."""
    package_dir: UseAppendAction[tuple[Path, ...]] = ()
    """URDF robots: a directory searched for package:// mesh paths (repeatable: --package-dir A --package-dir B)."""
    base_pose: tuple[float, float, float, float, float, float, float] | None = None
    """Robot base pose in the world: x y z qx qy qz qw (metres, unit quaternion). Default: the identity."""

    def robot_options(self) -> dict:
        """The given options as :func:`load_robot` keywords (unset ones left out)."""
        opts = {"ee_link": self.ee_link, "gripper_joints": self.gripper_joints, "gripper_open": self.gripper_open,
                "gripper_closed": self.gripper_closed, "package_dirs": tuple(self.package_dir) or None,
                "base_pose": self.base_pose}
        return {k: v for k, v in opts.items() if v is not None}


ROBOT_JSON_KEYS = ("robot", "ee_link", "gripper_joints", "gripper_open", "gripper_closed", "package_dirs",
                   "base_pose")


def robot_from_json(path: str | Path | None) -> dict:
    """The robot fields of a camera/robot JSON file (the camera's ``Camera.save`` keys plus an optional ``"robot"``:
    a builtin name or URDF path, or an object with the keys ``ROBOT_JSON_KEYS``, e.g. ``{"robot": "arm.urdf",
    "ee_link": "tool0", "gripper_joints": ["finger"], "package_dirs": ["meshes"], "base_pose": [0, 0, 0, 0, 0, 0,
    1]}``) as :func:`load_robot` keywords plus ``robot``. Relative paths are relative to the JSON's folder. {} when
    the file names no robot."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera file not found: {path}")
    try:
        r = json.loads(path.read_text()).get("robot")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"camera file {path} is not a JSON object: {e}") from None
    if r is None:
        return {}
    if isinstance(r, str):
        r = {"robot": r}
    if not isinstance(r, dict):
        raise ValueError(f"{path}: \"robot\" must be a builtin name, a URDF path or an object, got {r!r}")
    unknown = sorted(set(r) - set(ROBOT_JSON_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown robot fields {unknown}; known: {list(ROBOT_JSON_KEYS)}")
    out = dict(r)
    rel = lambda p: str(p) if Path(p).is_absolute() else str(path.parent / p)  # noqa: E731
    if "robot" in out and str(out["robot"]).lower().endswith((".urdf", ".sdf")):
        out["robot"] = rel(out["robot"])
    if "package_dirs" in out:
        dirs = out["package_dirs"]
        out["package_dirs"] = [rel(d) for d in ([dirs] if isinstance(dirs, str) else dirs)]
    if "gripper_joints" in out and isinstance(out["gripper_joints"], str):
        out["gripper_joints"] = [out["gripper_joints"]]
    return out


def resolve_robot_args(robot: str | None, camera_json: str | Path | None, args: RobotArgs | None = None,
                       default: str = "panda") -> tuple[str, dict]:
    """(robot spec, :func:`load_robot` keywords) from the command line (``robot``, ``args``), which wins, and the
    camera JSON's ``"robot"`` fields (:func:`robot_from_json`); the robot defaults to ``default``."""
    j = robot_from_json(camera_json)
    spec = robot if robot is not None else j.pop("robot", default)
    j.pop("robot", None)
    return spec, j | (args.robot_options() if args is not None else {})


@dataclass(frozen=True)
class ControlConfig(RobotArgs):
    """Run the kinematic control stage on an action file, or on the built-in demo (``--demo``)."""

    robot: str | None = None
    """Builtin robot name (panda, kuka_iiwa, kuka_iiwa_wsg50, xarm6) or a path to a URDF file. Default: the camera
    JSON's "robot", else panda."""
    actions: Path | None = None
    """Action array (.npy), shape (T, D); see docs/CONVENTIONS.md for the layout of each mode."""
    mode: str = "ee_pose"
    """joint_pos | joint_vel | ee_pose."""
    camera: Path | None = None
    """Camera JSON (kinema4d Camera.save format; may also name the robot and its options under "robot").
    Default: the demo camera."""
    out: Path = Path("out/control")
    """Output directory."""
    dt: float = 0.1
    """Seconds per action step (joint_vel integration)."""
    backend: str = "auto"
    """Renderer: auto | gl | embree."""
    fps: float = 10.0
    demo: bool = False
    """Run a built-in 49-frame pick-like trajectory (any robot; grasp points made for the Panda's reach) seen by a
    medial-frontal camera."""


def demo_actions(robot: Robot, T: int = 49) -> np.ndarray:
    """(T, 8) ee_pose actions (T, 7 for a robot without gripper): from the home pose reach down, close the gripper,
    lift and carry sideways; the grasp and place points are fixed in the robot's base frame (made for the Panda)."""
    T_home = robot.fk(robot.home, [robot.ee_link])[robot.ee_link][0]
    _, quat = matrix_to_pose(T_home)
    s = np.linspace(0.0, 1.0, T)
    start = T_home[:3, 3]
    R, t = robot.T_world_base[:3, :3], robot.T_world_base[:3, 3]
    grasp = R @ np.array([0.55, 0.05, 0.12]) + t
    place = R @ np.array([0.45, -0.3, 0.3]) + t
    ease = lambda x: 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0, 1))  # noqa: E731 (smooth 0 -> 1)
    down = ease(s / 0.4)[:, None]
    carry = ease((s - 0.55) / 0.45)[:, None]
    pos = start + (grasp - start) * down + (place - grasp) * carry
    gripper = np.where(s < 0.45, 1.0, 0.0)
    cols = [pos, np.tile(quat, (T, 1))] + ([gripper[:, None]] if robot.gripper_joint else [])
    return np.concatenate(cols, axis=1)


def load_actions(path: Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"actions file not found: {path}")
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"actions file {path} is not a plain .npy array: {e}") from None
    if a.ndim != 2:
        raise ValueError(f"actions file {path} must hold a (T, D) array, got shape {a.shape}")
    return a


def run_control(cfg: ControlConfig) -> Path:
    """Run the stage; returns the output directory. Writes are atomic (npz, mp4, config JSON)."""
    from kinema4d.interactive.media import hstack_videos, mask_to_rgb, pointmap_to_rgb, write_video
    from kinema4d.kinematics.render import render_robot

    if cfg.mode not in ACTION_MODES:
        raise ValueError(f"--mode {cfg.mode!r} is not one of {ACTION_MODES}")
    spec, opts = resolve_robot_args(cfg.robot, cfg.camera, cfg)
    robot = load_robot(spec, **opts)
    if cfg.demo:
        actions, mode = demo_actions(robot), "ee_pose"
        camera = Camera.load(cfg.camera) if cfg.camera else demo_camera()
    else:
        if cfg.actions is None:
            raise ValueError("give --actions FILE.npy (or --demo)")
        actions, mode = load_actions(cfg.actions), cfg.mode
        camera = Camera.load(cfg.camera) if cfg.camera else demo_camera()

    t0 = time.perf_counter()
    traj = actions_to_joints(robot, actions, mode, dt=cfg.dt)
    t1 = time.perf_counter()
    r = render_robot(robot, traj.q, camera, rgb=True, backend=cfg.backend)
    t2 = time.perf_counter()

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_atomic_npz(out / "robot_pointmap.npz", pointmap=r.pointmap, mask=r.mask, depth=r.depth, link_id=r.link_id,
                    q=traj.q.astype(np.float32), actions=actions.astype(np.float32),
                    camera=np.array(json.dumps(camera.to_dict())), link_names=np.array(robot.link_names))
    video = hstack_videos(r.rgb, pointmap_to_rgb(r.pointmap, r.mask), mask_to_rgb(r.mask))
    write_video(out / "robot_pointmap.mp4", video, fps=cfg.fps)
    summary = {
        "config": json.loads(json.dumps(asdict(cfg) | {"robot": spec}, default=str)),  # robot: the spec used
        "T_world_base": robot.T_world_base.tolist(),
        "robot": robot.name, "robot_options": {k: (list(map(str, v)) if k == "package_dirs" else v)
                                               for k, v in opts.items()},
        "mode": mode, "frames": int(traj.q.shape[0]),
        "size_hw": [camera.height, camera.width],
        "ik_max_pos_err_m": None if traj.ik is None else float(traj.ik.pos_err.max()),
        "ik_max_rot_err_rad": None if traj.ik is None else float(traj.ik.rot_err.max()),
        "seconds": {"actions_to_joints": t1 - t0, "render": t2 - t1},
        "robot_pixels_per_frame": float(r.mask.reshape(len(r.mask), -1).sum(1).mean()),
    }
    save_atomic_text(out / "control.json", json.dumps(summary, indent=2))
    return out
