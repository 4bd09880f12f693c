"""On-disk 4D episode dataset (zarr v3), a lazy reader and the torch ``Dataset`` the world model trains on.

On-disk layout of one dataset directory (one split; ``kinema4d datagen`` writes ``OUT/<split>/``), format version 2::

    DIR/zarr.json                 zarr v3 root group, attrs {"format": "kinema4d-episodes", "version": 2, "split"}
    DIR/datagen_config.json       the DatagenConfig that produced it
    DIR/index.json                {"format", "version", "split", "episodes": [entry, ...]} (rewritten atomically;
                                  derived data: rebuilt from the episodes by the writer)
    DIR/episodes/000123.zarr.zip  episode 123 (6-digit zero-padded id): ONE file, a zarr v3 group in an
                                  uncompressed zip (``zarr.storage.ZipStore``); group attrs: metadata (see below)
                                  + "checksums" {array: crc32 of its raw bytes} + "shapes" {array: shape}
        rgb                       (T, H, W, 3) uint8
        world_pointmap            (T, H, W, 3) float16, camera-frame metres from the depth buffer, 0 = empty
        robot_pointmap            (T, H, W, 3) float16, kinematic render of ``q`` (render_robot), 0 = empty
        robot_mask                (T, H, W) bool, robot pixels from the simulator's segmentation
        robot_render_mask         (T, H, W) bool, pixels of robot_pointmap
        robot_rgb                 (T, H, W, 3) uint8, the same render's shaded colours, black background
                                  (optional: datasets written before it lack it; the robot-RGB condition needs it)
        q                         (T, dof) float32 joint positions (``joint_names`` order), read from the simulator
        actions                   (T, 8) float32 ee_pose actions: xyz, quat xyzw of ee_link (world), gripper [0, 1]
        object_poses              (T, N, 7) float32 xyz + quat xyzw (world), attrs "objects" order
    DIR/episodes/.tmp-000123-<pid>.zarr.zip   an episode being written (never read; removed by the next writer run)

Chunks: image arrays hold whole frames, as many per chunk as fit in ``CHUNK_BYTES`` (8 MB raw: a 49-frame 64x96
episode is one chunk per array, 480x720 pointmaps 4 frames per chunk); zstd level 3. Episode attrs: ``episode``
id, ``success``, ``instruction``, ``split``, ``camera`` (K, T_cam_world, width, height; OpenCV convention),
``robot``, ``joint_names``, ``T_world_base``, ``objects`` (shape, colour, rgba, size, initial pose), ``goal_xy``,
``outcome``, ``variant`` ({"kind": "clean"}, {"kind": "clean_failed"} (see :mod:`kinema4d.data.datagen`) or
{"kind": "perturbed", "segment", "sigma", "parent"}), ``frames``, ``control_hz``, ...

Why one zip per episode: a zarr directory costs at least two files per array (its ``zarr.json`` and one chunk or
shard), 19 for our nine arrays plus the group, over a ~10-file budget whatever the chunking (zarr v3 sharding
included). A zip holds the same zarr group in one file, which any zarr v3 tool opens
(``zarr.open_group(zarr.storage.ZipStore(path))``), is written to a temp name and renamed (so a file with the
final name is complete: no marker file), and detects truncation (zip directory) and damage (zip CRC + our
checksums). Larger chunks compress better (zstd sees the whole sequence) and cost fewer calls. Many episodes per
file (LeRobot v3 style) would cut the file count further, but parallel writers and resume (kill a datagen, start
it again) would then need a merge step; 200k episodes as 200k files is fine for a file system.
``benchmarks/bench_data.py`` measures version 1 against version 2 (files, size on disk, write and read speed
through ``TorchEpisodes``) and, with ``--video``, RGB stored as H.264 instead of lossless zstd: smaller, lossy, and
an ffmpeg decode on every read, so RGB stays lossless. The pointmaps are most of an episode's bytes (the same
script prints their share) and stay lossless float16 with plain zstd level 3.

Version 1 (datasets written before, e.g. ``data/synth64``) is still read: ``episodes/000123/`` was a zarr
directory with one frame per chunk (~300 files + ~800 chunk directories per episode at 64x96) and a
``_COMPLETE`` marker written last. ``kinema4d dataset convert OLD NEW`` (:mod:`kinema4d.data.convert`) rewrites a
dataset as version 2; the writer keeps appending in the version the dataset already has (a resumed datagen run).

Atomicity: an episode is written under a temp name and renamed to its final name; a killed writer leaves at most a
temp file (or, version 1, a temp directory). Reads verify shapes and checksums and raise
:class:`CorruptEpisodeError` naming the episode.

Why ~630 lines in one file: the writer (:func:`write_episode`), the reader (:class:`Dataset4D`) and the torch
dataset (:class:`TorchEpisodes`) are the three sides of the one format above (versions, checksums, shapes, dtypes
and the corrupt-episode rule), which must change together; the model-input plumbing at the end
(:func:`model_inputs`) only applies ``kinema4d.pointmap`` to TorchEpisodes items.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kinema4d.geometry import save_atomic_text
from kinema4d.kinematics.camera import Camera
from kinema4d.pointmap import anchor_stats, normalize_sequence, normalize_with_stats, to_metres

FORMAT = "kinema4d-episodes"
VERSION = 2  # written by this code
READ_VERSIONS = (1, 2)  # read by this code
SUFFIX = ".zarr.zip"  # version 2 episode file
COMPLETE = "_COMPLETE"  # version 1: marker file written last into an episode directory
CHUNK_BYTES = 8 << 20  # version 2: raw bytes per image chunk (whole frames; at least one frame)
ARRAYS = ("rgb", "world_pointmap", "robot_pointmap", "robot_mask", "robot_render_mask", "q", "actions",
          "object_poses")
OPTIONAL_ARRAYS = ("robot_rgb",)
IMAGE_ARRAYS = ("rgb", "world_pointmap", "robot_pointmap", "robot_mask", "robot_render_mask", "robot_rgb")
DTYPES = {"rgb": np.uint8, "world_pointmap": np.float16, "robot_pointmap": np.float16, "robot_mask": bool,
          "robot_render_mask": bool, "robot_rgb": np.uint8, "q": np.float32, "actions": np.float32,
          "object_poses": np.float32}


class CorruptEpisodeError(RuntimeError):
    """An episode that is missing, truncated or fails its checksums. ``episode`` id, ``path``."""

    def __init__(self, episode: int, path: Path, reason: str):
        self.episode, self.path, self.reason = episode, Path(path), reason
        super().__init__(f"episode {episode:06d} ({path}) is corrupt: {reason}")


class FormatVersionError(ValueError):
    """A dataset whose format version this code cannot read. ``path`` (its zarr.json), ``version``."""

    def __init__(self, path: Path, version):
        self.path, self.version = Path(path), version
        super().__init__(f"{path}: {FORMAT} format version {version!r}; this kinema4d reads versions "
                         f"{', '.join(map(str, READ_VERSIONS))} and writes {VERSION}. Upgrade kinema4d, or regenerate "
                         f"the dataset (`kinema4d datagen`)")


def episode_name(episode: int) -> str:
    return f"{int(episode):06d}"


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


def dataset_version(root: str | os.PathLike) -> int:
    """Format version of dataset dir ``root`` (from its zarr.json). Raises FileNotFoundError (no dataset),
    ValueError (not a kinema4d dataset) or FormatVersionError (a version this code cannot read)."""
    zj = Path(root) / "zarr.json"
    if not zj.is_file():
        raise FileNotFoundError(f"not a kinema4d dataset (no zarr.json): {Path(root)}")
    try:
        attrs = json.loads(zj.read_text()).get("attributes", {})
    except ValueError as e:
        raise ValueError(f"{zj} is not valid JSON: {e}") from None
    if attrs.get("format") != FORMAT:
        raise ValueError(f"{root} is a zarr store but not a {FORMAT} dataset (root attrs {attrs})")
    version = attrs.get("version")
    if version not in READ_VERSIONS:
        raise FormatVersionError(zj, version)
    return int(version)


def episode_path(root: str | os.PathLike, episode: int, version: int | None = None) -> Path:
    """Where episode ``episode`` lives: ``episodes/000123.zarr.zip`` (version 2) or ``episodes/000123/`` (1)."""
    version = dataset_version(root) if version is None else version
    name = episode_name(episode)
    return Path(root) / "episodes" / (name + SUFFIX if version >= 2 else name)


def is_complete(root: str | os.PathLike, episode: int, version: int | None = None) -> bool:
    """Whether episode ``episode`` is fully written (version 2: its file exists; 1: its ``_COMPLETE`` marker)."""
    p = episode_path(root, episode, version)
    return p.is_file() if p.name.endswith(SUFFIX) else (p / COMPLETE).is_file()


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a file or of a directory tree, as ``du`` counts them: allocated blocks of the files and of
    the directories themselves."""
    path = Path(path)
    entries = [path] if path.is_file() else [path, *path.rglob("*")]
    return sum(f.lstat().st_blocks * 512 for f in entries)


