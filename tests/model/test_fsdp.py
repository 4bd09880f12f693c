"""FSDP2 (torch fully_shard) under torchrun with 2 CPU processes (gloo): 3 steps of a tiny Wan2.1-I2V-shaped model
(2 steps, then resumed from the gathered checkpoint with its optimizer state) give the losses and the weights of a
single-process run on the same data."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from kinema4d.model.backbone import make_backbone
from kinema4d.model.network import WorldModel
from kinema4d.model.train import train_main
from kinema4d.model.train_config import PRESETS

torch.set_num_threads(1)
# the tiny preset with I2V blocks (image branch + learned image tokens) loaded from a local dir and trained through
# LoRA with gradient checkpointing, as the 14B path runs; a binary mask (the soft mask's positions are drawn per
# rank) and many CFG drops (the null condition is exercised)
ARGS = ["--steps", "3", "--batch-size", "4", "--no-progress", "--val-steps", "1", "--sharding", "fsdp2",
        "--model.image-dim", "32", "--model.added-kv-proj-dim", "128", "--model.mask", "binary", "--p-uncond", "0.5",
        "--model.lora-rank", "4", "--gradient-checkpointing"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_two_gloo_ranks_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = PRESETS["tiny"][1]
    model_cfg = dataclasses.replace(tiny.model, image_dim=32, added_kv_proj_dim=128, mask="binary", lora_rank=4)
    make_backbone(model_cfg).save_pretrained(tmp_path / "backbone")
    model_cfg = dataclasses.replace(model_cfg, backbone_path=str(tmp_path / "backbone"))
    losses = []
    for extra in (["--stop-at", "2"], ["--resume"]):  # 2 steps, then resumed from the gathered checkpoint to 3
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "kinema4d.model.train", "tiny", "--out-dir",
               str(tmp_path / "fsdp"), *ARGS, "--model.backbone-path", str(tmp_path / "backbone"), *extra]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        s0, s1 = (json.loads((tmp_path / "fsdp" / f"summary_rank{r}.json").read_text()) for r in (0, 1))
        assert s0["world_size"] == 2 and s0["ranks_identical"] and s0["losses"] == s1["losses"]
        losses += s0["losses"]

    one = dataclasses.replace(tiny, out_dir=str(tmp_path / "one"), steps=3, batch_size=4, progress=False,
                              val_steps=1, sharding="fsdp2", p_uncond=0.5, gradient_checkpointing=True,
                              model=model_cfg)
    s = train_main(one)
    assert s["world_size"] == 1 and len(s["losses"]) == 3 and s["num_trainable"] < s["num_params"] / 2  # LoRA
    assert losses == pytest.approx(s["losses"], rel=1e-5)
    a = load_file(str(tmp_path / "fsdp" / "ckpt" / "step_0000003" / "model.safetensors"))  # gathered shards
    b = load_file(str(tmp_path / "one" / "ckpt" / "step_0000003" / "model.safetensors"))
    assert a.keys() == b.keys()
    # every weight, the cross-attention queries (attn2.to_q LoRA) included: they get a true gradient from step 0 on
    # because the learned image tokens start distinct (test_learned_tokens_give_the_queries_a_gradient). The largest
    # difference (~2e-6, attn2.to_k) is step 0's: the zero-init robot context makes every text token the same, so
    # the keys' true gradient is 0 for one step and Adam scales its float noise by 1 / eps
    assert any("attn2.to_q.lora_B" in k for k in a)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 5e-5, worst
    assert (tmp_path / "fsdp" / "val" / "step_0000003.mp4").is_file()
    # the Adam moments survived the resume: the gathered state equals the single process's (its ids number the
    # trainable parameters in named_parameters order)
    oa = load_file(str(tmp_path / "fsdp" / "ckpt" / "step_0000003" / "optimizer.safetensors"))
    ob = load_file(str(tmp_path / "one" / "ckpt" / "step_0000003" / "optimizer.safetensors"))
    names = [n for n, p in WorldModel(one.model).named_parameters() if p.requires_grad]
    assert len(names) == len([k for k in oa if k.endswith("|exp_avg_sq")]) == len([k for k in ob
                                                                                   if k.endswith(".exp_avg_sq")])
    for pid, n in enumerate(names):
        assert torch.allclose(oa[f"{n}|exp_avg_sq"], ob[f"{pid}.exp_avg_sq"], rtol=1e-3, atol=1e-12), n


def test_fsdp2_bf16_gathers_bf16_and_matches_autocast(tmp_path):
    """precision=bf16 under FSDP2 with a CLIP image encoder (the `release` preset's setup): fp32 shards gathered in
    bf16 (MixedPrecisionPolicy) give the losses of one process with fp32 weights under bf16 autocast, to bf16
    rounding; the frozen encoder, run by ``prepare`` outside the forward, stays whole on every rank."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tiny = PRESETS["tiny"][1]
    model_cfg = dataclasses.replace(tiny.model, image_dim=32, added_kv_proj_dim=128, mask="binary", lora_rank=4)
    make_backbone(model_cfg).save_pretrained(tmp_path / "backbone")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(tmp_path / "clip")
    model_cfg = dataclasses.replace(model_cfg, image_encoder_path=str(tmp_path / "clip"))
    args = [a for a in ARGS if a not in ("--steps", "3")] + ["--steps", "2", "--precision", "bf16",
                                                              "--model.backbone-path", str(tmp_path / "backbone"),
                                                              "--model.image-encoder-path", str(tmp_path / "clip")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "kinema4d.model.train", "tiny", "--out-dir",
           str(tmp_path / "fsdp"), *args]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    losses = json.loads((tmp_path / "fsdp" / "summary_rank0.json").read_text())["losses"]
    one = dataclasses.replace(tiny, out_dir=str(tmp_path / "one"), steps=2, batch_size=4, progress=False,
                              val_steps=1, sharding="fsdp2", p_uncond=0.5, gradient_checkpointing=True,
                              precision="bf16",
                              model=dataclasses.replace(model_cfg, backbone_path=str(tmp_path / "backbone")))
    assert losses == pytest.approx(train_main(one)["losses"], rel=2e-3)
