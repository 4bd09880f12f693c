"""The released Kinema4D checkpoint (public repository ``mutianxu/Kinema4D``) running in kinema4d.

    model, codec, info = load_release("ckpt_dir", "Wan2.1-I2V-14B-480P-Diffusers", device="cuda", dtype="bf16")

``ckpt_dir`` holds the two release files:

- ``pytorch_lora_weights.safetensors``: diffusers/peft LoRA of the Wan2.1-I2V transformer, keys as diffusers'
  ``save_lora_weights`` writes them (``transformer.blocks.N.attnK.to_q.lora_A.weight`` / ``lora_B``).
- ``added_weights.safetensors``: the modules the release adds to the transformer, mapped onto ours:

  | release key | kinema4d module | shape at 480x720 x 49 |
  |---|---|---|
  | ``learnable_domain_embeddings`` | ``domain.weight`` | (2, 5120) |
  | ``patch_embedding_arm.{weight,bias}`` | ``robot_tokens.conv`` | (128, 20, 1, 15, 15) |
  | ``arm_ln.{weight,bias}`` | ``robot_tokens.norm`` | (128,) |
  | ``arm_pos_emb`` | ``robot_tokens.pos`` (dense) | (1, 128, 13, 4, 6) |
  | ``arm_patch_proj.{weight,bias}`` | ``robot_tokens.proj`` | (5120, 128) |
  | ``arm_cond_proj.{weight,bias}`` | ``robot_latent_proj`` (a Linear 16 -> 16 as a 1x1x1 conv) | (16, 16) |

``backbone`` is a LOCAL diffusers Wan2.1-I2V directory with ``transformer/``, ``vae/`` and ``image_encoder/``
(``transformers.CLIPVisionModel``). Nothing is downloaded. Every missing file, unknown / missing key and shape
mismatch is a ``FileNotFoundError`` / ``ValueError`` that names it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from kinema4d.model.backbone import LORA_TARGETS, load_pretrained_backbone
from kinema4d.model.codec import WanCodec
from kinema4d.model.config import RELEASE_MODEL, ModelConfig
from kinema4d.model.network import WorldModel

LORA_FILE = "pytorch_lora_weights.safetensors"
ADDED_FILE = "added_weights.safetensors"
RELEASE_FILES = (LORA_FILE, ADDED_FILE)
BACKBONE_PARTS = ("transformer", "vae", "image_encoder")
# the release normalizes its pointmap latents (after the Wan VAE's own per-channel normalization) by these
POINTMAP_LATENT_MEAN, POINTMAP_LATENT_STD = -0.17, 1.36
# the release's inference fuses the LoRA with this scale (on top of alpha / rank from the file's metadata, if any)
RELEASE_LORA_SCALE = 0.5
# release key -> (our parameter name, transform of the release tensor into our layout)
ADDED_MAP = {
    "learnable_domain_embeddings": ("domain.weight", None),
    "patch_embedding_arm.weight": ("robot_tokens.conv.weight", None),
    "patch_embedding_arm.bias": ("robot_tokens.conv.bias", None),
    "arm_ln.weight": ("robot_tokens.norm.weight", None),
    "arm_ln.bias": ("robot_tokens.norm.bias", None),
    "arm_pos_emb": ("robot_tokens.pos", None),
    "arm_patch_proj.weight": ("robot_tokens.proj.weight", None),
    "arm_patch_proj.bias": ("robot_tokens.proj.bias", None),
    "arm_cond_proj.weight": ("robot_latent_proj.weight", lambda w: w[:, :, None, None, None]),
    "arm_cond_proj.bias": ("robot_latent_proj.bias", None),
}


def is_release_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory with the release files (and no kinema4d model_config.json)."""
    p = Path(path)
    return p.is_dir() and not (p / "model_config.json").is_file() and any((p / f).is_file() for f in RELEASE_FILES)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"release checkpoint file missing: {path} (the release ships "
                                f"{' + '.join(RELEASE_FILES)})")
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _lora_alpha(meta: dict, rank: int) -> float:
    """alpha of the LoRA file: diffusers' ``lora_adapter_metadata`` if written, else rank (peft's default)."""
    raw = meta.get("lora_adapter_metadata")
    if raw:
        d = json.loads(raw)
        for k in ("transformer.lora_alpha", "lora_alpha"):
            if k in d:
                return float(d[k])
    return float(rank)


