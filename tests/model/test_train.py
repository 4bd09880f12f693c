"""kinema4d.model.train: tiny runs, checkpoint files, resume, DDP (2 gloo ranks), Wan codec stage, presets."""

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import tyro
from safetensors.torch import load_file

from kinema4d.model.checkpoint import load_checkpoint
from kinema4d.model.config import ModelConfig
from kinema4d.model.datasets import PreloadedEpisodes, SyntheticEpisodes, make_dataset, make_val_dataset
from kinema4d.model.train import train_main
from kinema4d.model.train_config import PRESETS, TrainConfig

torch.set_num_threads(1)
TINY = PRESETS["tiny"][1]


def _cfg(tmp_path, **kw):
    return dataclasses.replace(TINY, out_dir=str(tmp_path), progress=False, **kw)


def test_synthetic_episodes_contract():
    e = SyntheticEpisodes(2, 5, (16, 24), seed=3)[1]
    assert e["rgb"].shape == e["world_pointmap"].shape == e["robot_pointmap"].shape == (5, 3, 16, 24)
    assert e["robot_mask"].shape == e["world_valid"].shape == (5, 16, 24)
    assert e["world_stats"].shape == e["robot_stats"].shape == (2, 3) and e["K"].shape == (3, 3)
    for k in ("rgb", "world_pointmap", "robot_pointmap"):
        assert e[k].dtype == torch.float32 and 0 <= e[k].min() and e[k].max() <= 1
    assert e["robot_mask"].sum() > 0 and (e["robot_pointmap"].sum(1)[e["robot_mask"] == 0] == 0).all()
    assert e["success"].dtype == torch.bool and e["index"] == 1 and e["action"].shape == (5, 8)
    assert torch.equal(e["rgb"], SyntheticEpisodes(2, 5, (16, 24), seed=3)[1]["rgb"])


def test_tiny_run_writes_everything(tmp_path):
    s = train_main(_cfg(tmp_path, steps=3))
    assert s["step"] == 3 and len(s["losses"]) == 3 and all(map(lambda x: x == x, s["losses"]))
    ck = tmp_path / "ckpt" / "step_0000003"
    for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors",
              "state.json", "model_config.json", "train_config.json"):
        assert (ck / f).is_file(), f
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))
    saved = TrainConfig.from_dict(json.loads((ck / "train_config.json").read_text()))
    assert saved == dataclasses.replace(_cfg(tmp_path, steps=3), episode_frames=saved.frames)  # synthetic: T frames
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4
    assert list((tmp_path / "tb").iterdir()) and (tmp_path / "val" / "step_0000003.mp4").stat().st_size > 0
    # the summary file train_main's docstring names is the one written (rank 0 in a single process)
    promised = re.search(r"<out_dir>/(\S+?\.json)", " ".join(train_main.__doc__.split())).group(1)
    assert json.loads((tmp_path / promised.replace("{rank}", "0")).read_text())["step"] == 3
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text()) == {"step": 3, "path": "step_0000003"}


def test_robot_fill_colour_is_the_training_mean(tmp_path):
    """robot_fill: the saved ``robot_colour`` is the mean RGB over the robot pixels of the first ``stats_samples``
    training items, checked against a plain loop over the same items."""
    cfg = _cfg(tmp_path, steps=1, stats_samples=3, model=dataclasses.replace(TINY.model, robot_fill=True))
    train_main(cfg)
    saved = load_file(tmp_path / "ckpt" / "step_0000001" / "model.safetensors")["robot_colour"]
    ds = make_dataset(cfg)
    total, n = [0.0, 0.0, 0.0], 0
    for i in range(3):
        e = ds[i]
        for t, r, c in (e["robot_mask"] > 0.5).nonzero().tolist():
            total = [total[k] + float(e["rgb"][t, k, r, c]) for k in range(3)]
            n += 1
    assert n > 0 and torch.allclose(saved, torch.tensor(total) / n, atol=1e-5)


