"""Training of the 4D world model (flow matching) on ``--device auto|cpu|cuda[:N]``: single process, or under
torchrun DDP (``--sharding ddp``) or FSDP2 (``--sharding fsdp2``; gloo on the CPU, nccl with CUDA tensors).

    python -m kinema4d.model.train tiny --out-dir runs/tiny             # presets: tiny | default | paper | release
    torchrun --nproc_per_node 2 -m kinema4d.model.train tiny --steps 4
    python -m kinema4d.model.train default --data data/robo --resume

A checkpoint is a directory ``<out_dir>/ckpt/step_XXXXXXX/`` of safetensors + JSON (never pickle):
``model.safetensors``, ``ema.safetensors``, ``codec.safetensors``, ``optimizer.safetensors`` + ``optimizer.json``,
``rng.safetensors``, ``state.json`` (step, RNG of python / numpy), ``model_config.json``, ``train_config.json``;
``<out_dir>/ckpt/latest.json`` names the newest. Every training step is a pure function of (weights, step): batch
indices, t, noise and CFG drops come from generators seeded with (seed, step) for the global batch (each rank
takes its rows) and the soft mask from (seed, step, rank), so a resumed run follows the same loss trajectory as an
uninterrupted one, and (without the soft mask) the number of ranks does not change it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from kinema4d.data.episodes import model_inputs
from kinema4d.geometry import save_atomic_text
from kinema4d.interactive.media import video_to_uint8, write_video
from kinema4d.model.checkpoint import compute_latent_stats, load_state
from kinema4d.model.codec import make_codec
from kinema4d.model.config import PAPER_MODEL, RELEASE_MODEL, ModelConfig, latent_shapes
from kinema4d.model.held_prior import GRASP_GATE
from kinema4d.model.network import WorldModel
from kinema4d.model.sampling import flow_matching_loss, sample, sample_timesteps
from kinema4d.pointmap import normalize_pointmap

# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


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
# The bundled default since session 8: _BASE + the held-object prior written into the input with the grasp gate
# (kinema4d.model.held_prior; README "The held-object prior"): the first recipe whose objects move.
_DEFAULT = dataclasses.replace(_BASE, model=dataclasses.replace(_BASE.model, held_prior=True, held_prior_input=True,
                                                                held_gate=GRASP_GATE))
# the released Kinema4D conditioning (robot tokens with positions + the zero-init robot-latent projection) plus our
# robot-RGB input (robot_rgb: not in the release, whose code drops the robot-RGB latents), for the ablation table
_RELEASE = dataclasses.replace(_BASE.model, context="robot_tokens", robot_latent_proj=True, robot_rgb=True)

PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "tiny": ("tests: 0.64M params, 5 frames of 16x16, pixel codec, synthetic data", TrainConfig()),
    "default": (
        "the bundled CPU checkpoint: 9 frames (stride 6 over a 49-frame episode) of 64x96, 8x pixel codec, "
        "4-layer 8x32-head DiT (5.7 M parameters), x0-prediction, frame-0 world pointmap anchor, robot-latent "
        "context, XYZ loss weight 4, the held-object prior written into the input with the grasp gate, 1200 steps",
        _DEFAULT,
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


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's batch indices for steps start..steps-1; step s draws the global batch with a generator
    seeded by (seed, s), so the data order does not depend on where a run was resumed."""

    def __init__(self, n: int, global_batch: int, start: int, steps: int, seed: int, rank: int, world: int):
        self.n, self.gb, self.start, self.steps, self.seed, self.rank, self.world = (
            n, global_batch, start, steps, seed, rank, world)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        per = self.gb // self.world
        for s in range(self.start, self.steps):
            g = torch.Generator().manual_seed(_seed(self.seed, s, 0, 1))
            idx = torch.randint(self.n, (self.gb,), generator=g).tolist()
            yield idx[self.rank * per:(self.rank + 1) * per]


