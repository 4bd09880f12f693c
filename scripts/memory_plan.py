"""Print docs/MEMORY.md's GPU memory arithmetic for the released Kinema4D model (480x720 x 49 frames).

    .venv/bin/python scripts/memory_plan.py            # counts parameters from the model definitions (meta device)

Arithmetic, not a measurement: parameter counts come from the model definitions built on torch's meta device (no
weights, no memory): ``make_backbone(RELEASE_MODEL)`` for the Wan2.1-I2V-14B transformer, kinema4d's release
modules, diffusers' ``AutoencoderKLWan`` and transformers' ``CLIPVisionModel`` / ``UMT5EncoderModel`` with
Wan2.1-I2V-14B-480P's configs; the token count from ``latent_shapes``. Every GB figure is computed below from
those counts, the dtypes and the tensor sizes named beside it (GB = 10^9 bytes). The tables are the ones in
docs/MEMORY.md (``tests/test_memory_plan.py`` checks that the doc carries them).
"""

from __future__ import annotations

import json
import sys

GB = 1e9
BF16, FP32 = 2, 4
FRAMES, HEIGHT, WIDTH = 49, 480, 720
ADAMW_BYTES = 20  # per trainable parameter: fp32 weight + gradient + 2 Adam moments + EMA
ACT_TENSORS_ND, ACT_TENSORS_NF = 12, 2  # rough: activations kept per block for backward, N x D and N x FFN tensors
VAE_FEATURE_CHANNELS = 96  # the Wan VAE decoder's full-resolution width
VAE_FRAMES_PER_CHUNK = 4  # the causal decoder turns one latent frame into 4 frames
VAE_MAPS_ALIVE = (3, 6)  # an estimate: feature maps of one chunk alive at once (input, output, residual, caches)
GATHERED_BLOCKS = 2  # FSDP2: the current and the prefetched block, gathered in bf16


