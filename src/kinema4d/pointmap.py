"""Pointmap normalization, anchoring and metres conversion: the one place that maps pointmaps between metres and
the [0, 1] range the model sees (paper Supp. B.1).

Why a top-level module (beside ``geometry``) and not inside one stage: the kinematic renderer, the dataset, the
model's sampler, the simulator and the evaluation all convert pointmaps, so a home inside any one of them would make
the others import across stages. It imports numpy only; the functions on tensors import torch when called, so the
kinematic stage stays torch-free.

Pointmaps are camera-frame metres (OpenCV camera: x right, y down, z forward), channels x/y/z, channels-last
(..., H, W, 3) arrays or channels-first (T, 3, H, W) tensors as each function says. ``stats`` is (2, 3) [min; max]
metres per channel; ``to_metres(pm01, stats) = pm01 * (max - min) + min``. 0 in every channel means "no point".

Four normalizations, each in one function pair:

- Sequence min-max (:func:`normalize_pointmap` / :func:`denormalize_pointmap`, tensors: :func:`normalize_sequence`):
  each sequence's own per-channel min/max over its valid points, the dataset's normalization (Supp. B.1).
- Anchored (:func:`anchor_stats`, :func:`normalize_with_stats` / :func:`anchored_to_metres`): ``world_anchor``
  models normalize with stats known at inference (frame-0 world points and all robot points, widened by
  ``ANCHOR_MARGIN``), so their output converts back to metres exactly.
- Fitted to the robot (:func:`denormalize_world_pointmap`): other models' generated world pointmaps, whose own
  min/max are unknown at inference, are brought to metres by a least-squares fit on robot pixels.
- Ground-truth extent (:func:`normalize_pair`): the evaluation maps prediction and ground truth with the GT's
  min/max, so distances are fractions of the scene extent.

:func:`generated_valid` decides which pixels of a generated normalized pointmap hold a point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kinema4d.geometry import check_pointmap_mask

if TYPE_CHECKING:
    import torch

ANCHOR_MARGIN = 0.05  # anchor_stats: fraction of the range added on each side (later frames may leave the box)
EMPTY_LEVEL = 0.02  # generated normalized pointmaps: a pixel below this level is 'empty' (training target 0)


# ---------------------------------------------------------------------------------------- sequence min-max
@dataclass
class PointmapStats:
    """Per-channel extrema of a pointmap sequence: ``min`` (3,), ``max`` (3,) metres (float64)."""

    min: np.ndarray
    max: np.ndarray

    def to_dict(self) -> dict:
        return {"min": [float(v) for v in self.min], "max": [float(v) for v in self.max]}

    @classmethod
    def from_dict(cls, d: dict) -> PointmapStats:
        try:
            lo, hi = np.asarray(d["min"], np.float64), np.asarray(d["max"], np.float64)
        except KeyError as e:
            raise ValueError(f"PointmapStats dict is missing key {e}") from None
        if lo.shape != (3,) or hi.shape != (3,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError(f"PointmapStats min/max must be 3 finite numbers each, got {d}")
        if np.any(hi < lo):
            raise ValueError(f"PointmapStats max < min: {d}")
        return cls(min=lo, max=hi)

    def as_array(self) -> np.ndarray:
        """(2, 3) float64 [min; max], the ``stats`` layout of the other functions here."""
        return np.stack([self.min, self.max])


def normalize_pointmap(pm, mask=None) -> tuple[np.ndarray, PointmapStats]:
    """Sequence-level per-channel min-max normalization to [0, 1] over the valid points (Supp. B.1).

    ``pm`` (T, H, W, 3) metres; ``mask`` (T, H, W) bool (default: pixels where pm != 0). Returns (pm01 float32,
    stats); empty pixels stay 0. A channel with zero extent maps to 0. Raises if no pixel is valid.
    """
    pm, mask = check_pointmap_mask(pm, mask)
    if not mask.any():
        raise ValueError("normalize_pointmap: the pointmap has no valid points (mask is all False)")
    pts = pm[mask].astype(np.float64)
    if not np.all(np.isfinite(pts)):
        raise ValueError("normalize_pointmap: pm has non-finite values at valid pixels")
    stats = PointmapStats(min=pts.min(0), max=pts.max(0))
    span = stats.max - stats.min
    scale = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0)
    out = np.zeros(pm.shape, np.float32)
    out[mask] = (pts - stats.min) * scale
    return out, stats


def denormalize_pointmap(pm01, stats: PointmapStats, mask=None) -> np.ndarray:
    """Inverse of :func:`normalize_pointmap`: (T, H, W, 3) in [0, 1] -> float32 metres, 0 where ``mask`` is False.

    Without ``mask``, pixels where pm01 == 0 in all channels count as empty (pass the mask to be exact: a
    point at the per-channel minimum in all three channels normalizes to 0 too).
    """
    pm01, mask = check_pointmap_mask(pm01, mask, "pm01")
    out = np.zeros(pm01.shape, np.float32)
    out[mask] = to_metres(pm01[mask].astype(np.float64), stats.as_array())
    return out


def normalize_sequence(pm: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`normalize_pointmap` on tensors: pm (T, 3, H, W) metres, valid (T, H, W) bool -> (pm01 (T, 3, H, W)
    float32, stats (2, 3) float32 [min; max]). No valid pixel: all zeros (pm01 and stats)."""
    import torch

    v = valid.numpy()
    if not v.any():
        return torch.zeros_like(pm, dtype=torch.float32), torch.zeros(2, 3)
    pm01, st = normalize_pointmap(pm.permute(0, 2, 3, 1).numpy(), v)
    stats = torch.from_numpy(st.as_array().astype(np.float32))
    return torch.from_numpy(pm01).permute(0, 3, 1, 2).contiguous(), stats


