"""LeRobot datasets (format v3.0: parquet + mp4 + ``meta/``) <-> kinema4d episodes.

``kinema4d dataset import lerobot DIR ...`` (:class:`ImportLeRobotConfig`, :func:`import_lerobot`) reads a LeRobot
v3.0 dataset directory and writes kinema4d episodes through :mod:`kinema4d.data.recordings`: the camera feature
(``--camera-key``, a ``video`` or ``image`` feature) gives the RGB, the depth feature (``--depth-key``) the world
pointmap (unprojected with the camera's K), the joint states (``--state-key``, default ``observation.state``) drive
the kinematic stage, which renders the robot pointmap and mask. The camera (K, T_cam_world) comes from
``--camera-json`` or, for datasets kinema4d exported, from ``meta/kinema4d.json``. A dataset without depth cannot be
imported: kinema4d's world pointmap needs metric depth, and no depth-estimation weights can be had here.

``kinema4d dataset export lerobot SRC... --out DIR`` (:class:`ExportLeRobotConfig`, :func:`export_lerobot`) writes
kinema4d episodes (dataset dirs) and generated rollouts (``rollout.npz`` of ``kinema4d simulate`` / the gym env) as
one LeRobot v3.0 dataset: ``observation.images.main`` (video, H.264 through PyAV), ``observation.depth`` (float32
(H, W) metres, lossless in parquet), ``observation.state`` (q, named by the robot's joints), ``action`` (the ee_pose
actions), ``next.success``; the cameras, robot and episode attrs go to ``meta/kinema4d.json`` (LeRobot ignores the
file; the importer reads it).

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
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tyro.conf import Positional

from kinema4d.data.recordings import Recording, write_recordings
from kinema4d.geometry import save_atomic_text
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.control import RobotArgs

CODEBASE_VERSION = "v3.0"
KINEMA4D_META = "meta/kinema4d.json"
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
EXPORT_CAMERA_KEY = "observation.images.main"
EXPORT_DEPTH_KEY = "observation.depth"
EXPORT_STATE_KEY = "observation.state"
CHUNKS_SIZE = 1000


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


# ---------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportLeRobotConfig:
    """Write kinema4d episodes and generated rollouts (rollout.npz) as one LeRobot v3.0 dataset."""

    src: Positional[tuple[Path, ...]]
    """kinema4d dataset dirs (holding zarr.json), rollout.npz files, or dirs holding a rollout.npz."""
    out: Path
    """LeRobot dataset directory to create (must not exist; written under a temp name, renamed when complete)."""
    fps: int | None = None
    """Frames per second (LeRobot needs an integer). Default: the episodes' recording rate (datagen: frames over the
    control duration), a rollout's own fps."""
    repo_id: str = "local/kinema4d"
    """The dataset's repo id (LeRobot metadata only; nothing is uploaded)."""
    task: str | None = None
    """Task text for episodes without an instruction (default: 'kinema4d rollout')."""
    crf: int = 10
    """H.264 quality (0 = lossless, 18 = visually lossless-ish; 10: ~45 dB PSNR on the data engine's frames)."""
    pix_fmt: str = "yuv444p"
    """Video pixel format: yuv444p keeps the colour of small objects; yuv420p is what most players expect."""
    episodes: int | None = None
    """Export at most this many episodes per dataset dir (default all)."""
    file_mb: float = 100.0
    """Start a new data parquet + mp4 file pair after this many MB of raw frames (RGB + depth; LeRobot writes data
    files of <= 100 MB). Episodes never straddle two files."""
    progress: bool = True


@dataclass
class _ExportEpisode:
    rgb: np.ndarray  # (T, H, W, 3) uint8
    depth: np.ndarray  # (T, H, W) float32 metres, 0 = none
    q: np.ndarray  # (T, dof) float32
    actions: np.ndarray  # (T, A) float32
    camera: Camera
    robot: str
    joint_names: list[str]
    task: str
    success: bool | None
    fps: float | None
    source: dict
    attrs: dict


def _episode_fps(attrs: dict) -> float | None:
    """Recording rate of a datagen episode: its frames over the control duration."""
    try:
        steps, hz, frames = int(attrs["n_control_steps"]), float(attrs["control_hz"]), int(attrs["frames"])
    except (KeyError, TypeError, ValueError):
        hz = attrs.get("control_hz")
        return float(hz) if hz else None
    duration = (steps - 1) / hz if steps > 1 else None
    return (frames - 1) / duration if duration else None


