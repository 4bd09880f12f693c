"""Latent statistics (``compute_latent_stats``, Supp. B.1) and a model's save / load: a directory of
``model.safetensors`` (+ ``codec.safetensors``) + ``model_config.json`` (``save_model`` / ``load_model``;
``load_state`` reports missing / unexpected / mis-shaped tensors and maps old tensor names)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from kinema4d.model.codec import PixelCodec, WanCodec, make_codec
from kinema4d.model.config import RENAMED_STATE_KEYS, ModelConfig
from kinema4d.model.network import WorldModel


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


__all__ = ["compute_latent_stats", "state_to_save", "save_model", "load_model", "load_state"]