# ---------------------------------------------------------------------------------------- metres conversion
def to_metres(pm01, stats, channel_axis: int = -1):
    """Normalized pointmap -> metres: ``pm01 * (max - min) + min`` per channel, at every pixel (the caller masks
    empty pixels). ``pm01`` numpy array or torch tensor with 3 channels on ``channel_axis`` (-1: (..., 3); 1:
    (T, 3, H, W)); ``stats`` (2, 3) [min; max] metres of the same kind. Returns the type and dtype arithmetic
    gives (float64 stats on a float32 array: float64)."""
    shape = [1] * pm01.ndim
    shape[channel_axis] = 3
    if pm01.shape[channel_axis] != 3 or tuple(stats.shape) != (2, 3):
        raise ValueError(f"to_metres: pm01 {tuple(pm01.shape)} needs 3 channels on axis {channel_axis} and stats "
                         f"(2, 3), got {tuple(stats.shape)}")
    return pm01 * (stats[1] - stats[0]).reshape(shape) + stats[0].reshape(shape)


def scale_offset(stats: np.ndarray) -> np.ndarray:
    """(2, 3) [min; max] -> (2, 3) [scale; offset] with metres = scale * pm01 + offset (the layout
    :func:`denormalize_world_pointmap` returns its fit in)."""
    return np.stack([stats[1] - stats[0], stats[0]])


# ---------------------------------------------------------------------------------------- anchored
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
    out = to_metres(pm01, stats)
    out[~generated_valid(pm01, anchored=True)] = 0.0
    return out


def anchor_stats(world0_m: torch.Tensor, world0_valid: torch.Tensor, robot_m: torch.Tensor,
                 robot_mask: torch.Tensor, margin: float = ANCHOR_MARGIN) -> torch.Tensor:
    """Normalization range known at inference for ``world_anchor`` models: the per-channel min/max of the frame-0
    world points (world0_m (3,H,W) metres, world0_valid (H,W)) and of the robot points over the sequence (robot_m
    (T,3,H,W) metres, robot_mask (T,H,W)), widened by ``margin`` of the range on each side. Returns (2, 3) float32
    [min; max] metres. Raises ValueError if neither has a valid point."""
    import torch

    pts = torch.cat([world0_m.permute(1, 2, 0)[world0_valid > 0.5], robot_m.permute(0, 2, 3, 1)[robot_mask > 0.5]])
    if len(pts) == 0:
        raise ValueError("anchor_stats: neither the frame-0 world pointmap nor the robot pointmap has a valid pixel")
    lo, hi = pts.min(0).values.float(), pts.max(0).values.float()
    pad = margin * (hi - lo).clamp(min=1e-3)
    return torch.stack([lo - pad, hi + pad])


