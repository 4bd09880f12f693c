"""Exports of a 4D sequence (:class:`kinema4d.interactive.viewer.Sequence4D`): side-by-side mp4 / gif (RGB |
world pointmap | robot pointmap, pseudo-coloured) and per-frame coloured PLY point clouds (camera-space points
moved to the world frame with ``camera.T_world_cam``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kinema4d.geometry import atomic_write, transform_points

if TYPE_CHECKING:
    from kinema4d.interactive.viewer import Sequence4D

ROBOT_POINT_RGB = (255, 140, 0)  # robot points in PLY exports and the rerun recording
GIF_MAX_WIDTH = 640


def side_by_side_frames(seq: Sequence4D) -> np.ndarray:
    """uint8 (T, H, W', 3): RGB | world pointmap | robot pointmap, whichever are present, left to right.

    Both pointmaps are pseudo-coloured (XYZ -> RGB) on one shared scale, so the robot has the same colours in both.
    """
    from kinema4d.interactive.media import hstack_videos, pointmap_to_rgb

    pms = [(pm, v) for pm, v in ((seq.world_pointmap, seq.world_valid), (seq.robot_pointmap, seq.robot_valid))
           if pm is not None]
    pts = [pm[v] for pm, v in pms if v.any()]
    lo = hi = None
    if pts:
        allp = np.concatenate(pts)
        lo, hi = allp.min(0), allp.max(0)
    panels = [] if seq.rgb is None else [seq.rgb]
    panels += [pointmap_to_rgb(pm, v, lo, hi) for pm, v in pms]
    return hstack_videos(*panels)


def export_mp4(seq: Sequence4D, path: str | os.PathLike) -> Path:
    """H.264 mp4 of :func:`side_by_side_frames` at ``seq.fps`` (odd sizes padded by one pixel)."""
    from kinema4d.interactive.media import write_video

    return write_video(path, side_by_side_frames(seq), fps=seq.fps)


def export_gif(seq: Sequence4D, path: str | os.PathLike, max_width: int = GIF_MAX_WIDTH, upscale: int = 1) -> Path:
    """Looping GIF of :func:`side_by_side_frames`, first enlarged ``upscale`` times (nearest neighbour: a 32x48
    rollout is unreadable at its own size), then downscaled by an integer factor (block mean) to <= max_width."""
    from kinema4d.interactive.media import write_video

    if upscale < 1:
        raise ValueError(f"export_gif: upscale must be >= 1, got {upscale}")
    frames = side_by_side_frames(seq).repeat(upscale, axis=1).repeat(upscale, axis=2)
    f = int(np.ceil(frames.shape[2] / max_width))
    if f > 1:
        T, H, W, _ = frames.shape
        H2, W2 = H // f, W // f
        frames = frames[:, :H2 * f, :W2 * f].reshape(T, H2, f, W2, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    return write_video(path, frames, fps=seq.fps)


def _ply_bytes(points: np.ndarray, colors: np.ndarray) -> bytes:
    """Binary little-endian PLY: float32 x y z + uchar red green blue per vertex."""
    v = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = points.T
    v["red"], v["green"], v["blue"] = colors.T
    header = ("ply\nformat binary_little_endian 1.0\ncomment kinema4d world coordinates, metres\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    return header.encode() + v.tobytes()


def export_ply(seq: Sequence4D, out_dir: str | os.PathLike, frames=None, source: str = "world") -> list[Path]:
    """One binary PLY per frame, ``out_dir/frame_<t:06d>.ply``: valid points in world coordinates (metres).

    ``source`` "world" exports the world pointmap coloured by ``rgb`` (grey without rgb); "robot" the robot
    pointmap (orange). ``frames``: iterable of frame indices (default all).
    """
    if source not in ("world", "robot"):
        raise ValueError(f"source must be 'world' or 'robot', got {source!r}")
    pm, valid = (seq.world_pointmap, seq.world_valid) if source == "world" else (seq.robot_pointmap, seq.robot_valid)
    if pm is None:
        raise ValueError(f"export_ply(source={source!r}): the sequence has no {source}_pointmap")
    frames = list(range(seq.T)) if frames is None else [int(t) for t in frames]
    bad = [t for t in frames if not 0 <= t < seq.T]
    if bad:
        raise ValueError(f"PLY frames {bad} are out of range: the sequence has frames 0..{seq.T - 1}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T_world_cam = seq.camera.T_world_cam
    paths = []
    for t in frames:
        pts = transform_points(T_world_cam, pm[t][valid[t]]).astype(np.float32)
        if source == "robot":
            colors = np.tile(np.array(ROBOT_POINT_RGB, np.uint8), (len(pts), 1))
        elif seq.rgb is not None:
            colors = seq.rgb[t][valid[t]]
        else:
            colors = np.full((len(pts), 3), 160, np.uint8)
        p = out_dir / f"frame_{t:06d}.ply"
        data = _ply_bytes(pts, colors)
        atomic_write(p, lambda f, data=data: f.write(data))
        paths.append(p)
    return paths
