"""On-disk 4D episode dataset (zarr v3), a lazy reader and the torch ``Dataset`` the world model trains on.

On-disk layout of one dataset directory (one split; ``kinema4d datagen`` writes ``OUT/<split>/``)::

    DIR/zarr.json                 zarr v3 root group, attrs {"format": "kinema4d-episodes", "version": 1, "split"}
    DIR/datagen_config.json       the DatagenConfig that produced it
    DIR/index.json                {"format", "version", "split", "episodes": [entry, ...]} (rewritten atomically;
                                  derived data: rebuilt from the episode groups by the writer)
    DIR/episodes/zarr.json        group holding one group per episode
    DIR/episodes/000123/          episode 123 (6-digit zero-padded id)
        zarr.json                 attrs: metadata (see below) + "checksums" {array: crc32 of its raw bytes}
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
        _COMPLETE                 marker file, written last
    DIR/episodes/.tmp-000123-<pid>/   an episode being written (never read; removed by the next writer run)

Images are chunked one frame per chunk, zstd level 3. Episode attrs: ``episode`` id, ``success``, ``instruction``,
``split``, ``camera`` (K, T_cam_world, width, height; OpenCV convention), ``robot``, ``joint_names``,
``T_world_base``, ``objects`` (shape, colour, rgba, size, initial pose), ``goal_xy``, ``outcome``, ``variant``
({"kind": "clean"}, {"kind": "clean_failed"} (see :mod:`kinema4d.data.datagen`) or
{"kind": "perturbed", "segment", "sigma", "parent"}), ``frames``, ``control_hz``, ...

Atomicity: an episode is written under ``episodes/.tmp-<id>-<pid>``, the ``_COMPLETE`` marker is written last and
the directory is renamed to its final name; a killed writer leaves at most a temp directory. An episode counts only
if its final directory holds ``_COMPLETE``. Reads verify shapes and checksums and raise :class:`CorruptEpisodeError`
naming the episode.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kinema4d.geometry import save_atomic_text
from kinema4d.kinematics.camera import Camera

FORMAT = "kinema4d-episodes"
VERSION = 1
COMPLETE = "_COMPLETE"
ARRAYS = ("rgb", "world_pointmap", "robot_pointmap", "robot_mask", "robot_render_mask", "q", "actions",
          "object_poses")
OPTIONAL_ARRAYS = ("robot_rgb",)
IMAGE_ARRAYS = ("rgb", "world_pointmap", "robot_pointmap", "robot_mask", "robot_render_mask", "robot_rgb")


class CorruptEpisodeError(RuntimeError):
    """An episode that is missing, truncated or fails its checksums. ``episode`` id, ``path``."""

    def __init__(self, episode: int, path: Path, reason: str):
        self.episode, self.path, self.reason = episode, Path(path), reason
        super().__init__(f"episode {episode:06d} ({path}) is corrupt: {reason}")


def episode_name(episode: int) -> str:
    return f"{int(episode):06d}"


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


# ---------------------------------------------------------------------- writing
def init_dataset(root: str | os.PathLike, split: str) -> Path:
    """Create (or open) dataset directory ``root`` for ``split``; refuse a directory of another split/format."""
    import zarr

    root = Path(root)
    if (root / "zarr.json").is_file():
        attrs = json.loads((root / "zarr.json").read_text()).get("attributes", {})
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{root} is a zarr store but not a {FORMAT} dataset (attrs {attrs})")
        if attrs.get("split") != split:
            raise ValueError(f"{root} holds split {attrs.get('split')!r}, not {split!r}")
    else:
        root.mkdir(parents=True, exist_ok=True)
        g = zarr.open_group(str(root), mode="a")
        g.attrs.update({"format": FORMAT, "version": VERSION, "split": split})
    if not (root / "episodes" / "zarr.json").is_file():
        zarr.open_group(str(root), mode="a").require_group("episodes")
    return root


def clean_stale(root: str | os.PathLike) -> list[str]:
    """Remove temp episode dirs of writers that are no longer running, and final dirs lacking ``_COMPLETE``."""
    ep_dir = Path(root) / "episodes"
    removed = []
    if not ep_dir.is_dir():
        return removed
    for d in ep_dir.iterdir():
        if not d.is_dir():
            continue
        if d.name.startswith(".tmp-"):
            try:
                pid = int(d.name.rsplit("-", 1)[1])
            except ValueError:
                pid = -1
            if pid != os.getpid() and _pid_alive(pid):
                continue
        elif not (d.name.isdigit() and not (d / COMPLETE).is_file()):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def complete_episodes(root: str | os.PathLike) -> list[int]:
    """Sorted ids of the episodes whose final directory holds the ``_COMPLETE`` marker."""
    ep_dir = Path(root) / "episodes"
    if not ep_dir.is_dir():
        return []
    return sorted(int(d.name) for d in ep_dir.iterdir() if d.name.isdigit() and (d / COMPLETE).is_file())


def write_episode(root: str | os.PathLike, episode: int, arrays: dict, attrs: dict) -> dict:
    """Write one episode atomically; returns its index entry. ``arrays`` holds every name in ``ARRAYS`` and may
    hold those of ``OPTIONAL_ARRAYS`` (None or absent: not written).

    Images are stored one frame per chunk (pointmaps as float16). Raises FileExistsError if it is complete already.
    """
    import zarr
    from zarr.codecs import ZstdCodec

    root = Path(root)
    name = episode_name(episode)
    final = root / "episodes" / name
    if (final / COMPLETE).is_file():
        raise FileExistsError(f"episode {name} already exists in {root}")
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"episode {name}: missing arrays {missing}")
    tmp = root / "episodes" / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    dtypes = {"rgb": np.uint8, "world_pointmap": np.float16, "robot_pointmap": np.float16, "robot_mask": bool,
              "robot_render_mask": bool, "robot_rgb": np.uint8, "q": np.float32, "actions": np.float32,
              "object_poses": np.float32}
    g = zarr.open_group(str(tmp), mode="w")
    checksums, shapes = {}, {}
    for k in (*ARRAYS, *(k for k in OPTIONAL_ARRAYS if arrays.get(k) is not None)):
        a = np.ascontiguousarray(np.asarray(arrays[k]).astype(dtypes[k], copy=False))
        chunks = (1, *a.shape[1:]) if k in IMAGE_ARRAYS else a.shape
        g.create_array(k, shape=a.shape, dtype=a.dtype, chunks=chunks, compressors=ZstdCodec(level=3))[...] = a
        checksums[k], shapes[k] = _crc(a), list(a.shape)
    meta = dict(attrs) | {"episode": int(episode), "checksums": checksums, "shapes": shapes}
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


def read_attrs(root: str | os.PathLike, episode: int) -> dict:
    path = Path(root) / "episodes" / episode_name(episode)
    try:
        return json.loads((path / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptEpisodeError(episode, path, f"unreadable metadata zarr.json ({type(e).__name__}: {e})") from None


def write_index(root: str | os.PathLike, split: str, entries: dict[int, dict] | None = None) -> dict[int, dict]:
    """Rewrite ``index.json`` atomically from ``entries`` ({id: entry}); missing complete episodes are read in."""
    entries = dict(entries or {})
    for ep in complete_episodes(root):
        if ep not in entries:
            try:
                entries[ep] = index_entry(read_attrs(root, ep))
            except CorruptEpisodeError:
                entries[ep] = {"episode": ep, "corrupt": True}
    entries = {k: v for k, v in entries.items() if (Path(root) / "episodes" / episode_name(k) / COMPLETE).is_file()}
    doc = {"format": FORMAT, "version": VERSION, "split": split,
           "episodes": [entries[k] for k in sorted(entries)]}
    save_atomic_text(Path(root) / "index.json", json.dumps(doc))
    return entries


# ---------------------------------------------------------------------- reading
class Dataset4D:
    """Lazy reader of a dataset directory. ``len`` = complete episodes; ``i`` indexes them in id order.

    ``meta(i)`` -> index entry (cheap); ``read_episode(i)`` -> dict of numpy arrays (``ARRAYS``, pointmaps as
    float32) + ``"attrs"`` (full metadata) + ``"camera"`` (:class:`Camera`); raises :class:`CorruptEpisodeError`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        zj = self.path / "zarr.json"
        if not zj.is_file():
            raise FileNotFoundError(f"not a kinema4d dataset (no zarr.json): {self.path}")
        try:
            attrs = json.loads(zj.read_text()).get("attributes", {})
        except ValueError as e:
            raise ValueError(f"{zj} is not valid JSON: {e}") from None
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a {FORMAT} dataset (root attrs {attrs})")
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

    def meta(self, i: int) -> dict:
        ep = self._id(i)
        if ep in self._index:
            return self._index[ep]
        return index_entry(read_attrs(self.path, ep))

    def attrs(self, i: int) -> dict:
        return read_attrs(self.path, self._id(i))

    def read_episode(self, i: int, keys: tuple[str, ...] | None = None) -> dict:
        """Episode at position ``i`` (only arrays ``keys``; None = all); verifies shapes and checksums, raises
        CorruptEpisodeError naming it."""
        import zarr

        ep = self._id(i)
        path = self.path / "episodes" / episode_name(ep)
        attrs = read_attrs(self.path, ep)
        out = {}
        try:
            g = zarr.open_group(str(path), mode="r")
        except Exception as e:  # zarr raises several types for a broken group
            raise CorruptEpisodeError(ep, path, f"cannot open group ({type(e).__name__}: {e})") from None
        stored = attrs.get("shapes", {})
        for k in [*ARRAYS, *(k for k in OPTIONAL_ARRAYS if k in stored)] if keys is None else keys:
            if k not in ARRAYS + OPTIONAL_ARRAYS:
                raise KeyError(f"unknown episode array {k!r}; known: {list(ARRAYS + OPTIONAL_ARRAYS)}")
            if k in OPTIONAL_ARRAYS and k not in stored:
                raise KeyError(f"episode {ep:06d} in {self.path} has no {k!r} array (written by an older datagen); "
                               f"regenerate the dataset with `kinema4d datagen`")
            try:
                a = g[k][...]
            except Exception as e:  # missing array, undecodable chunk, ...
                raise CorruptEpisodeError(ep, path, f"array {k!r} unreadable ({type(e).__name__}: {e})") from None
            want = attrs.get("shapes", {}).get(k)
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
                 frames: int | None = None, skip_corrupt: bool = True):
        self.root = _resolve_split_dir(Path(path), split)
        self.ds = Dataset4D(self.root)
        if split is not None and self.ds.split != split:
            raise ValueError(f"{self.root} holds split {self.ds.split!r}, not {split!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (H, W) positive, got {size}")
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.size, self.frames, self.skip_corrupt = size, frames, skip_corrupt
        self.skipped: set[int] = set()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        n = len(self.ds)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} episodes")
        i = i % n
        for k in range(n):
            j = (i + k) % n
            if j in self.skipped:
                continue
            try:
                return self._load(j)
            except CorruptEpisodeError:
                if not self.skip_corrupt:
                    raise
                self.skipped.add(j)
        raise RuntimeError(f"all {n} episodes in {self.root} are corrupt")

    def _load(self, i: int) -> dict:
        from kinema4d.kinematics.render import normalize_pointmap

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
        w01, wstats = normalize_sequence(wpm, wvalid, normalize_pointmap)
        r01, rstats = normalize_sequence(rpm, rvalid, normalize_pointmap)
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


