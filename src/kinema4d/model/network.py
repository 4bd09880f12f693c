"""The 4D generative model of Kinema4D (Sec. 3.2, Supp. B.1): a flow-matching diffusion transformer that turns the
initial image I0 + a robot pointmap video into an RGB video and a world pointmap video.

Layout (one readable file, in the spirit of facebookresearch/DiT's models.py):

- codecs: ``PixelCodec`` (lossless space-to-depth, tiny models) and ``WanCodec`` (diffusers ``AutoencoderKLWan``:
  causal 3D, 4x temporal / 8x spatial). Both map pixel values in [0, 1] (scaled to [-1, 1] inside) and share
  ``encode(video (B,3,T,H,W)) -> (B,C,t,h,w)`` / ``decode``.
- conditioning exactly as Sec. 3.2: every video is RGB | pointmap concatenated along the WIDTH (4DNeX format), so
  a latent is (B, C, t, h, 2w) with the RGB half in columns [0, w) and the XYZ half in [w, 2w).
  backbone input = cat[noisy (C) | robot mask (4) | input latents (C)] (Wan2.1-I2V order, 36 channels for C=16).
- backbone: diffusers ``WanTransformer3DModel`` (pinned diffusers==0.42.1), extended by composition: a width-shared
  3D RoPE replaces ``.rope``, domain embeddings are added by a forward hook on ``.patch_embedding`` and the robot
  latents reach cross-attention through a zero-initialized 1x1 conv + a projection to ``text_dim``.
- flow matching: x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0 (rectified flow; the convention of
  diffusers' ``FlowMatchEulerDiscreteScheduler``, which ``sample`` uses).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------

MASK_CHANNELS = 4  # Wan2.1-I2V: the mask of 4 consecutive frames per latent frame


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the network. Tab. 4 ablations are changes of the switches below."""

    # codec
    codec: Literal["pixel", "wan"] = "pixel"
    pixel_factor: int = 4  # PixelCodec: spatial space-to-depth factor (channels = 3 * f * f)
    wan_base_dim: int = 16
    wan_z_dim: int = 16
    wan_dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    wan_num_res_blocks: int = 1
    wan_temperal_downsample: tuple[bool, ...] = (False, True, True)
    codec_path: str | None = None  # LOCAL diffusers AutoencoderKLWan dir (pretrained Wan VAE); None = random init
    # backbone (WanTransformer3DModel arguments)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 4  # inner dim 128: proj_out maps it to C * 4 = 192 values per token (pixel codec)
    attention_head_dim: int = 32
    ffn_dim: int = 256
    num_layers: int = 2
    text_dim: int = 64
    freq_dim: int = 64
    rope_max_seq_len: int = 1024
    image_dim: int | None = None  # Wan2.1-I2V CLIP image tokens (1280 in the real model); None = T2V-style blocks
    added_kv_proj_dim: int | None = None
    # Wan2.1-I2V image branch (image_dim set): a LOCAL ``transformers.CLIPVisionModel`` dir whose penultimate hidden
    # states of I0 are the image tokens (as diffusers' WanImageToVideoPipeline computes them); None = ``image_tokens``
    # learned tokens (normal init, std 0.02), the same for every I0: the image branch then carries no information
    # about I0
    image_encoder_path: str | None = None
    image_tokens: int = 257  # learned image tokens when no image encoder is given (CLIP ViT-H/14 at 224: 257)
    # large-backbone path: a LOCAL diffusers directory of a WanTransformer3DModel, wrapped with LoRA
    backbone_path: str | None = None
    lora_rank: int = 64
    lora_alpha: float | None = None  # LoRA scale = alpha / rank; None = rank (scale 1)
    # conditioning switches (Tab. 4)
    # cross-attention context: "robot_latent" = one token per latent patch of the robot latents, no position (the
    # original kinema4d design); "robot_tokens" = the released Kinema4D design: [robot mask | robot-only latents]
    # patchified by a strided Conv3d (1, p, p), LayerNorm, GELU, + a learned 3-D position embedding, zero-init
    # Linear to text_dim (a few hundred tokens that know their frame and place); "learned" = ``learned_tokens``
    # learned constant tokens, the same for every input (called "text" before: no text is involved); "none" = one
    # zero token
    context: Literal["robot_latent", "robot_tokens", "learned", "none"] = "robot_latent"
    robot_token_patch: int = 4  # context="robot_tokens": spatial stride on the latent grid (the release: 15)
    robot_token_dim: int = 128  # context="robot_tokens": conv features per token (the release: head_dim)
    robot_token_max_hw: int = 64  # context="robot_tokens": rows / columns of the learned position tables
    # context="robot_tokens" position embedding: "factored" = frame + row + column tables (any size up to their
    # lengths); "dense" = one learned (1, dim, t, h', w') table for exactly the grid ``robot_token_grid`` (the
    # release: (13, 4, 6) at 480x720 x 49 frames with patch 15)
    robot_token_pos: Literal["factored", "dense"] = "factored"
    robot_token_grid: tuple[int, int, int] = (13, 4, 6)
    # where the robot tokens enter cross-attention: "text" = at text_dim, through the backbone's text embedder (as
    # text tokens would); "inner" = projected straight to the transformer width, past the text embedder (the
    # release: its arm_patch_proj maps to 5120 and the T5 text tokens are dropped)
    robot_token_space: Literal["text", "inner"] = "text"
    # the released design's second use of the robot latents: a zero-init C->C 1x1x1 projection of the robot-only
    # latents added to the XYZ half of the input (condition) latents
    robot_latent_proj: bool = False
    # robot-RGB condition (a kinema4d extension: the release's "robot RGB + pointmap" code reads the robot-RGB latents
    # and drops them, so its transformer never sees robot colours): the RGB half of the input latents holds the
    # kinematic renderer's robot colours (``render_robot(rgb=True)``, the same renderer at datagen and at inference)
    # on robot pixels, over I0; the robot-token context then also sees the robot-only RGB latents
    robot_rgb: bool = False
    mask: Literal["soft", "binary", "none"] = "soft"
    soft_ratio: float = 0.1
    condition: Literal["pointmap", "binary_mask", "action_embedding"] = "pointmap"
    output: Literal["rgb+pointmap", "rgb_only"] = "rgb+pointmap"
    # I0 in the input latents: "zeros" = frame 0 only, zero-padded over time (Wan2.1-I2V, Sec. 3.2); "repeat" = I0
    # in every frame (Stable Video Diffusion style), so a small model copies the static background token by token
    image_padding: Literal["zeros", "repeat"] = "zeros"
    # "release": the released Kinema4D input layout: input latents = [I0 | the canonical frame-0 pointmap
    # (``canonical_pointmap``)] in frame 0, zeros after (Wan2.1-I2V padding); mask channels = Wan's first-frame
    # mask on the RGB half and the robot mask on the XYZ half; the robot pointmap reaches the model only through
    # the robot tokens and ``robot_latent_proj``; ``latent_stats`` normalize the target and robot latents but not
    # the input latents. "kinema4d": the layout described above (robot pointmap in the XYZ half of the input
    # latents, robot mask on both halves)
    input_layout: Literal["kinema4d", "release"] = "kinema4d"
    # Beyond the paper: also give the frame-0 WORLD pointmap (what an RGB-D camera sees at t=0). The XYZ half of the
    # input latents then holds the robot pointmap on robot pixels and the frame-0 world pointmap elsewhere, in every
    # frame (as image_padding="repeat" does for I0), and pointmaps are normalized with stats known at inference
    # (``kinema4d.data.episodes.anchor_normalize``), so the output converts to metres exactly. False = Sec. 3.2 as
    # published.
    world_anchor: bool = False
    # Beyond the paper: the held-object prior (``kinema4d.model.held_prior``): extra input channels with the image and
    # pointmap of "the frame-0 points at the grasp move rigidly with the end effector while the gripper is closed"
    # (from the actions and frame 0 only) plus where those points land and where they left. Needs world_anchor.
    held_prior: bool = False
    # ... and write the hypothesis into the input latents themselves: landing pixels show the carried points' colour
    # and pointmap, vacated pixels the uncovered support (robot pixels keep the robot). With x0_residual the
    # untrained model then already predicts the carried object; training learns where physics disagrees.
    held_prior_input: bool = False
    # ... and carry nothing unless the grasp closes on the middle of the points: (across, along) metres of the
    # fingers' closing direction (``kinema4d.model.held_prior.GRASP_GATE``), None = carry whatever is near.
    held_gate: tuple[float, float] | None = None
    # What the backbone outputs: "velocity" (eps - x0, Wan / the paper), "x0" (the clean latents; the velocity is
    # (x_t - x0) / max(t, x0_t_min)) or "x0_residual" (x0 = the input latents + the output: an untrained model
    # predicts I0 and the input pointmap, i.e. at least the static baseline, and learns what changes).
    # x0-prediction is what works when a token (here 3*f*f*4 = 192 pixel-codec values) is wider than the
    # transformer (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"): a narrow network
    # cannot output high-dimensional noise, it can output the clean image.
    prediction: Literal["velocity", "x0", "x0_residual"] = "velocity"
    x0_t_min: float = 0.05
    # sampling: the flow-matching schedule's timestep shift (diffusers' FlowMatchEulerDiscreteScheduler); 1 = none,
    # 3 = the flow_shift diffusers recommends for Wan2.1 at 480p (the release samples with the Wan checkpoint's own
    # scheduler, a multistep UniPC; kinema4d keeps its Euler steps)
    sample_shift: float = 1.0
    shared_rope: bool = True
    domain_embedding: bool = True
    learned_tokens: int = 4  # context="learned": number of learned context tokens (called text_tokens before)
    action_dim: int = 8  # condition="action_embedding": ee xyz + quat xyzw + gripper per frame
    max_frames: int = 64  # condition="action_embedding": learned per-frame position embeddings

    def __post_init__(self):
        if self.codec not in ("pixel", "wan"):
            raise ValueError(f"codec must be 'pixel' or 'wan', got {self.codec!r}")
        if not 0.0 <= self.soft_ratio <= 1.0:
            raise ValueError(f"soft_ratio must be in [0, 1], got {self.soft_ratio}")
        if self.attention_head_dim % 2:
            raise ValueError("attention_head_dim must be even (RoPE)")
        if self.robot_rgb and self.condition != "pointmap":
            raise ValueError(f"robot_rgb=True needs condition='pointmap' (robot RGB + pointmap), got "
                             f"{self.condition!r}")
        if self.held_prior and not (self.world_anchor and self.condition == "pointmap"):
            raise ValueError("held_prior=True needs world_anchor=True and condition='pointmap' (the prior is built "
                             "from the frame-0 world pointmap and lives in the anchor's normalization)")
        if self.held_prior_input and not (self.held_prior and self.input_layout == "kinema4d"):
            raise ValueError("held_prior_input=True needs held_prior=True and input_layout='kinema4d'")
        if self.held_gate is not None and not (self.held_prior and len(self.held_gate) == 2
                                               and all(g > 0 for g in self.held_gate)):
            raise ValueError(f"held_gate needs held_prior=True and two distances > 0 (across, along the closing "
                             f"direction, metres), got {self.held_gate}")
        if self.robot_latent_proj and self.context != "robot_tokens":
            raise ValueError("robot_latent_proj=True needs context='robot_tokens' (both read the robot-only latents)")
        if self.robot_token_patch < 1 or self.robot_token_dim < 1:
            raise ValueError("robot_token_patch and robot_token_dim must be >= 1")
        if self.robot_token_space == "inner" and self.context != "robot_tokens":
            raise ValueError("robot_token_space='inner' needs context='robot_tokens'")
        if self.input_layout == "release" and not (
                self.context == "robot_tokens" and self.condition == "pointmap" and self.mask != "none"
                and not (self.world_anchor or self.robot_rgb or self.held_prior)):
            raise ValueError("input_layout='release' needs context='robot_tokens', condition='pointmap', a robot mask "
                             "and no world_anchor / robot_rgb / held_prior")
        if self.image_encoder_path is not None and self.image_dim is None:
            raise ValueError("image_encoder_path needs image_dim (the Wan2.1-I2V image branch)")
        if self.prediction not in ("velocity", "x0", "x0_residual") or not 0.0 < self.x0_t_min < 1.0:
            raise ValueError(f"prediction must be 'velocity', 'x0' or 'x0_residual' and 0 < x0_t_min < 1, got "
                             f"{self.prediction!r}, {self.x0_t_min}")

    @property
    def latent_channels(self) -> int:
        return 3 * self.pixel_factor**2 if self.codec == "pixel" else self.wan_z_dim

    @property
    def temporal_factor(self) -> int:
        return 1 if self.codec == "pixel" else 2 ** sum(self.wan_temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return self.pixel_factor if self.codec == "pixel" else 2 ** (len(self.wan_dim_mult) - 1)

    @property
    def held_channels(self) -> int:
        """Input channels of the held-object prior: [landing mask (4) | vacated mask (4) | prior latents (C)]."""
        return 2 * MASK_CHANNELS + self.latent_channels if self.held_prior else 0

    @property
    def in_channels(self) -> int:
        return 2 * self.latent_channels + MASK_CHANNELS + self.held_channels

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """A config from its JSON dict (``to_json``); the old names of renamed fields and values (checkpoints
        store their config as JSON: ``RENAMED_CONFIG_FIELDS`` / ``RENAMED_CONFIG_VALUES``) are mapped to the
        new ones with a DeprecationWarning."""
        d = dict(d)
        for old, new in RENAMED_CONFIG_FIELDS.items():
            if old in d:
                if new in d and d[new] != d[old]:
                    raise ValueError(f"ModelConfig: both {old!r} (the old name) and {new!r} are given, and differ")
                warnings.warn(f"ModelConfig field {old!r} is now called {new!r}", DeprecationWarning, stacklevel=2)
                d[new] = d.pop(old)
        for (name, old), new in RENAMED_CONFIG_VALUES.items():
            if d.get(name) == old:
                warnings.warn(f"ModelConfig {name}={old!r} is now called {name}={new!r}", DeprecationWarning,
                              stacklevel=2)
                d[name] = new
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


# Renamed config fields and values, old -> new: ModelConfig.from_dict reads configs saved with the old names; the
# learned constant context tokens were called "text" (no text is involved); load_state maps the old tensor name.
RENAMED_CONFIG_FIELDS = {"text_tokens": "learned_tokens"}
RENAMED_CONFIG_VALUES = {("context", "text"): "learned"}
RENAMED_STATE_KEYS = {"text_tokens": "learned_tokens"}

# Wan2.1-I2V-14B shapes (the paper's backbone, Supp. B.1); 16-channel 4x/8x codec.
PAPER_MODEL = ModelConfig(
    codec="wan", wan_base_dim=96, wan_z_dim=16, wan_dim_mult=(1, 2, 4, 4), wan_num_res_blocks=2,
    num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096, freq_dim=256,
    image_dim=1280, added_kv_proj_dim=5120,
)
# The released Kinema4D model (public repository mutianxu/Kinema4D, pointmap-conditioned variant) on the paper's
# backbone: 312 robot tokens (Conv3d 20 -> 128, kernel = stride = (1, 15, 15), LayerNorm, GELU, dense position
# table (13, 4, 6), Linear 128 -> 5120 past the text embedder) in the text branch, CLIP(I0) in the image branch,
# the robot-latent projection, the release's input layout; LoRA rank 64 at scale 0.5 (its inference fuses the
# LoRA with lora_scale=0.5). ``kinema4d.model.release.load_release`` fills in the local paths.
RELEASE_MODEL = dataclasses.replace(
    PAPER_MODEL, context="robot_tokens", robot_latent_proj=True, robot_token_patch=15, robot_token_dim=128,
    robot_token_pos="dense", robot_token_grid=(13, 4, 6), robot_token_space="inner", input_layout="release",
    lora_rank=64, lora_alpha=32.0, max_frames=13, sample_shift=3.0,
)


# ----------------------------------------------------------------------------------------------------------------
# Shapes (no allocation)
# ----------------------------------------------------------------------------------------------------------------

def check_video_size(cfg: ModelConfig, T: int, H: int, W: int) -> None:
    """Raise ValueError unless a (T, H, W) per-modality video fits the codec + patch grid."""
    tf, sf = cfg.temporal_factor, cfg.spatial_factor
    _, ph, pw = cfg.patch_size
    if tf > 1 and (T - 1) % tf:
        raise ValueError(f"T={T} frames: the causal {tf}x temporal codec needs T = 1 + {tf}k")
    if H % (sf * ph) or W % (sf * pw):
        raise ValueError(f"H, W = {H}, {W} must be multiples of {sf * ph}, {sf * pw} (codec {sf}x * patch)")


def latent_shapes(cfg: ModelConfig, T: int, H: int, W: int, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of the conditioning for a (T, H, W) per-modality video, without allocating anything.

    Returns ``latent`` (noisy / target / input latents, width-concatenated), ``mask``, ``backbone_input``,
    ``tokens`` (transformer sequence length) and ``context`` (robot-latent cross-attention tokens).
    """
    check_video_size(cfg, T, H, W)
    C, tf, sf = cfg.latent_channels, cfg.temporal_factor, cfg.spatial_factor
    t = 1 + (T - 1) // tf if tf > 1 else T
    h, w = H // sf, W // sf
    pt, ph, pw = cfg.patch_size
    n_tok = (t // pt) * (h // ph) * (2 * w // pw)
    if cfg.context == "robot_tokens":
        p = cfg.robot_token_patch
        n_ctx = t * -(-h // p) * -(-w // p)
    else:
        n_ctx = (t // pt) * (h // ph) * (w // pw)
    return {
        "latent": (batch, C, t, h, 2 * w),
        "mask": (batch, MASK_CHANNELS, t, h, 2 * w),
        "backbone_input": (batch, cfg.in_channels, t, h, 2 * w),
        "tokens": (batch, n_tok),
        "context": (batch, n_ctx, cfg.num_attention_heads * cfg.attention_head_dim
                    if cfg.robot_token_space == "inner" else cfg.text_dim),
    }


# ----------------------------------------------------------------------------------------------------------------
# Codecs
# ----------------------------------------------------------------------------------------------------------------

class PixelCodec(nn.Module):
    """Lossless spatial space-to-depth codec (temporal factor 1): (B,3,T,H,W) in [0,1] -> (B,3f^2,T,H/f,W/f) in
    [-1,1]. No parameters; ``decode(encode(x)) == x`` exactly for x in [0, 1]."""

    temporal_factor = 1

    def __init__(self, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.channels = 3 * factor * factor
        self.spatial_factor = factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = _check_video(video)
        x = (video * 2 - 1).transpose(1, 2).reshape(B * T, C, H, W)
        z = F.pixel_unshuffle(x, self.factor)
        return z.reshape(B, T, *z.shape[1:]).transpose(1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        B, C, t, h, w = z.shape
        x = F.pixel_shuffle(z.transpose(1, 2).reshape(B * t, C, h, w), self.factor)
        return ((x.reshape(B, t, *x.shape[1:]).transpose(1, 2) + 1) / 2).clamp(0, 1)


class WanCodec(nn.Module):
    """diffusers ``AutoencoderKLWan`` (causal 3D, 4x temporal, 8x spatial): (B,3,1+4k,H,W) in [0,1] -> posterior
    mean (B,z_dim,1+k,H/8,W/8). ``training_loss`` trains it (L1 reconstruction + small KL)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from diffusers import AutoencoderKLWan

        if cfg.codec_path is not None:
            if not (Path(cfg.codec_path) / "config.json").is_file():
                raise FileNotFoundError(f"no diffusers AutoencoderKLWan at {cfg.codec_path!r}; pretrained Wan VAE "
                                        "weights cannot be downloaded here: copy them to a local directory")
            self.vae = AutoencoderKLWan.from_pretrained(cfg.codec_path)
        else:
            self.vae = AutoencoderKLWan(
                base_dim=cfg.wan_base_dim, z_dim=cfg.wan_z_dim, dim_mult=list(cfg.wan_dim_mult),
                num_res_blocks=cfg.wan_num_res_blocks, temperal_downsample=list(cfg.wan_temperal_downsample),
            )
        # a pretrained Wan VAE comes with per-channel latent statistics (Wan's own normalization); apply them
        c = self.vae.config
        use = cfg.codec_path is not None and c.latents_mean is not None
        mean = torch.tensor(c.latents_mean if use else [0.0] * cfg.wan_z_dim).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.latents_std if use else [1.0] * cfg.wan_z_dim).view(1, -1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.channels = cfg.wan_z_dim
        self.temporal_factor = cfg.temporal_factor
        self.spatial_factor = cfg.spatial_factor

    def _check(self, video):
        T = _check_video(video)[2]
        if (T - 1) % self.temporal_factor:
            raise ValueError(f"WanCodec needs T = 1 + {self.temporal_factor}k frames, got {T}")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self._check(video)
        return (self.vae.encode(video * 2 - 1).latent_dist.mode() - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(z * self.std + self.mean).sample + 1) / 2).clamp(0, 1)

    def training_loss(self, video: torch.Tensor, kl_weight: float = 1e-6,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Autoencoder objective: L1(recon, x) + kl_weight * KL(q(z|x) || N(0, I)), x in [-1, 1]."""
        self._check(video)
        x = video * 2 - 1
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample(generator)).sample
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + kl_weight * kl
        return loss, {"codec_l1": float(l1.detach()), "codec_kl": float(kl.detach())}


def canonical_pointmap(H: int, W: int) -> torch.Tensor:
    """(3, H, W) in [0, 1]: the released Kinema4D's frame-0 pointmap input, a fixed ramp (x = column, y = row,
    z = 1 - row, each scaled to [0, 1]) that says "geometry starts here" without any scene geometry."""
    y = torch.linspace(0, 1, H)[:, None].expand(H, W)
    x = torch.linspace(0, 1, W)[None, :].expand(H, W)
    return torch.stack([x, y, 1 - y])


def make_codec(cfg: ModelConfig) -> PixelCodec | WanCodec:
    return PixelCodec(cfg.pixel_factor) if cfg.codec == "pixel" else WanCodec(cfg)


def _check_video(video: torch.Tensor) -> tuple[int, int, int, int, int]:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video (B, 3, T, H, W), got shape {tuple(video.shape)}")
    return tuple(video.shape)


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
# Backbone extensions
# ----------------------------------------------------------------------------------------------------------------

class SharedWidthRope(nn.Module):
    """Drop-in for diffusers' ``WanRotaryPosEmbed`` (0.42.1 contract: ``forward(hidden_states (B,C,F,H,W))`` ->
    ``(freqs_cos, freqs_sin)`` each (1, F*H*W, 1, head_dim)) whose width position is taken modulo the half width:
    the token at column w of the XYZ half gets exactly the rotation of column w of the RGB half."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.patch_size = rope.patch_size
        self.split = [rope.t_dim, rope.h_dim, rope.w_dim]
        self.register_buffer("freqs_cos", rope.freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", rope.freqs_sin, persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, F_, H, W = hidden_states.shape
        pt, ph, pw = self.patch_size
        f, h, w = F_ // pt, H // ph, W // pw
        if w % 2:
            raise ValueError(f"width-concatenated token grid has odd width {w}")
        dev = self.freqs_cos.device
        pos = [torch.arange(f, device=dev), torch.arange(h, device=dev), torch.arange(w, device=dev) % (w // 2)]
        out = []
        for table in (self.freqs_cos, self.freqs_sin):
            ft, fh, fw = (tab[p] for tab, p in zip(table.split(self.split, dim=1), pos, strict=True))
            full = torch.cat([ft[:, None, None].expand(f, h, w, -1), fh[None, :, None].expand(f, h, w, -1),
                              fw[None, None, :].expand(f, h, w, -1)], dim=-1)
            out.append(full.reshape(1, f * h * w, 1, -1))
        return out[0], out[1]


class DomainEmbedding(nn.Module):
    """Learnable RGB / XYZ domain embeddings (4DNeX), added to the patch-embedded tokens of each width half through
    a forward hook on the backbone's ``patch_embedding`` (output (B, D, F, H, 2W'))."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, dim))

    def hook(self, module, args, out):
        w = out.shape[-1] // 2
        emb = torch.cat([self.weight[0:1].expand(w, -1), self.weight[1:2].expand(w, -1)], 0)  # (2W', D)
        return out + emb.t().to(out.dtype)[None, :, None, None, :]


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


class ImageTextAttnProcessor:
    """Cross-attention processor for diffusers' Wan2.1-I2V blocks that splits the context at a known number of
    IMAGE tokens instead of diffusers' fixed 512 text tokens.

    The backbone concatenates [image tokens (``image_tokens``) | context tokens (any count)] (0.42.1:
    ``WanTransformer3DModel.forward``); diffusers' ``WanAttnProcessor`` takes the last 512 as text, so a context of
    more than 512 robot tokens would spill into the image branch (add_k_proj / add_v_proj) and fewer would pull
    image tokens into the text branch. Here the first ``image_tokens`` go to the image branch and ALL the rest to
    the text branch. ``image_tokens`` is set by ``WorldModel.velocity`` before each forward; ``last_split``
    records (image, text) token counts of the last call (tests).
    """

    def __init__(self):
        self.image_tokens: int | None = None
        self.last_split: tuple[int, int] | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_added_kv_projections, _get_qkv_projections

        if encoder_hidden_states is None or rotary_emb is not None or attn.add_k_proj is None:
            raise ValueError("ImageTextAttnProcessor is for the I2V cross-attention (attn2) only")
        n = self.image_tokens
        if n is None or not 0 <= n <= encoder_hidden_states.shape[1]:
            raise ValueError(f"ImageTextAttnProcessor: image_tokens={n} not set or larger than the context "
                             f"({encoder_hidden_states.shape[1]} tokens)")
        img, txt = encoder_hidden_states[:, :n], encoder_hidden_states[:, n:]
        self.last_split = (img.shape[1], txt.shape[1])
        q, k, v = _get_qkv_projections(attn, hidden_states, txt)
        q, k = attn.norm_q(q).unflatten(2, (attn.heads, -1)), attn.norm_k(k).unflatten(2, (attn.heads, -1))
        v = v.unflatten(2, (attn.heads, -1))

        def sdpa(q_, k_, v_):  # (B, L, heads, d) -> (B, Lq, heads * d)
            out = F.scaled_dot_product_attention(q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2))
            return out.transpose(1, 2).flatten(2, 3).type_as(q_)

        out = sdpa(q, k, v)
        if n > 0:
            k_img, v_img = _get_added_kv_projections(attn, img)
            k_img = attn.norm_added_k(k_img).unflatten(2, (attn.heads, -1))
            out = out + sdpa(q, k_img, v_img.unflatten(2, (attn.heads, -1)))
        return attn.to_out[1](attn.to_out[0](out))


def make_backbone(cfg: ModelConfig):
    """A randomly initialized ``WanTransformer3DModel`` with the shapes of ``cfg``."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels, out_channels=cfg.latent_channels,
        text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
        image_dim=cfg.image_dim, added_kv_proj_dim=cfg.added_kv_proj_dim, rope_max_seq_len=cfg.rope_max_seq_len,
    )


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def load_pretrained_backbone(path: str | os.PathLike, lora_rank: int = 64, lora_alpha: float | None = None,
                             target_modules: tuple[str, ...] = LORA_TARGETS, torch_dtype: torch.dtype | None = None):
    """Load a Wan2.1-I2V / 4DNeX ``WanTransformer3DModel`` from a LOCAL diffusers directory and wrap it with peft
    LoRA (rank ``lora_rank`` on the attention projections). Base weights are frozen, LoRA weights trainable.
    ``torch_dtype`` (e.g. bfloat16) loads the weights in that dtype (half the host memory of fp32 for the 14B)."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"no diffusers WanTransformer3DModel at {str(p)!r} (expected {p / 'config.json'} + safetensors). "
            "Pretrained Wan2.1-I2V / 4DNeX weights cannot be downloaded here: copy them to a local directory "
            "(e.g. the 'transformer' folder of a diffusers Wan2.1-I2V checkpoint) and pass its path.")
    model = WanTransformer3DModel.from_pretrained(p, torch_dtype=torch_dtype)
    model.requires_grad_(False)
    lcfg = LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank, target_modules=list(target_modules),
                      init_lora_weights=True)
    model = inject_adapter_in_model(lcfg, model)
    for n, prm in model.named_parameters():
        prm.requires_grad_("lora_" in n)
    return model


class ImageEncoder(nn.Module):
    """I0 -> Wan2.1-I2V image tokens with a LOCAL ``transformers.CLIPVisionModel``, as diffusers'
    ``WanImageToVideoPipeline`` computes them: CLIP preprocessing (shortest side resized to the encoder's
    ``image_size``, bicubic, centre crop, CLIP mean / std), then the penultimate hidden states
    (B, 1 + (size/patch)^2, hidden); 257 x 1280 for Wan2.1's ViT-H/14. Frozen."""

    MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = int(model.config.image_size)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, rgb0: torch.Tensor) -> torch.Tensor:
        """rgb0 (B, 3, H, W) in [0, 1] -> (B, N, hidden) float tokens."""
        H, W = rgb0.shape[-2:]
        s = self.size / min(H, W)
        x = F.interpolate(rgb0.float(), size=(max(self.size, round(H * s)), max(self.size, round(W * s))),
                          mode="bicubic", align_corners=False).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        return self.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]