def _seed(*xs: int) -> int:
    h = 1469598103934665603
    for x in xs:
        h = ((h ^ (x & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON)
# ----------------------------------------------------------------------------------------------------------------


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars["state"].setdefault(str(pid), {})[k] = v
    return tensors, scalars


def _optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict, scalars: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, st in scalars["state"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in scalars["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(out_dir: str | os.PathLike, step: int, cfg: TrainConfig, model: WorldModel, codec,
                    ema: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None,
                    state: dict[str, torch.Tensor] | None = None, opt_files: tuple[dict, dict] | None = None) -> Path:
    """Write ``<out_dir>/ckpt/step_XXXXXXX`` and point ``latest.json`` at it (rank 0 only). ``state``: the model
    tensors to write (default ``state_to_save(model)``); FSDP2 passes the gathered ones and, as ``opt_files``, the
    gathered optimizer state (:func:`fsdp_optimizer_to_files`) instead of ``opt``."""
    from safetensors.torch import save_file

    from kinema4d.model.checkpoint import save_model, state_to_save

    d = Path(out_dir) / "ckpt" / f"step_{step:07d}"
    tmp = d.with_name(d.name + ".tmp")
    sd = state if state is not None else state_to_save(model)
    save_model(tmp, model, codec, state=sd)
    save_file({k: (ema[k].detach().cpu() if k in ema else v).contiguous() for k, v in sd.items()},
              str(tmp / "ema.safetensors"))
    if opt is not None or opt_files is not None:
        ot, osc = opt_files if opt_files is not None else _optimizer_to_files(opt)
        save_file(ot, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(osc))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    npst = np.random.get_state()
    state = {"step": step, "python_random": _jsonable(random.getstate()),
             "numpy_random": [npst[0], npst[1].tolist(), *npst[2:]]}
    (tmp / "state.json").write_text(json.dumps(state))
    (tmp / "train_config.json").write_text(cfg.to_json())
    if d.exists():
        import shutil

        shutil.rmtree(d)
    tmp.rename(d)
    save_atomic_text(Path(out_dir) / "ckpt" / "latest.json", json.dumps({"step": step, "path": d.name}))
    return d


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, tuple | list) else x


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    f = Path(out_dir) / "ckpt" / "latest.json"
    if not f.is_file():
        return None
    return f.parent / json.loads(f.read_text())["path"]


# TrainConfig fields that define the optimisation: --resume refuses a checkpoint saved with other values
RECIPE_FIELDS = ("size", "frames", "synthetic_episodes", "batch_size", "lr", "weight_decay", "betas", "warmup",
                 "schedule", "grad_clip", "ema_decay", "precision", "p_uncond", "t_sampling", "xyz_loss_weight", "seed")


def load_checkpoint(d: Path, cfg: TrainConfig, model: WorldModel, codec, opt) -> tuple[int, dict]:
    """Restore model, codec, optimizer, RNG from ``d`` -> (step, ema). The saved ModelConfig must equal cfg.model
    and the saved recipe (``RECIPE_FIELDS`` of its train_config.json) cfg's."""
    from safetensors.torch import load_file

    if not (d / "state.json").is_file():
        raise FileNotFoundError(f"checkpoint {str(d)!r} is missing or incomplete (no state.json)")
    saved = ModelConfig.from_dict(json.loads((d / "model_config.json").read_text()))
    if saved != cfg.model:
        diff = {f.name: (getattr(saved, f.name), getattr(cfg.model, f.name)) for f in dataclasses.fields(saved)
                if getattr(saved, f.name) != getattr(cfg.model, f.name)}
        raise ValueError(f"checkpoint {d} was written with a different ModelConfig; (saved, now): {diff}")
    tc = d / "train_config.json"
    if tc.is_file():  # the optimisation itself must match too (a longer --steps or a --stop-at may change)
        old = json.loads(tc.read_text())
        now = json.loads(cfg.to_json())
        diff = {k: (old.get(k), now[k]) for k in RECIPE_FIELDS if k in old and old[k] != now[k]}
        if diff:
            raise ValueError(f"checkpoint {d} was trained with a different recipe; (saved, now): {diff}. Resume with "
                             "the saved values, or train into a new --out-dir")
    load_state(model, load_file(str(d / "model.safetensors")), str(d / "model.safetensors"))
    if (d / "codec.safetensors").is_file():
        codec.load_state_dict(load_file(str(d / "codec.safetensors")))
    osc = json.loads((d / "optimizer.json").read_text())
    if (osc.get("format") == "fsdp2") != (opt is None):
        engine = "fsdp2" if osc.get("format") == "fsdp2" else "ddp (or one process)"
        raise ValueError(f"checkpoint {d} was written with sharding={engine}: resume it with the same engine")
    if opt is not None:  # FSDP2 loads its optimizer state after sharding (fsdp_optimizer_from_files)
        _optimizer_from_files(opt, load_file(str(d / "optimizer.safetensors")), osc)
    ema_sd = load_file(str(d / "ema.safetensors"))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    ema = {k: v for k, v in ema_sd.items() if k in names}
    torch.set_rng_state(load_file(str(d / "rng.safetensors"))["torch"])
    st = json.loads((d / "state.json").read_text())
    pr = st["python_random"]
    random.setstate((pr[0], tuple(pr[1]), pr[2]))
    nr = st["numpy_random"]
    np.random.set_state((nr[0], np.array(nr[1], dtype=np.uint32), *nr[2:]))
    return int(st["step"]), ema


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to ``cfg.lr``, then constant or cosine decay to 0 at ``cfg.steps``."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, p)))


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


def _collate(items: list[dict]) -> dict:
    return torch.utils.data.default_collate(items)


def prepare_batch(model: WorldModel, codec, batch: dict, generator: torch.Generator | None = None,
                  device: torch.device | None = None, with_null: bool = False) -> dict:
    """A collated dataset batch (TorchEpisodes keys) -> ``WorldModel.prepare`` output with the training target, on
    ``device`` (default: the model's); ``with_null`` adds the robot-free null condition (classifier-free guidance)."""
    batch = _to_device(model_inputs(model.cfg, batch), device or next(model.parameters()).device)
    return model.prepare(codec, batch["rgb"][:, 0], batch["robot_pointmap"], batch["robot_mask"],
                         action=batch.get("action"), rgb=batch["rgb"], world_pointmap=batch["world_pointmap"],
                         generator=generator, world0=batch["world0"], robot_rgb=_robot_rgb(model.cfg, batch),
                         held=batch.get("held"), with_null=with_null)


def _to_device(x, device: torch.device):
    """Tensors in (nested dicts of) ``x`` moved to ``device``."""
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x


def _robot_rgb(model_cfg, item: dict) -> torch.Tensor | None:
    """The item's (or batch's) ``robot_rgb`` for robot-RGB models (None for others); a clear error when the
    dataset does not store it."""
    if not model_cfg.robot_rgb:
        return None
    if "robot_rgb" not in item:
        raise ValueError("this model has robot_rgb=True but the dataset items carry no 'robot_rgb' (datasets written "
                         "before kinema4d stored the kinematic robot colours): regenerate with `kinema4d datagen`")
    return item["robot_rgb"]


def train_codec(cfg: TrainConfig, codec, dataset, rank: int = 0, world: int = 1) -> list[float]:
    """Autoencoder stage (WanCodec): L1 + KL on the target (RGB | world pointmap) and input (I0 | robot pointmap)
    videos. Every rank runs the same seeded steps; rank 0's weights are broadcast afterwards."""
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.codec_lr)
    losses = []
    codec.train()
    for s in range(cfg.codec_steps):
        g = torch.Generator().manual_seed(_seed(cfg.seed, s, 0, 2))
        idx = torch.randint(len(dataset), (max(1, cfg.batch_size // world),), generator=g).tolist()
        b = _to_device(_collate([dataset[i] for i in idx]), next(codec.parameters()).device)
        target = torch.cat([b["rgb"], b["world_pointmap"]], dim=-1)
        inp = torch.cat([b["rgb"][:, :1].expand_as(b["rgb"]), b["robot_pointmap"]], dim=-1)
        video = torch.cat([target, inp]).transpose(1, 2)
        loss, _ = codec.training_loss(video, cfg.codec_kl_weight, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    if world > 1:
        for p in codec.parameters():
            dist.broadcast(p.data, 0)
    codec.eval()
    return losses


def _dist_env(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; joins the process group with the backend of ``device``'s
    tensors (nccl for CUDA, gloo for the CPU)."""
    from kinema4d.model.device import dist_backend

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dev = device if device is not None else torch.device("cpu")
        dist.init_process_group(dist_backend(dev), rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return rank, world


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a (possibly FSDP2-sharded DTensor) tensor; collective for DTensors (all ranks call it)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def param_checksum(model: torch.nn.Module) -> float:
    return float(sum(_full(p.detach()).double().sum() * (i + 1) for i, p in enumerate(model.parameters())))


def fsdp_optimizer_to_files(model: WorldModel, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The FSDP2 optimizer state gathered into full CPU tensors keyed ``"<parameter name>|<state key>"`` + JSON
    (param groups, scalars, ``"format": "fsdp2"``); collective, the result is complete on rank 0 only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors, scalars = {}, {"format": "fsdp2", "param_groups": sd.get("param_groups", []), "state": {}}
    for name, st in sd.get("state", {}).items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}|{k}"] = v.detach().contiguous().cpu()
            else:
                scalars["state"].setdefault(name, {})[k] = v
    return tensors, scalars


def fsdp_optimizer_from_files(model: WorldModel, opt: torch.optim.Optimizer, d: Path) -> None:
    """Load ``optimizer.safetensors`` / ``optimizer.json`` written by :func:`fsdp_optimizer_to_files` into the
    optimizer of the FSDP2-sharded ``model`` (every rank reads the full state and keeps its shard)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    scalars = json.loads((d / "optimizer.json").read_text())
    state: dict[str, dict] = {}
    for key, v in load_file(str(d / "optimizer.safetensors")).items():
        name, k = key.rsplit("|", 1)
        state.setdefault(name, {})[k] = v
    for name, st in scalars["state"].items():
        state.setdefault(name, {}).update(st)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in scalars["param_groups"]]
    set_optimizer_state_dict(model, opt, optim_state_dict={"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def _gathered_state(model: WorldModel, ema: dict) -> tuple[dict, dict]:
    """(the tensors ``state_to_save`` would write, the EMA) of an FSDP2-sharded model as full CPU tensors;
    collective: every rank calls it."""
    sd = {k: _full(v.detach()).cpu() for k, v in model.state_dict().items() if not k.startswith("image_encoder.")}
    if model.cfg.backbone_path is not None:  # LoRA: only the trainable part of the backbone
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in keep or not k.startswith("transformer.")}
    return sd, {k: _full(v).cpu() for k, v in ema.items()}


def shard_fsdp2(model: WorldModel, device: torch.device, world: int, precision: str = "fp32") -> None:
    """torch FSDP2: ``fully_shard`` every transformer block, then the whole model (the rest: embeddings, robot
    modules, output head; not the frozen image encoder, replicated), over a 1-D mesh of ``world`` ranks on
    ``device``'s type. In place.

    ``precision="bf16"``: the shards stay fp32 (the optimizer's master weights) but are gathered in bf16 for
    compute (half the all-gather traffic and gathered-block memory) and gradients are reduced in fp32; inputs are
    not cast (autocast runs the matmuls in bf16, the timestep stays fp32)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    mesh = init_device_mesh(device.type, (world,))
    for block in model.transformer.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    # the frozen CLIP image encoder stays whole on every rank: ``prepare`` runs it outside the model's forward, where
    # FSDP2 would leave its weights sharded (a DTensor error at the first batch)
    keep = set(model.image_encoder.parameters()) if model.image_encoder is not None else None
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=keep)


def validate(cfg: TrainConfig, model: WorldModel, codec, ema: dict, val_set, step: int,
             write: bool = True) -> Path:
    """Sample validation episode 0 with the EMA weights; write [GT rgb | rgb | GT pointmap | pointmap] as mp4.
    An FSDP2-sharded model is gathered for the sampling: then every rank must call this (``write`` on one)."""
    params = dict(model.named_parameters())
    backup = {k: params[k].detach().clone() for k in ema}
    with torch.no_grad():
        for k, v in ema.items():
            params[k].copy_(v)
    sharded = hasattr(model, "unshard")  # FSDP2: sample() calls submodules directly, outside the root's forward
    if sharded:
        model.unshard()
    e = model_inputs(model.cfg, val_set[0])
    rgb, wpm = sample(model, codec, e["rgb"][0], e["robot_pointmap"], e["robot_mask"], steps=cfg.val_steps,
                      cfg_scale=cfg.val_cfg_scale, seed=cfg.seed, action=e.get("action"), world0=e["world0"],
                      robot_rgb=_robot_rgb(model.cfg, e), held=e.get("held"))
    if sharded:
        model.reshard()
    with torch.no_grad():
        for k, v in backup.items():
            params[k].copy_(v)
    d = Path(cfg.out_dir) / "val"
    path = d / f"step_{step:07d}.mp4"
    if not write:
        return path
    wpm = torch.zeros_like(rgb) if wpm is None else wpm
    d = Path(cfg.out_dir) / "val"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.mp4"
    write_video(path, video_to_uint8(torch.cat([e["rgb"], rgb, e["world_pointmap"], wpm], dim=-1).cpu()), fps=8)
    return path


def train_main(cfg: TrainConfig) -> dict:
    """Train (or resume) per ``cfg``; returns this rank's summary dict, also written to
    ``<out_dir>/summary_rank{rank}.json`` (one file per DDP rank; ``summary_rank0.json`` in a single process)."""
    from tqdm import tqdm

    from kinema4d.model.device import autocast, peak_memory_gb, resolve_device

    dev = resolve_device(cfg.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    rank, world = _dist_env(dev)
    fsdp = cfg.sharding == "fsdp2" and world > 1
    if cfg.sharding not in ("ddp", "fsdp2"):
        raise ValueError(f"sharding must be 'ddp' or 'fsdp2', got {cfg.sharding!r}")
    end = cfg.steps if cfg.stop_at is None else cfg.stop_at
    if not 0 < end <= cfg.steps:
        raise ValueError(f"stop_at must be in 1..steps ({cfg.steps}), got {cfg.stop_at}")
    if not cfg.xyz_loss_weight >= 0:
        raise ValueError(f"xyz_loss_weight must be >= 0, got {cfg.xyz_loss_weight}")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} DDP ranks")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    latent_shapes(cfg.model, cfg.frames, *cfg.size)  # validates the video size early
    dataset = make_dataset(cfg, "train")
    episode_sets = [dataset]  # TorchEpisodes whose skipped corrupt episodes are reported at the end
    if cfg.episode_frames is None:
        n = cfg.frames if cfg.data is None else int(dataset.ds.attrs(0)["shapes"]["rgb"][0])
        cfg = dataclasses.replace(cfg, episode_frames=n)
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(cfg.to_json())

    if cfg.preload and cfg.data is not None:
        dataset = PreloadedEpisodes(dataset, cfg.preload_workers, cache=cfg.preload_cache,
                                    key=f"{Path(cfg.data).resolve()}|train|{tuple(cfg.size)}|{cfg.frames}",
                                    progress=cfg.progress and rank == 0)
    val_set = make_val_dataset(cfg, dataset, warn=rank == 0)
    episode_sets.append(val_set)
    model = WorldModel(cfg.model)
    if cfg.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    codec = make_codec(cfg.model)
    codec.requires_grad_(False)
    model.to(dev)
    codec.to(dev)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ema = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    start = 0
    ck = latest_checkpoint(out) if cfg.resume else None
    if ck is not None:
        start, ema = load_checkpoint(ck, cfg, model, codec, None if fsdp else opt)
        ema = {k: v.to(dev) for k, v in ema.items()}
    else:
        if cfg.model.codec == "wan" and cfg.codec_steps > 0:
            codec.requires_grad_(True)
            train_codec(cfg, codec, dataset, rank, world)
            codec.requires_grad_(False)
        if cfg.init_release is not None:
            from kinema4d.model.release import POINTMAP_LATENT_MEAN, POINTMAP_LATENT_STD, load_release_weights

            load_release_weights(model, cfg.init_release)
            model.latent_stats.copy_(torch.tensor([[0.0, 1.0], [POINTMAP_LATENT_MEAN, POINTMAP_LATENT_STD]]))
            ema = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if cfg.stats_samples > 0 and cfg.init_release is None:
            it = (_to_device(model_inputs(cfg.model, _collate([dataset[i]])), dev)
                  for i in range(min(len(dataset), cfg.stats_samples)))
            model.latent_stats.copy_(compute_latent_stats(codec, it, cfg.stats_samples))
        if world > 1:
            for t in [*model.state_dict().values(), *codec.state_dict().values()]:
                dist.broadcast(t, 0)
            ema = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    codec.eval()

    net = model
    if fsdp:  # shard, then the optimizer and the EMA over the (sharded) parameters
        from torch.distributed.tensor import distribute_tensor

        shard_fsdp2(model, dev, world, cfg.precision)
        params = model.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        sharded = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if ck is not None:  # the saved full optimizer state and EMA, sharded like the parameters
            fsdp_optimizer_from_files(model, opt, ck)
            ema = {n: distribute_tensor(ema[n], p.device_mesh, p.placements) for n, p in sharded.items()}
        else:
            ema = {n: p.detach().clone() for n, p in sharded.items()}
    elif world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, start, end, cfg.seed, rank, world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         collate_fn=_collate)
    writer = csv_f = csv_w = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start)
        new = not (out / "metrics.csv").is_file() or start == 0
        csv_f = open(out / "metrics.csv", "w" if new else "a", newline="")
        csv_w = csv.writer(csv_f)
        if new:
            csv_w.writerow(["step", "loss", "lr", "grad_norm", "sec_per_step"])
    bar = tqdm(total=end, initial=start, disable=rank != 0 or not cfg.progress, desc="train", unit="step")
    losses: list[float] = []
    step, t_last = start, time.perf_counter()
    model.train()
    amp = autocast(dev, cfg.precision)
    enc = CachedCodec(codec) if cfg.cache_latents else codec
    B = cfg.batch_size // world
    rows = slice(rank * B, (rank + 1) * B)
    for batch in loader:
        # t, CFG drops and noise are drawn for the GLOBAL batch from one generator (the same on every rank) and each
        # rank takes its rows, so a run's samples do not depend on the number of ranks (the soft-mask positions
        # are drawn per rank, by g)
        gg = torch.Generator().manual_seed(_seed(cfg.seed, step, 0, 4))
        t = sample_timesteps(cfg.batch_size, cfg.t_sampling, gg)[rows].to(dev)
        drop = (torch.rand(cfg.batch_size, generator=gg) < cfg.p_uncond)[rows].to(dev)
        g = torch.Generator().manual_seed(_seed(cfg.seed, step, rank, 3))
        prep = prepare_batch(model, enc, batch, g, dev, with_null=bool(drop.any()))
        noise = torch.randn((cfg.batch_size, *prep["x0"].shape[1:]), generator=gg)[rows].to(dev)
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        with amp:
            loss = flow_matching_loss(net, model, prep, t, noise, drop, cfg.xyz_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(_full(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))))
        opt.step()
        with torch.no_grad():
            pd = dict(model.named_parameters())
            for n in names:
                ema[n].lerp_(pd[n].detach(), 1 - cfg.ema_decay)
        step += 1
        lv = float(loss.detach())
        if world > 1:
            lt = torch.tensor([lv], device=dev)
            dist.all_reduce(lt)
            lv = float(lt) / world
        losses.append(lv)
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        if rank == 0:
            bar.update(1)
            bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0 or step == end:
                csv_w.writerow([step, f"{lv:.6g}", f"{lr:.6g}", f"{gn:.6g}", f"{dt:.4f}"])
                csv_f.flush()
                writer.add_scalar("train/loss", lv, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", gn, step)
        last = step == end
        if last or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
            if fsdp:  # gather the shards on every rank, rank 0 writes
                sd, ema_full = _gathered_state(model, ema)
                ofiles = fsdp_optimizer_to_files(model, opt)
                if rank == 0:
                    save_checkpoint(out, step, cfg, model, codec, ema_full, None, state=sd, opt_files=ofiles)
            elif rank == 0:
                save_checkpoint(out, step, cfg, model, codec, ema, opt)
        if (rank == 0 or fsdp) and (last or (cfg.val_every and step % cfg.val_every == 0)):
            validate(cfg, model, codec, ema, val_set, step, write=rank == 0)
        if world > 1 and (last or cfg.ckpt_every or cfg.val_every):
            dist.barrier()
    bar.close()
    summary = {"rank": rank, "world_size": world, "start_step": start, "step": step, "losses": losses,
               "param_checksum": param_checksum(model),
               "num_params": sum(p.numel() for p in model.parameters()),
               "num_trainable": sum(p.numel() for p in params),
               "device": str(dev), "peak_memory_gb": peak_memory_gb(dev),
               "skipped_corrupt": sum(d.num_skipped for d in {id(d): d for d in episode_sets}.values()
                                      if hasattr(d, "num_skipped"))}
    if cfg.skip_corrupt and rank == 0:
        print(f"skipped {summary['skipped_corrupt']} corrupt episodes of {cfg.data} (--skip-corrupt)")
    if world > 1:
        cs = [None] * world
        dist.all_gather_object(cs, summary["param_checksum"])
        summary["rank_checksums"] = cs
        summary["ranks_identical"] = len(set(cs)) == 1
    if rank == 0:
        writer.close()
        csv_f.close()
    save_atomic_text(out / f"summary_rank{rank}.json", json.dumps(summary))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def main(args: list[str] | None = None) -> dict:
    """CLI: ``python -m kinema4d.model.train {tiny,default,paper} [--field value ...]`` (tyro)."""
    import tyro

    cfg = tyro.extras.overridable_config_cli(PRESETS, args=args, description="Train the kinema4d world model")
    return train_main(cfg)


if __name__ == "__main__":
    main()
