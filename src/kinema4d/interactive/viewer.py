"""4D viewer: the sequence container, the rollout file format, a rerun recording (.rrd); the mp4 / gif / PLY
exports are :mod:`kinema4d.interactive.exports`.

Everything here works on one in-memory :class:`Sequence4D`. :func:`load_sequence` builds one from a file on disk;
any other source (e.g. a dataset episode) only needs to build a :class:`Sequence4D` and call
:func:`view_sequence` (or the individual writers) -- that is the extension point.

Rollout format (``rollout.npz``, THE format a world-model rollout is saved in; write it with
:func:`save_rollout_npz`, read it with :func:`load_rollout_npz`). A compressed ``.npz`` with keys:

==================  ==============================  ==========================================================
key                 shape / dtype                   meaning
==================  ==============================  ==========================================================
``camera``          0-d str                         JSON of ``Camera.to_dict()`` (required)
``fps``             0-d float64                     frames per second (optional, default 10)
``rgb``             (T, H, W, 3) uint8              RGB frames (optional)
``world_pointmap``  (T, H, W, 3) float32            camera-space XYZ metres of the whole scene, 0 = empty
                                                    (optional)
``robot_pointmap``  (T, H, W, 3) float32            camera-space XYZ metres of the robot only, 0 = empty
                                                    (optional)
``robot_mask``      (T, H, W) bool                  robot pixels (optional)
``q``               (T, dof) float32                joints in ``robot.joint_names`` order (optional)
``robot``           0-d str                         builtin robot name (or URDF path) (optional)
``T_world_base``    (4, 4) float64                  the robot base pose in the world (optional, default identity)
==================  ==============================  ==========================================================

``camera`` is the only required key; optional keys are absent when the field is None, and at least one of ``rgb``,
``world_pointmap``, ``robot_pointmap`` is present. Frames follow docs/CONVENTIONS.md (OpenCV camera, ``T_cam_world``).

Also readable: the control stage's ``robot_pointmap.npz`` (+ sibling ``control.json``), and a directory holding
``rollout.npz`` or ``robot_pointmap.npz``.

Rerun layout (:func:`write_rerun`), timeline ``"frame"`` (sequence 0..T-1); all 3D data in world coordinates
(metres): camera-space points are transformed with ``camera.T_world_cam`` in numpy before logging.

- ``world/scene/points``          Points3D per frame: world-pointmap pixels with z > 0, coloured by ``rgb`` (grey
                                  without rgb)
- ``world/robot/points``          Points3D per frame: robot-pointmap pixels with z > 0 (and in ``robot_mask`` if
                                  given), orange
- ``world/camera``                Transform3D ``T_world_cam`` (static: the camera does not move)
- ``world/camera/image``          Pinhole (static) + Image per frame (when ``rgb`` is given)
- ``world/robot/links/<link>``    Mesh3D in the link frame (static, vertex colours) + Transform3D ``T_world_link``
                                  per frame from ``robot.fk(q)`` (when ``q`` and ``robot_name`` are given)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from kinema4d.geometry import check_rigid, save_atomic_npz, transform_points
from kinema4d.interactive.exports import ROBOT_POINT_RGB, export_gif, export_mp4, export_ply
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.control import RobotArgs

ROLLOUT_FILE = "rollout.npz"
CONTROL_FILE = "robot_pointmap.npz"


# ---------------------------------------------------------------------- the sequence
@dataclass(frozen=True)
class Sequence4D:
    """One camera's 4D sequence, all arrays over the same T frames of H x W pixels.

    - ``camera``: the :class:`Camera` the pointmaps are expressed in (its size must be W x H).
    - ``rgb``: (T, H, W, 3) uint8, or None.
    - ``world_pointmap``: (T, H, W, 3) float32 camera-space XYZ metres of the scene, 0 = empty, or None.
    - ``robot_pointmap``: (T, H, W, 3) float32 camera-space XYZ metres of the robot, 0 = empty, or None.
    - ``robot_mask``: (T, H, W) bool, or None (then robot pixels are those with z > 0).
    - ``q``: (T, dof) float64 joints in ``robot.joint_names`` order, or None.
    - ``robot_name``: builtin robot name for ``Robot.builtin`` (or a URDF path), or None.
    - ``T_world_base``: (4, 4) where the robot's root sits in the world (default identity).
    - ``fps``: frames per second.
    """

    camera: Camera
    rgb: np.ndarray | None = None
    world_pointmap: np.ndarray | None = None
    robot_pointmap: np.ndarray | None = None
    robot_mask: np.ndarray | None = None
    q: np.ndarray | None = None
    robot_name: str | None = None
    fps: float = 10.0
    T_world_base: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.camera, Camera):
            raise ValueError(f"Sequence4D.camera must be a kinema4d Camera, got {type(self.camera).__name__}")
        if self.rgb is None and self.world_pointmap is None and self.robot_pointmap is None:
            raise ValueError("Sequence4D needs at least one of rgb, world_pointmap, robot_pointmap")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"Sequence4D.fps must be a positive number, got {self.fps}")
        first = None  # (field name, shape) that fixes T, H, W
        for name, ndim, last in (("rgb", 4, 3), ("world_pointmap", 4, 3), ("robot_pointmap", 4, 3),
                                 ("robot_mask", 3, None)):
            a = getattr(self, name)
            if a is None:
                continue
            a = np.asarray(a)
            if a.ndim != ndim or (last is not None and a.shape[-1] != last):
                want = "(T, H, W, 3)" if last else "(T, H, W)"
                raise ValueError(f"Sequence4D.{name} must have shape {want}, got {a.shape}")
            if name == "rgb" and a.dtype != np.uint8:
                raise ValueError(f"Sequence4D.rgb must be uint8, got {a.dtype}")
            if name.endswith("pointmap"):
                if not np.issubdtype(a.dtype, np.floating):
                    raise ValueError(f"Sequence4D.{name} must be float (metres), got {a.dtype}")
                a = a.astype(np.float32, copy=False)
            if name == "robot_mask":
                a = a.astype(bool, copy=False)
            if first is None:
                first = (name, a.shape[:3])
            elif a.shape[:3] != first[1]:
                raise ValueError(f"Sequence4D.{name} has (T, H, W) = {a.shape[:3]} but {first[0]} has {first[1]}")
            object.__setattr__(self, name, a)
        T, H, W = first[1]
        if T < 1:
            raise ValueError(f"Sequence4D.{first[0]} has no frames (shape {getattr(self, first[0]).shape})")
        if (self.camera.height, self.camera.width) != (H, W):
            raise ValueError(f"Sequence4D.camera is {self.camera.width}x{self.camera.height} (W x H) but "
                             f"{first[0]} frames are {W}x{H}")
        if self.q is not None:
            q = np.asarray(self.q, dtype=np.float64)
            if q.ndim != 2 or q.shape[0] != T:
                raise ValueError(f"Sequence4D.q must have shape (T={T}, dof), got {q.shape}")
            object.__setattr__(self, "q", q)
        object.__setattr__(self, "fps", float(self.fps))

    @property
    def T(self) -> int:
        return next(a for a in (self.rgb, self.world_pointmap, self.robot_pointmap) if a is not None).shape[0]

    @property
    def world_valid(self) -> np.ndarray | None:
        """(T, H, W) bool: world-pointmap pixels with a point (z > 0), or None."""
        return None if self.world_pointmap is None else self.world_pointmap[..., 2] > 0

    @property
    def robot_valid(self) -> np.ndarray | None:
        """(T, H, W) bool: robot pixels with a point (z > 0, and ``robot_mask`` if given), or None."""
        if self.robot_pointmap is None:
            return None
        has_point = self.robot_pointmap[..., 2] > 0
        return has_point if self.robot_mask is None else self.robot_mask & has_point


# ---------------------------------------------------------------------- loading / saving
def save_rollout_npz(path: str | os.PathLike, seq: Sequence4D) -> Path:
    """Write ``seq`` in the rollout format (module docstring), atomically. Returns the path."""
    arrays = {"camera": np.array(json.dumps(seq.camera.to_dict())), "fps": np.array(seq.fps)}
    for name in ("rgb", "world_pointmap", "robot_pointmap", "robot_mask"):
        if getattr(seq, name) is not None:
            arrays[name] = getattr(seq, name)
    if seq.q is not None:
        arrays["q"] = seq.q.astype(np.float32)
    if seq.robot_name is not None:
        arrays["robot"] = np.array(seq.robot_name)
    if seq.T_world_base is not None:
        arrays["T_world_base"] = np.asarray(seq.T_world_base, np.float64)
    save_atomic_npz(path, **arrays)
    return Path(path)


def _camera_from_npz(z, path: Path) -> Camera:
    try:
        d = json.loads(str(z["camera"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: key 'camera' is not valid JSON: {e}") from None
    return Camera.from_dict(d, source=f"{path} camera")


def _with_source(path: Path, make):
    try:
        return make()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_rollout_npz(path: str | os.PathLike) -> Sequence4D:
    """Read a rollout file (format in the module docstring)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        if "camera" not in z.files:
            raise ValueError(f"rollout file {path} has no 'camera' key (has {sorted(z.files)})")
        get = lambda k: z[k] if k in z.files else None
        camera = _camera_from_npz(z, path)
        robot = str(z["robot"]) if "robot" in z.files else None
        return _with_source(path, lambda: Sequence4D(
            camera=camera, rgb=get("rgb"), world_pointmap=get("world_pointmap"), robot_pointmap=get("robot_pointmap"),
            robot_mask=get("robot_mask"), q=get("q"), robot_name=robot, T_world_base=get("T_world_base"),
            fps=float(z["fps"]) if "fps" in z.files else 10.0))


