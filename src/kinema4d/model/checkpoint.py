"""The files of the model stage (safetensors + JSON, never pickle): latent statistics (``compute_latent_stats``,
Supp. B.1); a model directory of ``model.safetensors`` (+ ``codec.safetensors``) + ``model_config.json``
(``save_model`` / ``load_model``; ``load_state`` reports missing / unexpected / mis-shaped tensors and maps old
tensor names); and the training checkpoints.

A training checkpoint is a directory ``<out_dir>/ckpt/step_XXXXXXX/``: ``model.safetensors``, ``ema.safetensors``,
``codec.safetensors``, ``optimizer.safetensors`` + ``optimizer.json``, ``rng.safetensors``, ``state.json`` (step,
RNG of python / numpy), ``model_config.json``, ``train_config.json``; ``<out_dir>/ckpt/latest.json`` names the
newest (``save_checkpoint`` / ``latest_checkpoint`` / ``load_checkpoint``; FSDP2 gathers its optimizer state with
``fsdp_optimizer_to_files``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from kinema4d.geometry import save_atomic_text
from kinema4d.model.codec import PixelCodec, WanCodec, make_codec
from kinema4d.model.config import RENAMED_STATE_KEYS, ModelConfig
from kinema4d.model.network import WorldModel
from kinema4d.model.train_config import TrainConfig


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


def robot_mean_colour(batches) -> torch.Tensor:
    """(3,) mean RGB in [0, 1] of the robot's pixels (``robot_mask`` > 0.5) in ``batches`` (dicts with ``rgb``
    (B,T,3,H,W) and ``robot_mask`` (B,T,H,W)), for ``WorldModel.robot_colour`` (``ModelConfig.robot_fill``)."""
    total, n = torch.zeros(3, dtype=torch.float64), 0
    for b in batches:
        m = (b["robot_mask"] > 0.5)[:, :, None]  # (B, T, 1, H, W)
        total += (b["rgb"].double() * m).sum(dim=(0, 1, 3, 4)).cpu()
        n += int(m.sum())
    if n == 0:
        raise ValueError("robot_mean_colour: no robot pixels in the samples (robot_mask is empty everywhere)")
    return (total / n).float()


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


# ----------------------------------------------------------------------------------------------------------------
# Training checkpoints (safetensors + JSON)
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


__all__ = [
    "compute_latent_stats", "robot_mean_colour", "state_to_save", "save_model", "load_model", "load_state",
    "save_checkpoint",
    "latest_checkpoint", "RECIPE_FIELDS", "load_checkpoint", "fsdp_optimizer_to_files", "fsdp_optimizer_from_files",
]
