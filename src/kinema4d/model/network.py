"""The 4D generative model of Kinema4D (Sec. 3.2, Supp. B.1): ``WorldModel``, a flow-matching diffusion transformer
that turns the initial image I0 + a robot pointmap video into an RGB video and a world pointmap video.

Layout (in the spirit of facebookresearch/DiT's models.py; the parts live in the sibling modules ``config``,
``codec``, ``backbone``, ``conditioning``, ``sampling`` and ``checkpoint``):

- conditioning exactly as Sec. 3.2: every video is RGB | pointmap concatenated along the WIDTH (4DNeX format), so
  a latent is (B, C, t, h, 2w) with the RGB half in columns [0, w) and the XYZ half in [w, 2w).
  backbone input = cat[noisy (C) | robot mask (4) | input latents (C)] (Wan2.1-I2V order, 36 channels for C=16).
- ``prepare`` builds those latents from pixel tensors; ``context`` the cross-attention tokens (with
  ``context="robot_latent"`` the robot latents reach cross-attention through a zero-initialized 1x1 conv + a
  projection to ``text_dim``); ``condition`` adds the robot-latent projection; ``velocity`` runs the backbone.
- ``initialize_weights`` is the one place that names every zero-initialized layer and says why.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinema4d.model.backbone import (
    DomainEmbedding,
    ImageTextAttnProcessor,
    SharedWidthRope,
    config_from_backbone,
    load_image_encoder,
    load_pretrained_backbone,
    make_backbone,
)
from kinema4d.model.conditioning import (
    RobotTokens,
    canonical_pointmap,
    changing_region,
    downsample_mask,
    release_downsample_mask,
    soften_mask,
)
from kinema4d.model.config import MASK_CHANNELS, ModelConfig, check_video_size


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
        if cfg.robot_fill:  # (3,) RGB in [0, 1], the robot's mean colour in the training data, saved with the model
            self.register_buffer("robot_colour", torch.full((3,), 0.5))
        self.initialize_weights(backbone_too=not pretrained)

    def initialize_weights(self, backbone_too: bool = True):
        """The one place that names every zero-initialized layer of the model, and why:

        - ``transformer.proj_out`` (from-scratch backbone only): zero, as DiT's final layer, so the initial velocity
          prediction is 0 and the first loss is E|eps - x0|^2.
        - ``domain.weight`` (:class:`~kinema4d.model.backbone.DomainEmbedding`, created as zeros): zero, so a
          pretrained backbone starts exactly unchanged (the halves are told apart as training makes the embeddings
          grow).
        - ``action_pos`` (the learned per-frame action position tokens, created as zeros): zero, so the action tokens
          start as the action MLP's output alone.
        - ``robot_tokens.proj`` (last Linear of the robot-token context) and ``robot_latent_proj`` (1x1x1 conv added
          to the XYZ input latents): zero, as in the released Kinema4D code, so both new paths start as no-ops and
          a pretrained backbone's behaviour is unchanged at step 0.
        - ``context_conv`` (1x1 conv on the robot latents): zero, ControlNet-style, so an untrained model's output
          does not depend on the robot context at all and no random noise flows through it in the first steps.
        - biases: zero for every Linear of a from-scratch backbone and for ``context_proj`` (DiT).

        Not zero: the from-scratch backbone's Linear layers and ``patch_embedding``, and ``context_proj``:
        Xavier-uniform (DiT); ``robot_tokens``' position tables: normal, std 0.02 (they must differ from token to
        token from the start, or the zero-init projection gets no gradient that tells positions apart); the learned
        image tokens (I2V blocks without an image encoder) and context tokens (``context="learned"``): normal, std
        0.02, so they differ from each other (zero tokens would stay identical, the attention over them uniform and
        ``attn2.to_q`` without gradient); ``action_mlp`` and ``robot_tokens.conv`` / ``.norm``: PyTorch's defaults,
        drawn when they are built in ``__init__``.

        The random draws below come first, in a fixed order (backbone, tokens, position tables, ``context_proj``):
        the seeded initial weights depend on it. The zero-inits draw nothing and follow in one block.
        """
        # -- random draws (this order is the RNG stream of a seeded model) --
        if backbone_too:
            for m in self.transformer.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            w = self.transformer.patch_embedding.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        # learned image / context tokens: normal, std 0.02. Identical tokens (all zero, say) stay identical (each
        # gets the same gradient) and make their attention uniform whatever the query, so the cross-attention
        # queries (attn2.to_q) would get no gradient from them, only float noise that Adam turns into lr-sized steps
        for tok in (self.image_tokens, self.learned_tokens):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)
        if self.robot_tokens is not None:
            for tab in self.robot_tokens.position_tables():
                nn.init.normal_(tab, std=0.02)
        if self.context_proj is not None:
            nn.init.xavier_uniform_(self.context_proj.weight)
            nn.init.zeros_(self.context_proj.bias)
        # -- every zero-initialized layer (the docstring says why); zeros draw nothing from the RNG --
        zero_init = [self.transformer.proj_out if backbone_too else None, self.domain,
                     None if self.robot_tokens is None else self.robot_tokens.proj, self.robot_latent_proj,
                     self.context_conv]
        for m in zero_init:
            if m is not None:
                for prm in m.parameters(recurse=False):  # weight and bias
                    nn.init.zeros_(prm)
        if self.action_pos is not None:
            nn.init.zeros_(self.action_pos)

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
        if cfg.robot_fill:  # the robot's pixels show its mean colour: the base holds the exact silhouette
            fill = self.robot_colour.to(first.dtype).view(1, 3, 1, 1, 1)
            first = torch.where(robot_mask[:, None] > 0.5, fill, first)
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
        if cfg.known_region != "none":  # latent positions off the changing region are known (the input latents)
            region = changing_region(robot_mask, held, cfg.known_dilate)  # (B, T, H, W) bool
            lat = downsample_mask(region.float(), codec.temporal_factor, codec.spatial_factor).amax(1, keepdim=True)
            out["known"] = torch.cat([lat, lat], dim=-1) < 0.5  # (B, 1, t, h, 2w) bool
            out["region"] = region
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
                image: torch.Tensor | None = None, known: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B,C,t,h,2w) noisy latents, t (B,) in [0,1] (noise level), cond (B,4+C,t,h,2w), context_input
        (``prepare()["context_input"]``), action (B,T,A), drop (B,) bool null condition, cond_null /
        context_input_null (``prepare(..., with_null=True)``) the robot-free inputs the dropped samples get
        (without them only the context is dropped), image (B,N,image_dim) image tokens, known (B,1,t,h,2w) bool
        (``prepare()["known"]``, ``known_region`` models) -> predicted velocity eps - x0 (B,C,t,h,2w).

        Shapes in the comments: K = ``in_channels`` - C condition channels (4 + C, + 8 + C with the held prior), Ci
        the channels of ``context_input`` (C, or 4 + C(+C) for robot tokens), L context tokens of width D
        (``text_dim``, or the transformer width for ``robot_token_space="inner"``)."""
        ctx = self.context(context_input, action, drop)  # (B, L, D)
        if drop is not None and cond_null is not None:  # the dropped samples get the robot-free inputs
            sel = drop.view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1) bool
            cond = torch.where(sel, cond_null.to(cond.dtype), cond)  # (B, K, t, h, 2w)
            context_input = torch.where(sel, context_input_null.to(context_input.dtype), context_input)  # (B,Ci,t,h,w)
        # a fresh tensor, not a view of the backbone's output: FSDP2 hooks the root module's output for backward
        return self.velocity(x_t, t, self.condition(cond, context_input), ctx, image, known).clone()  # (B,C,t,h,2w)

    def condition(self, cond: torch.Tensor, context_input: torch.Tensor) -> torch.Tensor:
        """``cond`` (B,4+C,t,h,2w) with, for ``robot_latent_proj`` models, the zero-init projection of the robot-only
        XYZ latents (``context_input`` channels [4, 4+C)) added to the XYZ half of the input latents; else
        ``cond``."""
        if self.robot_latent_proj is None:
            return cond
        C, w = self.cfg.latent_channels, cond.shape[-1] // 2
        r = context_input[:, MASK_CHANNELS:MASK_CHANNELS + C].to(self.robot_latent_proj.weight.dtype)  # (B,C,t,h,w)
        add = self.robot_latent_proj(r).to(cond.dtype)  # (B, C, t, h, w)
        # into columns [w, 2w), channels [4, 4+C) (the held-prior channels after them stay unchanged)
        return cond + F.pad(add, (w, 0, 0, 0, 0, 0, MASK_CHANNELS, cond.shape[1] - MASK_CHANNELS - C))  # (B,K,t,h,2w)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, context: torch.Tensor,
                 image: torch.Tensor | None = None, known: torch.Tensor | None = None) -> torch.Tensor:
        """As ``forward`` with precomputed cross-attention tokens ``context`` (B, L, text_dim) and image tokens
        ``image`` (B, N, image_dim; None = the learned tokens); where ``known`` (B, 1, t, h, 2w) is True the x0 is
        the input latents (x0_residual models). Inputs are cast to the backbone's dtype; the output
        has ``x_t``'s dtype. Shapes in the comments as in ``forward``."""
        # x_t (B, C, t, h, 2w), t (B,), cond (B, K, t, h, 2w), context (B, L, D)
        if x_t.shape[1] != self.cfg.latent_channels or cond.shape[1] != self.cfg.in_channels - x_t.shape[1]:
            raise ValueError(f"x_t {tuple(x_t.shape)} / cond {tuple(cond.shape)} do not match the config "
                             f"({self.cfg.latent_channels} + {self.cfg.in_channels - self.cfg.latent_channels} ch)")
        if self.cfg.output == "rgb_only":  # the XYZ half carries no signal: keep it at 0 in training and sampling
            w = x_t.shape[-1] // 2  # w: the width of one half
            x_t = torch.cat([x_t[..., :w], torch.zeros_like(x_t[..., w:])], dim=-1)  # (B, C, t, h, 2w)
        dt, img = self.param_dtype, None
        if self.cfg.image_dim is not None:
            if image is None:
                if self.image_tokens is None:
                    raise ValueError("this model encodes I0 with its image encoder: pass image (prepare()['image'])")
                image = self.image_tokens[None].expand(x_t.shape[0], -1, -1)  # (B, N, image_dim)
            img = image.to(dt)  # (B, N, image_dim)
            self.attn_split.image_tokens = img.shape[1]  # N image tokens first, then the L context tokens
        h = torch.cat([x_t, cond.to(x_t.dtype)], dim=1).to(dt)  # (B, C + K = in_channels, t, h, 2w)
        out = self.transformer(h, t * 1000, context.to(dt), encoder_hidden_states_image=img,
                               return_dict=False)[0].to(x_t.dtype)  # (B, C, t, h, 2w)
        if self.cfg.prediction != "velocity":  # x_t = (1-t) x0 + t eps  =>  eps - x0 = (x_t - x0) / t
            if self.cfg.prediction == "x0_residual":  # x0 (B, C, t, h, 2w) = input latents (cond[:, 4:4+C]) + out
                base = self.input_latents(cond).to(out.dtype)
                out = out + base  # (B, C, t, h, 2w)
                if known is not None:  # the known region's x0 is the input latents
                    out = torch.where(known, base, out)  # (B, C, t, h, 2w)
            tt = t.to(out.dtype).clamp(min=self.cfg.x0_t_min).view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
            out = (x_t - out) / tt  # (B, C, t, h, 2w)
        return out  # (B, C, t, h, 2w) velocity eps - x0

    def input_latents(self, cond: torch.Tensor) -> torch.Tensor:
        """The input latents (B, C, t, h, 2w) inside ``cond`` (B, K, t, h, 2w): channels [4, 4 + C), after the mask;
        the x0_residual base and, for ``known_region`` models, the x0 of the known positions."""
        return cond[:, MASK_CHANNELS:MASK_CHANNELS + self.cfg.latent_channels]

    def loss_weight(self, x0: torch.Tensor, xyz_weight: float = 1.0) -> torch.Tensor:
        """(1, 1, 1, 1, 2w) weights: 1 on the RGB half, ``xyz_weight`` on the XYZ half (0 for output='rgb_only')."""
        wt = torch.ones(x0.shape[-1], device=x0.device)
        wt[x0.shape[-1] // 2:] = 0.0 if self.cfg.output == "rgb_only" else xyz_weight
        return wt.view(1, 1, 1, 1, -1)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


__all__ = ["WorldModel"]