def load_image_encoder(path: str | os.PathLike) -> ImageEncoder:
    """A LOCAL ``transformers.CLIPVisionModel`` directory (e.g. the ``image_encoder`` folder of a diffusers
    Wan2.1-I2V checkpoint) -> :class:`ImageEncoder`. Clear error when it is missing."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"no transformers CLIPVisionModel at {str(p)!r} (expected {p / 'config.json'} + "
                                "weights); CLIP weights cannot be downloaded here: copy the 'image_encoder' folder of "
                                "a diffusers Wan2.1-I2V checkpoint to a local directory")
    from transformers import CLIPVisionModel

    return ImageEncoder(CLIPVisionModel.from_pretrained(p))


def config_from_backbone(backbone, base: ModelConfig) -> ModelConfig:
    """``base`` with the backbone fields replaced by those of a loaded ``WanTransformer3DModel``."""
    c = backbone.config
    return dataclasses.replace(
        base, patch_size=tuple(c.patch_size), num_attention_heads=c.num_attention_heads,
        attention_head_dim=c.attention_head_dim, ffn_dim=c.ffn_dim, num_layers=c.num_layers, text_dim=c.text_dim,
        freq_dim=c.freq_dim, image_dim=c.image_dim, added_kv_proj_dim=c.added_kv_proj_dim,
        rope_max_seq_len=c.rope_max_seq_len)


# ----------------------------------------------------------------------------------------------------------------
# The world model
# ----------------------------------------------------------------------------------------------------------------

class WorldModel(nn.Module):
    """Backbone + conditioning modules. ``forward(x_t, t, cond, context) -> v`` (all on the latent grid)."""

    def __init__(self, cfg: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        pretrained = backbone is not None or cfg.backbone_path is not None
        if backbone is None and cfg.backbone_path is not None:
            backbone = load_pretrained_backbone(cfg.backbone_path, cfg.lora_rank, cfg.lora_alpha)
        if backbone is not None:
            cfg = config_from_backbone(backbone, cfg)
            bc = backbone.config
            if bc.in_channels != cfg.in_channels or bc.out_channels != cfg.latent_channels:
                raise ValueError(f"backbone has in/out channels {bc.in_channels}/{bc.out_channels}; codec "
                                 f"{cfg.codec!r} needs {cfg.in_channels}/{cfg.latent_channels}")
        self.cfg = cfg
        self.transformer = backbone if backbone is not None else make_backbone(cfg)
        tr = self.transformer
        inner = cfg.num_attention_heads * cfg.attention_head_dim
        C = cfg.latent_channels
        if cfg.shared_rope:
            tr.rope = SharedWidthRope(tr.rope)
        self.domain = DomainEmbedding(inner) if cfg.domain_embedding else None
        if self.domain is not None:
            tr.patch_embedding.register_forward_hook(self.domain.hook)
        # cross-attention context
        self.context_conv = self.context_proj = self.learned_tokens = self.action_mlp = self.action_pos = None
        self.robot_tokens = None
        if cfg.condition == "action_embedding":
            self.action_mlp = nn.Sequential(nn.Linear(cfg.action_dim, cfg.text_dim), nn.SiLU(),
                                            nn.Linear(cfg.text_dim, cfg.text_dim))
            self.action_pos = nn.Parameter(torch.zeros(cfg.max_frames, cfg.text_dim))
        elif cfg.context == "robot_latent":
            self.context_conv = nn.Conv3d(C, C, 1)
            self.context_proj = nn.Linear(C * math.prod(cfg.patch_size), cfg.text_dim)
        elif cfg.context == "robot_tokens":
            in_ch = MASK_CHANNELS + C * (2 if cfg.robot_rgb else 1)
            out_dim = inner if cfg.robot_token_space == "inner" else cfg.text_dim
            grid = tuple(cfg.robot_token_grid) if cfg.robot_token_pos == "dense" else None
            self.robot_tokens = RobotTokens(in_ch, cfg.robot_token_dim, out_dim, cfg.robot_token_patch,
                                            cfg.max_frames, cfg.robot_token_max_hw, dense_grid=grid)
            if cfg.robot_token_space == "inner":  # tokens arrive at the transformer width: skip the text embedder
                tr.condition_embedder.text_embedder = nn.Identity()
        elif cfg.context == "learned":
            self.learned_tokens = nn.Parameter(torch.zeros(cfg.learned_tokens, cfg.text_dim))
        self.robot_latent_proj = nn.Conv3d(C, C, 1) if cfg.robot_latent_proj else None
        self.image_tokens = self.image_encoder = None
        if cfg.image_dim is not None:  # Wan2.1-I2V: image tokens first, then the context (ImageTextAttnProcessor)
            self.attn_split = ImageTextAttnProcessor()
            for block in tr.blocks:
                block.attn2.set_processor(self.attn_split)
            if cfg.image_encoder_path is not None:  # frozen, kept out of the checkpoints (state_to_save)
                self.image_encoder = load_image_encoder(cfg.image_encoder_path)
            else:
                self.image_tokens = nn.Parameter(torch.zeros(cfg.image_tokens, cfg.image_dim))
        # (2, 2) [[rgb_mean, rgb_std], [xyz_mean, xyz_std]] latent normalization (Supp. B.1), saved with the model
        self.register_buffer("latent_stats", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        self.initialize_weights(backbone_too=not pretrained)

    def initialize_weights(self, backbone_too: bool = True):
        """Zero-initialized at start, and why:

        - ``context_conv`` (1x1 conv on the robot latents): zero, ControlNet-style, so an untrained model's output
          does not depend on the robot context at all and no random noise flows through it in the first steps.
        - ``domain.weight``: zero, so a pretrained backbone starts exactly unchanged (the halves are told apart as
          training makes the embeddings grow).
        - ``transformer.proj_out`` (from-scratch backbone only): zero, as DiT's final layer, so the initial velocity
          prediction is 0 and the first loss is E|eps - x0|^2.
        - ``robot_tokens.proj`` (last Linear of the robot-token context) and ``robot_latent_proj`` (1x1x1 conv added
          to the XYZ input latents): zero, as in the released Kinema4D code, so both new paths start as no-ops and
          a pretrained backbone's behaviour is unchanged at step 0. ``robot_tokens``' position tables: normal, std
          0.02 (they must differ from token to token from the start, or the zero-init projection gets no gradient
          that tells positions apart).
        - the learned image tokens (I2V blocks without an image encoder) and context tokens (``context="learned"``):
          normal, std 0.02, so they differ from each other (zero tokens would stay identical, the attention over them
          uniform and ``attn2.to_q`` without gradient).
        Other from-scratch Linear layers get Xavier-uniform weights and zero biases (DiT); the learned action
        position tokens start at zero.
        """
        if backbone_too:
            for m in self.transformer.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            w = self.transformer.patch_embedding.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(self.transformer.proj_out.weight)
            nn.init.zeros_(self.transformer.proj_out.bias)
        # learned image / context tokens: normal, std 0.02. Identical tokens (all zero, say) stay identical (each
        # gets the same gradient) and make their attention uniform whatever the query, so the cross-attention
        # queries (attn2.to_q) would get no gradient from them, only float noise that Adam turns into lr-sized steps
        for tok in (self.image_tokens, self.learned_tokens):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)
        if self.robot_tokens is not None:
            for tab in self.robot_tokens.position_tables():
                nn.init.normal_(tab, std=0.02)
            nn.init.zeros_(self.robot_tokens.proj.weight)
            nn.init.zeros_(self.robot_tokens.proj.bias)
        if self.robot_latent_proj is not None:
            nn.init.zeros_(self.robot_latent_proj.weight)
            nn.init.zeros_(self.robot_latent_proj.bias)
        if self.context_conv is not None:
            nn.init.zeros_(self.context_conv.weight)
            nn.init.zeros_(self.context_conv.bias)
            nn.init.xavier_uniform_(self.context_proj.weight)
            nn.init.zeros_(self.context_proj.bias)

    # -- latent normalization ------------------------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        w = z.shape[-1] // 2
        s = self.latent_stats.to(z.dtype)
        return torch.cat([(z[..., :w] - s[0, 0]) / s[0, 1], (z[..., w:] - s[1, 0]) / s[1, 1]], dim=-1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        w = z.shape[-1] // 2
        s = self.latent_stats.to(z.dtype)
        return torch.cat([z[..., :w] * s[0, 1] + s[0, 0], z[..., w:] * s[1, 1] + s[1, 0]], dim=-1)

    # -- conditioning ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, codec, rgb0: torch.Tensor, robot_pointmap: torch.Tensor, robot_mask: torch.Tensor,
                action: torch.Tensor | None = None, rgb: torch.Tensor | None = None,
                world_pointmap: torch.Tensor | None = None, generator: torch.Generator | None = None,
                world0: torch.Tensor | None = None, robot_rgb: torch.Tensor | None = None,
                held: dict | None = None, soften: bool | None = None, with_null: bool = False) -> dict:
        """Build the latents of Sec. 3.2 from pixel-space tensors (batch-first, dataset layout).

        rgb0 (B,3,H,W) = I0; robot_pointmap (B,T,3,H,W) in [0,1]; robot_mask (B,T,H,W); action (B,T,A) for
        condition="action_embedding"; rgb / world_pointmap (B,T,3,H,W) for the training target; world0 (B,3,H,W)
        the frame-0 world pointmap in [0,1] (0 = empty) for ``world_anchor`` models (pointmaps normalized by
        ``kinema4d.data.episodes.anchor_normalize``); robot_rgb (B,T,3,H,W) in [0,1] the kinematic render's robot
        colours (black off the robot) for ``robot_rgb`` models; held (``held_prior`` models) the held-object prior:
        ``rgb`` (B,T,3,H,W) in [0,1], ``xyz01`` (B,T,3,H,W) anchor-normalized, ``mask`` / ``vacated`` (B,T,H,W).
        Returns ``cond`` (B, 4+C(+8+C), t, h, 2w) = [mask | input latents (| landing mask | vacated mask | prior
        latents)], ``context_input``: what :meth:`context` (and :meth:`condition`) read, for context="robot_tokens"
        the robot-token input (B, 4+C(+C), t, h, w) = [mask | robot-only XYZ latents (| robot-only RGB latents)],
        otherwise (B, C, t, h, w) the XYZ half of the input latents (the robot pointmap, and for ``world_anchor``
        models the frame-0 world pointmap off the robot: called ``robot`` before); ``action`` and, with a target, ``x0``
        (B, C, t, h, 2w); ``image`` (B, N, image_dim) the image-branch tokens of I0 for models with an image encoder
        (else None: learned tokens).

        ``soften``: apply the soft robot mask (``mask="soft"``); None = only in training mode (``self.training``), so
        sampling never softens. ``with_null``: also return ``cond_null`` / ``context_input_null``, the same inputs for a
        scene WITHOUT the robot (no robot mask, pointmap, colours): the classifier-free-guidance null condition.
        """
        cfg = self.cfg
        B, T, _, H, W = robot_pointmap.shape
        if rgb0.shape != (B, 3, H, W) or robot_mask.shape != (B, T, H, W):
            raise ValueError(f"shape mismatch: rgb0 {tuple(rgb0.shape)} robot_pointmap {tuple(robot_pointmap.shape)}"
                             f" robot_mask {tuple(robot_mask.shape)}; expected (B,3,H,W), (B,T,3,H,W), (B,T,H,W)")
        check_video_size(cfg, T, H, W)
        dev = rgb0.device
        if cfg.image_padding == "repeat":
            first = rgb0[:, :, None].expand(B, 3, T, H, W).clone()
        else:  # I0 zero-padded over time, zeros in the codec's [-1, 1] space (= 0.5 here), as Wan2.1-I2V pads it
            first = torch.full((B, 3, T, H, W), 0.5, device=dev)
            first[:, :, 0] = rgb0
        if cfg.robot_rgb:
            if robot_rgb is None or robot_rgb.shape != (B, T, 3, H, W):
                raise ValueError(f"this model has robot_rgb=True: it needs robot_rgb, the kinematic render's robot "
                                 f"colours (B,T,3,H,W) = {(B, T, 3, H, W)}, got "
                                 f"{None if robot_rgb is None else tuple(robot_rgb.shape)}")
            first = torch.where(robot_mask[:, None] > 0.5, robot_rgb.transpose(1, 2).to(first.dtype), first)
        if cfg.condition == "pointmap":
            right = robot_pointmap.transpose(1, 2)
        elif cfg.condition == "binary_mask":
            right = robot_mask[:, None].expand(B, 3, T, H, W).float()
        else:  # action_embedding: the input is only I0
            right = torch.zeros(B, 3, T, H, W, device=dev)
            if action is None:
                raise ValueError("condition='action_embedding' needs per-frame actions (batch key 'action', (B,T,A))")
            if action.shape[:2] != (B, T) or action.shape[2] != cfg.action_dim:
                raise ValueError(f"action must be (B, T, {cfg.action_dim}), got {tuple(action.shape)}")
        if cfg.world_anchor:
            if world0 is None or world0.shape != (B, 3, H, W):
                raise ValueError(f"this model has world_anchor=True: it needs world0, the frame-0 world pointmap "
                                 f"(B,3,H,W) = {(B, 3, H, W)}, got {None if world0 is None else tuple(world0.shape)}")
            anchor = world0[:, :, None].expand(B, 3, T, H, W).to(right.dtype)
            if cfg.condition == "action_embedding":  # no robot pixels are given to this baseline
                right = anchor.clone()
            else:
                right = torch.where(robot_mask[:, None] > 0.5, right, anchor)
        if cfg.held_prior:
            self._check_held(held, (B, T, H, W))
        if cfg.held_prior_input:  # landing + vacated pixels show the hypothesis; the robot stays in front
            sel = ((held["mask"] > 0.5) | (held["vacated"] > 0.5)) & (robot_mask <= 0.5)
            sel = sel[:, None]  # (B, 1, T, H, W) against the channel-first (B, 3, T, H, W) halves
            first = torch.where(sel, held["rgb"].transpose(1, 2).to(first.dtype), first)
            right = torch.where(sel, held["xyz01"].transpose(1, 2).to(right.dtype), right)
        if cfg.input_layout == "release":  # [I0 | canonical pointmap] in frame 0, zeros ([-1, 1] space) after
            first = torch.full((B, 3, T, H, W), 0.5, device=dev)
            first[:, :, 0] = rgb0
            right = torch.full((B, 3, T, H, W), 0.5, device=dev)
            right[:, :, 0] = canonical_pointmap(H, W).to(dev)
        inp = codec.encode(torch.cat([first, right], dim=-1))
        if cfg.input_layout != "release":  # the release normalizes target / robot pointmap latents, not the input's
            inp = self.normalize(inp)
        w = inp.shape[-1] // 2
        if cfg.mask == "none":
            m = torch.zeros(B, MASK_CHANNELS, *inp.shape[2:], device=dev)
        else:
            if cfg.input_layout == "release":  # one channel, softened, then repeated to 4 (as released)
                m = release_downsample_mask(robot_mask, codec.temporal_factor, codec.spatial_factor)
            else:
                m = downsample_mask(robot_mask, codec.temporal_factor, codec.spatial_factor)
            if cfg.mask == "soft" and (self.training if soften is None else soften):
                m = soften_mask(m, cfg.soft_ratio, generator)
            m = m.expand(-1, MASK_CHANNELS, -1, -1, -1)
            m = torch.cat([m, m], dim=-1)  # the same occupancy for the RGB and XYZ halves (pixel-aligned)
            if cfg.input_layout == "release":  # RGB half: Wan2.1-I2V's first-frame mask (frame 0 given)
                m[..., :w] = 0
                m[:, :, 0, :, :w] = 1
        context_input = inp[..., w:]
        if cfg.context == "robot_tokens":  # robot-only latents: the robot pointmap (and colours), 0 elsewhere
            rrgb = robot_rgb.transpose(1, 2) if cfg.robot_rgb else torch.zeros_like(first)
            ronly = self.normalize(codec.encode(torch.cat([rrgb.to(first.dtype), robot_pointmap.transpose(1, 2)],
                                                          dim=-1)))
            parts = [m[..., w:].to(inp.dtype), ronly[..., w:]] + ([ronly[..., :w]] if cfg.robot_rgb else [])
            context_input = torch.cat(parts, dim=1)
        parts = [m.to(inp.dtype), inp]
        if cfg.held_prior:
            parts += self._held_channels(codec, held)
        out = {"cond": torch.cat(parts, dim=1), "context_input": context_input, "action": action,
               "image": None if self.image_encoder is None else self.image_encoder(rgb0)}
        if with_null:  # the same scene without the robot: what the dropped (null) condition feeds the backbone
            null = self.prepare(codec, rgb0, torch.zeros_like(robot_pointmap), torch.zeros_like(robot_mask), action,
                                world0=world0, robot_rgb=None if robot_rgb is None else torch.zeros_like(robot_rgb),
                                held=held, soften=False)
            out["cond_null"], out["context_input_null"] = null["cond"], null["context_input"]
        if rgb is not None:
            wpm = world_pointmap if cfg.output == "rgb+pointmap" else torch.zeros_like(rgb)
            x0 = self.normalize(codec.encode(torch.cat([rgb, wpm], dim=-1).transpose(1, 2)))
            if cfg.output == "rgb_only":
                x0[..., w:] = 0
            out["x0"] = x0
        return out

    @staticmethod
    def _check_held(held: dict | None, shape: tuple[int, int, int, int]) -> None:
        """A clear error unless ``held`` has the keys and shapes of the held-object prior for (B, T, H, W)."""
        B, T, H, W = shape
        want = {"rgb": (B, T, 3, H, W), "xyz01": (B, T, 3, H, W), "mask": (B, T, H, W), "vacated": (B, T, H, W)}
        if held is None or any(k not in held or tuple(held[k].shape) != v for k, v in want.items()):
            got = None if held is None else {k: tuple(v.shape) for k, v in held.items()}
            raise ValueError(f"this model has held_prior=True: it needs held = {want} "
                             f"(kinema4d.model.held_prior), got {got}")

    def _held_channels(self, codec, held: dict) -> list[torch.Tensor]:
        """The held-object prior as input channels: [landing mask (4, both halves) | vacated mask (4, both halves) |
        normalized latents of [prior RGB | prior XYZ] (C)]; ``held`` checked by ``_check_held``."""
        masks = []
        for k in ("mask", "vacated"):
            mk = downsample_mask(held[k].float(), codec.temporal_factor, codec.spatial_factor)
            masks.append(torch.cat([mk, mk], dim=-1))
        lat = self.normalize(codec.encode(torch.cat([held["rgb"], held["xyz01"]], dim=-1).transpose(1, 2).float()))
        return [mk.to(lat.dtype) for mk in masks] + [lat]

    def context(self, context_input: torch.Tensor, action: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention tokens (B, L, text_dim) (transformer width for ``robot_token_space="inner"``), any L: on
        Wan2.1-I2V blocks they all reach the text branch (:class:`ImageTextAttnProcessor`), the image branch gets
        only image tokens. ``drop`` (B,) bool: the null context (classifier-free guidance); for robot latents the
        null context is the one of all-zero robot latents. ``context_input``: ``prepare()["context_input"]``."""
        cfg, B = self.cfg, context_input.shape[0]
        robot = context_input.to(self.param_dtype)
        keep = None if drop is None else (~drop).to(robot.dtype)
        if self.action_mlp is not None:
            T = action.shape[1]
            tok = self.action_mlp(action.to(robot.dtype)) + self.action_pos[:T]
            ctx = tok if keep is None else tok * keep[:, None, None]
        elif self.robot_tokens is not None:
            ctx = self.robot_tokens(robot)
            if keep is not None:
                ctx = ctx * keep[:, None, None]
        elif self.context_conv is not None:
            r = robot if keep is None else robot * keep[:, None, None, None, None]
            r = self.context_conv(r)
            pt, ph, pw = cfg.patch_size
            b, c, t, h, w = r.shape
            r = r.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
            ctx = self.context_proj(r.reshape(b, (t // pt) * (h // ph) * (w // pw), -1))
        elif self.learned_tokens is not None:
            ctx = self.learned_tokens[None].expand(B, -1, -1)
            if keep is not None:
                ctx = ctx * keep[:, None, None]
        else:
            ctx = robot.new_zeros(B, 1, cfg.text_dim)
        return ctx

    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype of the backbone's weights (inputs are cast to it)."""
        return self.transformer.patch_embedding.weight.dtype

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, context_input: torch.Tensor,
                action: torch.Tensor | None = None, drop: torch.Tensor | None = None,
                cond_null: torch.Tensor | None = None, context_input_null: torch.Tensor | None = None,
                image: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B,C,t,h,2w) noisy latents, t (B,) in [0,1] (noise level), cond (B,4+C,t,h,2w), context_input
        (``prepare()["context_input"]``), action (B,T,A), drop (B,) bool null condition, cond_null /
        context_input_null (``prepare(..., with_null=True)``) the robot-free inputs the dropped samples get
        (without them only the context is dropped), image (B,N,image_dim) image tokens -> predicted velocity
        eps - x0 (B,C,t,h,2w)."""
        ctx = self.context(context_input, action, drop)
        if drop is not None and cond_null is not None:
            sel = drop.view(-1, 1, 1, 1, 1)
            cond = torch.where(sel, cond_null.to(cond.dtype), cond)
            context_input = torch.where(sel, context_input_null.to(context_input.dtype), context_input)
        # a fresh tensor, not a view of the backbone's output: FSDP2 hooks the root module's output for backward
        return self.velocity(x_t, t, self.condition(cond, context_input), ctx, image).clone()

    def condition(self, cond: torch.Tensor, context_input: torch.Tensor) -> torch.Tensor:
        """``cond`` (B,4+C,t,h,2w) with, for ``robot_latent_proj`` models, the zero-init projection of the robot-only
        XYZ latents (``context_input`` channels [4, 4+C)) added to the XYZ half of the input latents; else
        ``cond``."""
        if self.robot_latent_proj is None:
            return cond
        C, w = self.cfg.latent_channels, cond.shape[-1] // 2
        r = context_input[:, MASK_CHANNELS:MASK_CHANNELS + C].to(self.robot_latent_proj.weight.dtype)
        add = self.robot_latent_proj(r).to(cond.dtype)  # (B, C, t, h, w)
        # into columns [w, 2w), channels [4, 4+C) (the held-prior channels after them stay unchanged)
        return cond + F.pad(add, (w, 0, 0, 0, 0, 0, MASK_CHANNELS, cond.shape[1] - MASK_CHANNELS - C))

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, context: torch.Tensor,
                 image: torch.Tensor | None = None) -> torch.Tensor:
        """As ``forward`` with precomputed cross-attention tokens ``context`` (B, L, text_dim) and image tokens
        ``image`` (B, N, image_dim; None = the learned tokens). Inputs are cast to the backbone's dtype; the output
        has ``x_t``'s dtype."""
        if x_t.shape[1] != self.cfg.latent_channels or cond.shape[1] != self.cfg.in_channels - x_t.shape[1]:
            raise ValueError(f"x_t {tuple(x_t.shape)} / cond {tuple(cond.shape)} do not match the config "
                             f"({self.cfg.latent_channels} + {self.cfg.in_channels - self.cfg.latent_channels} ch)")
        if self.cfg.output == "rgb_only":  # the XYZ half carries no signal: keep it at 0 in training and sampling
            w = x_t.shape[-1] // 2
            x_t = torch.cat([x_t[..., :w], torch.zeros_like(x_t[..., w:])], dim=-1)
        dt, img = self.param_dtype, None
        if self.cfg.image_dim is not None:
            if image is None:
                if self.image_tokens is None:
                    raise ValueError("this model encodes I0 with its image encoder: pass image (prepare()['image'])")
                image = self.image_tokens[None].expand(x_t.shape[0], -1, -1)
            img = image.to(dt)
            self.attn_split.image_tokens = img.shape[1]
        h = torch.cat([x_t, cond.to(x_t.dtype)], dim=1).to(dt)
        out = self.transformer(h, t * 1000, context.to(dt), encoder_hidden_states_image=img,
                               return_dict=False)[0].to(x_t.dtype)
        if self.cfg.prediction != "velocity":  # x_t = (1-t) x0 + t eps  =>  eps - x0 = (x_t - x0) / t
            if self.cfg.prediction == "x0_residual":
                out = out + cond[:, MASK_CHANNELS:MASK_CHANNELS + self.cfg.latent_channels].to(out.dtype)
            tt = t.to(out.dtype).clamp(min=self.cfg.x0_t_min).view(-1, 1, 1, 1, 1)
            out = (x_t - out) / tt
        return out

    def loss_weight(self, x0: torch.Tensor, xyz_weight: float = 1.0) -> torch.Tensor:
        """(1, 1, 1, 1, 2w) weights: 1 on the RGB half, ``xyz_weight`` on the XYZ half (0 for output='rgb_only')."""
        wt = torch.ones(x0.shape[-1], device=x0.device)
        wt[x0.shape[-1] // 2:] = 0.0 if self.cfg.output == "rgb_only" else xyz_weight
        return wt.view(1, 1, 1, 1, -1)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


def flow_matching_loss(model: nn.Module, wm: WorldModel, batch: dict, t: torch.Tensor, noise: torch.Tensor,
                       drop: torch.Tensor | None = None, xyz_weight: float = 1.0) -> torch.Tensor:
    """Rectified-flow loss: x_t = (1-t) x0 + t noise; MSE(model(x_t), noise - x0), the XYZ half weighted by
    ``xyz_weight`` (a weighted mean: the RGB and XYZ halves count 1 : xyz_weight). ``model`` may be the DDP
    wrapper of ``wm``; ``batch`` is the output of ``WorldModel.prepare`` (with ``cond_null`` /
    ``context_input_null`` the dropped samples get the robot-free inputs too, not only the null context)."""
    x0 = batch["x0"]
    tt = t.view(-1, 1, 1, 1, 1).to(x0.dtype)
    x_t = (1 - tt) * x0 + tt * noise
    v = model(x_t, t, batch["cond"], batch["context_input"], batch.get("action"), drop, batch.get("cond_null"),
              batch.get("context_input_null"), batch.get("image"))
    wt = wm.loss_weight(x0, xyz_weight)
    return (((v.float() - (noise - x0)) ** 2) * wt).sum() / (wt.sum() * x0[..., :1].numel())


def sample_timesteps(n: int, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) noise levels in (0, 1): 'logit_normal' (sigmoid of N(0,1), SD3) or 'uniform'."""
    if mode == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    if mode == "uniform":
        return torch.rand(n, generator=generator)
    raise ValueError(f"unknown timestep sampling {mode!r}")


# ----------------------------------------------------------------------------------------------------------------
# Sampling (Simulator-ready)
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def sample(model: WorldModel, codec, image0: torch.Tensor, robot_pointmap01: torch.Tensor,
           robot_mask: torch.Tensor, steps: int = 20, cfg_scale: float = 1.0, seed: int = 0,
           action: torch.Tensor | None = None, shift: float | None = None, world0: torch.Tensor | None = None,
           robot_rgb: torch.Tensor | None = None, held: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generate one rollout. image0 (3,H,W) in [0,1], robot_pointmap01 (T,3,H,W) in [0,1] (sequence min-max, or
    the anchor stats for world_anchor models), robot_mask (T,H,W), action (T,A) for condition='action_embedding',
    world0 (3,H,W) in [0,1] the frame-0 world pointmap for world_anchor models, robot_rgb (T,3,H,W) in [0,1] the
    kinematic render's robot colours for robot_rgb models, held the held-object prior (unbatched ``prepare`` keys,
    (T,3,H,W) / (T,H,W)) for held_prior models.

    Returns rgb (T,3,H,W) in [0,1] and world_pointmap01 (T,3,H,W) in [0,1] (None for output='rgb_only'). Euler
    steps of diffusers' ``FlowMatchEulerDiscreteScheduler`` (x0-prediction models stop at ``x0_t_min`` and return
    their x0 prediction; ``shift`` None = the model's ``sample_shift``); ``cfg_scale`` != 1 adds classifier-free
    guidance against the null condition (no robot in the input channels, the null context). The soft mask is never
    applied. Runs on the model's device (inputs are moved there); returns float32 CPU tensors. The same seed gives
    the same output.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if image0.ndim != 3 or robot_pointmap01.ndim != 4 or robot_mask.ndim != 3:
        raise ValueError(f"expected image0 (3,H,W), robot_pointmap01 (T,3,H,W), robot_mask (T,H,W); got "
                         f"{tuple(image0.shape)}, {tuple(robot_pointmap01.shape)}, {tuple(robot_mask.shape)}")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    prep = model.prepare(codec, image0[None].to(dev), robot_pointmap01[None].to(dev), robot_mask[None].to(dev),
                         None if action is None else action[None].to(dev), generator=g,
                         world0=None if world0 is None else world0[None].to(dev),
                         robot_rgb=None if robot_rgb is None else robot_rgb[None].to(dev),
                         held=None if held is None else {k: v[None].to(dev) for k, v in held.items()},
                         soften=False, with_null=cfg_scale != 1.0)
    T, _, H, W = robot_pointmap01.shape
    shp = latent_shapes(model.cfg, T, H, W)["latent"]
    x = torch.randn(shp, generator=g).to(dev)
    cond = model.condition(prep["cond"], prep["context_input"])
    ctx = model.context(prep["context_input"], prep["action"])
    img = prep["image"]
    if cfg_scale != 1.0:  # the null condition: no robot in the input channels and the null context
        cond_null = model.condition(prep["cond_null"], prep["context_input_null"])
        ctx_null = model.context(prep["context_input"], prep["action"],
                                 drop=torch.ones(1, dtype=torch.bool, device=dev))
    shift = model.cfg.sample_shift if shift is None else shift
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps, device=dev)
    x0_model = model.cfg.prediction != "velocity"
    for i, ts in enumerate(sched.timesteps):
        t = (ts / 1000).expand(1).to(x.dtype)
        v = model.velocity(x, t, cond, ctx, img)
        if cfg_scale != 1.0:
            v_u = model.velocity(x, t, cond_null, ctx_null, img)
            v = v_u + cfg_scale * (v - v_u)
        if x0_model and float(sched.sigmas[i + 1]) < model.cfg.x0_t_min:
            # x0-prediction: below x0_t_min the velocity's clamped t would under-denoise each step, and the backbone
            # never saw such noise levels (logit-normal t); so the last step returns its x0 = x_t - max(t, t_min) v
            x = x - t.clamp(min=model.cfg.x0_t_min).view(-1, 1, 1, 1, 1) * v
            break
        x = sched.step(v, ts, x, return_dict=False)[0]
    video = codec.decode(model.denormalize(x).float())[0].transpose(0, 1).float().cpu()  # (T, 3, H, 2W)
    model.train(was_training)
    rgb, wpm = video[..., :W], video[..., W:]
    return rgb, (None if model.cfg.output == "rgb_only" else wpm)


# ----------------------------------------------------------------------------------------------------------------
# Latent statistics, save / load
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def compute_latent_stats(codec, batches, max_samples: int = 5000) -> torch.Tensor:
    """Empirical scalar mean / std of the RGB and XYZ halves of target latents (Supp. B.1: 4DNeX normalization,
    5000 samples in the paper). ``batches`` yields dicts with ``rgb`` / ``world_pointmap`` (B,T,3,H,W).
    Returns (2, 2) [[rgb_mean, rgb_std], [xyz_mean, xyz_std]] for ``WorldModel.latent_stats``."""
    acc = torch.zeros(2, 3, dtype=torch.float64)  # per half: n, sum, sumsq
    n = 0
    for b in batches:
        z = codec.encode(torch.cat([b["rgb"], b["world_pointmap"]], dim=-1).transpose(1, 2)).double()
        w = z.shape[-1] // 2
        for i, half in enumerate((z[..., :w], z[..., w:])):
            acc[i] += torch.stack([half.new_tensor(half.numel()), half.sum(), (half**2).sum()]).cpu()
        n += z.shape[0]
        if n >= max_samples:
            break
    if n == 0:
        raise ValueError("compute_latent_stats: no samples")
    mean = acc[:, 1] / acc[:, 0]
    std = (acc[:, 2] / acc[:, 0] - mean**2).clamp_min(1e-12).sqrt()
    return torch.stack([mean, std], dim=1).float()


def state_to_save(model: WorldModel) -> dict[str, torch.Tensor]:
    """The state dict :func:`save_model` writes (with a LoRA backbone: trainable + non-backbone tensors only)."""
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("image_encoder.")}  # frozen, own dir
    if model.cfg.backbone_path is not None:  # LoRA: the frozen base stays in its own directory
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in keep or not k.startswith("transformer.")}
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_model(path: str | os.PathLike, model: WorldModel, codec=None, state: dict | None = None) -> Path:
    """Write ``model.safetensors`` (+ ``codec.safetensors``) + ``model_config.json`` in directory ``path``."""
    from safetensors.torch import save_file

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    save_file(state if state is not None else state_to_save(model), str(p / "model.safetensors"))
    if codec is not None and len(codec.state_dict()):
        save_file({k: v.detach().contiguous().cpu() for k, v in codec.state_dict().items()},
                  str(p / "codec.safetensors"))
    (p / "model_config.json").write_text(model.cfg.to_json())
    return p


def load_model(path: str | os.PathLike, cfg: ModelConfig | None = None, weights: str = "model.safetensors",
               device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None) -> tuple[WorldModel, PixelCodec | WanCodec]:
    """Load a directory written by ``save_model`` / the trainer -> (model, codec), both in eval mode on ``device``
    (``kinema4d.model.device.resolve_device``: auto | cpu | cuda[:N]).

    ``cfg`` (optional) must equal the saved config. ``weights='ema.safetensors'`` loads the EMA weights. ``dtype``
    (e.g. ``"bf16"``) casts the model's weights (the codec stays float32); None keeps float32.
    """
    from kinema4d.model.device import parse_dtype, resolve_device

    dev, dt = resolve_device(device), parse_dtype(dtype)  # a bad device is reported before anything is built

    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "model_config.json").is_file() or not (p / weights).is_file():
        raise FileNotFoundError(f"no checkpoint at {str(p)!r}: expected {p / 'model_config.json'} and {p / weights}")
    saved = ModelConfig.from_dict(json.loads((p / "model_config.json").read_text()))
    if cfg is not None and cfg != saved:
        diff = {f.name: (getattr(saved, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if getattr(saved, f.name) != getattr(cfg, f.name)}
        raise ValueError(f"checkpoint {p} was saved with a different ModelConfig; (saved, given): {diff}")
    model = WorldModel(saved)
    load_state(model, load_file(str(p / weights)), str(p / weights))
    codec = make_codec(saved)
    if (p / "codec.safetensors").is_file():
        codec.load_state_dict(load_file(str(p / "codec.safetensors")))
    return model.to(device=dev, dtype=dt).eval(), codec.to(dev).eval()


def load_state(model: WorldModel, sd: dict[str, torch.Tensor], where: str = "state dict") -> None:
    """Load (a possibly LoRA-only) state dict with clear errors on missing / unexpected / mis-shaped tensors.
    Tensors saved under an old name (``RENAMED_STATE_KEYS``) load under the new one."""
    sd = {RENAMED_STATE_KEYS.get(k, k): v for k, v in sd.items()}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("image_encoder.")}
    bad = [f"{k}: saved {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    unexpected = sorted(set(sd) - set(own))
    missing = sorted(set(state_to_save(model)) - set(sd))
    if bad or unexpected or missing:
        raise ValueError(f"{where} does not match the model config: shape mismatches {bad[:5]}, unexpected keys "
                         f"{unexpected[:5]}, missing keys {missing[:5]}")
    model.load_state_dict(sd, strict=False)


__all__ = [
    "ModelConfig", "PAPER_MODEL", "RELEASE_MODEL", "ImageTextAttnProcessor", "ImageEncoder", "canonical_pointmap",
    "PixelCodec", "WanCodec", "make_codec", "latent_shapes", "check_video_size",
    "downsample_mask", "release_downsample_mask", "soften_mask",
    "SharedWidthRope", "DomainEmbedding", "RobotTokens", "make_backbone",
    "load_pretrained_backbone", "WorldModel", "flow_matching_loss", "sample_timesteps", "sample",
    "compute_latent_stats", "save_model", "load_model", "load_state",
]
