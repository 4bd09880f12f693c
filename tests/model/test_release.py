"""kinema4d.model.release: random weights in the released Kinema4D checkpoint layout (diffusers LoRA keys +
added_weights.safetensors) for a TINY Wan2.1-I2V backbone; every tensor must land in its module, and a forward with
768 (> 512) robot tokens must route them all to the text branch."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kinema4d.model.conditioning import release_downsample_mask
from kinema4d.model.datasets import SyntheticEpisodes
from kinema4d.model.release import ADDED_FILE, ADDED_MAP, LORA_FILE, is_release_checkpoint, load_release

torch.set_num_threads(1)
T, H, W = 5, 128, 192  # Wan VAE 4x / 8x -> latent grid (2, 16, 24); robot patch 1 -> 768 robot tokens
RANK, DIM, INNER = 4, 8, 64


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(checkpoint dir, backbone dir) of a tiny Wan2.1-I2V with random release-layout weights."""
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("release")
    bb, ck = root / "Wan2.1-I2V-tiny", root / "kinema4d_ckpt"
    torch.manual_seed(0)
    kw = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=36, out_channels=16,
              text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, image_dim=24, added_kv_proj_dim=INNER)
    WanTransformer3DModel(**kw).save_pretrained(bb / "transformer")
    AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(bb / "vae")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(bb / "image_encoder")
    lcfg = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    tr = inject_adapter_in_model(lcfg, WanTransformer3DModel(**kw))
    lora = {k: torch.randn_like(v) * 0.05 for k, v in get_peft_model_state_dict(tr).items()}
    WanImageToVideoPipeline.save_lora_weights(ck, transformer_lora_layers=lora)  # diffusers' own key layout
    g = torch.Generator().manual_seed(1)
    shapes = {"learnable_domain_embeddings": (2, INNER), "patch_embedding_arm.weight": (DIM, 20, 1, 1, 1),
              "patch_embedding_arm.bias": (DIM,), "arm_ln.weight": (DIM,), "arm_ln.bias": (DIM,),
              "arm_pos_emb": (1, DIM, 2, 16, 24), "arm_patch_proj.weight": (INNER, DIM),
              "arm_patch_proj.bias": (INNER,),
              "arm_cond_proj.weight": (16, 16), "arm_cond_proj.bias": (16,)}
    save_file({k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}, str(ck / ADDED_FILE))
    return ck, bb


def test_release_files_land_in_their_modules_and_route_768_robot_tokens(release):
    ck, bb = release
    assert is_release_checkpoint(ck)
    model, codec, info = load_release(ck, bb)
    assert info["size"] == (H, W) and info["frames"] == T
    assert model.cfg.lora_rank == RANK and model.cfg.lora_alpha == 0.5 * RANK  # the release fuses at scale 0.5
    params = dict(model.named_parameters())
    lora = load_file(str(ck / LORA_FILE))
    assert lora and all(k.startswith("transformer.blocks.") for k in lora)
    for k, v in lora.items():
        assert torch.equal(params[info["loaded"][k]], v), k
    added = load_file(str(ck / ADDED_FILE))
    for k, v in added.items():
        ours = params[ADDED_MAP[k][0]]
        assert torch.equal(ours.reshape(v.shape), v), k
    assert len(info["loaded"]) == len(lora) + len(added)
    assert model.latent_stats[1].tolist() == pytest.approx([-0.17, 1.36])
    # a forward at the release's layout: CLIP(I0) in the image branch, all 768 robot tokens in the text branch
    b = torch.utils.data.default_collate([SyntheticEpisodes(1, T, (H, W), 0)[0]])
    p = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"])
    assert p["image"].shape == (1, 17, 24) and p["context_input"].shape == (1, 20, 2, 16, 24)
    ctx = model.context(p["context_input"])
    assert ctx.shape == (1, 768, INNER)  # at the transformer width: past the text embedder
    with torch.no_grad():
        v = model(torch.randn(1, 16, 2, 16, 48), torch.tensor([0.5]), p["cond"], p["context_input"], image=p["image"])
    assert torch.isfinite(v).all() and model.attn_split.last_split == (17, 768)
    # the release layout: Wan's first-frame mask on the RGB half, the robot mask on the XYZ half
    m, w = p["cond"][:, :4], p["cond"].shape[-1] // 2
    assert (m[:, :, 0, :, :w] == 1).all() and (m[:, :, 1:, :, :w] == 0).all() and m[..., w:].sum() > 0
    # the pointmap-latent normalization applies to the robot latents, not to the input latents
    with torch.no_grad():
        model.latent_stats[1] = torch.tensor([0.0, 1.0])
    p2 = model.prepare(codec, b["rgb"][:, 0], b["robot_pointmap"], b["robot_mask"])
    assert torch.equal(p2["cond"], p["cond"]) and not torch.allclose(p2["context_input"], p["context_input"])


def test_release_errors_name_the_file_or_tensor(release, tmp_path):
    ck, bb = release
    bad = tmp_path / "ck"
    shutil.copytree(ck, bad)
    (bad / ADDED_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=ADDED_FILE):
        load_release(bad, bb)
    added = load_file(str(ck / ADDED_FILE))
    save_file({**added, "arm_cond_proj.weight": torch.zeros(16, 8)}, str(bad / ADDED_FILE))
    with pytest.raises(ValueError, match="arm_cond_proj.weight"):
        load_release(bad, bb)
    save_file({k: v for k, v in added.items() if k != "arm_ln.bias"}, str(bad / ADDED_FILE))
    with pytest.raises(ValueError, match="robot_tokens.norm.bias"):
        load_release(bad, bb)
    nob = tmp_path / "bb"
    shutil.copytree(bb, nob, ignore=shutil.ignore_patterns("image_encoder"))
    with pytest.raises(FileNotFoundError, match="image_encoder"):
        load_release(ck, nob)