def release_config(checkpoint: str | os.PathLike, backbone: str | os.PathLike,
                   base: ModelConfig = RELEASE_MODEL, lora_scale: float = RELEASE_LORA_SCALE) -> ModelConfig:
    """The ModelConfig of a release checkpoint on a local Wan2.1-I2V diffusers dir: ``base`` with the local paths
    and the LoRA rank / robot-token shapes read from the files (so a smaller or custom release loads too)."""
    ck, bb = Path(checkpoint), Path(backbone)
    for part in BACKBONE_PARTS:
        if not (bb / part / "config.json").is_file():
            raise FileNotFoundError(f"{bb / part / 'config.json'} is missing: --backbone must be a LOCAL diffusers "
                                    f"Wan2.1-I2V directory with {', '.join(p + '/' for p in BACKBONE_PARTS)} (e.g. "
                                    "Wan2.1-I2V-14B-480P-Diffusers; weights cannot be downloaded here)")
    lora, meta = _read(ck / LORA_FILE)
    added, _ = _read(ck / ADDED_FILE)
    a_keys = sorted(k for k in lora if k.endswith("lora_A.weight"))
    if not a_keys:
        raise ValueError(f"{ck / LORA_FILE} holds no '*.lora_A.weight' tensors (keys: {sorted(lora)[:5]})")
    rank = int(lora[a_keys[0]].shape[0])
    added = {k.removeprefix("transformer."): v for k, v in added.items()}
    if "patch_embedding_arm.weight" not in added or "arm_pos_emb" not in added:
        raise ValueError(f"{ck / ADDED_FILE} lacks patch_embedding_arm.weight / arm_pos_emb (keys: {sorted(added)})")
    conv, pos = added["patch_embedding_arm.weight"], added["arm_pos_emb"]
    if conv.ndim != 5 or conv.shape[3] != conv.shape[4] or pos.ndim != 5:
        raise ValueError(f"{ck / ADDED_FILE}: patch_embedding_arm.weight {tuple(conv.shape)} / arm_pos_emb "
                         f"{tuple(pos.shape)} are not a (dim, in, 1, p, p) conv and a (1, dim, t, h, w) table")
    return dataclasses.replace(
        base, backbone_path=str(bb / "transformer"), codec_path=str(bb / "vae"),
        image_encoder_path=str(bb / "image_encoder"), lora_rank=rank,
        lora_alpha=lora_scale * _lora_alpha(meta, rank), robot_token_dim=int(conv.shape[0]),
        robot_token_patch=int(conv.shape[3]), robot_token_pos="dense", robot_token_grid=tuple(pos.shape[2:]),
        max_frames=max(base.max_frames, int(pos.shape[2])))


def load_release_weights(model: WorldModel, checkpoint: str | os.PathLike) -> dict[str, str]:
    """Copy both release files into ``model`` (built from :func:`release_config`). Returns {release key: our
    parameter name} for every tensor loaded; raises ValueError naming unknown, missing or mis-shaped tensors."""
    ck = Path(checkpoint)
    own = dict(model.named_parameters())
    lora, _ = _read(ck / LORA_FILE)
    added, _ = _read(ck / ADDED_FILE)
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    unknown = []
    for k, v in lora.items():  # transformer.blocks.0.attn1.to_q.lora_A.weight -> ...lora_A.default.weight
        name = k if k.startswith("transformer.") else f"transformer.{k}"
        name = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight",
                                                                                ".lora_B.default.weight")
        (plan.__setitem__(k, (name, v)) if name in own else unknown.append(f"{LORA_FILE}:{k}"))
    for k, v in added.items():
        key = k.removeprefix("transformer.")
        if key not in ADDED_MAP or ADDED_MAP[key][0] not in own:
            unknown.append(f"{ADDED_FILE}:{k}")
            continue
        name, fn = ADDED_MAP[key]
        plan[k] = (name, fn(v) if fn is not None else v)
    if unknown:
        raise ValueError(f"release tensors with no place in the model (LoRA targets {LORA_TARGETS}, added modules "
                         f"{sorted(ADDED_MAP)}): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    bad = [f"{k} {tuple(v.shape)} -> {n} {tuple(own[n].shape)}" for k, (n, v) in plan.items()
           if own[n].shape != v.shape]
    if bad:
        raise ValueError(f"release tensors whose shapes do not match the model: {bad[:8]}")
    wanted = {n for n in own if ".lora_" in n} | {n for n, _ in ADDED_MAP.values() if n in own}
    missing = sorted(wanted - {n for n, _ in plan.values()})
    if missing:
        raise ValueError(f"the release files {ck / LORA_FILE} / {ck / ADDED_FILE} lack tensors for: {missing[:8]}")
    with torch.no_grad():
        for n, v in plan.values():
            own[n].copy_(v.to(own[n].dtype))
    return {k: n for k, (n, _) in plan.items()}


def load_release(checkpoint: str | os.PathLike, backbone: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype | None = None, base: ModelConfig = RELEASE_MODEL,
                 lora_scale: float = RELEASE_LORA_SCALE) -> tuple[WorldModel, WanCodec, dict]:
    """Build the release model on the local backbone and load both release files -> (model, codec, info), in eval
    mode on ``device`` (auto | cpu | cuda[:N]); ``dtype`` (e.g. "bf16") casts the model (the VAE stays float32).

    ``info``: ``size`` (H, W) and ``frames`` the dense robot-position table fixes (480x720 and 49 for the release),
    ``loaded`` {release key: our parameter}."""
    from kinema4d.model.device import parse_dtype, resolve_device

    dev, dt = resolve_device(device), parse_dtype(dtype)
    cfg = release_config(checkpoint, backbone, base, lora_scale)
    model = WorldModel(cfg, backbone=load_pretrained_backbone(cfg.backbone_path, cfg.lora_rank, cfg.lora_alpha,
                                                              torch_dtype=dt))  # dt: half the host RAM of fp32
    loaded = load_release_weights(model, checkpoint)
    model.latent_stats.copy_(torch.tensor([[0.0, 1.0], [POINTMAP_LATENT_MEAN, POINTMAP_LATENT_STD]]))
    codec = WanCodec(cfg)
    t, h, w = cfg.robot_token_grid
    sf, p = codec.spatial_factor, cfg.robot_token_patch
    info = {"size": (h * p * sf, w * p * sf), "frames": 1 + (t - 1) * codec.temporal_factor, "loaded": loaded}
    return model.to(device=dev, dtype=dt).eval(), codec.to(dev).eval(), info


__all__ = ["LORA_FILE", "ADDED_FILE", "RELEASE_FILES", "ADDED_MAP", "is_release_checkpoint", "release_config",
           "load_release_weights", "load_release"]