# ---------------------------------------------------------------------- writing
def init_dataset(root: str | os.PathLike, split: str, version: int = VERSION) -> Path:
    """Create (or open) dataset directory ``root`` for ``split``; refuse a directory of another split/format.
    A new dataset gets format ``version`` (1 only to write the old layout, e.g. for benchmarks and tests); an
    existing one keeps its own."""
    import zarr

    root = Path(root)
    if (root / "zarr.json").is_file():
        dataset_version(root)
        attrs = json.loads((root / "zarr.json").read_text()).get("attributes", {})
        if attrs.get("split") != split:
            raise ValueError(f"{root} holds split {attrs.get('split')!r}, not {split!r}")
    else:
        if version not in READ_VERSIONS:
            raise ValueError(f"cannot write {FORMAT} version {version}; versions: {READ_VERSIONS}")
        root.mkdir(parents=True, exist_ok=True)
        zarr.create_group(str(root), attributes={"format": FORMAT, "version": version, "split": split})
    if dataset_version(root) == 1 and not (root / "episodes" / "zarr.json").is_file():
        zarr.open_group(str(root), mode="a").require_group("episodes")
    (root / "episodes").mkdir(exist_ok=True)
    return root


def clean_stale(root: str | os.PathLike) -> list[str]:
    """Remove temp episodes (``.tmp-<id>-<pid>[.zarr.zip]``) of writers that are no longer running, and version-1
    final dirs lacking ``_COMPLETE``. Returns the names removed."""
    ep_dir = Path(root) / "episodes"
    removed = []
    if not ep_dir.is_dir():
        return removed
    for d in ep_dir.iterdir():
        if d.name.startswith(".tmp-"):
            try:
                pid = int(d.name.removesuffix(SUFFIX).rsplit("-", 1)[1])
            except ValueError:
                pid = -1
            if pid != os.getpid() and _pid_alive(pid):
                continue
        elif not (d.is_dir() and d.name.isdigit() and not (d / COMPLETE).is_file()):
            continue
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
        else:
            d.unlink(missing_ok=True)
        removed.append(d.name)
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A zombie (killed, not yet reaped by its parent: a SIGKILLed writer's worker
    stays one for a while) is not running: its temp episode is stale."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: field 3 of /proc/<pid>/stat is the state; 'Z' = zombie, 'X' = dead
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS) or gone in between: keep the conservative answer
    return state not in ("Z", "X")


