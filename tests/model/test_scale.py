"""Scale path (issue 13) on the CPU: device resolution, bf16 casting / autocast, gradient checkpointing, the
Wan2.1-I2V image / text routing at > 512 robot tokens, the CLIP image branch, soft mask only in training and a
truly null classifier-free-guidance condition."""

import dataclasses
import json

import pytest
import torch

from kinema4d.model.backbone import ImageTextAttnProcessor
from kinema4d.model.checkpoint import load_model, save_model, state_to_save
from kinema4d.model.codec import make_codec
from kinema4d.model.config import ModelConfig
from kinema4d.model.datasets import SyntheticEpisodes
from kinema4d.model.device import autocast, dist_backend, peak_memory_gb, resolve_device
from kinema4d.model.network import WorldModel
from kinema4d.model.sampling import flow_matching_loss, sample

torch.set_num_threads(1)
NO_CUDA = not torch.cuda.is_available()
# a tiny Wan2.1-I2V-shaped model whose robot-token context is longer than 512: 5 frames of 48x48, pixel codec 4x,
# robot tokens of 1x1 latent cells -> 5 * 12 * 12 = 720 tokens; 16 learned image tokens
I2V = ModelConfig(num_attention_heads=2, attention_head_dim=32, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32,
                  image_dim=24, added_kv_proj_dim=64, image_tokens=16, context="robot_tokens", robot_token_patch=1,
                  robot_token_dim=16, robot_latent_proj=True)
T, H, W = 5, 48, 48


def _batch(n=2, size=(H, W)):
    ds = SyntheticEpisodes(n, T, size, 0)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def _prep(model, codec, b, **kw):
    return model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], rgb=b["rgb"],
                         world_pointmap=b["world_pointmap"], generator=torch.Generator().manual_seed(0), **kw)


