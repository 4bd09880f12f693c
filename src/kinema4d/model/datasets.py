"""The training data: ``SyntheticEpisodes`` (moving boxes pushed by a fake robot blob, with the keys of
``kinema4d.data.episodes.TorchEpisodes``), ``PreloadedEpisodes`` (every episode read once into RAM, optionally
through a shared .safetensors cache), the datasets a ``TrainConfig`` names (``make_dataset``,
``make_val_dataset``) and ``CachedCodec``, the in-RAM memo of a frozen codec's encodings."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from kinema4d.model.train_config import TrainConfig
from kinema4d.pointmap import normalize_pointmap

# ----------------------------------------------------------------------------------------------------------------
# Synthetic data (same keys as kinema4d.data.episodes.TorchEpisodes, plus 'action')
# ----------------------------------------------------------------------------------------------------------------


class SyntheticEpisodes(torch.utils.data.Dataset):
    """Moving boxes pushed by a fake robot blob, with the keys of ``kinema4d.data.episodes.TorchEpisodes`` (``action``
    (T, 8): blob centre xyz in metres, identity quaternion xyzw, gripper 1 = open, so the held-object prior is
    empty). Deterministic per (seed, index).

    A camera (f = W, centre of the image) looks at a back plane z = 1.2 m; a box (z = 1.0) sits in the middle; the
    robot (a disk, z = 0.9) moves in from the left and pushes the box right once they touch.
    """

    def __init__(self, n: int = 8, frames: int = 5, size: tuple[int, int] = (16, 16), seed: int = 0):
        self.n, self.T, (self.H, self.W), self.seed = n, frames, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        T, H, W = self.T, self.H, self.W
        v, u = np.mgrid[0:H, 0:W].astype(np.float32)
        bg = rng.uniform(0.2, 0.8, 3).astype(np.float32)
        box_col, bot_col = rng.uniform(0, 1, 3).astype(np.float32), np.array([0.9, 0.9, 0.9], np.float32)
        bw, bh = rng.integers(max(2, W // 8), max(3, W // 4)), rng.integers(max(2, H // 8), max(3, H // 4))
        by = rng.integers(0, H - bh)
        bx0 = W // 2 - bw // 2
        r = max(1.5, min(H, W) / 8)
        cy = by + bh / 2 + rng.uniform(-1, 1)
        reach = rng.uniform(0.55, 0.9)  # how far right the robot goes (fraction of W)
        rgb = np.zeros((T, H, W, 3), np.float32)
        z = np.zeros((T, H, W), np.float32)
        rmask = np.zeros((T, H, W), bool)
        cxs = np.linspace(r, reach * W, T)
        for k in range(T):
            cx = cxs[k]
            bx = max(bx0, int(math.ceil(cx + r)))  # pushed by the blob
            img = np.broadcast_to(bg * (0.8 + 0.2 * v[..., None] / H), (H, W, 3)).copy()
            depth = np.full((H, W), 1.2, np.float32)
            box = (u >= bx) & (u < bx + bw) & (v >= by) & (v < by + bh)
            img[box], depth[box] = box_col, 1.0
            bot = (u - cx) ** 2 + (v - cy) ** 2 <= r * r
            img[bot], depth[bot] = bot_col, 0.9
            rgb[k], z[k], rmask[k] = img, depth, bot
        f = float(W)
        K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], np.float32)
        xyz = np.stack([(u - K[0, 2]) * z / f, (v - K[1, 2]) * z / f, z], axis=-1)  # (T, H, W, 3)
        wpm01, wst = normalize_pointmap(xyz, np.ones_like(rmask))
        rpm01, rst = normalize_pointmap(xyz, rmask)
        wst, rst = (st.as_array().astype(np.float32) for st in (wst, rst))
        action = np.zeros((T, 8), np.float32)
        action[:, 0], action[:, 1], action[:, 2] = (cxs - K[0, 2]) * 0.9 / f, (cy - K[1, 2]) * 0.9 / f, 0.9
        action[:, 6] = action[:, 7] = 1.0
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
        return {
            "rgb": t(rgb).permute(0, 3, 1, 2).contiguous(),
            "world_pointmap": t(wpm01).permute(0, 3, 1, 2).contiguous(),
            "robot_pointmap": t(rpm01).permute(0, 3, 1, 2).contiguous(),
            "robot_mask": t(rmask.astype(np.float32)),
            "world_valid": torch.ones(T, H, W),
            "world_stats": t(wst),
            "robot_stats": t(rst),
            "K": t(K),
            "success": torch.tensor(bool(reach > 0.7)),
            "index": int(i),
            "action": t(action),
            "episode_actions": t(action),  # the actions at every frame (all frames are returned)
            "frame_index": torch.arange(T),
            "T_cam_world": torch.eye(4),  # the camera frame is the world frame here
            "robot_rgb": t(rgb * rmask[..., None]).permute(0, 3, 1, 2).contiguous(),  # the robot's colours only
        }


class PreloadedEpisodes(torch.utils.data.Dataset):
    """Every item of ``dataset`` read once (``workers`` processes, a progress bar if ``progress``) and kept in RAM.

    ``cache``: a .safetensors file of the stacked items. Read instead of the dataset if it exists (its ``key``
    metadata, e.g. data dir / size / frames, must equal ``key``), else written atomically after reading, so runs
    on the same data share one read."""

    def __init__(self, dataset, workers: int = 2, desc: str = "preload", cache: str | os.PathLike | None = None,
                 key: str = "", progress: bool = True):
        from safetensors import safe_open
        from safetensors.torch import save_file
        from tqdm import tqdm

        if cache is not None and Path(cache).is_file():
            with safe_open(str(cache), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key:
                    raise ValueError(f"preload cache {cache} was made for {meta.get('key')!r}, not {key!r}: delete it "
                                     "or pass another preload_cache")
                stacked = {k: f.get_tensor(k) for k in f.keys()}
            n = len(stacked["index"])
            self.items = [{k: (int(v[i]) if k == "index" else v[i]) for k, v in stacked.items()} for i in range(n)]
            return
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
        # clone: a tensor received from a worker holds a shared-memory file descriptor until it is freed, and
        # 2000 episodes x 11 tensors exceed the usual open-file limit
        self.items = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
                      for item in tqdm(loader, total=len(dataset), desc=desc, unit="ep", disable=not progress)]
        if cache is not None:
            stacked = {k: torch.stack([torch.as_tensor(it[k]) for it in self.items]).contiguous()
                       for k in self.items[0]}
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{cache}.tmp{os.getpid()}")
            save_file(stacked, str(tmp), metadata={"key": key})
            os.replace(tmp, cache)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def make_dataset(cfg: TrainConfig, split: str = "train", seed_offset: int = 0):
    """TorchEpisodes at ``cfg.data`` (resized to ``cfg.size``, ``cfg.frames`` frames) or SyntheticEpisodes."""
    if cfg.data is None:
        return SyntheticEpisodes(cfg.synthetic_episodes, cfg.frames, cfg.size, cfg.seed + seed_offset)
    try:
        from kinema4d.data.episodes import TorchEpisodes
    except ImportError as e:
        raise ImportError(f"cfg.data={cfg.data!r} needs kinema4d.data.episodes.TorchEpisodes "
                          f"(import failed: {e})") from e
    return TorchEpisodes(cfg.data, split=split, size=tuple(cfg.size), frames=cfg.frames,
                         skip_corrupt=cfg.skip_corrupt)


def make_val_dataset(cfg: TrainConfig, train_set, warn: bool = True):
    """The validation samples: SyntheticEpisodes with another seed, split ``cfg.val_split`` of ``cfg.data``, or
    ``train_set`` if ``val_split`` is None or the data has no such split (then with a RuntimeWarning naming it)."""
    if cfg.data is not None and cfg.val_split is None:
        return train_set
    try:
        return make_dataset(cfg, cfg.val_split or "train", seed_offset=1)
    except FileNotFoundError as e:
        if warn:
            warnings.warn(f"validation split {cfg.val_split!r} not found in {cfg.data} ({e}); validating on the "
                          "TRAINING data. Make that split, or pass val_split=None (--val-split None) to validate on "
                          "the training data on purpose.", RuntimeWarning, stacklevel=2)
        return train_set


# ----------------------------------------------------------------------------------------------------------------
# Latent cache
# ----------------------------------------------------------------------------------------------------------------


class CachedCodec:
    """Wraps a FROZEN codec; ``encode`` memoizes each sample's latent under a hash of its pixel bytes (the codec is
    deterministic: posterior mean), so a dataset is encoded once however many epochs run (a Wan VAE encode costs
    far more than a small DiT step on CPU). ``max_items`` bounds the cache (FIFO)."""

    def __init__(self, codec, max_items: int = 100_000):
        self.codec, self.max_items, self.cache, self.hits, self.misses = codec, max_items, {}, 0, 0
        self.temporal_factor, self.spatial_factor = codec.temporal_factor, codec.spatial_factor

    def _key(self, x: torch.Tensor) -> bytes:
        import hashlib

        h = hashlib.blake2b(x.detach().cpu().contiguous().numpy().tobytes(), digest_size=16)
        h.update(str(tuple(x.shape)).encode())
        return h.digest()

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        keys = [self._key(v) for v in video]
        miss = [i for i, k in enumerate(keys) if k not in self.cache]
        if miss:
            z = self.codec.encode(video[miss])
            for j, i in enumerate(miss):
                if len(self.cache) >= self.max_items:
                    self.cache.pop(next(iter(self.cache)))
                self.cache[keys[i]] = z[j].to("cpu", copy=True)  # host RAM, never GPU memory
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        return torch.stack([self.cache[k] for k in keys]).to(video.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(z)


__all__ = ["SyntheticEpisodes", "PreloadedEpisodes", "make_dataset", "make_val_dataset", "CachedCodec"]