def test_simulate_with_release_checkpoint(release, tmp_path):
    """`kinema4d simulate --checkpoint RELEASE_DIR --backbone WAN_DIR`: kinematic stage -> the release model."""
    import imageio.v3 as iio
    import numpy as np

    from kinema4d.kinematics.camera import Camera
    from kinema4d.simulator import SimulateConfig, demo_inputs, simulate_main

    ck, bb = release
    demo = demo_inputs()
    Camera.load(demo["camera"]).resized(W, H).save(tmp_path / "cam.json")
    iio.imwrite(tmp_path / "init.png", np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))
    np.save(tmp_path / "actions.npy", demo["actions"][:T])
    with pytest.raises(ValueError, match="backbone"):
        simulate_main(SimulateConfig(checkpoint=ck, image=tmp_path / "init.png", actions=tmp_path / "actions.npy",
                                     camera=tmp_path / "cam.json", out=tmp_path / "out"))
    out = simulate_main(SimulateConfig(checkpoint=ck, backbone=bb, image=tmp_path / "init.png", steps=1,
                                       actions=tmp_path / "actions.npy", camera=tmp_path / "cam.json",
                                       out=tmp_path / "out", device="cpu"))
    assert out["rgb"].is_file() and out["rollout"].is_file() and out["json"].is_file()
    s = json.loads(out["json"].read_text())
    assert s["rollout"]["frames"] == T and s["simulator"]["size_hw"] == [H, W]
    # the README's command line (bf16 weights), through the CLI
    from kinema4d.cli import main

    assert main(["simulate", "--checkpoint", str(ck), "--backbone", str(bb), "--device", "cpu", "--dtype", "bf16",
                 "--image", str(tmp_path / "init.png"), "--actions", str(tmp_path / "actions.npy"), "--camera",
                 str(tmp_path / "cam.json"), "--steps", "1", "--out", str(tmp_path / "cli")]) == 0
    s = json.loads((tmp_path / "cli" / "simulate.json").read_text())
    assert s["rollout"]["frames"] == T and s["rollout"]["peak_memory_gb"] is None  # CPU: no GPU figure
    rgb = np.load(tmp_path / "cli" / "rollout.npz")["rgb"]
    assert rgb.shape == (T, H, W, 3) and rgb.std() > 0


def test_release_mask_downsampling_matches_interpolate_and_temporal_max():
    """The release: F.interpolate(nearest) per frame, frame 0 alone, max over each later group of 4."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 9, 32, 48, generator=g) > 0.7).float()
    ours = release_downsample_mask(mask, 4, 8)
    near = F.interpolate(mask, size=(4, 6), mode="nearest")  # (B, T, 4, 6): frames as channels
    ref = torch.cat([near[:, :1], near[:, 1:].reshape(2, 2, 4, 4, 6).amax(2)], dim=1)[:, None]
    assert ours.shape == (2, 1, 3, 4, 6) and torch.equal(ours, ref)


def test_finetune_from_release(release, tmp_path):
    """TrainConfig.init_release: one training step starting from the released weights (LoRA + added modules)."""
    from kinema4d.model.release import release_config
    from kinema4d.model.train import train_main
    from kinema4d.model.train_config import TrainConfig

    ck, bb = release
    cfg = TrainConfig(model=release_config(ck, bb), init_release=str(ck), size=(H, W), frames=T, batch_size=1,
                      steps=1, lr=1e-4, synthetic_episodes=1, out_dir=str(tmp_path / "ft"), progress=False,
                      val_steps=1, cache_latents=False)
    s = train_main(cfg)
    assert s["step"] == 1 and all(torch.isfinite(torch.tensor(s["losses"])))
    saved = load_file(str(tmp_path / "ft" / "ckpt" / "step_0000001" / "ema.safetensors"))  # EMA of step 1
    added = load_file(str(ck / ADDED_FILE))
    # EMA decay 0.999: the released values, moved by at most 0.1 % of one step
    assert torch.allclose(saved["robot_tokens.pos"], added["arm_pos_emb"], atol=1e-5)
    assert torch.allclose(saved["latent_stats"], torch.tensor([[0.0, 1.0], [-0.17, 1.36]]))


def test_release_shapes_at_full_scale_on_meta():
    """RELEASE_MODEL at 480x720 x 49 (built on the meta device, no memory): every released tensor's shape fits the
    module it maps to, 312 robot tokens at the transformer width, 35,100 backbone tokens."""
    import dataclasses

    from kinema4d.model.config import RELEASE_MODEL, latent_shapes
    from kinema4d.model.network import WorldModel

    release_shapes = {"learnable_domain_embeddings": (2, 5120), "patch_embedding_arm.weight": (128, 20, 1, 15, 15),
                      "patch_embedding_arm.bias": (128,), "arm_ln.weight": (128,), "arm_ln.bias": (128,),
                      "arm_pos_emb": (1, 128, 13, 4, 6), "arm_patch_proj.weight": (5120, 128),
                      "arm_patch_proj.bias": (5120,), "arm_cond_proj.weight": (16, 16), "arm_cond_proj.bias": (16,)}
    with torch.device("meta"):
        model = WorldModel(dataclasses.replace(RELEASE_MODEL, num_layers=1))  # one block: shapes are per block
        params = dict(model.named_parameters())
        for k, shape in release_shapes.items():
            name, fn = ADDED_MAP[k]
            v = torch.empty(shape)
            assert (fn(v) if fn else v).shape == params[name].shape, k
    s = latent_shapes(RELEASE_MODEL, 49, 480, 720)
    assert s["tokens"] == (1, 35100) and s["context"] == (1, 312, 5120) and s["backbone_input"][1] == 36