def _nonzero(model, seed=1):
    """Random weights on the zero-initialized heads so that every input path changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (model.transformer.proj_out, model.robot_tokens.proj, model.robot_latent_proj):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
        if model.image_tokens is not None:
            model.image_tokens.copy_(torch.randn(model.image_tokens.shape, generator=g))
    return model


# ---------------------------------------------------------------------------------------------------- devices
def test_resolve_device_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    assert dist_backend(torch.device("cpu")) == "gloo" and dist_backend(torch.device("cuda", 0)) == "nccl"
    assert peak_memory_gb(torch.device("cpu")) is None


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device(spec)


def test_autocast_follows_the_device():
    lin = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16  # device_type "cpu": really active
    with autocast(torch.device("cpu"), "fp32"):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["train", "tiny", "--device", "cuda", "--no-progress"],
    ["simulate", "--demo", "--device", "cuda"],
    ["eval", "--device", "cuda", "--episodes", "1"],
    ["eval", "policy", "--device", "cuda", "--episodes", "1"],
])
def test_cli_device_cuda_without_cuda(argv, capsys, tmp_path, monkeypatch):
    from kinema4d.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_cli_train_device_cpu_and_auto(tmp_path, capsys):
    from kinema4d.cli import main

    for dev in ("cpu", "auto"):
        out = tmp_path / dev
        assert main(["train", "tiny", "--device", dev, "--steps", "1", "--no-progress", "--val-steps", "1",
                     "--out-dir", str(out)]) == 0
        assert (out / "ckpt" / "step_0000001" / "model.safetensors").is_file()
        s = json.loads((out / "summary_rank0.json").read_text())
        assert s["device"] == "cpu" and s["peak_memory_gb"] is None


def test_load_model_dtype_bf16_samples_finite(tmp_path):
    model, codec = WorldModel(I2V), make_codec(I2V)
    save_model(tmp_path, _nonzero(model), codec)
    m, c = load_model(tmp_path, device="cpu", dtype="bf16")
    assert m.param_dtype == torch.bfloat16 and next(m.parameters()).device.type == "cpu"
    b = _batch(1)
    rgb, wpm = sample(m, c, b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0], steps=2)
    assert rgb.dtype == torch.float32 and rgb.device.type == "cpu" and torch.isfinite(rgb).all()
    assert torch.isfinite(wpm).all()


def test_gradient_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    ref = _nonzero(WorldModel(I2V))
    ck = WorldModel(I2V)
    ck.load_state_dict(ref.state_dict())
    ck.transformer.enable_gradient_checkpointing()
    assert ck.transformer.gradient_checkpointing
    codec = make_codec(I2V)
    p = _prep(ref, codec, _batch())
    t, noise = torch.tensor([0.3, 0.7]), torch.randn(p["x0"].shape, generator=torch.Generator().manual_seed(2))
    losses = []
    for m in (ref, ck):
        m.train()
        loss = flow_matching_loss(m, m, p, t, noise)
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    g_ref = dict(ref.named_parameters())
    for n, q in ck.named_parameters():
        if q.grad is not None:
            assert torch.allclose(q.grad, g_ref[n].grad, rtol=1e-4, atol=1e-6), n


# ---------------------------------------------------------------------------------------------------- routing
def test_robot_tokens_never_reach_the_image_branch():
    """720 robot tokens: the text branch gets all of them, the image branch exactly the 16 image tokens."""
    model, codec = _nonzero(WorldModel(I2V)).eval(), make_codec(I2V)
    p = _prep(model, codec, _batch())
    ctx = model.context(p["context_input"])
    assert ctx.shape[1] == 720 > 512
    for blk in model.transformer.blocks:
        assert blk.attn2.processor is model.attn_split
    x = torch.randn(p["x0"].shape)
    with torch.no_grad():
        out = model(x, torch.tensor([0.5, 0.5]), p["cond"], p["context_input"])
    assert torch.isfinite(out).all()
    assert model.attn_split.last_split == (16, 720)


def test_learned_tokens_give_the_queries_a_gradient():
    """Without an image encoder the image branch gets learned tokens. Identical tokens (the old zero init) make its
    attention uniform whatever the query: the cross-attention queries (attn2.to_q) got no gradient from it, and with
    the zero-init robot context none at all, so Adam turned float noise into lr-sized steps. The tokens start
    distinct (normal, std 0.02), and to_q gets a true gradient at step 0."""
    from kinema4d.model.backbone import make_backbone

    def q_grads(zero_image_tokens: bool) -> list[float]:
        torch.manual_seed(0)
        model = WorldModel(I2V, backbone=make_backbone(I2V)).train()  # pretrained-style: the output head is not 0
        if zero_image_tokens:
            with torch.no_grad():
                model.image_tokens.zero_()
        codec = make_codec(I2V)
        p = _prep(model, codec, _batch())
        assert model.context(p["context_input"]).abs().max() == 0  # zero-init robot tokens: the text branch is uniform
        noise = torch.randn(p["x0"].shape, generator=torch.Generator().manual_seed(2))
        flow_matching_loss(model, model, p, torch.tensor([0.3, 0.7]), noise).backward()
        return [blk.attn2.to_q.weight.grad.abs().max().item() for blk in model.transformer.blocks]

    tokens = WorldModel(I2V).image_tokens
    assert (tokens - tokens[:1]).abs().amax(1)[1:].min() > 0 and tokens.std().item() == pytest.approx(0.02, rel=0.3)
    learned = WorldModel(ModelConfig(context="learned", learned_tokens=4)).learned_tokens
    assert (learned - learned[:1]).abs().amax(1)[1:].min() > 0
    real, degenerate = q_grads(False), q_grads(True)
    for r, d in zip(real, degenerate, strict=True):
        assert r > 1e-4 and d < 1e-3 * r, (real, degenerate)


def test_image_text_processor_matches_diffusers_at_512_text_tokens():
    """Where diffusers' fixed split is right (exactly 512 text tokens) both processors give the same output."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    model = _nonzero(WorldModel(I2V)).eval()
    attn = model.transformer.blocks[0].attn2
    g = torch.Generator().manual_seed(3)
    hs, ctx = torch.randn(1, 40, 64, generator=g), torch.randn(1, 16 + 512, 64, generator=g)
    proc = ImageTextAttnProcessor()
    proc.image_tokens = 16
    with torch.no_grad():
        ours = proc(attn, hs, ctx)
        ref = WanAttnProcessor()(attn, hs, ctx)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_clip_image_branch(tmp_path):
    """A local CLIPVisionModel gives the image tokens of I0 (penultimate layer), kept out of the checkpoint."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    ccfg = CLIPVisionConfig(hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8)
    CLIPVisionModel(ccfg).save_pretrained(tmp_path / "image_encoder")
    cfg = dataclasses.replace(I2V, image_encoder_path=str(tmp_path / "image_encoder"))
    model, codec = WorldModel(cfg).eval(), make_codec(cfg)
    assert model.image_tokens is None
    b = _batch()
    p = _prep(model, codec, b)
    assert p["image"].shape == (2, 1 + (32 // 8) ** 2, 24)
    b2 = dict(b, rgb=1 - b["rgb"])
    assert not torch.allclose(_prep(model, codec, b2)["image"], p["image"])  # it depends on I0
    with torch.no_grad():
        model(torch.randn(p["x0"].shape), torch.tensor([0.5, 0.5]), p["cond"], p["context_input"], image=p["image"])
    assert model.attn_split.last_split == (17, 720)
    assert not any(k.startswith("image_encoder.") for k in state_to_save(model))
    with pytest.raises(ValueError, match="image encoder"):
        model(torch.randn(p["x0"].shape), torch.tensor([0.5, 0.5]), p["cond"], p["context_input"])
    with pytest.raises(FileNotFoundError, match="CLIPVisionModel"):
        WorldModel(dataclasses.replace(I2V, image_encoder_path=str(tmp_path / "nope")))


# ---------------------------------------------------------------------------------------------------- soft mask, null
def test_soft_mask_only_in_training():
    cfg = dataclasses.replace(I2V, mask="soft", soft_ratio=0.5)
    model, codec = WorldModel(cfg), make_codec(cfg)
    b = _batch()
    m_eval = _prep(model.eval(), codec, b)["cond"][:, :4]
    m_train = _prep(model.train(), codec, b)["cond"][:, :4]
    assert set(m_eval.unique().tolist()) <= {0.0, 1.0}
    assert (m_train == 0.5).any()


def test_null_condition_is_truly_null():
    """The dropped condition has no robot in the input channels (mask, pointmap, robot-latent projection) and the
    null context; a sample's own robot no longer changes the unconditional prediction."""
    model, codec = _nonzero(WorldModel(I2V)).eval(), make_codec(I2V)
    b = _batch()
    p = _prep(model, codec, b, with_null=True)
    empty = _prep(model, codec, dict(b, robot_pointmap=torch.zeros_like(b["robot_pointmap"]),
                                     robot_mask=torch.zeros_like(b["robot_mask"])))
    assert torch.equal(p["cond_null"], empty["cond"]) and torch.equal(p["context_input_null"], empty["context_input"])
    assert p["cond_null"][:, :4].abs().sum() == 0 and not torch.equal(p["cond_null"], p["cond"])
    x, t = torch.randn(p["x0"].shape), torch.tensor([0.5, 0.5])
    drop = torch.tensor([True, False])
    with torch.no_grad():
        out = model(x, t, p["cond"], p["context_input"], drop=drop, cond_null=p["cond_null"],
                    context_input_null=p["context_input_null"])
        # sample 0 (dropped) must not see its robot: swapping in sample 1's robot changes nothing for it
        swapped = {k: p[k].flip(0) for k in ("cond", "context_input")}
        out2 = model(x, t, swapped["cond"], swapped["context_input"], drop=torch.tensor([True, True]),
                     cond_null=p["cond_null"], context_input_null=p["context_input_null"])
    assert torch.allclose(out[0], out2[0], atol=1e-6)
    assert not torch.allclose(out[1], out2[1])
    rgb, _ = sample(model, codec, b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0], steps=2, cfg_scale=3.0)
    assert torch.isfinite(rgb).all()