def normalize_with_stats(pm_m: torch.Tensor, valid: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) metres, (T, H, W) valid, (2, 3) [min; max] -> float32 (T, 3, H, W) in [0, 1], 0 where invalid."""
    import torch

    pm01 = (pm_m - stats[0].view(1, 3, 1, 1)) / (stats[1] - stats[0]).view(1, 3, 1, 1)
    return torch.where(valid[:, None] > 0.5, pm01, torch.zeros_like(pm01)).float()


# ---------------------------------------------------------------------------------------- fitted to the robot
def denormalize_world_pointmap(world01: torch.Tensor, robot_pointmap01: torch.Tensor, robot_mask: torch.Tensor,
                               robot_stats: torch.Tensor, min_pixels: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated normalized world pointmap (T,3,H,W) -> metres, and the (2,3) [scale; offset] used.

    The world's own min/max are unknown at inference, but on robot pixels (robot_mask) the world pointmap must
    coincide with the known robot pointmap in metres (robot_pointmap01 * (max - min) + min, from ``robot_stats``
    (2,3) [min; max]). So per channel c we fit metres ~= scale_c * world01 + offset_c by least squares on those
    pixels. If fewer than ``min_pixels`` robot pixels exist, the generated values have no spread there, or the fit
    gives a non-positive scale, that channel falls back to the robot stats (scale = max - min, offset = min).
    """
    import torch

    lo, hi = robot_stats[0].float(), robot_stats[1].float()
    robot_m = to_metres(robot_pointmap01.float(), robot_stats.float(), channel_axis=1)
    sel = robot_mask > 0.5
    scale, offset = (hi - lo).clone(), lo.clone()
    if int(sel.sum()) >= min_pixels:
        for c in range(3):
            g = world01[:, c][sel].double()
            y = robot_m[:, c][sel].double()
            var = g.var(unbiased=False)
            if var > 1e-8:
                a = ((g - g.mean()) * (y - y.mean())).mean() / var
                if a > 0:
                    scale[c], offset[c] = float(a), float(y.mean() - a * g.mean())
    out = world01.float() * scale[None, :, None, None] + offset[None, :, None, None]
    return out, torch.stack([scale, offset])


# ---------------------------------------------------------------------------------------- ground-truth extent
def normalize_pair(pred_pm, gt_pm, gt_valid) -> tuple[np.ndarray, np.ndarray]:
    """Map ``pred_pm`` and ``gt_pm`` (..., 3) metres with the GT's per-channel min-max over ``gt_valid`` points.

    Returns ``(pred_n, gt_n)`` float64 of the input shapes: ``(x - min_gt) / (max_gt - min_gt)`` per channel at
    every pixel (masks select the points that count). A zero-extent channel is only translated. Raises if
    ``gt_valid`` holds no point or non-finite coordinates.
    """
    pred, gt = np.asarray(pred_pm, np.float64), np.asarray(gt_pm, np.float64)
    valid = np.asarray(gt_valid, bool)
    if gt.shape[-1] != 3 or valid.shape != gt.shape[:-1]:
        raise ValueError(f"gt_pm {gt.shape} must be (..., 3) with gt_valid {valid.shape} = its leading shape")
    if not valid.any():
        raise ValueError("normalize_pair: gt_valid holds no point")
    pts = gt[valid]
    if not np.isfinite(pts).all():
        raise ValueError("normalize_pair: gt_pm has non-finite values at valid pixels")
    lo, span = pts.min(0), np.ptp(pts, 0)
    span = np.where(span > 0, span, 1.0)
    return (pred - lo) / span, (gt - lo) / span