ANCHOR_MARGIN = 0.05  # anchor_stats: fraction of the range added on each side (later frames may leave the box)
EMPTY_LEVEL = 0.02  # generated normalized pointmaps: a pixel below this level is 'empty' (training target 0)


def generated_valid(pm01: np.ndarray, anchored: bool) -> np.ndarray:
    """Which pixels of a generated normalized pointmap (..., 3) hold a point (bool (...)); training targets are 0
    on empty pixels. ``anchored`` (``world_anchor`` models, :func:`anchor_stats`): every point inside the anchor
    box has all three channels >= margin / (1 + 2 margin) (0.045), so a pixel is a point only if its *smallest*
    channel exceeds EMPTY_LEVEL (noise on one channel of an empty pixel does not make a point). Sequence min-max
    normalization: a point may sit at 0 on one channel (the sequence minimum), so its *largest* channel decides."""
    pm01 = np.asarray(pm01)
    return (pm01.min(-1) if anchored else pm01.max(-1)) > EMPTY_LEVEL


def anchored_to_metres(pm01: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """A ``world_anchor`` model's generated pointmap (..., 3) in [0, 1] -> metres with its :func:`anchor_stats`
    (2, 3) [min; max], 0 on pixels that :func:`generated_valid` calls empty."""
    pm01 = np.asarray(pm01)
    out = pm01 * (stats[1] - stats[0]) + stats[0]
    out[~generated_valid(pm01, anchored=True)] = 0.0
    return out


def anchor_stats(world0_m: torch.Tensor, world0_valid: torch.Tensor, robot_m: torch.Tensor,
                 robot_mask: torch.Tensor, margin: float = ANCHOR_MARGIN) -> torch.Tensor:
    """Normalization range known at inference for ``world_anchor`` models: the per-channel min/max of the frame-0
    world points (world0_m (3,H,W) metres, world0_valid (H,W)) and of the robot points over the sequence (robot_m
    (T,3,H,W) metres, robot_mask (T,H,W)), widened by ``margin`` of the range on each side. Returns (2, 3) float32
    [min; max] metres. Raises ValueError if neither has a valid point."""
    pts = torch.cat([world0_m.permute(1, 2, 0)[world0_valid > 0.5], robot_m.permute(0, 2, 3, 1)[robot_mask > 0.5]])
    if len(pts) == 0:
        raise ValueError("anchor_stats: neither the frame-0 world pointmap nor the robot pointmap has a valid pixel")
    lo, hi = pts.min(0).values.float(), pts.max(0).values.float()
    pad = margin * (hi - lo).clamp(min=1e-3)
    return torch.stack([lo - pad, hi + pad])


def normalize_with_stats(pm_m: torch.Tensor, valid: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) metres, (T, H, W) valid, (2, 3) [min; max] -> float32 (T, 3, H, W) in [0, 1], 0 where invalid."""
    pm01 = (pm_m - stats[0].view(1, 3, 1, 1)) / (stats[1] - stats[0]).view(1, 3, 1, 1)
    return torch.where(valid[:, None] > 0.5, pm01, torch.zeros_like(pm01)).float()


def anchor_normalize(item: dict) -> dict:
    """A TorchEpisodes item (or a collated batch of them) renormalized for ``world_anchor`` models: world and
    robot pointmaps both in [0, 1] by :func:`anchor_stats` (0 stays 'empty'), ``world_stats`` = ``robot_stats`` =
    those stats. Other keys are shared, not copied."""
    if item["world_pointmap"].ndim == 5:  # collated (B, T, 3, H, W)
        parts = [anchor_normalize({k: v[b] for k, v in item.items() if k in _ANCHOR_KEYS})
                 for b in range(item["world_pointmap"].shape[0])]
        return {**item, **{k: torch.stack([p[k] for p in parts]) for k in _ANCHOR_KEYS}}
    out = dict(item)
    world_m, robot_m = (_denormalize(item[p], item[s]) for p, s in (("world_pointmap", "world_stats"),
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
        if item["world_pointmap"].ndim == 5:
            parts = [held_inputs({k: item[k][b] for k in _HELD_KEYS}, out["world_stats"][b])
                     for b in range(item["world_pointmap"].shape[0])]
            out["held"] = {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
        else:
            out["held"] = held_inputs(item, out["world_stats"])
    return out


_HELD_KEYS = ("rgb", "world_pointmap", "world_stats", "world_valid", "robot_mask", "episode_actions",
              "frame_index", "T_cam_world", "K")


def held_inputs(item: dict, anchor: torch.Tensor) -> dict:
    """The held-object prior (``kinema4d.model.held_prior``) of one TorchEpisodes item (its sequence-normalized
    world pointmap, not yet anchored) as ``WorldModel.prepare``'s ``held`` dict, XYZ normalized by ``anchor`` (2, 3)
    [min; max] metres."""
    from kinema4d.model.held_prior import held_object_prior

    if "episode_actions" not in item:
        raise KeyError("held_prior models need the item keys 'episode_actions', 'frame_index' and 'T_cam_world' "
                       "(TorchEpisodes items have them; a preload cache made before they existed does not: delete it)")
    world0_m = _denormalize(item["world_pointmap"][:1], item["world_stats"])[0]
    world0_m = torch.where(item["world_valid"][0] > 0.5, world0_m, torch.zeros_like(world0_m))
    prior = held_object_prior(item["rgb"][0].permute(1, 2, 0).numpy(), world0_m.permute(1, 2, 0).numpy(),
                              item["robot_mask"][0].numpy() > 0.5, item["episode_actions"].numpy(),
                              item["T_cam_world"].numpy(), item["K"].numpy(), item["frame_index"].numpy())
    return held_tensors(prior, anchor)


def held_tensors(prior, anchor: torch.Tensor) -> dict:
    """A ``HeldPrior`` -> ``WorldModel.prepare``'s ``held`` dict of float32 tensors ((T,3,H,W) / (T,H,W)), XYZ
    normalized by ``anchor`` (2, 3) [min; max] metres (0 off the prior)."""
    mask = torch.from_numpy(prior.mask)
    return {"rgb": torch.from_numpy(prior.rgb), "xyz01": normalize_with_stats(torch.from_numpy(prior.xyz), mask,
                                                                              anchor.float()),
            "mask": mask.float(), "vacated": torch.from_numpy(prior.vacated).float()}


_ANCHOR_KEYS = ("world_pointmap", "world_stats", "world_valid", "robot_pointmap", "robot_stats", "robot_mask")


def _denormalize(pm01: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1] + (2, 3) [min; max] -> metres (T, 3, H, W)."""
    return pm01 * (stats[1] - stats[0]).view(1, 3, 1, 1) + stats[0].view(1, 3, 1, 1)


def normalize_sequence(pm, valid, normalize_pointmap):
    """(T, 3, H, W) tensor + (T, H, W) bool -> (normalized (T, 3, H, W) float32, stats (2, 3) float32)."""
    pm_np = pm.permute(0, 2, 3, 1).numpy()
    v = valid.numpy()
    if not v.any():
        return torch.zeros_like(pm, dtype=torch.float32), torch.zeros(2, 3)
    pm01, st = normalize_pointmap(pm_np, v)
    stats = torch.from_numpy(np.stack([st.min, st.max]).astype(np.float32))
    return torch.from_numpy(pm01).permute(0, 3, 1, 2).contiguous(), stats
