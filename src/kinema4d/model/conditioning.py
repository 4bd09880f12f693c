"""The robot-conditioning pieces that ``WorldModel`` assembles (Sec. 3.2): the robot mask on the latent grid
(``downsample_mask``, the released Kinema4D's ``release_downsample_mask``, the soft strategy ``soften_mask``), the
release's canonical frame-0 pointmap input (``canonical_pointmap``), where the world may change
(``changing_region``, for ``ModelConfig.known_region``) and the robot-token cross-attention context
of the released design (``RobotTokens``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinema4d.model.config import MASK_CHANNELS

# ----------------------------------------------------------------------------------------------------------------
# Robot mask on the latent grid
# ----------------------------------------------------------------------------------------------------------------

def downsample_mask(mask: torch.Tensor, temporal_factor: int, spatial_factor: int) -> torch.Tensor:
    """(B, T, H, W) occupancy in {0,1} -> (B, 4, t, H/s, W/s) binary, aligned with the latents.

    Spatial: max-pool over each s x s cell (a cell is occupied if any pixel is). Temporal, Wan-style: the first frame
    is repeated ``temporal_factor`` times, then frames are grouped by ``temporal_factor`` (one group per latent frame)
    and the group becomes the channels; with a codec of temporal factor 1 the one frame is repeated to 4 channels.
    """
    if mask.ndim != 4:
        raise ValueError(f"mask must be (B, T, H, W), got {tuple(mask.shape)}")
    B, T, H, W = mask.shape
    m = F.max_pool2d(mask.float(), spatial_factor) if spatial_factor > 1 else mask.float()
    tf = temporal_factor
    if tf > 1:
        if (T - 1) % tf:
            raise ValueError(f"mask has T={T}; needs 1 + {tf}k frames")
        m = torch.cat([m[:, :1].expand(B, tf, *m.shape[2:]), m[:, 1:]], dim=1)
    m = m.reshape(B, -1, tf, *m.shape[2:]).transpose(1, 2)  # (B, tf, t, h, w)
    idx = [c * tf // MASK_CHANNELS for c in range(MASK_CHANNELS)]
    return m[:, idx].contiguous()


def release_downsample_mask(mask: torch.Tensor, temporal_factor: int, spatial_factor: int) -> torch.Tensor:
    """(B, T, H, W) occupancy -> (B, 1, t, H/s, W/s), the released Kinema4D's robot-mask downsampling: nearest
    neighbour in space (the top-left pixel of each s x s cell, as ``F.interpolate(mode="nearest")`` picks it),
    frame 0 alone, then the max over each group of ``temporal_factor`` later frames."""
    if mask.ndim != 4:
        raise ValueError(f"mask must be (B, T, H, W), got {tuple(mask.shape)}")
    m = mask.float()[:, :, ::spatial_factor, ::spatial_factor]
    B, T, h, w = m.shape
    tf = temporal_factor
    if tf > 1:
        if (T - 1) % tf:
            raise ValueError(f"mask has T={T}; needs 1 + {tf}k frames")
        m = torch.cat([m[:, :1], m[:, 1:].reshape(B, (T - 1) // tf, tf, h, w).amax(2)], dim=1)
    return m[:, None]


def changing_region(robot_mask: torch.Tensor, held: dict | None, dilate: int) -> torch.Tensor:
    """(B, T, H, W) bool: where the world may change by frame t: every pixel the robot has covered in frames 0..t
    (``robot_mask`` (B, T, H, W) > 0.5), the held-object prior's landing / vacated pixels of frame t (``held``, its
    ``mask`` / ``vacated`` (B, T, H, W); None: none), dilated by ``dilate`` pixels (a (2 dilate + 1)^2 square)."""
    region = torch.cummax((robot_mask > 0.5).to(torch.uint8), dim=1).values.bool()  # (B, T, H, W)
    if held is not None:
        region = region | (held["mask"] > 0.5) | (held["vacated"] > 0.5)
    if dilate > 0:
        B, T, H, W = region.shape
        k = 2 * dilate + 1
        region = F.max_pool2d(region.float().reshape(B * T, 1, H, W), k, stride=1, padding=dilate) > 0.5
        region = region.reshape(B, T, H, W)
    return region


def soften_mask(mask: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Soft strategy of Sec. 3.2: per sample, exactly round(ratio * n_occupied) random occupied positions -> 0.5."""
    out = mask.clone()
    flat = out.view(out.shape[0], -1)
    for b in range(flat.shape[0]):
        occ = torch.nonzero(flat[b] > 0.5).squeeze(1)
        k = int(round(ratio * occ.numel()))
        if k:
            pick = torch.randperm(occ.numel(), generator=generator)[:k].to(occ.device)
            flat[b, occ[pick]] = 0.5
    return out