def test_latest_json_is_never_written_in_place(tmp_path, monkeypatch):
    """latest.json goes through a temp file + rename: a crash mid-write cannot leave it empty or truncated."""
    real = Path.write_text

    def write_text(self, *a, **kw):
        assert self.name != "latest.json", "latest.json written in place"
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    train_main(_cfg(tmp_path, steps=2, ckpt_every=1))
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text()) == {"step": 2, "path": "step_0000002"}
    assert not [f for f in (tmp_path / "ckpt").iterdir() if f.name.endswith(".tmp")]


def test_resume_same_trajectory(tmp_path):
    full = train_main(_cfg(tmp_path / "a", steps=6, ckpt_every=3))
    train_main(_cfg(tmp_path / "b", steps=3))
    resumed = train_main(_cfg(tmp_path / "b", steps=6, resume=True))
    assert resumed["start_step"] == 3 and resumed["step"] == 6
    assert resumed["losses"] == full["losses"][3:]
    ma = load_file(str(tmp_path / "a" / "ckpt" / "step_0000006" / "model.safetensors"))
    mb = load_file(str(tmp_path / "b" / "ckpt" / "step_0000006" / "model.safetensors"))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    oa = load_file(str(tmp_path / "a" / "ckpt" / "step_0000006" / "optimizer.safetensors"))
    ob = load_file(str(tmp_path / "b" / "ckpt" / "step_0000006" / "optimizer.safetensors"))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)


def test_stop_at_keeps_the_schedule(tmp_path):
    """stop_at ends a run early on the LR schedule and data order of ``steps`` (a cut of the full run, as the
    Tab. 4 ablations are compared with the default's step-500 checkpoint); --resume without it finishes the run."""
    cos = dict(steps=6, schedule="cosine", warmup=1)
    full = train_main(_cfg(tmp_path / "a", ckpt_every=3, **cos))
    cut = train_main(_cfg(tmp_path / "b", stop_at=3, **cos))
    assert cut["step"] == 3 and cut["losses"] == full["losses"][:3]
    assert not (tmp_path / "b" / "ckpt" / "step_0000006").exists()
    ma = load_file(str(tmp_path / "a" / "ckpt" / "step_0000003" / "model.safetensors"))
    mb = load_file(str(tmp_path / "b" / "ckpt" / "step_0000003" / "model.safetensors"))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    rest = train_main(_cfg(tmp_path / "b", resume=True, **cos))
    assert rest["start_step"] == 3 and rest["losses"] == full["losses"][3:]
    train_main(_cfg(tmp_path / "c", steps=3, schedule="cosine", warmup=1))  # a 3-step schedule: other weights
    mc = load_file(str(tmp_path / "c" / "ckpt" / "step_0000003" / "model.safetensors"))
    assert not all(torch.equal(ma[k], mc[k]) for k in ma)
    with pytest.raises(ValueError, match="stop_at"):
        train_main(_cfg(tmp_path / "d", stop_at=7, **cos))
    with pytest.raises(ValueError, match="xyz_loss_weight"):
        train_main(_cfg(tmp_path / "d", xyz_loss_weight=-1.0))


