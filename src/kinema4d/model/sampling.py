"""Flow matching: x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0 (rectified flow; the convention of
diffusers' ``FlowMatchEulerDiscreteScheduler``, which ``sample`` uses). The training loss (``flow_matching_loss``),
its noise levels (``sample_timesteps``) and the Simulator-ready sampler (``sample``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from kinema4d.model.config import latent_shapes
from kinema4d.model.network import WorldModel


def flow_matching_loss(model: nn.Module, wm: WorldModel, batch: dict, t: torch.Tensor, noise: torch.Tensor,
                       drop: torch.Tensor | None = None, xyz_weight: float = 1.0) -> torch.Tensor:
    """Rectified-flow loss: x_t = (1-t) x0 + t noise; MSE(model(x_t), noise - x0), the XYZ half weighted by
    ``xyz_weight`` (a weighted mean: the RGB and XYZ halves count 1 : xyz_weight). ``model`` may be the DDP
    wrapper of ``wm``; ``batch`` is the output of ``WorldModel.prepare`` (with ``cond_null`` /
    ``context_input_null`` the dropped samples get the robot-free inputs too, not only the null context; with
    ``known`` the known positions, whose x0 is the input, carry no loss and are left out of the mean)."""
    x0 = batch["x0"]
    tt = t.view(-1, 1, 1, 1, 1).to(x0.dtype)
    x_t = (1 - tt) * x0 + tt * noise
    v = model(x_t, t, batch["cond"], batch["context_input"], batch.get("action"), drop, batch.get("cond_null"),
              batch.get("context_input_null"), batch.get("image"), batch.get("known"))
    wt = wm.loss_weight(x0, xyz_weight)
    if batch.get("known") is not None:
        wt = wt * (~batch["known"]).to(wt.dtype)  # (B, 1, t, h, 2w)
        return (((v.float() - (noise - x0)) ** 2) * wt).sum() / wt.expand(x0.shape).sum().clamp_min(1.0)
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
    applied. ``known_region`` models keep their input off the changing region (I0 and the frame-0 pointmap) and, for
    condition="pointmap", the robot pointmap on the robot's XYZ pixels (``ModelConfig.known_region``). Runs on the
    model's device (inputs are moved there); returns float32 CPU tensors. The same seed gives the same output.
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
        v = model.velocity(x, t, cond, ctx, img, prep.get("known"))
        if cfg_scale != 1.0:
            v_u = model.velocity(x, t, cond_null, ctx_null, img, prep.get("known"))
            v = v_u + cfg_scale * (v - v_u)
        if x0_model and float(sched.sigmas[i + 1]) < model.cfg.x0_t_min:
            # x0-prediction: below x0_t_min the velocity's clamped t would under-denoise each step, and the backbone
            # never saw such noise levels (logit-normal t); so the last step returns its x0 = x_t - max(t, t_min) v
            x = x - t.clamp(min=model.cfg.x0_t_min).view(-1, 1, 1, 1, 1) * v
            break
        x = sched.step(v, ts, x, return_dict=False)[0]
    video = codec.decode(model.denormalize(x).float())[0].transpose(0, 1).float().cpu()  # (T, 3, H, 2W)
    if "region" in prep:  # known_region: what the inputs already give, exactly
        given = codec.decode(model.denormalize(model.input_latents(prep["cond"])).float())
        given = given[0].transpose(0, 1).float().cpu()  # (T, 3, H, 2W): [I0 (+ fill, prior) | input pointmap]
        reg = prep["region"][0, :, None].cpu()  # (T, 1, H, W)
        # off the changing region: I0 and the frame-0 pointmap; on the robot's pixels: its pointmap (kinematics)
        robot = robot_mask[:, None].cpu() > 0.5 if model.cfg.condition == "pointmap" else torch.zeros_like(reg)
        keep = torch.cat([reg, reg & ~robot], dim=-1)  # (T, 1, H, 2W)
        video = torch.where(keep, video, given)
    model.train(was_training)
    rgb, wpm = video[..., :W], video[..., W:]
    return rgb, (None if model.cfg.output == "rgb_only" else wpm)


__all__ = ["flow_matching_loss", "sample_timesteps", "sample"]
