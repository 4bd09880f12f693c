"""kinema4d.model (config, codec, backbone, conditioning, network, sampling, checkpoint): shapes, conditioning (Sec.
3.2), backbone extensions, sampling, save/load, LoRA, errors."""

import dataclasses
import json

import pytest
import torch

from kinema4d.model.backbone import SharedWidthRope, load_pretrained_backbone, make_backbone
from kinema4d.model.checkpoint import compute_latent_stats, load_model, save_model
from kinema4d.model.codec import PixelCodec, make_codec
from kinema4d.model.conditioning import downsample_mask, soften_mask
from kinema4d.model.config import PAPER_MODEL, ModelConfig, latent_shapes
from kinema4d.model.datasets import SyntheticEpisodes
from kinema4d.model.network import WorldModel
from kinema4d.model.sampling import flow_matching_loss, sample
from kinema4d.model.train_config import PRESETS

torch.set_num_threads(1)
TINY = ModelConfig()
T, H, W = 5, 16, 16


def _batch(n=2, frames=T, size=(H, W), seed=0):
    ds = SyntheticEpisodes(n, frames, size, seed)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def _prep(model, codec, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], action=b.get("action"),
                         rgb=b["rgb"], world_pointmap=b["world_pointmap"], generator=g)


def _randomize_output(model):
    """The from-scratch proj_out starts at zero (output 0): give it weights so outputs are informative."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = model.transformer.proj_out.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.1)


# ---------------------------------------------------------------------------------------------------- shapes
def test_paper_shapes_without_allocation():
    s = latent_shapes(PAPER_MODEL, 49, 480, 720)
    assert s["latent"] == (1, 16, 13, 60, 180)  # 1 + 48/4 frames, 480/8, 2 * 720/8 (RGB | XYZ)
    assert s["mask"] == (1, 4, 13, 60, 180)
    assert s["backbone_input"] == (1, 36, 13, 60, 180)  # Wan2.1-I2V: 16 noisy | 4 mask | 16 input
    assert s["tokens"] == (1, 13 * 30 * 90)
    assert s["context"] == (1, 13 * 30 * 45, 4096)
    d = PRESETS["wan_small"][1]
    assert latent_shapes(d.model, d.frames, *d.size)["latent"] == (1, 16, 5, 8, 24)
    d = PRESETS["default"][1]  # the bundled CPU model: pixel codec 8x, 9 frames of 64x96
    s = latent_shapes(d.model, d.frames, *d.size)
    assert s["latent"] == (1, 192, 9, 8, 24) and s["tokens"] == (1, 9 * 4 * 12)
    assert s["context"] == (1, 9 * 4 * 6, d.model.text_dim)  # robot tokens: stride 2 on the 8 x 12 latent grid


@pytest.mark.parametrize("codec", ["pixel", "wan"])
def test_tiny_shapes_match_prepare(codec):
    cfg = dataclasses.replace(TINY, codec=codec)
    model, c = WorldModel(cfg), make_codec(cfg)
    p = _prep(model, c, _batch())
    s = latent_shapes(cfg, T, H, W, batch=2)
    assert tuple(p["x0"].shape) == s["latent"]
    assert tuple(p["cond"].shape) == (2, s["backbone_input"][1] - s["latent"][1], *s["latent"][2:])
    assert p["cond"].shape[1] + p["x0"].shape[1] == cfg.in_channels == model.transformer.config.in_channels
    ctx = model.context(p["context_input"])
    assert tuple(ctx.shape) == (2, *s["context"][1:])


def test_image_padding_zeros_vs_repeat():
    b = _batch()
    for mode in ("zeros", "repeat"):
        cfg = dataclasses.replace(TINY, image_padding=mode)
        model, c = WorldModel(cfg), make_codec(cfg)
        inp = _prep(model, c, b)["cond"][:, 4:]  # input latents without the mask channels
        w = inp.shape[-1] // 2
        rgb_half = c.decode(inp[..., :w])  # (B, 3, T, H, W)
        i0 = b["rgb"][:, 0]
        assert torch.allclose(rgb_half[:, :, 0], i0, atol=1e-6)
        later = rgb_half[:, :, 1:]
        if mode == "repeat":  # I0 in every frame
            assert torch.allclose(later, i0[:, :, None].expand_as(later), atol=1e-6)
        else:  # zero-padded: 0 in codec space = 0.5 in pixels
            assert torch.allclose(later, torch.full_like(later, 0.5), atol=1e-6)


def test_pixel_codec_lossless():
    x = torch.rand(2, 3, 3, 8, 16)
    c = PixelCodec(4)
    z = c.encode(x)
    assert z.shape == (2, 48, 3, 2, 4) and z.min() >= -1 and z.max() <= 1
    assert torch.allclose(c.decode(z), x, atol=1e-6)


def test_wan_codec_train_step_and_stats():
    cfg = dataclasses.replace(TINY, codec="wan")
    c = make_codec(cfg)
    x = torch.rand(1, 3, 5, 16, 32)
    loss, logs = c.training_loss(x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and logs["codec_l1"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in c.parameters())
    c.eval().requires_grad_(False)
    stats = compute_latent_stats(c, [_batch(2)], max_samples=2)
    assert stats.shape == (2, 2) and (stats[:, 1] > 0).all()
    m = WorldModel(cfg)
    m.latent_stats.copy_(stats)
    z = m.normalize(c.encode(torch.cat([_batch(2)["rgb"], _batch(2)["world_pointmap"]], -1).transpose(1, 2)))
    w = z.shape[-1] // 2
    assert abs(float(z[..., w:].mean())) < 1e-4 and abs(float(z[..., w:].std()) - 1) < 0.05


# ---------------------------------------------------------------------------------------------------- mask
def test_mask_downsampling_wan_style():
    m = torch.zeros(1, 9, 16, 16)
    for k in range(9):  # frame k occupies pixel (0, k) -> latent cell (0, k // 8)
        m[0, k, 0, k] = 1
    d = downsample_mask(m, temporal_factor=4, spatial_factor=8)
    assert d.shape == (1, 4, 3, 2, 2)
    assert d[0, :, 0, 0, 0].tolist() == [1, 1, 1, 1]  # latent frame 0 <- frame 0 repeated 4 times
    assert d[0, :, 1, 0, 0].tolist() == [1, 1, 1, 1]  # latent frame 1 <- frames 1..4 (cols 1..4 -> cell 0)
    assert d[0, :, 2, 0, 0].tolist() == [1, 1, 1, 0] and d[0, :, 2, 0, 1].tolist() == [0, 0, 0, 1]
    p = downsample_mask(m, temporal_factor=1, spatial_factor=4)
    assert p.shape == (1, 4, 9, 4, 4) and torch.equal(p[:, 0], p[:, 3])


def test_soft_mask_ratio_seeded():
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(2, 4, 5, 12, 12, generator=g) > 0.4).float()
    a = soften_mask(m, 0.1, torch.Generator().manual_seed(7))
    b = soften_mask(m, 0.1, torch.Generator().manual_seed(7))
    c = soften_mask(m, 0.1, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for i in range(2):
        occ = int((m[i] > 0.5).sum())
        assert int((a[i] == 0.5).sum()) == round(0.1 * occ)
        assert int((a[i] == 1).sum()) == occ - round(0.1 * occ)
    assert torch.equal(a[m == 0], m[m == 0])  # empty positions stay 0
    assert int((soften_mask(m, 0.2, g) == 0.5).sum()) == sum(round(0.2 * int(m[i].sum())) for i in range(2))
    # wired into prepare: the mask channels of cond hold {0, 0.5, 1}, identical in both width halves
    model = WorldModel(TINY)
    p = _prep(model, make_codec(TINY), _batch())
    mk = p["cond"][:, :4]
    assert set(mk.unique().tolist()) <= {0.0, 0.5, 1.0} and (mk == 0.5).any()
    assert torch.equal(mk[..., :mk.shape[-1] // 2], mk[..., mk.shape[-1] // 2:])


# ---------------------------------------------------------------------------------------------------- backbone
def test_zero_conv_ignores_robot_context_exactly():
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    _randomize_output(model)
    p = _prep(model, make_codec(TINY), _batch())
    x, t = torch.randn_like(p["x0"]), torch.tensor([0.3, 0.7])
    r1, r2 = p["context_input"], torch.randn_like(p["context_input"]) * 3
    with torch.no_grad():
        v1, v2 = model(x, t, p["cond"], r1), model(x, t, p["cond"], r2)
        assert v1.abs().sum() > 0 and torch.equal(v1, v2)
        assert not torch.equal(v1, model(x + 1, t, p["cond"], r1))
        model.context_conv.weight.normal_()
        assert not torch.equal(model(x, t, p["cond"], r1), model(x, t, p["cond"], r2))


def test_shared_rope():
    model = WorldModel(TINY)
    rope = model.transformer.rope
    assert isinstance(rope, SharedWidthRope)
    f, h, w2 = 3, 4, 10  # token grid (patch 1x2x2): 3 x 4 x 10, halves of 5 columns
    cos, sin = rope(torch.zeros(1, 8, f, 2 * h, 2 * w2))
    assert cos.shape == (1, f * h * w2, 1, TINY.attention_head_dim)
    cos = cos[0, :, 0].reshape(f, h, w2, -1)
    sin = sin[0, :, 0].reshape(f, h, w2, -1)
    half = w2 // 2
    assert torch.equal(cos[:, :, :half], cos[:, :, half:]) and torch.equal(sin[:, :, :half], sin[:, :, half:])
    assert not torch.equal(cos[:, :, 0], cos[:, :, 1]) and not torch.equal(sin[1, 2, 3], sin[1, 2, 4])
    # equals diffusers' rope on the RGB half; the unshared rope differs on the XYZ half
    plain = make_backbone(TINY).rope
    pc, _ = plain(torch.zeros(1, 8, f, 2 * h, 2 * w2))
    pc = pc[0, :, 0].reshape(f, h, w2, -1)
    assert torch.equal(pc[:, :, :half].float(), cos[:, :, :half].float())
    assert not torch.equal(pc[:, :, half:], pc[:, :, :half])
    assert not isinstance(WorldModel(dataclasses.replace(TINY, shared_rope=False)).transformer.rope, SharedWidthRope)


def test_domain_embedding_hook():
    model = WorldModel(TINY)
    with torch.no_grad():
        model.domain.weight[0] = 1.0
        model.domain.weight[1] = -2.0
    x = torch.zeros(1, TINY.in_channels, 2, 4, 8)
    out = model.transformer.patch_embedding(x)  # zero input -> conv bias + domain embedding
    bias = model.transformer.patch_embedding.bias.view(1, -1, 1, 1, 1)
    assert torch.allclose(out[..., :2] - bias, torch.ones_like(out[..., :2]))
    assert torch.allclose(out[..., 2:] - bias, torch.full_like(out[..., 2:], -2.0))


@pytest.mark.parametrize("change", [
    {"context": "learned"}, {"context": "none"}, {"mask": "binary"}, {"mask": "none"},
    {"condition": "binary_mask"}, {"condition": "action_embedding", "mask": "none"}, {"output": "rgb_only"},
    {"shared_rope": False, "domain_embedding": False},
])
def test_ablation_configs_train_and_sample(change):
    cfg = dataclasses.replace(TINY, **change)
    model, codec = WorldModel(cfg), make_codec(cfg)
    b = _batch()
    p = _prep(model, codec, b)
    loss = flow_matching_loss(model, model, p, torch.tensor([0.2, 0.8]), torch.randn_like(p["x0"]),
                              drop=torch.tensor([True, False]))
    loss.backward()
    assert torch.isfinite(loss)
    rgb, wpm = sample(model, codec, b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0], steps=2,
                      cfg_scale=2.0, seed=0, action=b["action"][0])
    assert rgb.shape == (T, 3, H, W) and (wpm is None) == (cfg.output == "rgb_only")


def test_xyz_loss_weight_is_a_weighted_mean_of_the_halves():
    torch.manual_seed(0)
    model, codec = WorldModel(TINY), make_codec(TINY)
    p = _prep(model, codec, _batch())
    t, noise = torch.tensor([0.3, 0.7]), torch.randn_like(p["x0"])
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * p["x0"] + t.view(-1, 1, 1, 1, 1) * noise
    with torch.no_grad():
        err = (model(x_t, t, p["cond"], p["context_input"]) - (noise - p["x0"])) ** 2
        w = err.shape[-1] // 2
        mse_rgb, mse_xyz = err[..., :w].mean(), err[..., w:].mean()
        for xyz_weight in (1.0, 4.0, 0.0):
            loss = flow_matching_loss(model, model, p, t, noise, xyz_weight=xyz_weight)
            expected = (mse_rgb + xyz_weight * mse_xyz) / (1 + xyz_weight)
            assert torch.allclose(loss, expected, rtol=1e-5), (xyz_weight, loss, expected)
    assert not torch.allclose(mse_rgb, mse_xyz)  # otherwise the weights could not be told apart


# ---------------------------------------------------------------------------------------------------- sampling
def test_sampling_deterministic_and_shapes():
    torch.manual_seed(0)
    model, codec = WorldModel(TINY), make_codec(TINY)
    _randomize_output(model)
    b = _batch(1)
    args = (model, codec, b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0])
    r1, p1 = sample(*args, steps=3, cfg_scale=1.5, seed=3)
    r2, p2 = sample(*args, steps=3, cfg_scale=1.5, seed=3)
    r3, _ = sample(*args, steps=3, cfg_scale=1.5, seed=4)
    assert torch.equal(r1, r2) and torch.equal(p1, p2) and not torch.equal(r1, r3)
    assert r1.shape == p1.shape == (T, 3, H, W) and 0 <= r1.min() and r1.max() <= 1


# ---------------------------------------------------------------------------------------------------- learning
def test_overfit_one_episode():
    """Fixed t set + fixed noise on one synthetic episode: the loss falls at least 10x."""
    torch.manual_seed(0)
    model, codec = WorldModel(TINY), make_codec(TINY)
    b = _batch(1)
    p = _prep(model, codec, {k: v.expand(3, *v.shape[1:]) if torch.is_tensor(v) and v.ndim > 1 else v
                             for k, v in b.items()})
    t = torch.tensor([0.25, 0.5, 0.75])
    noise = torch.randn(p["x0"].shape, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(200):
        loss = flow_matching_loss(model, model, p, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < losses[0] / 20:
            break
    assert min(losses) < losses[0] / 10, (losses[0], min(losses), len(losses))


# ---------------------------------------------------------------------------------------------------- save / load
def test_save_load_identical(tmp_path):
    torch.manual_seed(0)
    model, codec = WorldModel(TINY), make_codec(TINY)
    _randomize_output(model)
    with torch.no_grad():
        model.domain.weight.normal_()
        model.context_conv.weight.normal_()
        model.latent_stats.copy_(torch.tensor([[0.1, 0.9], [-0.17, 1.36]]))
    save_model(tmp_path / "ck", model, codec)
    m2, c2 = load_model(tmp_path / "ck")
    assert m2.cfg == TINY and torch.equal(m2.latent_stats, model.latent_stats)
    b = _batch(1)
    args = (b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0])
    assert all(torch.equal(x, y) for x, y in zip(sample(model.eval(), codec, *args, steps=2, seed=1),
                                                 sample(m2, c2, *args, steps=2, seed=1), strict=True))


def test_old_config_names_still_load(tmp_path):
    """A checkpoint saved before the renames (context="text", field text_tokens, tensor text_tokens) loads as
    context="learned" with its learned tokens, with a DeprecationWarning naming each mapping."""
    from safetensors.torch import load_file, save_file

    cfg = dataclasses.replace(TINY, context="learned", learned_tokens=3)
    model = WorldModel(cfg)
    with torch.no_grad():
        model.learned_tokens.normal_()
    save_model(tmp_path / "ck", model)
    cfgj = json.loads((tmp_path / "ck" / "model_config.json").read_text())
    del cfgj["learned_tokens"]
    cfgj |= {"context": "text", "text_tokens": 3}  # as written before the rename
    (tmp_path / "ck" / "model_config.json").write_text(json.dumps(cfgj))
    sd = load_file(str(tmp_path / "ck" / "model.safetensors"))
    sd["text_tokens"] = sd.pop("learned_tokens")
    save_file(sd, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.warns(DeprecationWarning) as rec:
        m2, _ = load_model(tmp_path / "ck")
    msgs = " | ".join(str(w.message) for w in rec)
    assert "'text_tokens' is now called 'learned_tokens'" in msgs and "context='text' is now called" in msgs
    assert m2.cfg == cfg and torch.equal(m2.learned_tokens, model.learned_tokens)
    with pytest.raises(ValueError, match="both 'text_tokens'"):
        ModelConfig.from_dict({"text_tokens": 3, "learned_tokens": 4})
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"txt_tokens": 3})


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    model = WorldModel(TINY)
    save_model(tmp_path / "ck", model)
    with pytest.raises(ValueError, match="different ModelConfig"):
        load_model(tmp_path / "ck", dataclasses.replace(TINY, num_layers=3))
    cfgj = json.loads((tmp_path / "ck" / "model_config.json").read_text())
    cfgj["num_layers"] = 3  # weights no longer match the config
    (tmp_path / "ck" / "model_config.json").write_text(json.dumps(cfgj))
    with pytest.raises(ValueError, match="does not match the model config"):
        load_model(tmp_path / "ck")
    codec, b = make_codec(TINY), _batch(1)
    with pytest.raises(ValueError, match="shape mismatch"):
        model.prepare(codec, b["rgb"][:, 0, :, :8], b["robot_pointmap"], b["robot_mask"])
    with pytest.raises(ValueError, match="multiples"):
        latent_shapes(TINY, 5, 12, 16)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_shapes(PAPER_MODEL, 48, 480, 720)
    with pytest.raises(ValueError, match="expected a video"):
        codec.encode(torch.rand(1, 4, 2, 8, 8))
    with pytest.raises(ValueError, match="image0"):
        sample(model, codec, b["rgb"][0], b["robot_pointmap"][0], b["robot_mask"][0], steps=1)
    with pytest.raises(ValueError, match="action"):
        m = WorldModel(dataclasses.replace(TINY, condition="action_embedding"))
        m.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"])


# ---------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("i2v", [False, True])
def test_lora_backbone_from_local_dir(tmp_path, i2v):
    cfg = dataclasses.replace(TINY, image_dim=32 if i2v else None, added_kv_proj_dim=128 if i2v else None)
    make_backbone(cfg).save_pretrained(tmp_path / "transformer")
    lcfg = dataclasses.replace(cfg, backbone_path=str(tmp_path / "transformer"), lora_rank=4)
    model, codec = WorldModel(lcfg), make_codec(lcfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    tr = {n for n in trainable if n.startswith("transformer.")}
    assert tr and all("lora_" in n for n in tr)
    assert not any(p.requires_grad for n, p in model.transformer.named_parameters() if "lora_" not in n)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    p = _prep(model, codec, _batch())
    loss = flow_matching_loss(model, model, p, torch.tensor([0.3, 0.6]), torch.randn_like(p["x0"]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.equal(base[n], q) for n, q in model.named_parameters() if n in base)
    assert any(not torch.equal(lora_b[n], q) for n, q in model.named_parameters() if n in lora_b)
    # LoRA checkpoints hold only the trainable part; reload on the same base gives identical outputs
    save_model(tmp_path / "ck", model, codec)
    m2, c2 = load_model(tmp_path / "ck")
    model.eval()
    x, t = torch.randn_like(p["x0"]), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        assert torch.equal(model(x, t, p["cond"], p["context_input"]), m2(x, t, p["cond"], p["context_input"]))


def test_lora_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        load_pretrained_backbone(tmp_path / "no_such_wan")


# ---------------------------------------------------------------------------------------------------- beyond the paper
def test_x0_prediction_velocity():
    """prediction='x0': the backbone outputs x0 and the model returns (x_t - x0) / max(t, x0_t_min); an untrained
    model (proj_out = 0) predicts x0 = 0, so its velocity is exactly x_t / max(t, t_min)."""
    cfg = dataclasses.replace(TINY, prediction="x0", x0_t_min=0.05)
    model, codec = WorldModel(cfg), make_codec(cfg)
    p = _prep(model, codec, _batch())
    x_t = torch.randn_like(p["x0"])
    t = torch.tensor([0.5, 0.01])
    v = model(x_t, t, p["cond"], p["context_input"])
    assert torch.allclose(v[0], x_t[0] / 0.5) and torch.allclose(v[1], x_t[1] / 0.05)
    with pytest.raises(ValueError, match="prediction"):
        ModelConfig(prediction="eps")


@pytest.mark.parametrize("condition", ["pointmap", "binary_mask", "action_embedding"])
def test_world_anchor_input_latents(condition):
    """world_anchor: the XYZ half of the input holds the robot signal on robot pixels and the frame-0 world
    pointmap everywhere else, in every frame (action_embedding: the world pointmap only)."""
    cfg = dataclasses.replace(TINY, world_anchor=True, condition=condition,
                              mask="none" if condition == "action_embedding" else "soft")
    model, codec = WorldModel(cfg), make_codec(cfg)
    b = _batch()
    world0 = b["world_pointmap"][:, 0]
    with pytest.raises(ValueError, match="world0"):
        _prep(model, codec, b)
    p = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], action=b["action"],
                      rgb=b["rgb"], world_pointmap=b["world_pointmap"], world0=world0)
    inp = p["cond"][:, 4:]
    xyz = codec.decode(inp[..., inp.shape[-1] // 2:])  # (B, 3, T, H, W)
    robot = b["robot_mask"][:, None].expand(-1, 3, -1, -1, -1) > 0.5
    expect_world = world0[:, :, None].expand_as(xyz)
    if condition == "action_embedding":
        assert torch.allclose(xyz, expect_world, atol=1e-6)
    else:
        signal = b["robot_pointmap"].transpose(1, 2) if condition == "pointmap" else torch.ones_like(xyz)
        assert robot.any() and (~robot).any()
        assert torch.allclose(xyz[robot], signal[robot], atol=1e-6)
        assert torch.allclose(xyz[~robot], expect_world[~robot], atol=1e-6)
    rgb, wpm = sample(model, codec, b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0], steps=2,
                      action=b["action"][0], world0=world0[0])
    assert rgb.shape == wpm.shape == (T, 3, H, W)


def test_x0_residual_starts_at_its_input():
    """prediction='x0_residual': x0 = input latents + output, so an untrained model (proj_out = 0) samples exactly
    its input: I0 in every frame and the anchored pointmap (robot pointmap on robot pixels, frame-0 world elsewhere)."""
    cfg = dataclasses.replace(TINY, prediction="x0_residual", world_anchor=True, image_padding="repeat")
    model, codec = WorldModel(cfg), make_codec(cfg)
    b = _batch(1)
    world0 = b["world_pointmap"][:, 0]
    p = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], world0=world0)
    x_t, t = torch.randn(latent_shapes(cfg, T, H, W)["latent"]), torch.tensor([0.4])
    torch.testing.assert_close(model(x_t, t, p["cond"], p["context_input"]), (x_t - p["cond"][:, 4:]) / 0.4)
    for steps in (3, 50):  # exact for any step count: the last step returns the x0 prediction
        rgb, wpm = sample(model, codec, b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0], steps=steps,
                          world0=world0[0])
        torch.testing.assert_close(rgb, b["rgb"][0, :1].expand_as(rgb), atol=1e-5, rtol=0)
        robot = b["robot_mask"][0][:, None].expand_as(wpm) > 0.5
        torch.testing.assert_close(wpm[robot], b["robot_pointmap"][0][robot], atol=1e-5, rtol=0)
        torch.testing.assert_close(wpm[~robot], world0[0][None].expand_as(wpm)[~robot], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- issue 12
RELEASE = dataclasses.replace(TINY, context="robot_tokens", robot_token_patch=2, robot_latent_proj=True,
                              robot_rgb=True, world_anchor=True, image_padding="repeat", prediction="x0_residual")


def test_robot_rgb_enters_the_rgb_half_on_robot_pixels_only():
    """robot_rgb=True: the RGB half of the input latents decodes (pixel codec: exactly) to the robot's rendered
    colours on robot pixels and I0 elsewhere; a model that needs them says so when they are missing."""
    model, codec = WorldModel(RELEASE), make_codec(RELEASE)
    b = _batch(1)
    robot_rgb = torch.rand(1, T, 3, H, W)
    p = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], world0=b["world_pointmap"][:, 0],
                      robot_rgb=robot_rgb)
    rgb_in = codec.decode(model.denormalize(p["cond"][:, 4:]))[..., :W].transpose(1, 2)  # (1, T, 3, H, W)
    on = b["robot_mask"][:, :, None].expand_as(rgb_in) > 0.5
    assert on.any() and (~on).any()
    torch.testing.assert_close(rgb_in[on], robot_rgb[on], atol=1e-6, rtol=0)
    torch.testing.assert_close(rgb_in[~on], b["rgb"][:, :1].expand_as(rgb_in)[~on], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="robot_rgb"):
        model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], world0=b["world_pointmap"][:, 0])
    with pytest.raises(ValueError, match="condition='pointmap'"):
        dataclasses.replace(RELEASE, condition="binary_mask")


def test_robot_tokens_know_frame_and_place():
    """context='robot_tokens' (the released design): t * ceil(h/p) * ceil(w/p) tokens; zero-init output (an untrained
    model ignores them); once trained, the same robot patch at another frame or place gives another token."""
    model, codec = WorldModel(RELEASE), make_codec(RELEASE)
    b = _batch(1)
    p = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], world0=b["world_pointmap"][:, 0],
                      robot_rgb=torch.rand(1, T, 3, H, W))
    C = RELEASE.latent_channels
    # mask | robot-only XYZ | robot-only RGB latents
    assert p["context_input"].shape == (1, 4 + 2 * C, T, H // 4, W // 4)
    ctx = model.context(p["context_input"])
    assert ctx.shape == latent_shapes(RELEASE, T, H, W)["context"] and ctx.abs().max() == 0
    torch.nn.init.normal_(model.robot_tokens.proj.weight)
    same = torch.ones(1, 4 + 2 * C, T, H // 4, W // 4)  # identical content everywhere
    tok = model.context(same).view(T, 2, 2, -1)
    assert (tok[0, 0, 0] - tok[1, 0, 0]).abs().max() > 1e-3  # another frame
    assert (tok[0, 0, 0] - tok[0, 1, 0]).abs().max() > 1e-3 and (tok[0, 0, 0] - tok[0, 0, 1]).abs().max() > 1e-3
    null = model.context(same, drop=torch.tensor([True]))  # classifier-free guidance: null tokens
    assert null.abs().max() == 0


def test_robot_latent_projection_touches_only_the_xyz_input_latents():
    model, codec = WorldModel(RELEASE), make_codec(RELEASE)
    b = _batch(1)
    p = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], world0=b["world_pointmap"][:, 0],
                      robot_rgb=torch.rand(1, T, 3, H, W))
    torch.testing.assert_close(model.condition(p["cond"], p["context_input"]), p["cond"])  # zero-init: a no-op
    torch.nn.init.normal_(model.robot_latent_proj.weight)
    out = model.condition(p["cond"], p["context_input"])
    w = p["cond"].shape[-1] // 2
    torch.testing.assert_close(out[:, :4], p["cond"][:, :4])  # mask channels
    torch.testing.assert_close(out[..., :w], p["cond"][..., :w])  # RGB half
    assert (out[:, 4:, ..., w:] - p["cond"][:, 4:, ..., w:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="robot_tokens"):
        dataclasses.replace(TINY, robot_latent_proj=True)


def test_release_conditioning_trains_and_samples():
    model, codec = WorldModel(RELEASE), make_codec(RELEASE)
    b = _batch()
    g = torch.Generator().manual_seed(0)
    p = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"], rgb=b["rgb"],
                      world_pointmap=b["world_pointmap"], world0=b["world_pointmap"][:, 0], robot_rgb=b["robot_rgb"],
                      generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):  # the second step reaches the zero-init paths (proj_out is zero at step 0)
        loss = flow_matching_loss(model, model, p, torch.tensor([0.3, 0.7]), torch.randn_like(p["x0"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.robot_tokens.proj.weight.abs().max() > 0 and model.robot_latent_proj.weight.abs().max() > 0
    rgb, wpm = sample(model, codec, b["rgb"][0, 0], b["robot_pointmap"][0], b["robot_mask"][0], steps=2,
                      world0=b["world_pointmap"][0, 0], robot_rgb=b["robot_rgb"][0])
    assert rgb.shape == wpm.shape == (T, 3, H, W) and torch.isfinite(rgb).all()