def count_parameters() -> dict:
    """Parameter counts and shapes of the released model, from the definitions on the meta device."""
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from kinema4d.model.backbone import LORA_TARGETS  # model definitions
    from kinema4d.model.config import RELEASE_MODEL, latent_shapes
    from kinema4d.model.network import WorldModel

    cfg = RELEASE_MODEL

    def n(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        wm = WorldModel(cfg)
        tr = wm.transformer
        vae = AutoencoderKLWan(base_dim=cfg.wan_base_dim, z_dim=cfg.wan_z_dim, dim_mult=list(cfg.wan_dim_mult),
                               num_res_blocks=cfg.wan_num_res_blocks)
        # Wan2.1-I2V-14B-480P's image_encoder (open-clip ViT-H/14) and text_encoder (UMT5-XXL) configs
        clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                num_attention_heads=16, image_size=224, patch_size=14,
                                                projection_dim=1024))
        umt5 = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                           num_heads=64, feed_forward_proj="gated-gelu"))
    lora = sum(cfg.lora_rank * (m.in_features + m.out_features) for name, m in tr.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in LORA_TARGETS))
    # submodules only: the learned image_tokens stand-in (a Parameter, not a module) is replaced by CLIP(I0)
    release = sum(n(m) for name, m in wm.named_children() if name != "transformer")
    shapes = latent_shapes(cfg, FRAMES, HEIGHT, WIDTH)
    return {"transformer": n(tr), "block": n(tr.blocks[0]), "blocks": len(tr.blocks), "lora": lora,
            "release_modules": release, "clip": n(clip), "vae": n(vae), "umt5": n(umt5),
            "tokens": shapes["tokens"][1], "latent": list(shapes["latent"][2:]), "context": shapes["context"][1],
            "clip_tokens": (224 // 14) ** 2 + 1, "width": cfg.num_attention_heads * cfg.attention_head_dim,
            "heads": cfg.num_attention_heads, "ffn": cfg.ffn_dim}


def _b(p: float) -> str:
    return f"{p / 1e9:.2f} B" if p >= 1e8 else f"{p / 1e6:.1f} M"


def _g(x: float) -> str:
    return f"{x / GB:.2f}" if x < GB else f"{x / GB:.1f}"


def plan(c: dict) -> dict:
    """Every GB figure of docs/MEMORY.md from the counts of :func:`count_parameters` (bytes)."""
    N, D, F, L = c["tokens"], c["width"], c["ffn"], c["blocks"]
    t = {}
    t["weights_bf16"], t["weights_fp32"] = c["transformer"] * BF16, c["transformer"] * FP32
    t["block_bf16"] = c["block"] * BF16
    t["lora_bf16"] = c["lora"] * BF16
    t["clip_vae_inference"] = c["clip"] * BF16 + c["vae"] * FP32
    # inference activations, one block at a time, no grad
    t["hidden"] = N * D * BF16
    t["norm_fp32"] = N * D * FP32
    t["qkvo"] = 4 * N * D * BF16
    t["ffn"] = 2 * N * F * BF16
    t["act_inference"] = t["hidden"] + t["norm_fp32"] + t["qkvo"] + t["ffn"]
    t["vae_map"] = VAE_FEATURE_CHANNELS * VAE_FRAMES_PER_CHUNK * HEIGHT * 2 * WIDTH * FP32
    t["vae_decode"] = tuple(k * t["vae_map"] for k in VAE_MAPS_ALIVE)
    base = t["weights_bf16"] + t["lora_bf16"] + t["clip_vae_inference"] + t["act_inference"]
    t["inference_total"] = tuple(base + v for v in t["vae_decode"])
    t["umt5_bf16"] = c["umt5"] * BF16
    t["sdpa_math_head"] = N * N * BF16
    t["sdpa_math_layer"] = t["sdpa_math_head"] * c["heads"]
    # training
    t["trainable"] = c["lora"] + c["release_modules"]
    t["optimizer"] = t["trainable"] * ADAMW_BYTES
    t["act_block"] = N * (ACT_TENSORS_ND * D + ACT_TENSORS_NF * F) * BF16
    t["act_all"] = L * t["act_block"]
    t["ckpt_inputs"] = L * N * D * BF16
    t["act_ckpt"] = t["ckpt_inputs"] + t["act_block"]
    t["clip_vae_training"] = (c["clip"] + c["vae"]) * FP32
    t["root"] = c["transformer"] - L * c["block"]
    t["root_bf16"] = t["root"] * BF16
    rows = []
    for gpus, ckpt in ((1, False), (1, True), (8, False), (8, True), (4, True)):
        act = t["act_ckpt"] if ckpt else t["act_all"]
        if gpus == 1:
            w = t["weights_fp32"]
            wtxt = _g(w)
        else:
            gathered = GATHERED_BLOCKS * t["block_bf16"]
            w = t["weights_fp32"] / gpus + gathered + t["root_bf16"]
            wtxt = f"{_g(t['weights_fp32'])} / {gpus} = {_g(t['weights_fp32'] / gpus)}, + {GATHERED_BLOCKS} " \
                   f"gathered blocks {_g(gathered)}, + root {_g(t['root_bf16'])}"
        opt = t["optimizer"] / gpus
        total = w + opt + act + t["clip_vae_training"]
        rows.append({"gpus": gpus, "ckpt": ckpt, "weights": wtxt, "optimizer": opt, "act": act, "total": total})
    t["training"] = rows
    return t


def tables(c: dict) -> list[str]:
    """docs/MEMORY.md's tables and figures, one markdown line each."""
    t = plan(c)
    lines = [
        "| part | parameters | bf16 GB | fp32 GB |",
        "|---|---|---|---|",
        f"| Wan2.1-I2V transformer ({c['blocks']} blocks of width {c['width']}, FFN {c['ffn']}, I2V image branch) | "
        f"{_b(c['transformer'])} | {_g(t['weights_bf16'])} | {_g(t['weights_fp32'])} |",
        f"| of which one transformer block | {_b(c['block'])} | {_g(t['block_bf16'])} | {_g(c['block'] * FP32)} |",
        f"| of which outside the blocks (patch / time / image embedders, output head) | {_b(t['root'])} | "
        f"{_g(t['root_bf16'])} | {_g(t['root'] * FP32)} |",
        f"| LoRA rank 64 on to_q / to_k / to_v / to_out of both attentions | {_b(c['lora'])} | "
        f"{_g(t['lora_bf16'])} | {_g(c['lora'] * FP32)} |",
        f"| release modules (robot tokens, robot-latent projection, domain embeddings) | "
        f"{_b(c['release_modules'])} | - | {_g(c['release_modules'] * FP32)} |",
        f"| CLIP ViT-H/14 vision tower (image branch: {c['clip_tokens']} tokens of I0) | {_b(c['clip'])} | "
        f"{_g(c['clip'] * BF16)} | {_g(c['clip'] * FP32)} |",
        f"| Wan VAE (kept in fp32) | {_b(c['vae'])} | - | {_g(c['vae'] * FP32)} |",
        f"| UMT5-XXL text encoder (never loaded by kinema4d) | {_b(c['umt5'])} | {_g(t['umt5_bf16'])} | - |",
        "",
        f"sequence: {FRAMES} frames of {HEIGHT}x{WIDTH} -> latent {' x '.join(map(str, c['latent']))} (RGB | XYZ) "
        f"-> N = {c['tokens']:,} tokens of width D = {c['width']}; context {c['clip_tokens']} CLIP + "
        f"{c['context']} robot tokens",
        "",
        "| inference item | GB |",
        "|---|---|",
        f"| transformer weights (bf16) | {_g(t['weights_bf16'])} |",
        f"| LoRA (unfused, bf16) | {_g(t['lora_bf16'])} |",
        f"| CLIP vision tower (bf16) + VAE (fp32) | {_g(t['clip_vae_inference'])} |",
        f"| transformer activations, no grad, one block at a time: hidden N x D x 2 B {_g(t['hidden'])} + fp32 "
        f"norm copy {_g(t['norm_fp32'])} + q, k, v, attention output 4 x {_g(t['hidden'])} + FFN 2 x N x "
        f"{c['ffn']} x 2 B {_g(t['ffn'])} | {_g(t['act_inference'])} |",
        f"| VAE decode (estimate): {VAE_FEATURE_CHANNELS} channels x {VAE_FRAMES_PER_CHUNK} frames x {HEIGHT} x "
        f"{2 * WIDTH} x 4 B = {_g(t['vae_map'])} per full-resolution feature map, {VAE_MAPS_ALIVE[0]}-"
        f"{VAE_MAPS_ALIVE[1]} alive | {_g(t['vae_decode'][0])}-{_g(t['vae_decode'][1])} |",
        f"| **total** | **{_g(t['inference_total'][0])}-{_g(t['inference_total'][1])}** |",
        "",
        f"plain-math attention: N^2 x 2 B = {_g(t['sdpa_math_head'])} GB per head, {_g(t['sdpa_math_layer'])} GB "
        f"per layer ({c['heads']} heads); with the text encoder: {_g(t['inference_total'][1])} + "
        f"{_g(t['umt5_bf16'])} = {_g(t['inference_total'][1] + t['umt5_bf16'])} GB",
        "",
        f"training: trainable {_b(t['trainable'])} x {ADAMW_BYTES} B = {_g(t['optimizer'])} GB; activations "
        f"N x ({ACT_TENSORS_ND} x {c['width']} + {ACT_TENSORS_NF} x {c['ffn']}) x 2 B = {_g(t['act_block'])} GB "
        f"per block, {_g(t['act_all'])} GB for {c['blocks']}; checkpointed: block inputs {c['blocks']} x "
        f"{_g(t['hidden'])} = {_g(t['ckpt_inputs'])} + one block {_g(t['act_block'])} = {_g(t['act_ckpt'])} GB; "
        f"CLIP + VAE fp32 {_g(t['clip_vae_training'])} GB",
        "",
        "| setup | weights | LoRA + optimizer + EMA | activations | CLIP + VAE | total | fits 80 GB? |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in t["training"]:
        setup = f"{r['gpus']} GPU{'s' if r['gpus'] > 1 else ''}" + (", FSDP2" if r["gpus"] > 1 else "") + \
                ((" + " if r["gpus"] > 1 else ", ") + "gradient checkpointing" if r["ckpt"] else ", no checkpointing")
        lines.append(f"| {setup} | {r['weights']} | {_g(r['optimizer'])} | {_g(r['act'])} | "
                     f"{_g(t['clip_vae_training'])} | {_g(r['total'])} | {'yes' if r['total'] < 80 * GB else 'no'} |")
    return lines


def main(argv: list[str]) -> None:
    counts = json.loads(open(argv[argv.index("--counts") + 1]).read()) if "--counts" in argv else count_parameters()
    if "--json" in argv:
        print(json.dumps(counts))
        return
    print("\n".join(tables(counts)))


if __name__ == "__main__":
    main(sys.argv[1:])
