"""LeRobot datasets (format v3.0: parquet + mp4 + ``meta/``) -> kinema4d episodes: the reader and the importer.

``kinema4d dataset import lerobot DIR ...`` (:class:`ImportLeRobotConfig`, :func:`import_lerobot`) reads a LeRobot
v3.0 dataset directory and writes kinema4d episodes through :mod:`kinema4d.data.recordings`: the camera feature
(``--camera-key``, a ``video`` or ``image`` feature) gives the RGB, the depth feature (``--depth-key``) the world
pointmap (unprojected with the camera's K), the joint states (``--state-key``, default ``observation.state``) drive
the kinematic stage, which renders the robot pointmap and mask. The camera (K, T_cam_world) comes from
``--camera-json`` or, for datasets kinema4d exported, from ``meta/kinema4d.json``. A dataset without depth cannot be
imported: kinema4d's world pointmap needs metric depth, and no depth-estimation weights can be had here.

The other direction, ``kinema4d dataset export lerobot``, is :mod:`kinema4d.data.lerobot_export`; the format
constants both share are here.

Both sides read / write the files with pyarrow and PyAV, not with the ``lerobot`` library: ``lerobot`` itself needs
Python >= 3.12 (0.5+) or pins torch < 2.11 (0.4.x), and the standalone ``lerobot-dataset`` package pins
huggingface-hub < 0.36, which diffusers 0.42 (>= 1.32) excludes, so neither can live in kinema4d's environment. The
tests check both directions against files that ``lerobot-dataset``'s own ``LeRobotDataset.create / add_frame /
save_episode`` writes and reads, run in a separate environment (``tests/data/lerobot_writer.py``).

Layout facts used (LeRobot v3.0, as ``lerobot-dataset`` 0.4.4 writes it): ``meta/info.json`` (``codebase_version``
"v3.0", ``fps``, ``features``, ``data_path`` / ``video_path`` templates); ``meta/episodes/chunk-*/file-*.parquet``,
one row per episode (``episode_index``, ``length``, ``tasks``, ``data/chunk_index``, ``data/file_index``,
``dataset_from_index``, ``dataset_to_index``, ``videos/<key>/chunk_index|file_index|from_timestamp|to_timestamp``);
``data/chunk-*/file-*.parquet``, one row per frame (features + ``timestamp``, ``frame_index``, ``episode_index``,
``index``, ``task_index``); ``videos/<key>/chunk-*/file-*.mp4``, episodes concatenated, an episode's frame at
``from_timestamp + timestamp``; ``meta/tasks.parquet`` (``task_index`` + the task string as pandas index).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tyro.conf import Positional

from kinema4d.data.recordings import Recording, write_recordings
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.control import RobotArgs

CODEBASE_VERSION = "v3.0"
KINEMA4D_META = "meta/kinema4d.json"
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class LeRobotFormatError(ValueError):
    """A LeRobot dataset this reader cannot use; the message names the file and the field."""


def _read_table(path: Path, columns=None):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # pyarrow raises several types for a missing / broken file
        raise LeRobotFormatError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None


def column_to_numpy(col, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A pyarrow column of n rows (scalars, fixed-size or nested lists, datasets' Array2D/3D extension types) ->
    (n, *shape) numpy array (scalars: shape () or (1,) -> (n,))."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    while isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    out = np.asarray(arr.to_numpy(zero_copy_only=False))
    inner = tuple(int(s) for s in shape)
    if inner in ((), (1,)):
        inner = ()
    if out.size != n * int(np.prod(inner, dtype=np.int64)):
        raise LeRobotFormatError(f"feature {name!r}: {out.size} values in {n} rows do not fit its shape {list(shape)}")
    return out.reshape((n, *inner))


class LeRobotReader:
    """A LeRobot v3.0 dataset directory, read with pyarrow (data, metadata) and PyAV (videos)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"not a LeRobot dataset (no meta/info.json): {self.root}")
        try:
            self.info = json.loads(info_path.read_text())
        except ValueError as e:
            raise LeRobotFormatError(f"{info_path} is not valid JSON: {e}") from None
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise LeRobotFormatError(
                f"{info_path}: codebase_version {version!r}; kinema4d reads LeRobot v3.x datasets (parquet + mp4 + "
                "meta/episodes). Convert an older one with LeRobot's own converter (lerobot.datasets.v30."
                "convert_dataset_v21_to_v30)")
        for k in ("fps", "features", "data_path"):
            if k not in self.info:
                raise LeRobotFormatError(f"{info_path}: missing field {k!r}")
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        ep_files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not ep_files:
            raise LeRobotFormatError(f"{self.root / 'meta' / 'episodes'}: no chunk-*/file-*.parquet episode files")
        rows = []
        for f in ep_files:
            t = _read_table(f)
            cols = [c for c in t.column_names if not c.startswith("stats/")]
            for r in t.select(cols).to_pylist():
                r["_file"] = str(f)
                rows.append(r)
        for r in rows:
            missing = [k for k in ("episode_index", "length", "data/chunk_index", "data/file_index") if k not in r]
            if missing:
                raise LeRobotFormatError(f"{r['_file']}: episode rows lack the columns {missing}")
        self.episodes = {int(r["episode_index"]): r for r in rows}
        self.kinema4d = None
        km = self.root / KINEMA4D_META
        if km.is_file():
            try:
                self.kinema4d = json.loads(km.read_text())
            except ValueError as e:
                raise LeRobotFormatError(f"{km} is not valid JSON: {e}") from None
        self._tables: dict[Path, object] = {}

    # ------------------------------------------------------------------ features
    def feature(self, key: str, role: str, flag: str) -> dict:
        """``features[key]``, or an error naming ``flag`` and listing the features."""
        if key not in self.features:
            raise LeRobotFormatError(f"{flag} {key!r}: the dataset {self.root} has no such feature ({role}); its "
                                     f"features: {self.describe_features()}")
        return self.features[key]

    def describe_features(self) -> str:
        return ", ".join(f"{k} ({v.get('dtype')} {list(v.get('shape', []))})" for k, v in self.features.items()
                         if k not in DEFAULT_FEATURES)

    def feature_names(self, key: str) -> list[str] | None:
        """The column names of a 1-D feature (``names`` as a list, or a dict holding one list), or None."""
        names = self.features[key].get("names")
        if isinstance(names, dict):
            lists = [v for v in names.values() if isinstance(v, list)]
            names = lists[0] if len(lists) == 1 else None
        return [str(n) for n in names] if isinstance(names, list) else None

    # ------------------------------------------------------------------ per-episode data
    def _data_path(self, ep: dict) -> Path:
        rel = self.info["data_path"].format(chunk_index=int(ep["data/chunk_index"]),
                                            file_index=int(ep["data/file_index"]))
        return self.root / rel

    def frames_table(self, episode: int):
        """The data rows of ``episode``, sorted by frame_index (a pyarrow Table)."""
        import pyarrow.compute as pc

        ep = self.episode(episode)
        path = self._data_path(ep)
        if path not in self._tables:
            self._tables.clear()  # one data file in memory at a time
            self._tables[path] = _read_table(path)
        t = self._tables[path]
        for k in ("episode_index", "frame_index"):
            if k not in t.column_names:
                raise LeRobotFormatError(f"{path}: no {k!r} column")
        t = t.filter(pc.equal(t["episode_index"], episode))
        t = t.take(pc.sort_indices(t["frame_index"]))
        if t.num_rows != int(ep["length"]):
            raise LeRobotFormatError(f"{path}: episode {episode} has {t.num_rows} frames, meta/episodes says "
                                     f"{ep['length']}")
        return t

    def episode(self, episode: int) -> dict:
        if episode not in self.episodes:
            raise LeRobotFormatError(f"{self.root}: no episode {episode} (episodes {sorted(self.episodes)[:10]}...)")
        return self.episodes[episode]

    def column(self, table, key: str) -> np.ndarray:
        ft = self.features[key]
        if key not in table.column_names:
            raise LeRobotFormatError(f"{self.root}: feature {key!r} has no column in the data parquet files")
        if ft.get("dtype") == "image":
            return self._decode_images(table, key)
        return column_to_numpy(table[key], tuple(ft.get("shape", ())), key)

    def _decode_images(self, table, key: str) -> np.ndarray:
        import io

        import imageio.v3 as iio

        out = []
        for i, cell in enumerate(table[key].to_pylist()):
            data = cell.get("bytes") if isinstance(cell, dict) else None
            if data is None and isinstance(cell, dict) and cell.get("path"):
                p = Path(cell["path"])
                data = (p if p.is_absolute() else self.root / p).read_bytes()
            if data is None:
                raise LeRobotFormatError(f"{self.root}: image feature {key!r} row {i} holds no image bytes")
            out.append(iio.imread(io.BytesIO(data)))
        return np.stack(out)

    def video_frames(self, episode: int, key: str, timestamps: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of video feature ``key`` at the episode's ``timestamps`` (seconds from its
        start), decoded with PyAV: the frame nearest ``from_timestamp + t``, within 0.4 frame periods."""
        import av

        ep = self.episode(episode)
        cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        missing = [c for c in cols if c not in ep]
        if missing:
            raise LeRobotFormatError(f"{ep['_file']}: episode {episode} lacks {missing}")
        if not self.info.get("video_path"):
            raise LeRobotFormatError(f"{self.root / 'meta/info.json'}: no video_path template for video {key!r}")
        path = self.root / self.info["video_path"].format(video_key=key, chunk_index=int(ep[cols[0]]),
                                                          file_index=int(ep[cols[1]]))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: video of {key!r} for episode {episode} not found")
        want = float(ep[cols[2]]) + np.asarray(timestamps, np.float64)
        tol = 0.4 / self.fps
        out: list[np.ndarray | None] = [None] * len(want)
        try:
            with av.open(str(path)) as c:
                s = c.streams.video[0]
                start = want.min() - 1.0 / self.fps
                if start > 0 and s.time_base is not None:
                    c.seek(int(start / s.time_base), stream=s, backward=True, any_frame=False)
                for fr in c.decode(s):
                    t = float(fr.pts * fr.time_base) if fr.pts is not None else None
                    if t is None:
                        continue
                    if t > want.max() + tol:
                        break
                    j = int(np.argmin(np.abs(want - t)))
                    if abs(want[j] - t) <= tol and out[j] is None:
                        out[j] = fr.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise LeRobotFormatError(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
        lost = [i for i, f in enumerate(out) if f is None]
        if lost:
            raise LeRobotFormatError(f"{path}: episode {episode} has no frame at timestamp {want[lost[0]]:.4f} s "
                                     f"(frame {lost[0]}; {len(lost)} of {len(want)} frames missing)")
        return np.stack(out)

    def images(self, episode: int, table, key: str) -> np.ndarray:
        ft = self.features[key]
        if ft.get("dtype") == "video":
            ts = column_to_numpy(table["timestamp"], (), "timestamp").astype(np.float64)
            return self.video_frames(episode, key, ts)
        return self.column(table, key)

    def task(self, table) -> str:
        if "task_index" not in table.column_names or table.num_rows == 0:
            return ""
        idx = int(table["task_index"][0].as_py())
        path = self.root / "meta" / "tasks.parquet"
        if not path.is_file():
            return ""
        t = _read_table(path)
        names = [c for c in t.column_names if c != "task_index"]
        if "task_index" not in t.column_names or not names:
            return ""
        for ti, name in zip(t["task_index"].to_pylist(), t[names[0]].to_pylist(), strict=True):
            if int(ti) == idx:
                return str(name)
        return ""


# ---------------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportLeRobotConfig(RobotArgs):
    """Import a LeRobot v3.0 dataset (parquet + mp4 + meta/) as kinema4d episodes."""

    src: Positional[Path]
    """The LeRobot dataset directory (holding meta/info.json)."""
    out: Path
    """kinema4d dataset dir to write (created; a rerun resumes, skipping the episodes it has)."""
    robot: str | None = None
    """Builtin robot name or a URDF path: the joint states drive its kinematics. Default: the robot a kinema4d
    export names in meta/kinema4d.json; other datasets must name it."""
    camera_key: str | None = None
    """The camera feature (video or image), e.g. observation.images.front. Default: the only camera feature, or the
    one kinema4d exported."""
    depth_key: str | None = None
    """The metric depth feature of that camera: a numeric (H, W) / (H, W, 1) feature, or a 16-bit PNG image
    feature (with --depth-scale). Required: kinema4d's world pointmap is the unprojected depth."""
    depth_scale: float = 1.0
    """Metres per stored depth unit (0.001 for depth stored in millimetres)."""
    camera_json: Path | None = None
    """Camera JSON (K, T_cam_world, width, height; Camera.save format; T_cam_world maps the robot's world frame to
    the camera). Needed unless the dataset carries meta/kinema4d.json (a kinema4d export)."""
    state_key: str = "observation.state"
    """The joint-state feature. Columns are matched to the robot's joints by the feature's names; without names it
    must have exactly the robot's dof columns, in its joint order."""
    state_degrees: bool = False
    """The joint states are in degrees (revolute joints); default radians."""
    episodes: tuple[int, ...] | None = None
    """Import only these episode indices (default all)."""
    split: str = "train"
    """Split name written into the dataset."""
    resolution: str | None = None
    """Resize to HxW (e.g. 64x96, a model's training size; K is scaled); default: as recorded."""
    stride: int = 1
    """Keep every stride-th recorded frame (e.g. 3: a 30 fps dataset at 10 fps)."""
    clip_frames: int | None = None
    """Cut each LeRobot episode into non-overlapping episodes of this many (strided) frames (ids episode * 1000 +
    clip), so that all share one length and frame spacing, as training and Simulator's frame-spacing contract
    assume (e.g. 49 for the default recipe's 9 frames at stride 6); default: one episode per LeRobot episode."""
    backend: str = "auto"
    """Robot renderer: auto | gl | embree."""
    progress: bool = True


