"""The codecs between pixel videos and latents: ``PixelCodec`` (lossless space-to-depth, tiny models) and
``WanCodec`` (diffusers ``AutoencoderKLWan``: causal 3D, 4x temporal / 8x spatial). Both map pixel values in [0, 1]
(scaled to [-1, 1] inside) and share ``encode(video (B,3,T,H,W)) -> (B,C,t,h,w)`` / ``decode``; ``make_codec``
builds the one a ``ModelConfig`` names."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinema4d.model.config import ModelConfig


class PixelCodec(nn.Module):
    """Lossless spatial space-to-depth codec (temporal factor 1): (B,3,T,H,W) in [0,1] -> (B,3f^2,T,H/f,W/f) in
    [-1,1]. No parameters; ``decode(encode(x)) == x`` exactly for x in [0, 1]."""

    temporal_factor = 1

    def __init__(self, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.channels = 3 * factor * factor
        self.spatial_factor = factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = _check_video(video)
        x = (video * 2 - 1).transpose(1, 2).reshape(B * T, C, H, W)
        z = F.pixel_unshuffle(x, self.factor)
        return z.reshape(B, T, *z.shape[1:]).transpose(1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        B, C, t, h, w = z.shape
        x = F.pixel_shuffle(z.transpose(1, 2).reshape(B * t, C, h, w), self.factor)
        return ((x.reshape(B, t, *x.shape[1:]).transpose(1, 2) + 1) / 2).clamp(0, 1)


class WanCodec(nn.Module):
    """diffusers ``AutoencoderKLWan`` (causal 3D, 4x temporal, 8x spatial): (B,3,1+4k,H,W) in [0,1] -> posterior
    mean (B,z_dim,1+k,H/8,W/8). ``training_loss`` trains it (L1 reconstruction + small KL)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from diffusers import AutoencoderKLWan

        if cfg.codec_path is not None:
            if not (Path(cfg.codec_path) / "config.json").is_file():
                raise FileNotFoundError(f"no diffusers AutoencoderKLWan at {cfg.codec_path!r}; pretrained Wan VAE "
                                        "weights cannot be downloaded here: copy them to a local directory")
            self.vae = AutoencoderKLWan.from_pretrained(cfg.codec_path)
        else:
            self.vae = AutoencoderKLWan(
                base_dim=cfg.wan_base_dim, z_dim=cfg.wan_z_dim, dim_mult=list(cfg.wan_dim_mult),
                num_res_blocks=cfg.wan_num_res_blocks, temperal_downsample=list(cfg.wan_temperal_downsample),
            )
        # a pretrained Wan VAE comes with per-channel latent statistics (Wan's own normalization); apply them
        c = self.vae.config
        use = cfg.codec_path is not None and c.latents_mean is not None
        mean = torch.tensor(c.latents_mean if use else [0.0] * cfg.wan_z_dim).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.latents_std if use else [1.0] * cfg.wan_z_dim).view(1, -1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.channels = cfg.wan_z_dim
        self.temporal_factor = cfg.temporal_factor
        self.spatial_factor = cfg.spatial_factor

    def _check(self, video):
        T = _check_video(video)[2]
        if (T - 1) % self.temporal_factor:
            raise ValueError(f"WanCodec needs T = 1 + {self.temporal_factor}k frames, got {T}")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self._check(video)
        return (self.vae.encode(video * 2 - 1).latent_dist.mode() - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(z * self.std + self.mean).sample + 1) / 2).clamp(0, 1)

    def training_loss(self, video: torch.Tensor, kl_weight: float = 1e-6,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Autoencoder objective: L1(recon, x) + kl_weight * KL(q(z|x) || N(0, I)), x in [-1, 1]."""
        self._check(video)
        x = video * 2 - 1
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample(generator)).sample
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + kl_weight * kl
        return loss, {"codec_l1": float(l1.detach()), "codec_kl": float(kl.detach())}


def make_codec(cfg: ModelConfig) -> PixelCodec | WanCodec:
    return PixelCodec(cfg.pixel_factor) if cfg.codec == "pixel" else WanCodec(cfg)


def _check_video(video: torch.Tensor) -> tuple[int, int, int, int, int]:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video (B, 3, T, H, W), got shape {tuple(video.shape)}")
    return tuple(video.shape)


__all__ = ["PixelCodec", "WanCodec", "make_codec"]
