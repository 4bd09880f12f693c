"""The model configuration: ``ModelConfig`` (everything that defines the network; the Tab. 4 ablations are changes
of its switches), the maps that read configs and tensors saved under old names (``RENAMED_*``), the paper's and the
released model's shapes (``PAPER_MODEL``, ``RELEASE_MODEL``) and the tensor shapes a config implies
(``check_video_size``, ``latent_shapes``; nothing is allocated)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Literal

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
    # Beyond the paper: the known region. "swept": a latent position that no robot pixel has reached up to its frame
    # and no held-object landing / vacated pixel touches (``conditioning.changing_region``, dilated by
    # ``known_dilate`` pixels) is known: its x0 is the input latents (I0 and the frame-0 pointmap) in training and
    # in sampling, so the loss and the network's capacity go where the world can change, and ``sample`` copies the
    # input onto the same pixels (and, for condition="pointmap", the robot pointmap onto the robot's pixels of the
    # XYZ half: its geometry is given by the kinematic stage). The world outside that region is assumed static: a
    # push that sends an object beyond the robot's reach is not generated there. "none": every position is
    # generated (the paper).
    known_region: Literal["none", "swept"] = "none"
    known_dilate: int = 2
    # Beyond the paper: the robot's pixels in the RGB half of the input show the robot's mean colour (the buffer
    # ``WorldModel.robot_colour``, measured on the training data like ``latent_stats``), so that the x0-residual base
    # holds the robot's exact silhouette. (Our renderer's shading does not predict the data engine's robot colours:
    # per-pixel luminance correlation 0.01 on 12 test episodes, so ``robot_rgb`` gives the base wrong colours.)
    robot_fill: bool = False
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
        if self.robot_fill and self.robot_rgb:
            raise ValueError("robot_fill and robot_rgb both write the robot's pixels of the input: choose one")
        if self.known_region not in ("none", "swept") or self.known_dilate < 0:
            raise ValueError(f"known_region must be 'none' or 'swept' and known_dilate >= 0, got "
                             f"{self.known_region!r}, {self.known_dilate}")
        if self.known_region != "none" and (self.prediction, self.image_padding, self.input_layout,
                                            self.world_anchor) != ("x0_residual", "repeat", "kinema4d", True):
            raise ValueError("known_region needs prediction='x0_residual', image_padding='repeat', "
                             "input_layout='kinema4d' and world_anchor=True: the known x0 is the input latents, which "
                             "must hold I0 and the frame-0 pointmap in every frame")
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


__all__ = [
    "MASK_CHANNELS", "ModelConfig", "RENAMED_CONFIG_FIELDS", "RENAMED_CONFIG_VALUES", "RENAMED_STATE_KEYS",
    "PAPER_MODEL", "RELEASE_MODEL", "check_video_size", "latent_shapes",
]