def test_resume_restores_exact_state(tmp_path):
    from kinema4d.model.codec import make_codec
    from kinema4d.model.network import WorldModel

    cfg = _cfg(tmp_path, steps=2)
    train_main(cfg)
    ck = tmp_path / "ckpt" / "step_0000002"
    model, codec = WorldModel(cfg.model), make_codec(cfg.model)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr)
    step, ema = load_checkpoint(ck, cfg, model, codec, opt)
    assert step == 2
    saved = load_file(str(ck / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    ema_saved = load_file(str(ck / "ema.safetensors"))
    assert all(torch.equal(v, ema_saved[k]) for k, v in ema.items())
    osaved = load_file(str(ck / "optimizer.safetensors"))
    st = opt.state_dict()["state"]
    assert all(torch.equal(st[int(k.split(".")[0])][k.split(".", 1)[1]], v) for k, v in osaved.items())


def test_resume_config_mismatch_and_missing(tmp_path):
    train_main(_cfg(tmp_path, steps=1))
    bad = _cfg(tmp_path, steps=2, resume=True, model=dataclasses.replace(TINY.model, num_layers=3))
    with pytest.raises(ValueError, match="different ModelConfig"):
        train_main(bad)
    with pytest.raises(ValueError, match=r"different recipe.*'lr': \(0.001, 0.002\)"):
        train_main(_cfg(tmp_path, steps=2, resume=True, lr=2e-3))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "ckpt" / "nope", TINY, None, None, None)
    with pytest.raises(FileNotFoundError, match="no_data"):
        make_dataset(_cfg(tmp_path, data=str(tmp_path / "no_data")))


def test_wan_codec_stage(tmp_path):
    cfg = _cfg(tmp_path, steps=2, model=dataclasses.replace(TINY.model, codec="wan"), codec_steps=2,
               stats_samples=2, val_steps=2)
    s = train_main(cfg)
    ck = tmp_path / "ckpt" / "step_0000002"
    assert s["step"] == 2 and (ck / "codec.safetensors").is_file()
    stats = load_file(str(ck / "model.safetensors"))["latent_stats"]
    assert not torch.equal(stats, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "kinema4d.model.train", "tiny", "--out-dir", str(tmp_path),
           "--steps", "2", "--batch-size", "4", "--no-progress", "--val-steps", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s0, s1 = (json.loads((tmp_path / f"summary_rank{r}.json").read_text()) for r in (0, 1))
    assert s0["world_size"] == s1["world_size"] == 2 and s0["step"] == s1["step"] == 2
    assert s0["ranks_identical"] and s0["param_checksum"] == s1["param_checksum"]
    assert s0["losses"] == s1["losses"]  # the all-reduced mean loss
    assert (Path(tmp_path) / "ckpt" / "step_0000002" / "model.safetensors").is_file()


def test_presets_cli():
    cfgs = {name: tyro.extras.overridable_config_cli(PRESETS, args=[name]) for name in PRESETS}
    p = cfgs["paper"]
    assert (p.frames, p.size, p.batch_size, p.lr, p.model.lora_rank) == (49, (480, 720), 32, 2e-5, 64)
    assert p.model.num_layers == 40 and p.model.in_channels == 36 and p.precision == "bf16"
    t = tyro.extras.overridable_config_cli(PRESETS, args=["tiny", "--steps", "7", "--model.mask", "binary"])
    assert t.steps == 7 and t.model.mask == "binary" and isinstance(t.model, ModelConfig)
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        from kinema4d.model.network import WorldModel

        WorldModel(p.model)


def _write_dataset(data_dir: Path, splits=("train",), T: int = 9, H: int = 24, W: int = 32) -> Path:
    """Two random episodes per split written with kinema4d.data.episodes under ``data_dir/<split>``."""
    import numpy as np

    from kinema4d.data import episodes as kdata
    from kinema4d.kinematics.camera import Camera

    rng = np.random.default_rng(0)
    cam = Camera.look_at([1.0, 0.2, 1.0], [0.0, 0.0, 0.6], width=W, height=H)
    for split in splits:
        root, entries = kdata.init_dataset(data_dir / split, split), {}
        for ep in range(2):
            wpm = cam.depth_to_pointmap(rng.uniform(0.8, 1.5, (T, H, W)).astype(np.float32))
            rmask = np.zeros((T, H, W), bool)
            rmask[:, 8:16, 10 + ep:20 + ep] = True
            arrays = {"rgb": rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8), "world_pointmap": wpm,
                      "robot_pointmap": np.where(rmask[..., None], wpm, 0).astype(np.float32), "robot_mask": rmask,
                      "robot_render_mask": rmask, "q": rng.normal(size=(T, 8)), "actions": rng.normal(size=(T, 8)),
                      "object_poses": rng.normal(size=(T, 2, 7))}
            attrs = {"success": True, "instruction": "x", "split": split, "camera": cam.to_dict(),
                     "variant": {"kind": "clean"}, "frames": T}
            entries[ep] = kdata.write_episode(root, ep, arrays, attrs)
        kdata.write_index(root, split, entries)
    return data_dir


def test_trains_on_torch_episodes(tmp_path, capfd):
    """The data engineer's TorchEpisodes (zarr episodes written with kinema4d.data.episodes) feeds the trainer as is;
    the recorded episode length (9 frames, 5 trained on) lands in train_config.json as episode_frames. The data has
    no "val" split: validation falls back to the training data, with a warning that says so. --no-progress
    (progress=False) also silences the preload bar."""
    data = _write_dataset(tmp_path / "data")
    with pytest.warns(RuntimeWarning, match=r"validation split 'val' not found .*validating on the TRAINING data"):
        s = train_main(_cfg(tmp_path / "run", data=str(data), size=(16, 16), frames=5, steps=2, val_steps=1,
                            preload=True, preload_workers=0))
    assert s["step"] == 2 and all(x == x for x in s["losses"])
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["episode_frames"] == 9
    assert "preload" not in capfd.readouterr().err


def test_val_split_choice(tmp_path):
    """make_val_dataset: the val split when the data has one, the training data with a warning when it does not,
    the training data without a word when val_split=None asks for it."""
    both = _write_dataset(tmp_path / "both", splits=("train", "val"))
    only = _write_dataset(tmp_path / "only")
    kw = dict(size=(16, 16), frames=5)
    cfg = _cfg(tmp_path, data=str(both), **kw)
    train = make_dataset(cfg, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_val_dataset(cfg, train).ds.split == "val"
        assert make_val_dataset(_cfg(tmp_path, data=str(only), val_split=None, **kw), train) is train
        assert isinstance(make_val_dataset(_cfg(tmp_path), train), SyntheticEpisodes)  # synthetic: other seed
    with pytest.warns(RuntimeWarning, match=r"validation split 'holdout' not found in .*only"):
        assert make_val_dataset(_cfg(tmp_path, data=str(only), val_split="holdout", **kw), train) is train


def test_preload_progress_bar_follows_progress(capfd):
    ds = SyntheticEpisodes(2, 5, (16, 16), 0)
    PreloadedEpisodes(ds, workers=0, progress=False)
    assert "preload" not in capfd.readouterr().err
    PreloadedEpisodes(ds, workers=0)
    assert "preload" in capfd.readouterr().err


def test_cached_codec_matches_codec():
    from kinema4d.model.codec import make_codec
    from kinema4d.model.datasets import CachedCodec

    codec = make_codec(dataclasses.replace(TINY.model, codec="wan")).eval()
    x = torch.rand(2, 3, 5, 16, 32)
    cc = CachedCodec(codec)
    a = cc.encode(x)
    b = cc.encode(torch.stack([x[1], x[0]]))
    with torch.no_grad():
        ref = codec.encode(x)
    assert torch.equal(a, ref) and torch.equal(b, ref.flip(0)) and (cc.hits, cc.misses) == (2, 2)


def test_preload_cache_roundtrip(tmp_path):
    """PreloadedEpisodes writes its cache once and reads it back identically; a cache made for other data is
    refused, not silently used."""
    ds = SyntheticEpisodes(3, 5, (16, 16), 0)
    cache = tmp_path / "c.safetensors"
    a = PreloadedEpisodes(ds, workers=0, cache=cache, key="synthetic|3")
    assert cache.is_file()
    b = PreloadedEpisodes(None, workers=0, cache=cache, key="synthetic|3")  # no dataset needed: read from cache
    assert len(b) == 3
    for i in range(3):
        assert a[i].keys() == b[i].keys() and b[i]["index"] == ds[i]["index"]
        for k, v in ds[i].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(b[i][k], v), k
    with pytest.raises(ValueError, match="made for"):
        PreloadedEpisodes(ds, workers=0, cache=cache, key="other")