def complete_episodes(root: str | os.PathLike) -> list[int]:
    """Sorted ids of the complete episodes (see :func:`is_complete`)."""
    ep_dir = Path(root) / "episodes"
    if not ep_dir.is_dir():
        return []
    if dataset_version(root) == 1:
        return sorted(int(d.name) for d in ep_dir.iterdir() if d.name.isdigit() and (d / COMPLETE).is_file())
    names = (d.name.removesuffix(SUFFIX) for d in ep_dir.iterdir() if d.name.endswith(SUFFIX))
    return sorted(int(n) for n in names if n.isdigit())


def _chunks(name: str, a: np.ndarray) -> tuple[int, ...]:
    """Version-2 chunk shape: image arrays whole frames up to ``CHUNK_BYTES`` raw, other arrays one chunk."""
    if name not in IMAGE_ARRAYS or a.shape[0] == 0:
        return a.shape
    frame = max(1, a[0].nbytes)
    return (max(1, min(a.shape[0], CHUNK_BYTES // frame)), *a.shape[1:])


def write_episode(root: str | os.PathLike, episode: int, arrays: dict, attrs: dict) -> dict:
    """Write one episode atomically in the dataset's format version; returns its index entry. ``arrays`` holds
    every name in ``ARRAYS`` (any numeric dtype: stored as ``DTYPES``, pointmaps float16) and may hold those of
    ``OPTIONAL_ARRAYS`` (None or absent: not written). Raises FileExistsError if it is complete already."""
    import zarr
    from zarr.codecs import ZstdCodec

    root = Path(root)
    version = dataset_version(root)
    name = episode_name(episode)
    final = episode_path(root, episode, version)
    if is_complete(root, episode, version):
        raise FileExistsError(f"episode {name} already exists in {root}")
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"episode {name}: missing arrays {missing}")
    data = {k: np.ascontiguousarray(np.asarray(arrays[k]).astype(DTYPES[k], copy=False))
            for k in (*ARRAYS, *(k for k in OPTIONAL_ARRAYS if arrays.get(k) is not None))}
    meta = dict(attrs) | {"episode": int(episode), "checksums": {k: _crc(a) for k, a in data.items()},
                          "shapes": {k: list(a.shape) for k, a in data.items()}}
    tmp = root / "episodes" / f".tmp-{name}-{os.getpid()}{SUFFIX if version >= 2 else ''}"
    if tmp.is_dir():
        shutil.rmtree(tmp)
    tmp.unlink(missing_ok=True)
    if version >= 2:
        store = zarr.storage.ZipStore(tmp, mode="w")
        try:  # every key is written once (a zip cannot overwrite a member): attrs go in at creation
            g = zarr.create_group(store, attributes=meta)
            for k, a in data.items():
                g.create_array(k, shape=a.shape, dtype=a.dtype, chunks=_chunks(k, a),
                               compressors=ZstdCodec(level=3))[...] = a
        finally:
            store.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    else:  # version 1: a directory, one frame per chunk, the _COMPLETE marker last
        g = zarr.open_group(str(tmp), mode="w")
        for k, a in data.items():
            chunks = (1, *a.shape[1:]) if k in IMAGE_ARRAYS else a.shape
            g.create_array(k, shape=a.shape, dtype=a.dtype, chunks=chunks, compressors=ZstdCodec(level=3))[...] = a
        g.attrs.update(meta)
        (tmp / COMPLETE).write_text("ok\n")
        if final.exists():  # an incomplete leftover with the final name
            shutil.rmtree(final)
    os.rename(tmp, final)
    return index_entry(meta)


def index_entry(meta: dict) -> dict:
    """The short per-episode record kept in ``index.json``."""
    keys = ("episode", "success", "instruction", "split", "variant", "frames", "seed")
    e = {k: meta[k] for k in keys if k in meta}
    e["height"], e["width"] = meta["camera"]["height"], meta["camera"]["width"]
    return e


def read_attrs(root: str | os.PathLike, episode: int, version: int | None = None) -> dict:
    """Full metadata of episode ``episode`` (the attrs of its zarr group); raises CorruptEpisodeError."""
    path = episode_path(root, episode, version)
    try:
        if path.name.endswith(SUFFIX):
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("zarr.json"))["attributes"]
        return json.loads((path / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CorruptEpisodeError(episode, path, f"unreadable metadata zarr.json ({type(e).__name__}: {e})") from None


def write_index(root: str | os.PathLike, split: str, entries: dict[int, dict] | None = None) -> dict[int, dict]:
    """Rewrite ``index.json`` atomically from ``entries`` ({id: entry}); missing complete episodes are read in."""
    version = dataset_version(root)
    entries = dict(entries or {})
    done = complete_episodes(root)
    for ep in done:
        if ep not in entries:
            try:
                entries[ep] = index_entry(read_attrs(root, ep, version))
            except CorruptEpisodeError:
                entries[ep] = {"episode": ep, "corrupt": True}
    entries = {k: entries[k] for k in done}
    doc = {"format": FORMAT, "version": version, "split": split, "episodes": [entries[k] for k in done]}
    save_atomic_text(Path(root) / "index.json", json.dumps(doc))
    return entries


# ---------------------------------------------------------------------- reading
class Dataset4D:
    """Lazy reader of a dataset directory (format version 1 or 2). ``len`` = complete episodes; ``i`` indexes them
    in id order.

    ``meta(i)`` -> index entry (cheap); ``read_episode(i)`` -> dict of numpy arrays (``ARRAYS``, pointmaps as
    float32) + ``"attrs"`` (full metadata) + ``"camera"`` (:class:`Camera`); raises :class:`CorruptEpisodeError`.
    A dataset of an unknown format version raises :class:`FormatVersionError` naming its zarr.json.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.version = dataset_version(self.path)
        attrs = json.loads((self.path / "zarr.json").read_text()).get("attributes", {})
        self.split = attrs.get("split")
        self.episode_ids = complete_episodes(self.path)
        self._index = {}
        idx = self.path / "index.json"
        if idx.is_file():
            try:
                self._index = {e["episode"]: e for e in json.loads(idx.read_text())["episodes"]}
            except (ValueError, KeyError):
                self._index = {}

    def __len__(self) -> int:
        return len(self.episode_ids)

    def _id(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"episode index {i} out of range for {len(self)} episodes in {self.path}")
        return self.episode_ids[i]

    def episode_path(self, i: int) -> Path:
        """File (version 2) or directory (version 1) of the episode at position ``i``."""
        return episode_path(self.path, self._id(i), self.version)

    def meta(self, i: int) -> dict:
        ep = self._id(i)
        if ep in self._index:
            return self._index[ep]
        return index_entry(read_attrs(self.path, ep, self.version))

    def attrs(self, i: int) -> dict:
        return read_attrs(self.path, self._id(i), self.version)

    def read_episode(self, i: int, keys: tuple[str, ...] | None = None) -> dict:
        """Episode at position ``i`` (only arrays ``keys``; None = all); verifies shapes and checksums, raises
        CorruptEpisodeError naming it."""
        import zarr

        ep = self._id(i)
        path = episode_path(self.path, ep, self.version)
        store = zarr.storage.ZipStore(path, mode="r") if self.version >= 2 else str(path)
        try:
            try:
                g = zarr.open_group(store, mode="r")
                attrs = g.attrs.asdict()
            except Exception as e:  # zarr / zipfile raise several types for a broken group
                why = f"{type(e).__name__}: {e}" if path.exists() else "no such file or directory"
                raise CorruptEpisodeError(ep, path, f"cannot open group ({why})") from None
            return self._read_arrays(ep, path, g, attrs, keys)
        finally:
            if isinstance(store, zarr.storage.ZipStore) and store._is_open:
                store.close()

    def _read_arrays(self, ep: int, path: Path, g, attrs: dict, keys) -> dict:
        out = {}
        stored = attrs.get("shapes", {})
        for k in [*ARRAYS, *(k for k in OPTIONAL_ARRAYS if k in stored)] if keys is None else keys:
            if k not in ARRAYS + OPTIONAL_ARRAYS:
                raise KeyError(f"unknown episode array {k!r}; known: {list(ARRAYS + OPTIONAL_ARRAYS)}")
            if k in OPTIONAL_ARRAYS and k not in stored:
                raise KeyError(f"episode {ep:06d} in {self.path} has no {k!r} array (written by an older datagen); "
                               f"regenerate the dataset with `kinema4d datagen`")
            try:
                a = g[k][...]
            except Exception as e:  # missing array, undecodable chunk, zip CRC error, ...
                raise CorruptEpisodeError(ep, path, f"array {k!r} unreadable ({type(e).__name__}: {e})") from None
            want = stored.get(k)
            if want is not None and list(a.shape) != want:
                raise CorruptEpisodeError(ep, path, f"array {k!r} has shape {a.shape}, expected {want}")
            crc = attrs.get("checksums", {}).get(k)
            if crc is not None and _crc(a) != crc:
                bad = _first_bad_frame(a, k)
                raise CorruptEpisodeError(ep, path, f"array {k!r} fails its checksum (missing or damaged chunk{bad})")
            out[k] = a.astype(np.float32) if a.dtype == np.float16 else a
        try:
            out["camera"] = Camera.from_dict(attrs["camera"], source=f"episode {ep:06d} camera")
        except (KeyError, ValueError) as e:
            raise CorruptEpisodeError(ep, path, f"bad camera metadata: {e}") from None
        out["attrs"] = attrs
        return out


def _first_bad_frame(a: np.ndarray, name: str) -> str:
    """Hint for an image array: the first all-zero frame (a lost chunk reads as fill value 0)."""
    if name in IMAGE_ARRAYS and a.ndim >= 3:
        flat = a.reshape(a.shape[0], -1)
        empty = np.flatnonzero(~flat.any(axis=1))
        if len(empty):
            return f", e.g. frame {int(empty[0])}"
    return ""


# ---------------------------------------------------------------------- torch dataset
def _resolve_split_dir(path: Path, split: str | None) -> Path:
    if split is not None and (path / split / "zarr.json").is_file():
        return path / split
    if (path / "zarr.json").is_file():
        return path
    raise FileNotFoundError(f"no dataset for split {split!r} at {path} (expected {path / str(split)}/zarr.json)")


class TorchEpisodes(torch.utils.data.Dataset):
    """Model-ready episodes (a ``torch.utils.data.Dataset``). THE contract of the world model's data.

    ``path``: a dataset dir, or a root holding ``<split>/`` dataset dirs. ``size`` (H, W) output size (None: as
    stored); ``frames`` uniformly subsampled frames (None: all). Each item is a dict:

    - ``rgb`` float32 (T, 3, H, W) in [0, 1]; frame 0 is the initial image I0
    - ``world_pointmap`` float32 (T, 3, H, W) per-channel min-max normalized to [0, 1] over its valid pixels across
      the returned sequence (Supp. B.1), 0 where empty; ``world_valid`` float32 (T, H, W) in {0, 1}
    - ``robot_pointmap`` float32 (T, 3, H, W) normalized by its own sequence min-max; ``robot_mask`` float32
      (T, H, W) in {0, 1}: the pixels of robot_pointmap (kinematic render, the inference-time control signal)
    - ``world_stats`` / ``robot_stats`` float32 (2, 3): [min; max] camera-frame metres (denormalize with them)
    - ``action`` float32 (T, 8): the recorded ee_pose actions (xyz, quat xyzw of the ee link in the world = robot
      base frame, gripper), for action-embedding models
    - ``robot_rgb`` float32 (T, 3, H, W) in [0, 1], the kinematic render's robot colours (0 off the robot), only
      when the dataset stores it
    - ``episode_actions`` float32 (N, 8): the same at every recorded frame; ``frame_index`` int64 (T,): which
      recorded frames are returned (what the held-object prior needs)
    - ``K`` float32 (3, 3) intrinsics for the returned size; ``T_cam_world`` float32 (4, 4); ``success`` bool
      tensor; ``index`` int (position)

    Resizing: nearest (centre-aligned) for pointmaps and masks, area (downscale) / bilinear (upscale) for RGB.
    A corrupt episode raises :class:`CorruptEpisodeError` (naming its path and what failed). With
    ``skip_corrupt=True`` it is instead replaced by the next readable one, with a warning, and counted in
    ``num_skipped`` (shared memory: DataLoader workers' skips are counted too); train and eval report the count.
    """

    def __init__(self, path, split: str | None = "train", size: tuple[int, int] | None = None,
                 frames: int | None = None, skip_corrupt: bool = False):
        self.root = _resolve_split_dir(Path(path), split)
        self.ds = Dataset4D(self.root)
        if split is not None and self.ds.split != split:
            raise ValueError(f"{self.root} holds split {self.ds.split!r}, not {split!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (H, W) positive, got {size}")
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.size, self.frames, self.skip_corrupt = size, frames, skip_corrupt
        self.skipped = torch.zeros(len(self.ds), dtype=torch.bool).share_memory_()  # (N,) bool: episodes skipped

    @property
    def num_skipped(self) -> int:
        """Corrupt episodes skipped so far (``skip_corrupt=True``), over this process and its DataLoader workers."""
        return int(self.skipped.sum())

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        n = len(self.ds)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} episodes")
        i = i % n
        for k in range(n):
            j = (i + k) % n
            if self.skipped[j]:
                continue
            try:
                return self._load(j)
            except CorruptEpisodeError as e:
                if not self.skip_corrupt:
                    raise CorruptEpisodeError(e.episode, e.path, f"{e.reason} (to skip corrupt episodes instead: "
                                              "skip_corrupt=True, `--skip-corrupt` on train / eval)") from None
                warnings.warn(f"skipping corrupt {e}", RuntimeWarning, stacklevel=2)
                self.skipped[j] = True
        raise RuntimeError(f"all {n} episodes in {self.root} are corrupt")

    def _load(self, i: int) -> dict:
        keys = ("rgb", "world_pointmap", "robot_pointmap", "robot_render_mask", "actions")
        has_robot_rgb = "robot_rgb" in self.ds.attrs(i).get("shapes", {})
        e = self.ds.read_episode(i, keys=keys + (("robot_rgb",) if has_robot_rgb else ()))
        idx = frame_indices(e["rgb"].shape[0], self.frames)
        robot_rgb = (torch.from_numpy(e["robot_rgb"][idx]).permute(0, 3, 1, 2).float() / 255.0
                     if has_robot_rgb else None)
        rgb = torch.from_numpy(e["rgb"][idx]).permute(0, 3, 1, 2).float() / 255.0
        wpm = torch.from_numpy(e["world_pointmap"][idx]).permute(0, 3, 1, 2)
        rpm = torch.from_numpy(e["robot_pointmap"][idx]).permute(0, 3, 1, 2)
        rmask = torch.from_numpy(e["robot_render_mask"][idx]).float()[:, None]
        cam: Camera = e["camera"]
        H0, W0 = rgb.shape[-2:]
        if self.size is not None and tuple(self.size) != (H0, W0):
            H, W = self.size
            mode = "area" if (H <= H0 and W <= W0) else "bilinear"
            rgb = F.interpolate(rgb, size=(H, W), mode=mode, **({} if mode == "area" else {"align_corners": False}))
            rgb = rgb.clamp(0.0, 1.0)
            wpm = F.interpolate(wpm, size=(H, W), mode="nearest-exact")
            rpm = F.interpolate(rpm, size=(H, W), mode="nearest-exact")
            rmask = F.interpolate(rmask, size=(H, W), mode="nearest-exact")
            if robot_rgb is not None:  # nearest: the colours stay those of robot pixels, aligned with rmask
                robot_rgb = F.interpolate(robot_rgb, size=(H, W), mode="nearest-exact")
            cam = cam.resized(W, H)
        wvalid = wpm[:, 2] > 0
        rvalid = rmask[:, 0] > 0.5
        w01, wstats = normalize_sequence(wpm, wvalid)
        r01, rstats = normalize_sequence(rpm, rvalid)
        return {
            "rgb": rgb.contiguous(),
            "world_pointmap": w01,
            "robot_pointmap": r01,
            "robot_mask": rvalid.float(),
            "world_valid": wvalid.float(),
            "world_stats": wstats,
            "robot_stats": rstats,
            "action": torch.from_numpy(np.ascontiguousarray(e["actions"][idx], dtype=np.float32)),
            "episode_actions": torch.from_numpy(np.ascontiguousarray(e["actions"], dtype=np.float32)),
            "frame_index": torch.from_numpy(idx.astype(np.int64)),
            "K": torch.from_numpy(cam.K.astype(np.float32)),
            "T_cam_world": torch.from_numpy(np.asarray(cam.T_cam_world, dtype=np.float32)),
            "success": torch.tensor(bool(e["attrs"]["success"])),
            "index": int(i),
        } | ({} if robot_rgb is None else {"robot_rgb": robot_rgb.contiguous()})


def frame_indices(T: int, frames: int | None) -> np.ndarray:
    """Indices (frames,) int of ``frames`` uniformly subsampled frames of a T-frame episode (all when None), the
    subsampling ``TorchEpisodes`` applies."""
    return np.arange(T) if frames is None else np.round(np.linspace(0, T - 1, frames)).astype(int)


def anchor_normalize(item: dict) -> dict:
    """A TorchEpisodes item (or a collated batch of them) renormalized for ``world_anchor`` models: world and
    robot pointmaps both in [0, 1] by ``pointmap.anchor_stats`` (0 stays 'empty'), ``world_stats`` = ``robot_stats`` =
    those stats. Other keys are shared, not copied."""
    if item["world_pointmap"].ndim == 5:  # collated (B, T, 3, H, W)
        parts = [anchor_normalize({k: v[b] for k, v in item.items() if k in _ANCHOR_KEYS})
                 for b in range(item["world_pointmap"].shape[0])]
        return {**item, **{k: torch.stack([p[k] for p in parts]) for k in _ANCHOR_KEYS}}
    out = dict(item)
    world_m, robot_m = (to_metres(item[p], item[s], channel_axis=1) for p, s in (("world_pointmap", "world_stats"),
                                                                                 ("robot_pointmap", "robot_stats")))
    wvalid, rmask = item["world_valid"] > 0.5, item["robot_mask"] > 0.5
    st = anchor_stats(world_m[0], wvalid[0], robot_m, rmask)
    out["world_pointmap"] = normalize_with_stats(world_m, wvalid, st)
    out["robot_pointmap"] = normalize_with_stats(robot_m, rmask, st)
    out["world_stats"] = out["robot_stats"] = st
    return out


def model_inputs(model_cfg, item: dict) -> dict:
    """A TorchEpisodes item or batch as the model ``model_cfg`` (a ``ModelConfig``) consumes it: anchor-normalized
    for ``world_anchor`` models, with ``world0`` = the frame-0 world pointmap ((B,)3,H,W) (None otherwise), and for
    ``held_prior`` models ``held`` (the held-object prior, ``WorldModel.prepare``'s keys, (B,)T,...)."""
    if not model_cfg.world_anchor:
        return {**item, "world0": None}
    out = anchor_normalize(item)
    out["world0"] = out["world_pointmap"][..., 0, :, :, :]
    if getattr(model_cfg, "held_prior", False):
        gate = model_cfg.held_gate
        if item["world_pointmap"].ndim == 5:
            parts = [held_inputs({k: item[k][b] for k in _HELD_KEYS}, out["world_stats"][b], gate)
                     for b in range(item["world_pointmap"].shape[0])]
            out["held"] = {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
        else:
            out["held"] = held_inputs(item, out["world_stats"], gate)
    return out


_HELD_KEYS = ("rgb", "world_pointmap", "world_stats", "world_valid", "robot_mask", "episode_actions",
              "frame_index", "T_cam_world", "K")


def held_inputs(item: dict, anchor: torch.Tensor, gate: tuple[float, float] | None = None) -> dict:
    """The held-object prior (``kinema4d.model.held_prior``, grasp ``gate`` as ``ModelConfig.held_gate``) of one
    TorchEpisodes item (its sequence-normalized world pointmap, not yet anchored) as ``WorldModel.prepare``'s
    ``held`` dict, XYZ normalized by ``anchor`` (2, 3) [min; max] metres."""
    from kinema4d.model.held_prior import held_object_prior

    if "episode_actions" not in item:
        raise KeyError("held_prior models need the item keys 'episode_actions', 'frame_index' and 'T_cam_world' "
                       "(TorchEpisodes items have them; a preload cache made before they existed does not: delete it)")
    world0_m = to_metres(item["world_pointmap"][:1], item["world_stats"], channel_axis=1)[0]
    world0_m = torch.where(item["world_valid"][0] > 0.5, world0_m, torch.zeros_like(world0_m))
    prior = held_object_prior(item["rgb"][0].permute(1, 2, 0).numpy(), world0_m.permute(1, 2, 0).numpy(),
                              item["robot_mask"][0].numpy() > 0.5, item["episode_actions"].numpy(),
                              item["T_cam_world"].numpy(), item["K"].numpy(), item["frame_index"].numpy(), gate=gate)
    return held_tensors(prior, anchor)


def held_tensors(prior, anchor: torch.Tensor) -> dict:
    """A ``HeldPrior`` -> ``WorldModel.prepare``'s ``held`` dict of float32 tensors ((T,3,H,W) / (T,H,W)), XYZ
    normalized by ``anchor`` (2, 3) [min; max] metres (0 off the landing and vacated pixels)."""
    mask, vacated = torch.from_numpy(prior.mask), torch.from_numpy(prior.vacated)
    return {"rgb": torch.from_numpy(prior.rgb),
            "xyz01": normalize_with_stats(torch.from_numpy(prior.xyz), mask | vacated, anchor.float()),
            "mask": mask.float(), "vacated": vacated.float()}


_ANCHOR_KEYS = ("world_pointmap", "world_stats", "world_valid", "robot_pointmap", "robot_stats", "robot_mask")