def _export_sources(cfg: ExportLeRobotConfig):
    """Yield _ExportEpisode for every source (in order)."""
    from kinema4d.data import episodes as kdata
    from kinema4d.interactive.viewer import ROLLOUT_FILE, load_rollout_npz
    from kinema4d.kinematics.robot import joints_to_ee_actions, load_robot

    for src in cfg.src:
        src = Path(src)
        if src.is_dir() and (src / "zarr.json").is_file():
            ds = kdata.Dataset4D(src)
            n = len(ds) if cfg.episodes is None else min(cfg.episodes, len(ds))
            for i in range(n):
                e = ds.read_episode(i, keys=("rgb", "world_pointmap", "q", "actions"))
                a = e["attrs"]
                wp = e["world_pointmap"]
                yield _ExportEpisode(
                    rgb=e["rgb"], depth=np.where(wp[..., 2] > 0, wp[..., 2], 0).astype(np.float32), q=e["q"],
                    actions=e["actions"], camera=e["camera"], robot=a.get("robot_urdf") or a.get("robot", "panda"),
                    joint_names=list(a.get("joint_names") or []), task=a.get("instruction") or "",
                    success=a.get("success"), fps=_episode_fps(a),
                    source={"kind": "kinema4d_episode", "path": str(src.resolve()), "episode": ds.episode_ids[i]},
                    attrs={k: a[k] for k in ("variant", "split", "objects", "goal_xy", "T_world_base", "ee_link")
                           if k in a})
            continue
        path = src / ROLLOUT_FILE if src.is_dir() else src
        if not path.is_file():
            raise FileNotFoundError(f"{src}: neither a kinema4d dataset dir (zarr.json) nor a rollout.npz")
        seq = load_rollout_npz(path)
        missing = [k for k in ("rgb", "world_pointmap", "q", "robot_name") if getattr(seq, k) is None]
        if missing:
            raise ValueError(f"{path}: a rollout needs rgb, world_pointmap, q and robot to be exported; it lacks "
                             f"{missing}")
        robot = load_robot(seq.robot_name)
        if seq.T_world_base is not None:
            robot.T_world_base = np.asarray(seq.T_world_base, np.float64)
        wp = seq.world_pointmap
        yield _ExportEpisode(
            rgb=seq.rgb, depth=np.where(wp[..., 2] > 0, wp[..., 2], 0).astype(np.float32),
            q=seq.q.astype(np.float32), actions=joints_to_ee_actions(robot, seq.q).astype(np.float32),
            camera=seq.camera, robot=seq.robot_name, joint_names=list(robot.joint_names), task="", success=None,
            fps=float(seq.fps), source={"kind": "rollout", "path": str(path.resolve())},
            attrs={"T_world_base": robot.T_world_base.tolist()})


class _VideoWriter:
    """All episodes of one video key into one mp4 (H.264 through PyAV), frame k at pts k (time base 1/fps)."""

    def __init__(self, path: Path, fps: int, width: int, height: int, crf: int, pix_fmt: str):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=fps, options={"crf": str(crf), "g": "2",
                                                                           "preset": "medium"})
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        for f in rgb:
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            fr.pts = self.frames
            self.frames += 1
            for pkt in self.stream.encode(fr):
                self.container.mux(pkt)

    def close(self) -> None:
        for pkt in self.stream.encode():
            self.container.mux(pkt)
        self.container.close()


def _hf_features(features: dict) -> dict:
    """The ``huggingface`` schema metadata of a data parquet file (HF datasets' feature types)."""
    out = {}
    for k, ft in features.items():
        if ft["dtype"] in ("video", "image"):
            continue
        shape = list(ft["shape"])
        if shape == [1]:
            out[k] = {"dtype": ft["dtype"], "_type": "Value"}
        elif len(shape) == 1:
            out[k] = {"feature": {"dtype": ft["dtype"], "_type": "Value"}, "length": shape[0], "_type": "List"}
        else:
            out[k] = {"shape": shape, "dtype": ft["dtype"], "_type": f"Array{len(shape)}D"}
    return out


