"""Robustness perturbations of pointmap sequences (paper Tab. 4: dropped points, noise, translation, rotation).

Each takes ``pm`` (..., H, W, 3) metres and ``mask`` (..., H, W) bool and returns a new (pm, mask); empty pixels
are 0 / False.
"""

from __future__ import annotations

import numpy as np

from kinema4d.geometry import check_pointmap_mask


def drop_points(pm, mask, frac: float = 0.05, rng: np.random.Generator | None = None):
    """Remove ``round(frac * n_valid)`` valid points chosen uniformly over the whole sequence.

    ``pm`` (..., H, W, 3), ``mask`` (..., H, W) bool -> new (pm, mask); dropped pixels become empty (0, False).
    """
    pm, mask = check_pointmap_mask(pm, mask)
    if not (0.0 <= frac <= 1.0):
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    rng = rng if rng is not None else np.random.default_rng()
    valid = np.flatnonzero(mask)
    drop = rng.choice(valid, size=int(round(frac * len(valid))), replace=False)
    mask = mask.copy()
    mask.reshape(-1)[drop] = False
    return np.where(mask[..., None], pm, 0).astype(pm.dtype), mask


def gaussian_noise(pm, mask, sigma_m: float, rng: np.random.Generator | None = None):
    """Add i.i.d. N(0, sigma_m^2) metres to each coordinate of every valid point; the mask is unchanged."""
    pm, mask = check_pointmap_mask(pm, mask)
    if not (sigma_m >= 0):
        raise ValueError(f"sigma_m must be >= 0 metres, got {sigma_m}")
    rng = rng if rng is not None else np.random.default_rng()
    out = pm.copy()
    out[mask] = pm[mask] + rng.normal(0.0, sigma_m, size=(int(mask.sum()), 3)).astype(pm.dtype)
    return out, mask.copy()


def shift_image(pm, mask, dx: int, dy: int):
    """Move the image content by (dx, dy) whole pixels (+x right, +y down); vacated pixels become empty."""
    pm, mask = check_pointmap_mask(pm, mask)
    H, W = mask.shape[-2:]
    out_pm, out_mask = np.zeros_like(pm), np.zeros_like(mask)
    dx, dy = int(dx), int(dy)
    src_r, dst_r = slice(max(0, -dy), min(H, H - dy)), slice(max(0, dy), min(H, H + dy))
    src_c, dst_c = slice(max(0, -dx), min(W, W - dx)), slice(max(0, dx), min(W, W + dx))
    out_pm[..., dst_r, dst_c, :] = pm[..., src_r, src_c, :]
    out_mask[..., dst_r, dst_c] = mask[..., src_r, src_c]
    out_pm[~out_mask] = 0
    return out_pm, out_mask


def rotate_image(pm, mask, angle_deg: float):
    """Rotate the image content by ``angle_deg`` (counter-clockwise as displayed, y down) about the image centre
    ((W-1)/2, (H-1)/2), nearest neighbour; pixels rotated in from outside are empty."""
    pm, mask = check_pointmap_mask(pm, mask)
    H, W = mask.shape[-2:]
    a = np.deg2rad(angle_deg)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    r, c = np.mgrid[0:H, 0:W]
    x, y = c - cx, r - cy
    # destination (x, y) = R(a) source, with R counter-clockwise on screen (y down): source = R(-a) destination
    src_c = np.rint(cx + np.cos(a) * x - np.sin(a) * y).astype(int)
    src_r = np.rint(cy + np.sin(a) * x + np.cos(a) * y).astype(int)
    inside = (src_c >= 0) & (src_c < W) & (src_r >= 0) & (src_r < H)
    src_c, src_r = np.clip(src_c, 0, W - 1), np.clip(src_r, 0, H - 1)
    out_mask = mask[..., src_r, src_c] & inside
    out_pm = np.where(out_mask[..., None], pm[..., src_r, src_c, :], 0).astype(pm.dtype)
    return out_pm, out_mask


def translate(pm, mask, max_px: int = 5, rng: np.random.Generator | None = None, per_frame: bool = False):
    """Shift the image content by integer (dx, dy) uniform in [-max_px, max_px] pixels (Tab. 4 "trans.").

    One shift for the whole sequence (a calibration-like error) unless ``per_frame`` (pm (T, H, W, 3)).
    """
    pm, mask = check_pointmap_mask(pm, mask)
    rng = rng if rng is not None else np.random.default_rng()
    if not per_frame:
        dx, dy = rng.integers(-max_px, max_px + 1, size=2)
        return shift_image(pm, mask, dx, dy)
    outs = [shift_image(pm[t], mask[t], *rng.integers(-max_px, max_px + 1, size=2)) for t in range(len(pm))]
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])


def rotate(pm, mask, max_deg: float = 5.0, rng: np.random.Generator | None = None, per_frame: bool = False):
    """Rotate the image content about the image centre by an angle uniform in [-max_deg, max_deg] degrees,
    nearest neighbour (Tab. 4 "rot."). One angle for the sequence unless ``per_frame`` (pm (T, H, W, 3))."""
    pm, mask = check_pointmap_mask(pm, mask)
    rng = rng if rng is not None else np.random.default_rng()
    if not per_frame:
        return rotate_image(pm, mask, rng.uniform(-max_deg, max_deg))
    outs = [rotate_image(pm[t], mask[t], rng.uniform(-max_deg, max_deg)) for t in range(len(pm))]
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