def _camera_keys(r: LeRobotReader) -> list[str]:
    return [k for k, v in r.features.items() if v.get("dtype") in ("video", "image")
            and len(v.get("shape", ())) == 3 and int(v["shape"][-1]) == 3]


def _state_columns(r: LeRobotReader, key: str, robot) -> tuple[np.ndarray, str]:
    """Column indices of the robot's joints in state feature ``key`` and how they were matched."""
    ft = r.feature(key, "joint states", "--state-key")
    shape = tuple(ft.get("shape", ()))
    if len(shape) != 1:
        raise LeRobotFormatError(f"--state-key {key!r} has shape {list(shape)}; joint states are a 1-D feature")
    names = r.feature_names(key)
    if names is not None and all(j in names for j in robot.joint_names):
        return np.array([names.index(j) for j in robot.joint_names]), "by name"
    if shape[0] == robot.dof:
        return np.arange(robot.dof), "by position (feature names do not name the robot's joints)"
    raise LeRobotFormatError(
        f"--state-key {key!r} has {shape[0]} columns {names or ''} and they do not name {robot.name}'s {robot.dof} "
        f"joints {robot.joint_names}; rename the feature's names to the joint names, or pick the robot / URDF whose "
        "joints these are")


def import_lerobot(cfg: ImportLeRobotConfig) -> dict:
    """Run ``kinema4d dataset import lerobot``; returns :func:`kinema4d.data.recordings.write_recordings`' summary
    plus ``state_columns`` (how the joints were matched) and ``camera_source``."""
    from kinema4d.data.datagen import parse_resolution
    from kinema4d.kinematics.robot import BUILTIN_ROBOTS, load_robot

    r = LeRobotReader(cfg.src)
    km = r.kinema4d or {}
    spec = cfg.robot or next((e.get("robot") for e in km.get("episodes", [])), None)
    if spec is None:
        raise LeRobotFormatError(f"{r.root}: name the robot with --robot (a builtin {sorted(BUILTIN_ROBOTS)} or "
                                 f"a URDF path); the dataset says robot_type {r.info.get('robot_type')!r}")
    robot = load_robot(spec, **cfg.robot_options())
    cams = _camera_keys(r)
    camera_key = cfg.camera_key or km.get("camera_key") or (cams[0] if len(cams) == 1 else None)
    if camera_key is None:
        raise LeRobotFormatError(f"{r.root} has {len(cams)} camera features {cams}: choose one with --camera-key")
    cft = r.feature(camera_key, "camera", "--camera-key")
    if cft.get("dtype") not in ("video", "image"):
        raise LeRobotFormatError(f"--camera-key {camera_key!r} is a {cft.get('dtype')} feature, not a video or image")
    depth_key = cfg.depth_key or km.get("depth_key")
    if depth_key is None:
        numeric = [k for k, v in r.features.items() if "depth" in k.lower()]
        raise LeRobotFormatError(
            f"{r.root} gives no depth: kinema4d's world pointmap is the camera's metric depth unprojected with K, so "
            f"a LeRobot dataset needs a depth feature for --camera-key {camera_key!r}; name it with --depth-key "
            f"(features that mention depth: {numeric or 'none'}; all: {r.describe_features()}). A dataset without "
            "depth cannot be imported: no depth-estimation weights can be had here")
    dft = r.feature(depth_key, "depth", "--depth-key")
    if dft.get("dtype") == "video":
        raise LeRobotFormatError(f"--depth-key {depth_key!r} is a video feature: lossy 8-bit video cannot carry "
                                 "metric depth; store depth as a float (H, W) feature or a 16-bit PNG image feature")
    cols, matched = _state_columns(r, cfg.state_key, robot)
    m = robot.model  # --state-degrees converts the rotating joints (pinocchio: not JointModelP*)
    revolute = np.array([not m.joints[m.getJointId(j)].shortname().startswith("JointModelP")
                         for j in robot.joint_names])
    if cfg.camera_json is not None:
        camera0, camera_source = Camera.load(cfg.camera_json), str(cfg.camera_json)
    elif km.get("episodes"):
        camera0, camera_source = None, KINEMA4D_META
    else:
        raise LeRobotFormatError(f"{r.root}: LeRobot datasets carry no camera calibration; give --camera-json "
                                 "(K, T_cam_world, width, height in the robot's world frame, Camera.save format)")
    km_eps = {int(e["episode_index"]): e for e in km.get("episodes", [])}
    ids = sorted(r.episodes) if cfg.episodes is None else list(cfg.episodes)
    for e in ids:
        r.episode(e)
    if cfg.depth_scale <= 0:
        raise ValueError(f"--depth-scale must be > 0 metres per unit, got {cfg.depth_scale}")

    def load(ep: int) -> Recording:
        t = r.frames_table(ep)
        rgb = r.images(ep, t, camera_key)
        if rgb.ndim == 4 and rgb.shape[-1] == 4:
            rgb = rgb[..., :3]
        if rgb.dtype != np.uint8:
            raise LeRobotFormatError(f"{camera_key!r} episode {ep}: images are {rgb.dtype}, expected uint8 RGB")
        depth = r.column(t, depth_key).astype(np.float32)
        if depth.ndim == 4 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        depth = depth * np.float32(cfg.depth_scale)
        q = r.column(t, cfg.state_key).astype(np.float64)[:, cols]
        if cfg.state_degrees:
            q[:, revolute] = np.deg2rad(q[:, revolute])
        if camera0 is not None:
            camera = camera0
        elif ep in km_eps:
            camera = Camera.from_dict(km_eps[ep]["camera"], source=f"{r.root / KINEMA4D_META} episode {ep}")
        else:
            raise LeRobotFormatError(f"{r.root / KINEMA4D_META} has no camera for episode {ep}: give --camera-json")
        H, W = rgb.shape[1:3]
        if (camera.height, camera.width) != (H, W):
            if abs(camera.width / camera.height - W / H) > 0.01:
                raise ValueError(f"camera ({camera_source}) is {camera.width}x{camera.height} (W x H) but "
                                 f"{camera_key!r} is {W}x{H}: not the same image")
            camera = camera.resized(W, H)
        success = None
        for k in ("next.success", "success"):
            if k in r.features and k in t.column_names:
                success = bool(column_to_numpy(t[k], (), k)[-1])
                break
        if success is None and ep in km_eps:
            success = km_eps[ep].get("success")
        src = {"format": "lerobot", "path": str(r.root.resolve()), "codebase_version": r.info["codebase_version"],
               "episode_index": int(ep), "camera_key": camera_key, "depth_key": depth_key,
               "state_key": cfg.state_key, "camera": camera_source}
        base = None  # a kinema4d export records each episode's base pose; --base-pose overrides it
        if cfg.base_pose is None and km_eps.get(ep, {}).get("attrs", {}).get("T_world_base") is not None:
            base = np.asarray(km_eps[ep]["attrs"]["T_world_base"], np.float64)
        return Recording(rgb=rgb, depth=depth, q=q, camera=camera, instruction=r.task(t), success=success,
                         fps=r.fps, source=src, T_world_base=base)

    size = parse_resolution(cfg.resolution) if cfg.resolution else None
    items = [(ep, f"{r.root} episode {ep}", (lambda e=ep: load(e))) for ep in ids]
    config = {"source": str(r.root.resolve()), "format": "lerobot", "robot": spec,
              "size": None if size is None else list(size), "camera_key": camera_key, "depth_key": depth_key,
              "state_key": cfg.state_key, "depth_scale": cfg.depth_scale, "camera_json": cfg.camera_json}
    out = write_recordings(cfg.out, cfg.split, robot, items, size=size, backend=cfg.backend, config=config,
                           progress=cfg.progress, total=len(items), stride=cfg.stride, clip_frames=cfg.clip_frames)
    return out | {"state_columns": matched, "camera_source": camera_source, "camera_key": camera_key,
                  "depth_key": depth_key}