# ----------------------------------------------------------------------------------------------------------------
# Robot-only inputs: the release's canonical pointmap, robot tokens
# ----------------------------------------------------------------------------------------------------------------

def canonical_pointmap(H: int, W: int) -> torch.Tensor:
    """(3, H, W) in [0, 1]: the released Kinema4D's frame-0 pointmap input, a fixed ramp (x = column, y = row,
    z = 1 - row, each scaled to [0, 1]) that says "geometry starts here" without any scene geometry."""
    y = torch.linspace(0, 1, H)[:, None].expand(H, W)
    x = torch.linspace(0, 1, W)[None, :].expand(H, W)
    return torch.stack([x, y, 1 - y])


class RobotTokens(nn.Module):
    """Robot-condition tokens of the released Kinema4D design (``context="robot_tokens"``).

    (B, in_ch, t, h, w) = [robot mask (4) | robot-only latents] on the latent grid -> (B, t * ceil(h/p) * ceil(w/p),
    out_dim): a Conv3d with kernel = stride = (1, p, p) (the grid is zero-padded to a multiple of p), LayerNorm,
    GELU, plus a learned 3-D position embedding, then a zero-initialized Linear to ``out_dim``. The release's
    position embedding is one dense (1, dim, t, h', w') table for its fixed 480x720 x 49 shape; ours is the sum of
    three learned tables (frame, row, column; normal init, std 0.02), so one model serves any size up to the
    tables' lengths.
    """

    def __init__(self, in_ch: int, dim: int, out_dim: int, patch: int, max_frames: int, max_hw: int,
                 dense_grid: tuple[int, int, int] | None = None):
        super().__init__()
        self.patch = patch
        self.conv = nn.Conv3d(in_ch, dim, kernel_size=(1, patch, patch), stride=(1, patch, patch))
        self.norm = nn.LayerNorm(dim)
        if dense_grid is None:  # factored: frame + row + column tables
            self.pos_t = nn.Parameter(torch.zeros(max_frames, dim))
            self.pos_h = nn.Parameter(torch.zeros(max_hw, dim))
            self.pos_w = nn.Parameter(torch.zeros(max_hw, dim))
            self.pos = None
        else:  # one table for exactly one grid (the release's arm_pos_emb layout)
            self.pos_t = self.pos_h = self.pos_w = None
            self.pos = nn.Parameter(torch.zeros(1, dim, *dense_grid))
        self.proj = nn.Linear(dim, out_dim)

    def position_tables(self) -> list[nn.Parameter]:
        return [self.pos] if self.pos is not None else [self.pos_t, self.pos_h, self.pos_w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))  # (B, in_ch, t, h, w), h and w multiples of p
        x = self.conv(x.to(self.conv.weight.dtype))  # (B, dim, t, h/p, w/p)
        B, D, t, h, w = x.shape
        if self.pos is not None:
            if (t, h, w) != tuple(self.pos.shape[2:]):
                raise ValueError(f"robot token grid (t, h, w) = {(t, h, w)} differs from the dense position table's "
                                 f"{tuple(self.pos.shape[2:])} (robot_token_grid): this model only serves that size")
            pos = self.pos[0].permute(1, 2, 3, 0)  # (t, h, w, dim)
        else:
            if t > len(self.pos_t) or max(h, w) > len(self.pos_h):
                raise ValueError(f"robot token grid (t, h, w) = {(t, h, w)} exceeds the position tables "
                                 f"({len(self.pos_t)} frames, {len(self.pos_h)} rows/columns): raise max_frames / "
                                 "robot_token_max_hw")
            pos = self.pos_t[:t, None, None] + self.pos_h[None, :h, None] + self.pos_w[None, None, :w]
        x = F.gelu(self.norm(x.permute(0, 2, 3, 4, 1)))  # (B, t, h, w, dim)
        return self.proj((x + pos).reshape(B, t * h * w, D))  # (B, L, out_dim)


__all__ = ["downsample_mask", "release_downsample_mask", "soften_mask", "canonical_pointmap", "RobotTokens"]
