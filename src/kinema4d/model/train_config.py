"""The training configuration: ``TrainConfig`` (one training run) and the named recipes of ``kinema4d train``
(``PRESETS``: name -> (description, TrainConfig)), among them the bundled default and the paper's and the
release's shapes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

from kinema4d.model.config import PAPER_MODEL, RELEASE_MODEL, ModelConfig
from kinema4d.model.held_prior import GRASP_GATE


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``batch_size`` is the GLOBAL batch (split over DDP ranks)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str | None = None  # dataset dir for kinema4d.data.episodes.TorchEpisodes; None = SyntheticEpisodes
    # TorchEpisodes split for validation samples. If ``data`` has no such split, validation uses the training data
    # with a warning naming the missing split; None = the training data on purpose (no warning).
    val_split: str | None = "val"
    size: tuple[int, int] = (16, 16)  # (H, W) per modality
    frames: int = 5
    synthetic_episodes: int = 8
    batch_size: int = 2
    steps: int = 4
    stop_at: int | None = None  # end the run at this step; the LR schedule and data order still span ``steps``
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    schedule: Literal["cosine", "constant"] = "constant"  # after linear warmup
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on the training device (where it supports bf16)
    # auto | cpu | cuda | cuda:N (kinema4d.model.device.resolve_device); under torchrun "auto" / "cuda" mean
    # cuda:LOCAL_RANK and the process group is nccl, on the CPU gloo
    device: str = "auto"
    # recompute each transformer block in the backward pass (diffusers' enable_gradient_checkpointing): activation
    # memory of one block instead of all, ~30 % more compute
    gradient_checkpointing: bool = False
    # multi-process engine under torchrun: "ddp" (every rank holds the whole model; the small models) or "fsdp2"
    # (torch fully_shard per transformer block + the rest: parameters, gradients and optimizer state sharded over
    # the ranks; the 14B backbone). Checkpoints hold the gathered tensors either way; resume with the same engine
    sharding: Literal["ddp", "fsdp2"] = "ddp"
    p_uncond: float = 0.1  # probability of dropping the robot context (classifier-free guidance)
    t_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    xyz_loss_weight: float = 1.0  # weight of the XYZ half of the latents in the loss (RGB half: 1)
    codec_steps: int = 0  # WanCodec: autoencoder steps before the diffusion training (0 = keep the codec as is)
    codec_lr: float = 1e-3
    codec_kl_weight: float = 1e-6
    stats_samples: int = 0  # samples for the RGB/XYZ latent normalization (Supp. B.1; 5000 in the paper); 0 = off
    out_dir: str = "runs/tiny"
    resume: bool = False
    seed: int = 0
    log_every: int = 1
    ckpt_every: int = 0  # 0: only at the end
    val_every: int = 0  # 0: only at the end
    val_steps: int = 8
    val_cfg_scale: float = 1.0
    num_workers: int = 0
    preload: bool = False  # read every episode once into RAM before training (lazy zarr reads cost ~0.2 s/episode)
    preload_workers: int = 2
    preload_cache: str | None = None  # .safetensors of the preloaded items, shared by runs on the same data
    # recorded frames per training episode that ``frames`` are uniformly subsampled from; None = read from the data
    # when training starts (saved in train_config.json: Simulator.rollout enforces the frame spacing it implies)
    episode_frames: int | None = None
    cache_latents: bool = True  # memoize the frozen codec's encodings per video (hash of its bytes), in RAM
    progress: bool = True  # progress bars (preload and training; rank 0 only)
    # a corrupt episode stops the run (the error names it); True: skip it (the next readable episode takes its
    # place) and report the count at the end (summary "skipped_corrupt")
    skip_corrupt: bool = False
    # fine-tune from the released Kinema4D weights: a dir with pytorch_lora_weights.safetensors +
    # added_weights.safetensors (kinema4d.model.release), loaded into the model before step 0 (the model config
    # must have the release's shapes, e.g. the `release` preset) together with its pointmap-latent normalization
    init_release: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# The base recipe (the bundled default of sessions 6-7; the default below adds the held-object prior): 9 frames at
# stride 6 (the whole 49-frame episode) of 64x96, so that a 4-5 cm object
# covers ~4x4 pixels (tight data-engine framing); an 8x pixel codec keeps the token count of the earlier 32x48 model
# (432 tokens of 16x16 pixels; x0-prediction copes with the 768-value tokens); 256 wide (8 heads) so that RGB and
# XYZ both hold (at 128 wide one loss weight traded them, ../shared/notes). Conditioning: the robot latents as
# position-less context tokens, no robot RGB -- it won the 200-step proxy against the released Kinema4D
# conditioning with robot RGB (``release_conditioning``; README: PSNR 24.17 vs 22.68, object-motion recall 0.38
# vs 0.00 on 12 test episodes).
_BASE = TrainConfig(
    model=ModelConfig(codec="pixel", pixel_factor=8, num_attention_heads=8, attention_head_dim=32, ffn_dim=1024,
                      num_layers=4, text_dim=128, freq_dim=128, image_padding="repeat", world_anchor=True,
                      prediction="x0_residual", robot_token_patch=2),
    data="data/synth64", size=(64, 96), frames=9, batch_size=8, steps=1200, lr=5e-4, weight_decay=0.01, warmup=200,
    schedule="cosine", ema_decay=0.995, xyz_loss_weight=4.0, preload=True, cache_latents=False,  # pixel codec: cheap
    preload_cache="data/cache/synth64_train_64x96x9.safetensors", stats_samples=256, out_dir="runs/default",
    log_every=10, ckpt_every=200, val_every=800, val_steps=20,
)
# The bundled default of session 8: _BASE + the held-object prior written into the input with the grasp gate
# (kinema4d.model.held_prior; README "The held-object prior"): the first recipe whose objects move.
_HELD_GATE = dataclasses.replace(_BASE, model=dataclasses.replace(_BASE.model, held_prior=True, held_prior_input=True,
                                                                  held_gate=GRASP_GATE), out_dir="runs/held_gate")
# ... + the known region (the world off the robot's swept pixels and the held object is the input), for the ablation
_KNOWN = dataclasses.replace(_HELD_GATE, model=dataclasses.replace(_HELD_GATE.model, known_region="swept"),
                             out_dir="runs/known")
# The bundled default since session 9: + the robot's pixels filled with its mean colour (README "The known region").
_DEFAULT = dataclasses.replace(_KNOWN, model=dataclasses.replace(_KNOWN.model, robot_fill=True), out_dir="runs/default")
# the released Kinema4D conditioning (robot tokens with positions + the zero-init robot-latent projection) plus our
# robot-RGB input (robot_rgb: not in the release, whose code drops the robot-RGB latents), for the ablation table
_RELEASE = dataclasses.replace(_BASE.model, context="robot_tokens", robot_latent_proj=True, robot_rgb=True)

PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "tiny": ("tests: 0.64M params, 5 frames of 16x16, pixel codec, synthetic data", TrainConfig()),
    "default": (
        "the bundled CPU checkpoint: 9 frames (stride 6 over a 49-frame episode) of 64x96, 8x pixel codec, "
        "4-layer 8x32-head DiT (5.7 M parameters), x0-prediction, frame-0 world pointmap anchor, robot-latent "
        "context, XYZ loss weight 4, the held-object prior written into the input with the grasp gate, the known "
        "region (only the robot's swept pixels and the held object are generated), the robot's pixels filled with "
        "its mean colour, 1200 steps",
        _DEFAULT,
    ),
    "held_gate": (
        "the default without the known region and the robot fill (the bundled model of session 8)",
        _HELD_GATE,
    ),
    "known": (
        "the default without the robot fill (ablation)",
        _KNOWN,
    ),
    "base": (
        "the default without the held-object prior (the bundled model of sessions 6-7; the baselines' recipe)",
        dataclasses.replace(_BASE, out_dir="runs/base"),
    ),
    "release_conditioning": (
        "the base recipe with the released Kinema4D conditioning: positioned robot tokens in cross-attention, the "
        "zero-init robot-latent projection and the robot-RGB condition (the dataset must store robot_rgb)",
        dataclasses.replace(_BASE, model=_RELEASE, out_dir="runs/release_conditioning"),
    ),
    "held_prior": (
        "the base recipe plus the held-object prior (beyond the paper, kinema4d.model.held_prior): input channels with "
        "where the frame-0 points at the grasp would be if the gripper carried them, from the actions and frame 0",
        dataclasses.replace(_BASE, model=dataclasses.replace(_BASE.model, held_prior=True),
                            out_dir="runs/held_prior"),
    ),
    "held_input": (
        "the held_prior preset with the hypothesis also written into the input latents (held_prior_input): the "
        "x0-residual base starts from the carried object and the uncovered support",
        dataclasses.replace(_BASE, model=dataclasses.replace(_BASE.model, held_prior=True,
                                                                held_prior_input=True),
                            out_dir="runs/held_input"),
    ),
    "baseline_binary_mask": (
        "Sec. 4 baseline under the default's budget: the 2D robot mask instead of the robot pointmap",
        dataclasses.replace(_BASE, model=dataclasses.replace(_BASE.model, condition="binary_mask"),
                            out_dir="runs/baseline_binary_mask"),
    ),
    "baseline_action_embedding": (
        "Sec. 4 baseline under the default's budget: per-frame ee pose + gripper tokens as cross-attention context "
        "(IRASim / Ctrl-World style); no robot pixels (no pointmap, no mask)",
        dataclasses.replace(_BASE, model=dataclasses.replace(_BASE.model, condition="action_embedding",
                                                                mask="none"),
                            out_dir="runs/baseline_action_embedding"),
    ),
    "wan_small": (
        "17 frames of 64x96 through a small Wan VAE trained first (2000 codec steps) + 6-layer DiT. Measured on "
        "2 CPU cores: 52-73 s per codec step at batch 8, so this needs a GPU",
        TrainConfig(
            model=ModelConfig(codec="wan", num_attention_heads=4, attention_head_dim=48, ffn_dim=768, num_layers=6,
                              text_dim=128, freq_dim=128),
            size=(64, 96), frames=17, synthetic_episodes=256, batch_size=8, steps=20000, lr=3e-4, weight_decay=0.01,
            warmup=500, schedule="cosine", ema_decay=0.999, codec_steps=2000, stats_samples=256,
            out_dir="runs/wan_small", ckpt_every=1000, val_every=1000, val_steps=20,
        ),
    ),
    "paper": (
        "Wan2.1-14B-I2V / 4DNeX shapes (Supp. B.1): 49 x 480x720, LoRA 64, lr 2e-5, batch 32, bf16, 5000 steps; "
        "needs the local weights",
        TrainConfig(
            model=dataclasses.replace(PAPER_MODEL, backbone_path="checkpoints/4dnex/transformer",
                                      codec_path="checkpoints/wan2.1-i2v/vae", lora_rank=64),
            size=(480, 720), frames=49, batch_size=32, steps=5000, lr=2e-5, warmup=100, schedule="constant",
            precision="bf16", gradient_checkpointing=True, sharding="fsdp2", stats_samples=5000,
            out_dir="runs/paper", ckpt_every=500, val_every=500,
            val_steps=50, val_cfg_scale=1.0,
        ),
    ),
}


_WAN = "checkpoints/Wan2.1-I2V-14B-480P-Diffusers"
PRESETS["release"] = (
    "LoRA training of the released Kinema4D design (RELEASE_MODEL: 312 robot tokens, CLIP(I0), release input "
    "layout) on a local Wan2.1-I2V-14B-480P-Diffusers dir: 49 x 480x720, LoRA 64, bf16, gradient checkpointing, "
    "FSDP2 under torchrun; needs the local weights (docs/MEMORY.md)",
    TrainConfig(
        model=dataclasses.replace(RELEASE_MODEL, backbone_path=f"{_WAN}/transformer", codec_path=f"{_WAN}/vae",
                                  image_encoder_path=f"{_WAN}/image_encoder"),
        size=(480, 720), frames=49, batch_size=32, steps=5000, lr=2e-5, weight_decay=1e-4, betas=(0.9, 0.95),
        warmup=100, schedule="constant", precision="bf16", gradient_checkpointing=True, sharding="fsdp2",
        out_dir="runs/release", ckpt_every=500, val_every=500, val_steps=50,
    ),
)


__all__ = ["TrainConfig", "PRESETS"]
