"""The backbone: diffusers ``WanTransformer3DModel`` (pinned diffusers==0.42.1), built from a config
(``make_backbone``) or loaded from a LOCAL directory and wrapped with peft LoRA (``load_pretrained_backbone``), and
its extensions by composition: a width-shared 3D RoPE replaces ``.rope`` (``SharedWidthRope``), RGB / XYZ domain
embeddings are added by a forward hook on ``.patch_embedding`` (``DomainEmbedding``), the Wan2.1-I2V
cross-attention splits image and context tokens at a known count (``ImageTextAttnProcessor``) and the image branch
reads the CLIP tokens of I0 (``ImageEncoder``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinema4d.model.config import ModelConfig


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


__all__ = [
    "SharedWidthRope", "DomainEmbedding", "ImageTextAttnProcessor", "make_backbone", "LORA_TARGETS",
    "load_pretrained_backbone", "ImageEncoder", "load_image_encoder", "config_from_backbone",
]
