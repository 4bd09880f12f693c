"""kinema4d episodes and generated rollouts -> one LeRobot dataset (format v3.0: parquet + mp4 + ``meta/``).

``kinema4d dataset export lerobot SRC... --out DIR`` (:class:`ExportLeRobotConfig`, :func:`export_lerobot`) writes
kinema4d episodes (dataset dirs) and generated rollouts (``rollout.npz`` of ``kinema4d simulate`` / the gym env) as
one LeRobot v3.0 dataset: ``observation.images.main`` (video, H.264 through PyAV), ``observation.depth`` (float32
(H, W) metres, lossless in parquet), ``observation.state`` (q, named by the robot's joints), ``action`` (the ee_pose
actions), ``next.success``; the cameras, robot and episode attrs go to ``meta/kinema4d.json`` (LeRobot ignores the
file; the importer reads it).

Written with pyarrow and PyAV, not the ``lerobot`` library (why, and the layout facts used:
:mod:`kinema4d.data.lerobot`, whose importer reads what this writes).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tyro.conf import Positional

from kinema4d.data.lerobot import CODEBASE_VERSION, DEFAULT_FEATURES, KINEMA4D_META
from kinema4d.geometry import save_atomic_text
from kinema4d.kinematics.camera import Camera

EXPORT_CAMERA_KEY = "observation.images.main"
EXPORT_DEPTH_KEY = "observation.depth"
EXPORT_STATE_KEY = "observation.state"
CHUNKS_SIZE = 1000


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
