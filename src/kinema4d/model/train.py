"""Training of the 4D world model (flow matching) on ``--device auto|cpu|cuda[:N]``: single process, or under
torchrun DDP (``--sharding ddp``) or FSDP2 (``--sharding fsdp2``; gloo on the CPU, nccl with CUDA tensors).

    python -m kinema4d.model.train tiny --out-dir runs/tiny             # presets: tiny | default | paper | release
    torchrun --nproc_per_node 2 -m kinema4d.model.train tiny --steps 4
    python -m kinema4d.model.train default --data data/robo --resume

The recipes are in :mod:`.train_config`, the datasets in :mod:`.datasets`, the checkpoint files in
:mod:`.checkpoint`; here: the loop, DDP / FSDP2 and validation. Every training step is a pure function of
(weights, step): batch indices, t, noise and CFG drops come from generators seeded with (seed, step) for the
global batch (each rank takes its rows) and the soft mask from (seed, step, rank), so a resumed run follows the
same loss trajectory as an uninterrupted one, and (without the soft mask) the number of ranks does not change it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kinema4d.data.episodes import model_inputs
from kinema4d.geometry import save_atomic_text
from kinema4d.interactive.media import video_to_uint8, write_video
from kinema4d.model.checkpoint import (
    compute_latent_stats,
    fsdp_optimizer_from_files,
    fsdp_optimizer_to_files,
    latest_checkpoint,
    load_checkpoint,
    robot_mean_colour,
    save_checkpoint,
)
from kinema4d.model.codec import make_codec
from kinema4d.model.config import latent_shapes
from kinema4d.model.datasets import CachedCodec, PreloadedEpisodes, make_dataset, make_val_dataset
from kinema4d.model.network import WorldModel
from kinema4d.model.sampling import flow_matching_loss, sample, sample_timesteps
from kinema4d.model.train_config import PRESETS, TrainConfig

# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


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


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to ``cfg.lr``, then constant or cosine decay to 0 at ``cfg.steps``."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, p)))


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
            n_stats = min(len(dataset), cfg.stats_samples)  # the first n_stats training items, one at a time
            model.latent_stats.copy_(compute_latent_stats(
                codec, (_to_device(model_inputs(cfg.model, _collate([dataset[i]])), dev) for i in range(n_stats)),
                cfg.stats_samples))
            if cfg.model.robot_fill:  # rgb and robot_mask only: the raw items (model_inputs leaves both as they are)
                model.robot_colour.copy_(robot_mean_colour(_collate([dataset[i]]) for i in range(n_stats)))
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
