"""Recorded robot episodes (RGB + metric depth + joint states + camera) -> kinema4d episodes.

The common half of every importer (:mod:`kinema4d.data.lerobot`, and the plain HDF5 / npz layout here, documented
in ``docs/IMPORT.md``). One recorded episode is

    rgb           (T, H, W, 3) uint8       the camera's colour frames
    depth         (T, H, W) float          z-depth in metres (OpenCV camera frame); 0 / NaN / inf = no measurement
    q             (T, dof) float           joint positions of the robot, ``robot.joint_names`` order (rad, m)
    camera        Camera (K, T_cam_world)  T_cam_world maps world (= the robot's world: base at T_world_base) to camera

and becomes a kinema4d episode (format of :mod:`kinema4d.data.episodes`): ``world_pointmap`` = the depth unprojected
with K, ``robot_pointmap`` / ``robot_render_mask`` / ``robot_rgb`` = the kinematic stage's render of ``q``
(:func:`kinema4d.kinematics.render.render_robot`, the same render the data engine stores), ``robot_mask`` = that
render's mask (a recording has no segmentation), ``actions`` = the end-effector pose of ``q`` by FK
(``joints_to_ee_actions``: the ee_pose layout every kinema4d episode stores), ``object_poses`` empty (no object is
tracked). ``size`` resizes everything to (H', W') on the way in (RGB area-averaged, depth nearest, K scaled by
``Camera.resized``), e.g. to the training size of a model.

Attrs: ``variant`` {"kind": "imported"}, ``source`` (what it came from), ``success`` (None when the recording does
not say), ``objects`` [] and ``goal_xy`` None (object and policy metrics do not apply to imported episodes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tyro.conf import Positional

from kinema4d.data import episodes as kdata
from kinema4d.geometry import check_rigid, save_atomic_text
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.control import RobotArgs

RECORDING_KEYS = ("rgb", "depth", "q", "K", "T_cam_world")
"""Keys of one episode in the plain HDF5 / npz layout (docs/IMPORT.md); optional: instruction, success, fps."""


def resize_recording(rgb: np.ndarray, depth: np.ndarray, camera: Camera, size: tuple[int, int]):
    """(rgb (T,H,W,3) uint8, depth (T,H,W), camera) resized to size (H', W'): RGB area (downscale) / bilinear
    (upscale) as ``TorchEpisodes`` resizes, depth nearest (centre-aligned: no mixed depths at edges), K scaled."""
    import torch
    import torch.nn.functional as F

    H, W = size
    if rgb.shape[1:3] == (H, W):
        return rgb, depth, camera
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    down = H <= rgb.shape[1] and W <= rgb.shape[2]
    x = F.interpolate(x, size=(H, W), mode="area") if down else \
        F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    rgb2 = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[:, None]
    depth2 = F.interpolate(d, size=(H, W), mode="nearest-exact")[:, 0].numpy()
    return rgb2, depth2, camera.resized(W, H)


@dataclass
class Recording:
    """One recorded episode (module docstring). ``instruction`` / ``success`` / ``fps`` / ``source`` optional."""

    rgb: np.ndarray
    depth: np.ndarray
    q: np.ndarray
    camera: Camera
    instruction: str = ""
    success: bool | None = None
    fps: float | None = None
    source: dict = field(default_factory=dict)
    T_world_base: np.ndarray | None = None  # this episode's robot base pose (None: the robot's own)

    def check(self, name: str, robot) -> None:
        """Raise ValueError naming ``name`` (the episode) and the bad field."""
        rgb, depth, q = self.rgb, self.depth, self.q
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"{name}: rgb must be (T, H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        T, H, W = rgb.shape[:3]
        if depth.shape != (T, H, W):
            raise ValueError(f"{name}: depth must be (T, H, W) = {(T, H, W)} metres like rgb, got {depth.shape}")
        if q.ndim != 2 or q.shape[0] != T:
            raise ValueError(f"{name}: q must be (T, dof) with T = {T} frames, got {q.shape}")
        if q.shape[1] != robot.dof:
            raise ValueError(f"{name}: q has {q.shape[1]} columns but {robot.name} has {robot.dof} joints "
                             f"{robot.joint_names}")
        if (self.camera.height, self.camera.width) != (H, W):
            raise ValueError(f"{name}: the camera is {self.camera.width}x{self.camera.height} (W x H) but the images "
                             f"are {W}x{H}")
        if T < 1:
            raise ValueError(f"{name}: no frames")


def recording_to_episode(robot, rec: Recording, size: tuple[int, int] | None = None,
                         backend: str = "auto") -> tuple[dict, dict]:
    """A :class:`Recording` -> (arrays, attrs) for :func:`kinema4d.data.episodes.write_episode`."""
    from kinema4d.kinematics.render import render_robot
    from kinema4d.kinematics.robot import joints_to_ee_actions

    rgb, depth, camera = rec.rgb, np.asarray(rec.depth, dtype=np.float32), rec.camera
    if size is not None:
        rgb, depth, camera = resize_recording(rgb, depth, camera, size)
    q = np.asarray(rec.q, dtype=np.float64)
    world = camera.depth_to_pointmap(depth)
    base = robot.T_world_base
    if rec.T_world_base is not None:
        robot.T_world_base = check_rigid(np.asarray(rec.T_world_base, np.float64), "T_world_base")
    try:
        r = render_robot(robot, q, camera, rgb=True, backend=backend)
        actions = joints_to_ee_actions(robot, q).astype(np.float32)
        T_world_base = robot.T_world_base.tolist()
    finally:
        robot.T_world_base = base
    T = rgb.shape[0]
    arrays = {"rgb": rgb, "world_pointmap": world, "robot_pointmap": r.pointmap, "robot_mask": r.mask,
              "robot_render_mask": r.mask, "robot_rgb": r.rgb, "q": q.astype(np.float32), "actions": actions,
              "object_poses": np.zeros((T, 0, 7), np.float32)}
    attrs = {
        "format": kdata.FORMAT, "version": kdata.VERSION, "success": rec.success,
        "instruction": rec.instruction, "camera": camera.to_dict(), "robot": robot.name,
        "joint_names": list(robot.joint_names), "ee_link": robot.ee_link, "T_world_base": T_world_base,
        "action_layout": "ee_pose: x y z qx qy qz qw (ee_link in world) + gripper opening [0, 1], 1 = open; "
                         "computed from the recorded joints by FK",
        "objects": [], "goal_xy": None, "variant": {"kind": "imported"}, "frames": int(T),
        "control_hz": None if rec.fps is None else float(rec.fps), "source": rec.source,
        "robot_mask_source": "kinematic render of q (the recording has no segmentation)",
    } | robot_attrs(robot)
    return arrays, attrs


def robot_attrs(robot) -> dict:
    """Attrs that rebuild a robot given by URDF path (builtins are rebuilt from their name alone)."""
    from kinema4d.kinematics.robot import BUILTIN_ROBOTS

    if robot.name in BUILTIN_ROBOTS:
        return {}
    return {"robot_urdf": str(Path(robot.urdf_path).resolve()), "gripper_joint": robot.gripper_joint,
            "gripper_open": robot.gripper_open, "gripper_closed": robot.gripper_closed}


CLIPS_PER_RECORDING = 1000  # clip k of recording e gets episode id e * 1000 + k


def clip_starts(T: int, clip_frames: int | None, stride: int) -> list[np.ndarray]:
    """Frame indices of the episodes cut from a T-frame recording: every ``stride``-th frame, then (with
    ``clip_frames``) consecutive non-overlapping windows of that many frames; a shorter tail is dropped."""
    idx = np.arange(0, T, stride)
    if clip_frames is None:
        return [idx]
    return [idx[k:k + clip_frames] for k in range(0, len(idx) - clip_frames + 1, clip_frames)]


def _take(rec: Recording, idx: np.ndarray, stride: int, k: int | None) -> Recording:
    src = rec.source | {"frames": [int(idx[0]), int(idx[-1]) + 1, int(stride)]} | ({} if k is None else {"clip": k})
    return Recording(rgb=rec.rgb[idx], depth=rec.depth[idx], q=rec.q[idx], camera=rec.camera,
                     instruction=rec.instruction, success=rec.success if k is None else None,
                     fps=None if rec.fps is None else rec.fps / stride, source=src, T_world_base=rec.T_world_base)


def write_recordings(out: str | os.PathLike, split: str, robot, items, size: tuple[int, int] | None = None,
                     backend: str = "auto", config: dict | None = None, progress: bool = True,
                     total: int | None = None, stride: int = 1, clip_frames: int | None = None) -> dict:
    """Write ``items`` (an iterable of (recording id, name, loader) with ``loader()`` -> :class:`Recording`) into
    kinema4d dataset dir ``out`` (split ``split``; created, or resumed: complete episodes are skipped). Every
    episode file is written atomically.

    ``stride`` keeps every stride-th recorded frame (e.g. 3 for a 30 fps recording at 10 fps); ``clip_frames`` cuts
    each recording into non-overlapping episodes of that many (strided) frames (:func:`clip_starts`; episode id
    ``recording id * 1000 + clip``, success unknown), so that every episode has one length and one frame spacing,
    as the model's frame-spacing contract wants (``Simulator``: the stride is read from the training episodes'
    length). Without it a recording is one episode (id = recording id), loaded only if not yet written.
    Returns {"path", "split", "episodes", "written", "skipped_existing", "too_short"}."""
    from tqdm import tqdm

    if stride < 1 or (clip_frames is not None and clip_frames < 2):
        raise ValueError(f"need stride >= 1 and clip_frames >= 2 (or None), got stride={stride}, "
                         f"clip_frames={clip_frames}")
    root = kdata.init_dataset(out, split)
    kdata.clean_stale(root)
    if config is not None:
        path = root / "import_config.json"
        config = config | {"stride": stride, "clip_frames": clip_frames}
        if path.is_file():
            old = json.loads(path.read_text())
            keep = ("source", "robot", "size", "camera_key", "depth_key", "state_key", "stride", "clip_frames")
            diff = {k: (old.get(k), config.get(k)) for k in keep if old.get(k) != config.get(k)}
            if diff:
                raise ValueError(f"{root} was imported with different settings {diff} (old, new); use another --out")
        save_atomic_text(path, json.dumps(config, indent=2, default=str))
    entries = kdata.write_index(root, split)
    written = skipped = too_short = 0
    for ep, name, load in tqdm(items, desc=f"import {split}", unit="rec", total=total, disable=not progress):
        if clip_frames is None and kdata.is_complete(root, ep):
            skipped += 1
            continue
        rec = load()
        rec.check(name, robot)
        clips = clip_starts(len(rec.rgb), clip_frames, stride)
        if clip_frames is not None and not clips:
            too_short += 1
            continue
        if len(clips) > CLIPS_PER_RECORDING:
            raise ValueError(f"{name}: {len(clips)} clips of {clip_frames} frames; at most {CLIPS_PER_RECORDING} per "
                             "recording (use a larger --clip-frames or --stride)")
        for k, idx in enumerate(clips):
            eid = ep if clip_frames is None else ep * CLIPS_PER_RECORDING + k
            if kdata.is_complete(root, eid):
                skipped += 1
                continue
            part = rec if (clip_frames is None and stride == 1) else _take(rec, idx, stride,
                                                                            None if clip_frames is None else k)
            arrays, attrs = recording_to_episode(robot, part, size=size, backend=backend)
            entries[eid] = kdata.write_episode(root, eid, arrays, attrs | {"split": split})
            written += 1
    kdata.write_index(root, split, entries)
    return {"path": str(root), "split": split, "episodes": len(kdata.complete_episodes(root)), "written": written,
            "skipped_existing": skipped, "too_short": too_short}


# ---------------------------------------------------------------------- plain HDF5 / npz layout
def _episode_sources(path: Path) -> list[tuple[str, object]]:
    """[(name, opener)] of the episodes of a plain-layout ``path``: a .npz file (one episode), a directory of .npz /
    .h5 / .hdf5 files (one episode each, sorted by name), or an .h5 / .hdf5 file holding the keys at its root (one
    episode) or one group per episode (sorted by name)."""
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".npz", ".h5", ".hdf5"))
        if not files:
            raise FileNotFoundError(f"{path}: no .npz / .h5 / .hdf5 episode files in this directory")
        out = []
        for f in files:
            out += _episode_sources(f) if f.suffix.lower() != ".npz" else [(str(f), f)]
        return out
    if not path.is_file():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.suffix.lower() == ".npz":
        return [(str(path), path)]
    if path.suffix.lower() in (".h5", ".hdf5"):
        h5py = _h5py()
        with h5py.File(path, "r") as f:
            if "rgb" in f:
                return [(str(path), (path, "/"))]
            groups = sorted(k for k in f if isinstance(f[k], h5py.Group))
        if not groups:
            raise ValueError(f"{path}: neither the keys {list(RECORDING_KEYS)} at its root nor groups (one per "
                             "episode)")
        return [(f"{path}:/{g}", (path, g)) for g in groups]
    raise ValueError(f"{path}: expected a .npz, .h5 / .hdf5 file or a directory of them")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 needs h5py: `pip install h5py` (or `pip install -e .[hdf5]`), or save the "
                          "episodes as .npz") from None
    return h5py


def load_plain_episode(name: str, src, camera: Camera | None = None) -> Recording:
    """One episode of the plain layout (docs/IMPORT.md) -> :class:`Recording`. ``camera`` (a Camera JSON given on
    the command line) replaces K / T_cam_world when the file has none."""
    if isinstance(src, Path):
        with np.load(src, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    else:
        h5py = _h5py()
        path, group = src
        with h5py.File(path, "r") as f:
            g = f[group]
            d = {k: g[k][()] for k in g if isinstance(g[k], h5py.Dataset)}
            d |= {k: v for k, v in g.attrs.items() if k not in d}
    need = [k for k in ("rgb", "depth", "q") if k not in d]
    if camera is None:
        need += [k for k in ("K", "T_cam_world") if k not in d]
    if need:
        raise ValueError(f"{name}: missing keys {need} (has {sorted(d)}; layout: {list(RECORDING_KEYS)}, see "
                         "docs/IMPORT.md)")
    rgb = np.asarray(d["rgb"])
    if rgb.dtype != np.uint8:
        raise ValueError(f"{name}: rgb must be uint8 (T, H, W, 3), got {rgb.dtype}")
    if camera is None:
        try:
            camera = Camera(K=np.asarray(d["K"], np.float64), T_cam_world=np.asarray(d["T_cam_world"], np.float64),
                            width=rgb.shape[2], height=rgb.shape[1])
        except ValueError as e:
            raise ValueError(f"{name}: bad camera: {e}") from None
    text = d.get("instruction", "")
    text = text.decode() if isinstance(text, bytes) else str(np.asarray(text).item() if np.ndim(text) == 0 else text)
    success = d.get("success")
    fps = d.get("fps")
    return Recording(rgb=rgb, depth=np.asarray(d["depth"], np.float32), q=np.asarray(d["q"], np.float64),
                     camera=camera, instruction=text, success=None if success is None else bool(np.asarray(success)),
                     fps=None if fps is None else float(np.asarray(fps)), source={"format": "plain", "path": name})


@dataclass(frozen=True)
class ImportPlainConfig(RobotArgs):
    """Import episodes of the plain layout (rgb, depth, q, K, T_cam_world per episode; .npz or HDF5; docs/IMPORT.md)
    into a kinema4d dataset dir."""

    src: Positional[Path]
    """A .npz file, an .h5/.hdf5 file (keys at its root, or one group per episode), or a directory of them."""
    out: Path
    """kinema4d dataset dir to write (created; a rerun resumes)."""
    robot: str = "panda"
    """Builtin robot name or a URDF path: q drives its kinematics."""
    camera_json: Path | None = None
    """Camera JSON (Camera.save format) for files that carry no K / T_cam_world."""
    split: str = "train"
    """Split name written into the dataset."""
    resolution: str | None = None
    """Resize to HxW (e.g. 64x96, a model's training size); default: as recorded."""
    stride: int = 1
    """Keep every stride-th recorded frame (e.g. 3: a 30 fps recording at 10 fps)."""
    clip_frames: int | None = None
    """Cut each recording into non-overlapping episodes of this many (strided) frames, so that all episodes share
    one length and frame spacing (what training and Simulator's frame-spacing contract assume); default: one
    episode per recording."""
    backend: str = "auto"
    """Robot renderer: auto | gl | embree."""
    progress: bool = True


def import_plain(cfg: ImportPlainConfig) -> dict:
    """Run ``kinema4d dataset import plain``; returns :func:`write_recordings`' summary."""
    from kinema4d.data.datagen import parse_resolution
    from kinema4d.kinematics.robot import load_robot

    robot = load_robot(cfg.robot, **cfg.robot_options())
    camera = Camera.load(cfg.camera_json) if cfg.camera_json is not None else None
    sources = _episode_sources(Path(cfg.src))
    items = [(i, name, (lambda n=name, s=src: load_plain_episode(n, s, camera))) for i, (name, src) in
             enumerate(sources)]
    size = parse_resolution(cfg.resolution) if cfg.resolution else None
    config = {"source": str(Path(cfg.src).resolve()), "format": "plain", "robot": cfg.robot,
              "size": None if size is None else list(size)}
    return write_recordings(cfg.out, cfg.split, robot, items, size=size, backend=cfg.backend, config=config,
                            progress=cfg.progress, total=len(items), stride=cfg.stride, clip_frames=cfg.clip_frames)