def _pandas_meta(index_name: str, cols: list[tuple[str, str]]) -> bytes:
    """The ``pandas`` schema metadata that makes pandas read column ``index_name`` back as the (string) index."""
    import pyarrow

    columns = [{"name": n, "field_name": n, "pandas_type": t, "numpy_type": t, "metadata": None} for n, t in cols]
    columns.append({"name": None, "field_name": index_name, "pandas_type": "unicode", "numpy_type": "object",
                    "metadata": None})
    return json.dumps({"index_columns": [index_name], "column_indexes": [{"name": None, "field_name": None,
                                                                          "pandas_type": "unicode",
                                                                          "numpy_type": "object",
                                                                          "metadata": {"encoding": "UTF-8"}}],
                       "columns": columns, "creator": {"library": "pyarrow", "version": pyarrow.__version__},
                       "pandas_version": "2.2.0"}).encode()


def export_lerobot(cfg: ExportLeRobotConfig) -> dict:
    """Run ``kinema4d dataset export lerobot``; returns {"path", "episodes", "frames", "fps", "features"}."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    out = Path(cfg.out)
    if out.exists():
        raise ValueError(f"{out} exists: export writes a new directory (remove it or choose another --out)")
    if not cfg.src:
        raise ValueError("give at least one source (kinema4d dataset dir or rollout.npz)")
    if not 0 <= cfg.crf <= 51:
        raise ValueError(f"--crf must be in 0..51, got {cfg.crf}")
    if cfg.pix_fmt not in ("yuv444p", "yuv420p"):
        raise ValueError(f"--pix-fmt must be yuv444p or yuv420p, got {cfg.pix_fmt!r}")
    tmp = out.parent / f".{out.name}.exporting-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        summary = _export(cfg, tmp, pa, pq, tqdm)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary | {"path": str(out)}


class _Stats:
    """Running LeRobot stats of one feature (min, max, mean, std, count over frames; images per channel in [0, 1]
    as (3, 1, 1)), without keeping the frames."""

    def __init__(self, image: bool = False):
        self.image, self.n, self.rows, self.shape = image, 0, 0, (1,)  # n frames; rows of x (pixels for images)
        self.sum, self.sq, self.min, self.max = 0.0, 0.0, None, None

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a)
        x = a.reshape(-1, 3).astype(np.float64) / 255.0 if self.image else \
            a.reshape(a.shape[0], -1).astype(np.float64) if a.ndim > 1 else a.astype(np.float64)[:, None]
        self.shape = (3, 1, 1) if self.image else (a.shape[1:] if a.ndim > 1 else (1,))
        self.n += a.shape[0]
        self.sum = self.sum + x.sum(0)
        self.sq = self.sq + (x * x).sum(0)
        lo, hi = x.min(0), x.max(0)
        self.min = lo if self.min is None else np.minimum(self.min, lo)
        self.max = hi if self.max is None else np.maximum(self.max, hi)
        self.rows += x.shape[0]

    def to_dict(self) -> dict:
        mean = self.sum / self.rows
        std = np.sqrt(np.maximum(self.sq / self.rows - mean * mean, 0.0))
        g = lambda v: np.asarray(v).reshape(self.shape).tolist()  # noqa: E731
        return {"min": g(self.min), "max": g(self.max), "mean": g(mean), "std": g(std), "count": [int(self.n)]}


def _export(cfg: ExportLeRobotConfig, root: Path, pa, pq, tqdm) -> dict:
    """Stream the episodes into data / video file pairs of at most ``cfg.file_mb`` MB of raw frames each (LeRobot's
    own limit is 100 MB of parquet and 200 MB of video per file): file f is chunk-{f // 1000}/file-{f % 1000}, its
    mp4 restarts at t = 0. Nothing but the current file's frames is held in memory."""
    first = None
    fps = cfg.fps
    ep_rows, km_eps, tasks = [], [], {}
    stats = {k: _Stats(image=k == EXPORT_CAMERA_KEY) for k in (EXPORT_CAMERA_KEY, "observation.depth",
                                                                "observation.state", "action")}
    idx_stats = {k: _Stats() for k in DEFAULT_FEATURES}
    state = {"file": 0, "video": None, "frames_in_file": 0, "bytes": 0, "cols": None}
    frame0 = 0

    def new_cols():
        return {k: [] for k in ("observation.depth", "observation.state", "action", "next.success", *DEFAULT_FEATURES)}

    def rel(kind: str, f: int) -> str:
        return f"{kind}/chunk-{f // CHUNKS_SIZE:03d}/file-{f % CHUNKS_SIZE:03d}"

    def open_file(W: int, H: int) -> None:
        state["video"] = _VideoWriter(root / f"{rel(f'videos/{EXPORT_CAMERA_KEY}', state['file'])}.mp4", fps, W, H,
                                      cfg.crf, cfg.pix_fmt)
        state["frames_in_file"], state["bytes"], state["cols"] = 0, 0, new_cols()

    def flush(H: int, W: int, A: int, D: int) -> None:
        state["video"].close()
        _write_data_file(root / f"{rel('data', state['file'])}.parquet", state["cols"], H, W, A, D, pa, pq)

    for ep_i, e in enumerate(tqdm(_export_sources(cfg), desc="export lerobot", unit="ep", disable=not cfg.progress)):
        T, H, W = e.rgb.shape[:3]
        where = f"{e.source['path']}" + (f" episode {e.source['episode']}" if "episode" in e.source else "")
        if first is None:
            first = e
            if fps is None:
                fps = round(e.fps) if e.fps else 10
            if fps < 1:
                raise ValueError(f"fps must be >= 1, got {fps}")
            open_file(W, H)
        f0 = first
        if (H, W) != f0.rgb.shape[1:3] or e.q.shape[1] != f0.q.shape[1] or e.actions.shape[1] != f0.actions.shape[1]:
            raise ValueError(f"{where}: {W}x{H} images, {e.q.shape[1]} joints and {e.actions.shape[1]} action columns "
                             f"differ from the first episode's ({f0.rgb.shape[2]}x{f0.rgb.shape[1]}, {f0.q.shape[1]}, "
                             f"{f0.actions.shape[1]}); a LeRobot dataset has one shape per feature: export them apart")
        if e.joint_names and f0.joint_names and e.joint_names != f0.joint_names:
            raise ValueError(f"{where}: joints {e.joint_names} differ from the first episode's {f0.joint_names}")
        if e.fps and abs(e.fps - fps) > 0.05 * fps and cfg.fps is None:
            raise ValueError(f"{where}: recorded at {e.fps:.2f} fps, the export runs at {fps}: pass --fps")
        ep_bytes = e.rgb.nbytes + e.depth.astype(np.float32).nbytes
        if state["frames_in_file"] and state["bytes"] + ep_bytes > cfg.file_mb * 1e6:
            flush(H, W, f0.actions.shape[1], f0.q.shape[1])
            state["file"] += 1
            open_file(W, H)
        task = e.task or cfg.task or "kinema4d rollout"
        ti = tasks.setdefault(task, len(tasks))
        start = state["frames_in_file"]
        state["video"].write(e.rgb)
        cols = state["cols"]
        ts = (np.arange(T) / fps).astype(np.float32)
        cols["observation.depth"] += list(e.depth.astype(np.float32))
        cols["observation.state"] += list(e.q.astype(np.float32))
        cols["action"] += list(e.actions.astype(np.float32))
        cols["next.success"] += [bool(e.success) and t == T - 1 for t in range(T)]
        new = {"timestamp": ts, "frame_index": np.arange(T), "episode_index": np.full(T, ep_i),
               "index": np.arange(frame0, frame0 + T), "task_index": np.full(T, ti)}
        for k, v in new.items():
            cols[k] += v.tolist()
            idx_stats[k].add(np.asarray(v, np.float64))
        for k, a in ((EXPORT_CAMERA_KEY, e.rgb), ("observation.depth", e.depth), ("observation.state", e.q),
                     ("action", e.actions)):
            stats[k].add(a)
        f = state["file"]
        ep_rows.append({"episode_index": ep_i, "tasks": [task], "length": T,
                        "data/chunk_index": f // CHUNKS_SIZE, "data/file_index": f % CHUNKS_SIZE,
                        "dataset_from_index": frame0, "dataset_to_index": frame0 + T,
                        f"videos/{EXPORT_CAMERA_KEY}/chunk_index": f // CHUNKS_SIZE,
                        f"videos/{EXPORT_CAMERA_KEY}/file_index": f % CHUNKS_SIZE,
                        f"videos/{EXPORT_CAMERA_KEY}/from_timestamp": start / fps,
                        f"videos/{EXPORT_CAMERA_KEY}/to_timestamp": (start + T) / fps,
                        "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        km_eps.append({"episode_index": ep_i, "camera": e.camera.to_dict(), "robot": e.robot,
                       "joint_names": e.joint_names, "success": e.success, "source": e.source, "attrs": e.attrs})
        state["frames_in_file"] += T
        state["bytes"] += ep_bytes
        frame0 += T
    if first is None:
        raise ValueError(f"no episodes in {[str(s) for s in cfg.src]}")
    H, W = first.rgb.shape[1:3]
    A = first.actions.shape[1]
    flush(H, W, A, first.q.shape[1])
    joint_names = first.joint_names or [f"joint_{i}" for i in range(first.q.shape[1])]
    features = _export_features(H, W, A, joint_names, fps, cfg.pix_fmt)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), root / "meta/episodes/chunk-000/file-000.parquet")
    names = list(tasks)
    tschema = pa.schema([pa.field("task_index", pa.int64()), pa.field("__index_level_0__", pa.string())],
                        metadata={b"pandas": _pandas_meta("__index_level_0__", [("task_index", "int64")])})
    pq.write_table(pa.Table.from_arrays([pa.array([tasks[t] for t in names], pa.int64()), pa.array(names)],
                                        schema=tschema), root / "meta/tasks.parquet")
    stats_json = {k: v.to_dict() for k, v in (stats | idx_stats).items()}
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": first.robot, "total_episodes": len(ep_rows),
            "total_frames": frame0, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": int(fps),
            "splits": {"train": f"0:{len(ep_rows)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    save_atomic_text(root / "meta/info.json", json.dumps(info, indent=4))
    save_atomic_text(root / "meta/stats.json", json.dumps(stats_json))
    save_atomic_text(root / KINEMA4D_META, json.dumps({
        "format": "kinema4d-lerobot-export", "version": 1, "camera_key": EXPORT_CAMERA_KEY,
        "depth_key": EXPORT_DEPTH_KEY, "state_key": EXPORT_STATE_KEY, "depth_unit": "metres (z, OpenCV camera)",
        "action_layout": "ee_pose: x y z qx qy qz qw (ee_link in world) + gripper opening [0, 1], 1 = open",
        "episodes": km_eps}, indent=1))
    return {"episodes": len(ep_rows), "frames": frame0, "fps": int(fps), "files": state["file"] + 1,
            "features": list(features)}


def _export_features(H: int, W: int, A: int, joint_names: list[str], fps: int, pix_fmt: str) -> dict:
    return {
        EXPORT_CAMERA_KEY: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                            "info": {"video.height": H, "video.width": W, "video.codec": "h264",
                                     "video.pix_fmt": pix_fmt, "video.is_depth_map": False, "video.fps": fps,
                                     "video.channels": 3, "has_audio": False}},
        "observation.depth": {"dtype": "float32", "shape": [H, W], "names": ["height", "width"]},
        "observation.state": {"dtype": "float32", "shape": [len(joint_names)], "names": joint_names},
        "action": {"dtype": "float32", "shape": [A], "names": ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper"][:A]},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def _write_data_file(path: Path, cols: dict, H: int, W: int, A: int, D: int, pa, pq) -> None:
    """One data parquet file as HF datasets writes it (schema metadata ``huggingface``; depth an Array2D)."""
    n = len(cols["timestamp"])
    if n * H * W >= 2**31:
        raise ValueError(f"{n} frames of {W}x{H} depth exceed one parquet list column (2^31 values): lower --file-mb")
    depth_rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * H * W + 1, W, dtype=np.int32)),
                                          pa.array(np.stack(cols["observation.depth"]).reshape(-1), pa.float32()))
    arrays = {
        "observation.depth": pa.ListArray.from_arrays(pa.array(np.arange(0, n * H + 1, H, dtype=np.int32)),
                                                      depth_rows),
        "observation.state": pa.FixedSizeListArray.from_arrays(
            pa.array(np.stack(cols["observation.state"]).reshape(-1), pa.float32()), D),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(np.stack(cols["action"]).reshape(-1), pa.float32()), A),
        "next.success": pa.array(cols["next.success"], pa.bool_()),
        "timestamp": pa.array(cols["timestamp"], pa.float32()),
        **{k: pa.array(cols[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")},
    }
    ext = {b"ARROW:extension:name": b"datasets.features.features.Array2DExtensionType",
           b"ARROW:extension:metadata": json.dumps([[H, W], "float32"]).encode()}
    fields = [pa.field(k, a.type, metadata=ext if k == "observation.depth" else None) for k, a in arrays.items()]
    feats = _export_features(H, W, A, ["j"] * D, 1, "yuv444p")
    schema = pa.schema(fields, metadata={b"huggingface": json.dumps({"info": {"features": _hf_features(
        {k: v for k, v in feats.items() if k != EXPORT_CAMERA_KEY})}}).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(list(arrays.values()), schema=schema), path)