def load_control_npz(path: str | os.PathLike) -> Sequence4D:
    """Read the control stage's ``robot_pointmap.npz``; robot name and fps come from the sibling ``control.json``.

    The control stage saves no RGB and no world pointmap: the sequence holds the robot pointmap, mask and q.
    """
    path = Path(path)
    robot, fps, T_world_base = None, 10.0, None
    summary_path = path.with_name("control.json")
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        robot = summary.get("robot")
        T_world_base = None if summary.get("T_world_base") is None else np.asarray(summary["T_world_base"])
        config = summary.get("config", {})
        # config.robot is the spec as given (builtin name or URDF path); "robot" is only a name
        if isinstance(config.get("robot"), str):
            robot = config["robot"]
        fps = float(config.get("fps", fps))
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("pointmap", "mask", "q", "camera") if k not in z.files]
        if missing:
            raise ValueError(f"control output {path} is missing keys {missing} (has {sorted(z.files)})")
        camera = _camera_from_npz(z, path)
        return _with_source(path, lambda: Sequence4D(
            camera=camera, robot_pointmap=z["pointmap"], robot_mask=z["mask"], q=z["q"], robot_name=robot, fps=fps,
            T_world_base=T_world_base))


def resolve_input(path: str | os.PathLike) -> Path:
    """The file to read for ``path``: the path itself, or ``rollout.npz`` / ``robot_pointmap.npz`` in a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"nothing to view at {path}: no such file or directory")
    if not path.is_dir():
        return path
    for name in (ROLLOUT_FILE, CONTROL_FILE):
        if (path / name).is_file():
            return path / name
    if (path / "zarr.json").is_file():
        return path  # a dataset split: see load_episode
    raise ValueError(f"directory {path} holds neither {ROLLOUT_FILE} nor {CONTROL_FILE}")


def load_episode(path: str | os.PathLike, episode: int) -> Sequence4D:
    """A data-engine episode (``kinema4d.data.episodes`` split directory, episode position ``episode``) as a
    Sequence4D."""
    from kinema4d.data.episodes import Dataset4D

    e = Dataset4D(path).read_episode(episode)
    a = e["attrs"]
    return Sequence4D(camera=e["camera"], rgb=e["rgb"], world_pointmap=e["world_pointmap"],
                      robot_pointmap=e["robot_pointmap"], robot_mask=e["robot_render_mask"], q=e["q"],
                      robot_name=a.get("robot_urdf") or a.get("robot"), T_world_base=np.asarray(a["T_world_base"]),
                      fps=_episode_fps(a, len(e["q"])))


def _episode_fps(a: dict, T: int) -> float:
    """Frames per second of a stored episode: datagen's recorded steps at its control rate, an imported episode's
    own rate (``control_hz``), else 10."""
    hz = a.get("control_hz")
    if a.get("record_steps"):
        return float(hz or 20.0) * (T - 1) / max(a["record_steps"][-1], 1)
    return float(hz) if hz else 10.0


def load_sequence(path: str | os.PathLike, episode: int | None = None) -> Sequence4D:
    """Load a :class:`Sequence4D` from a rollout ``.npz``, a control-stage ``robot_pointmap.npz``, a directory
    holding one of them (``rollout.npz`` preferred), or a dataset split directory (then ``episode``, default 0).
    A ``.npz`` is recognised by its keys, not its name."""
    path = resolve_input(path)
    if path.is_dir():
        return load_episode(path, 0 if episode is None else episode)
    if path.suffix != ".npz":
        raise ValueError(f"cannot view {path}: expected a {ROLLOUT_FILE} / {CONTROL_FILE} file or a directory")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz file: {e}") from None
    if "pointmap" in keys and "link_names" in keys:
        return load_control_npz(path)
    if "camera" in keys and keys & {"rgb", "world_pointmap", "robot_pointmap"}:
        return load_rollout_npz(path)
    raise ValueError(f"{path} is neither a rollout file (keys camera, fps, rgb / world_pointmap / robot_pointmap) "
                     f"nor a control-stage output (keys pointmap, link_names, ...); it has keys {sorted(keys)}")


# ---------------------------------------------------------------------- rerun
def _load_robot(name: str, robot_options: dict | None = None):
    from kinema4d.kinematics.robot import load_robot

    return load_robot(name, **(robot_options or {}))


def has_display() -> bool:
    """True when a GUI window can open: macOS / Windows, or an X11 / Wayland display on Linux."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def write_rerun(seq: Sequence4D, out_rrd: str | os.PathLike, spawn: bool = False, stride: int = 1,
                robot_options: dict | None = None) -> Path:
    """Write ``seq`` as a rerun recording (layout in the module docstring), atomically. Returns the path.

    ``stride`` keeps every stride-th pixel row and column of the point clouds (images stay full size).
    ``spawn=True`` then opens the file in the rerun viewer if a display exists; otherwise prints why not.
    ``robot_options``: :func:`kinema4d.kinematics.robot.load_robot` keywords for ``seq.robot_name`` (a URDF's
    ee link, package dirs, base pose; a given ``base_pose`` wins over ``seq.T_world_base``).
    """
    import rerun as rr

    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    out_rrd = Path(out_rrd)
    out_rrd.parent.mkdir(parents=True, exist_ok=True)
    robot = meshes = poses = None
    if seq.q is not None and seq.robot_name is not None:
        robot = _load_robot(seq.robot_name, robot_options)
        if seq.T_world_base is not None and not (robot_options or {}).get("base_pose"):
            robot.T_world_base = check_rigid(seq.T_world_base, "Sequence4D.T_world_base")
        q = robot.check_q(seq.q, "Sequence4D.q")
        meshes = robot.link_meshes
        poses = robot.fk(q, list(meshes))  # {link: (T, 4, 4) T_world_link}

    T_world_cam = seq.camera.T_world_cam
    tmp = out_rrd.with_name(f".{out_rrd.name}.tmp{os.getpid()}")
    try:
        rec = rr.RecordingStream("kinema4d")
        rec.save(tmp)
        rec.log("world/camera", rr.Transform3D(translation=T_world_cam[:3, 3], mat3x3=T_world_cam[:3, :3]),
                static=True)
        rec.log("world/camera/image", rr.Pinhole(image_from_camera=seq.camera.K,
                                                 resolution=[seq.camera.width, seq.camera.height],
                                                 camera_xyz=rr.ViewCoordinates.RDF), static=True)
        for link, m in (meshes or {}).items():
            rec.log(f"world/robot/links/{rr.escape_entity_path_part(link)}",
                    rr.Mesh3D(vertex_positions=np.asarray(m.vertices, np.float32), triangle_indices=m.faces,
                              vertex_normals=np.asarray(m.vertex_normals, np.float32),
                              vertex_colors=np.asarray(m.visual.vertex_colors, np.uint8)), static=True)
        s = slice(None, None, int(stride))
        world_valid, robot_valid = seq.world_valid, seq.robot_valid
        for t in range(seq.T):
            rec.set_time("frame", sequence=t)
            if seq.rgb is not None:
                rec.log("world/camera/image", rr.Image(seq.rgb[t]))
            if seq.world_pointmap is not None:
                valid = world_valid[t, s, s]
                pts = transform_points(T_world_cam, seq.world_pointmap[t, s, s][valid]).astype(np.float32)
                colors = seq.rgb[t, s, s][valid] if seq.rgb is not None else np.full((len(pts), 3), 160, np.uint8)
                rec.log("world/scene/points", rr.Points3D(pts, colors=colors))
            if seq.robot_pointmap is not None:
                valid = robot_valid[t, s, s]
                pts = transform_points(T_world_cam, seq.robot_pointmap[t, s, s][valid]).astype(np.float32)
                rec.log("world/robot/points", rr.Points3D(pts, colors=np.tile(ROBOT_POINT_RGB, (len(pts), 1))))
            for link, T_world_link in (poses or {}).items():
                rec.log(f"world/robot/links/{rr.escape_entity_path_part(link)}",
                        rr.Transform3D(translation=T_world_link[t, :3, 3], mat3x3=T_world_link[t, :3, :3]))
        rec.flush()
        rec.disconnect()  # closes the file sink and writes the footer
        os.replace(tmp, out_rrd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if spawn:
        if has_display():
            subprocess.Popen([sys.executable, "-m", "rerun", str(out_rrd)], start_new_session=True)
        else:
            print(f"no display (DISPLAY / WAYLAND_DISPLAY unset): not opening the viewer. Open the recording "
                  f"elsewhere with `rerun {out_rrd}`", file=sys.stderr)
    return out_rrd


# ---------------------------------------------------------------------- entry point
@dataclass(frozen=True)
class ViewConfig(RobotArgs):
    """Turn a rollout / control-stage output into a rerun recording (+ optional mp4, gif, PLY). The robot options
    (--ee-link, --package-dir, --base-pose, ...) rebuild a URDF robot whose meshes the recording draws; --base-pose
    replaces the base pose stored with the input."""

    path: Annotated[Path, tyro.conf.Positional]
    """rollout.npz, robot_pointmap.npz, a directory holding one, or a dataset split directory."""
    episode: int = 0
    """Episode position when PATH is a dataset split directory."""
    out: Path | None = None
    """Output directory. Default: next to the input (the directory itself for a directory)."""
    spawn: bool = False
    """Open the rerun viewer on the recording (only where a display exists)."""
    mp4: bool = False
    """Also write <stem>_view.mp4: RGB | world pointmap | robot pointmap."""
    gif: bool = False
    """Also write <stem>_view.gif (same frames, downscaled to <= 640 px wide)."""
    ply: bool = False
    """Also write <stem>_ply/frame_<t>.ply: coloured world points (robot points without a world pointmap)."""
    ply_frames: tuple[int, ...] | None = None
    """Frames to export as PLY (default all)."""
    stride: int = 2
    """Keep every stride-th pixel row/column in the rerun point clouds. 480x720 frames take ~3.4 MB each at 2,
    ~9.6 MB at 1 (full)."""


def view_sequence(seq: Sequence4D, out_dir: str | os.PathLike, stem: str = "sequence", spawn: bool = False,
                  mp4: bool = False, gif: bool = False, ply: bool = False, ply_frames=None,
                  stride: int = 1, robot_options: dict | None = None) -> dict[str, Path]:
    """Write ``out_dir/<stem>_view.rrd`` (+ ``_view.mp4``, ``_view.gif``, ``_ply/``) for any :class:`Sequence4D`.

    This is the entry for every source: dataset episodes etc. build a Sequence4D and call this.
    Returns {"rrd" | "mp4" | "gif" | "ply": path}.
    """
    out_dir = Path(out_dir)
    written = {}
    written["rrd"] = write_rerun(seq, out_dir / f"{stem}_view.rrd", spawn=spawn, stride=stride,
                                 robot_options=robot_options)
    if mp4:
        written["mp4"] = export_mp4(seq, out_dir / f"{stem}_view.mp4")
    if gif:
        written["gif"] = export_gif(seq, out_dir / f"{stem}_view.gif")
    if ply:
        source = "world" if seq.world_pointmap is not None else "robot"
        export_ply(seq, out_dir / f"{stem}_ply", frames=ply_frames, source=source)
        written["ply"] = out_dir / f"{stem}_ply"
    return written


def view_main(cfg: ViewConfig) -> dict[str, Path]:
    """Load ``cfg.path`` and write the recording and requested exports; returns what :func:`view_sequence` does."""
    src = resolve_input(cfg.path)
    seq = load_sequence(src, cfg.episode)
    if src.is_dir():  # dataset episode
        out, stem = (cfg.out if cfg.out is not None else src / "views"), f"episode_{cfg.episode:06d}"
    else:
        out, stem = (cfg.out if cfg.out is not None else src.parent), src.stem
    return view_sequence(seq, out, stem=stem, spawn=cfg.spawn, mp4=cfg.mp4, gif=cfg.gif, ply=cfg.ply,
                         ply_frames=cfg.ply_frames, stride=cfg.stride, robot_options=cfg.robot_options())
