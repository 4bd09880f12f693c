"""Image reading, pseudo-colour images and video writing shared by every stage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load_image(image, name: str = "image") -> np.ndarray:
    """The one image loader: a path (png / jpg, ...) or an array -> uint8 (H, W, 3) RGB.

    Alpha is dropped and grey (H, W) replicated to 3 channels. uint8 values are kept; float values in [0, 1] are
    scaled by 255 and rounded. Any other dtype or range raises ValueError naming ``name`` (no silent clipping)."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{name} file not found: {path}")
        import imageio.v2 as imageio

        try:
            image = imageio.imread(path)
        except Exception as e:  # imageio raises several types for unreadable files
            raise ValueError(f"cannot read {name} {path}: {type(e).__name__}: {e}") from None
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be (H, W, 3) RGB, got shape {a.shape}")
    a = a[..., :3]
    if np.issubdtype(a.dtype, np.floating):
        if not (np.all(np.isfinite(a)) and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError(f"{name}: a float image must hold finite values in [0, 1], got [{a.min()}, {a.max()}] "
                             "(pass uint8 for 0-255 values)")
        a = np.round(a * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB (or float in [0, 1]), got {a.dtype}")
    return np.ascontiguousarray(a)


def pointmap_to_rgb(pm: np.ndarray, mask: np.ndarray | None = None, lo=None, hi=None) -> np.ndarray:
    """Pointmap (..., H, W, 3) metres -> uint8 RGB (..., H, W, 3): XYZ min-max scaled over the whole sequence.

    Empty pixels (mask False, or all-zero points when no mask is given) are black. ``lo``/``hi`` (3,) override the
    range so several videos can share one colour scale.
    """
    pm = np.asarray(pm, dtype=np.float32)
    valid = np.any(pm != 0, axis=-1) if mask is None else np.asarray(mask, bool)
    if lo is None or hi is None:
        if valid.any():
            pts = pm[valid]
            lo, hi = pts.min(0), pts.max(0)
        else:
            lo, hi = np.zeros(3, np.float32), np.ones(3, np.float32)
    scaled = (pm - np.asarray(lo)) / np.maximum(np.asarray(hi) - np.asarray(lo), 1e-6)
    img = (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)
    img[~valid] = 0
    return img


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """Bool (..., H, W) -> uint8 (..., H, W, 3) white on black."""
    return np.repeat((np.asarray(mask, bool) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def hstack_videos(*videos: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate uint8 videos (T, H, W, 3) side by side with a ``gap``-pixel grey separator."""
    T, H = videos[0].shape[:2]
    sep = np.full((T, H, gap, 3), 64, np.uint8)
    parts = []
    for i, v in enumerate(videos):
        if v.shape[:2] != (T, H):
            raise ValueError(f"video {i} has shape {v.shape}, expected (T={T}, H={H}, W, 3)")
        parts += [v, sep] if i < len(videos) - 1 else [v]
    return np.concatenate(parts, axis=2)


def video_to_uint8(frames) -> np.ndarray:
    """Channels-first float video (T, 3, H, W) in [0, 1] (numpy array or CPU torch tensor) -> uint8 (T, H, W, 3)."""
    arr = np.asarray(frames, dtype=np.float32)
    return (np.clip(arr, 0.0, 1.0).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 10.0) -> Path:
    """Write uint8 (T, H, W, 3) frames to mp4 (H.264) or gif, atomically (temp file, then rename)."""
    import imageio.v2 as imageio

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    # H.264 with yuv420p needs even sizes
    if path.suffix == ".mp4" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        if path.suffix == ".gif":
            imageio.mimsave(tmp, list(frames), duration=1.0 / fps, loop=0)
        else:
            with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
                for f in frames:
                    w.append_data(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
