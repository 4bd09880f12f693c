"""kinema4d eval: scoring protocol on constructed predictions and the CLI end to end on a tiny dataset + model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kinema4d.cli import main
from kinema4d.data.datagen import DatagenConfig, datagen_main
from kinema4d.eval.evaluate import penetration_pct, score_episode
from kinema4d.eval.report import render_markdown
from kinema4d.model.train import train_main
from kinema4d.model.train_config import TrainConfig

T, H, W = 5, 16, 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata")
    datagen_main(DatagenConfig(out=d, episodes=2, split="test", resolution="32x48", frames=9,
                               failures_per_success=1, progress=False))
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalrun")
    train_main(TrainConfig(out_dir=str(d), steps=2, size=(H, W), frames=T, progress=False, val_steps=2))
    return d


def _item(data_dir):
    from kinema4d.data.episodes import TorchEpisodes

    return TorchEpisodes(data_dir, split="test", size=(H, W), frames=T)[0]


def test_score_perfect_vs_static(data_dir):
    item = _item(data_dir)
    gt_rgb = (item["rgb"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    gt01 = item["world_pointmap"].permute(0, 2, 3, 1).numpy()
    perfect = score_episode(gt_rgb, gt01, item)
    assert perfect["psnr"] == np.inf and perfect["chamfer_l1"] == pytest.approx(0.0, abs=1e-7)
    assert perfect["fscore"] == pytest.approx(1.0)
    static = score_episode(np.repeat(gt_rgb[:1], T, 0), np.repeat(gt01[:1], T, 0), item)
    assert static["psnr"] < perfect["psnr"] and static["chamfer_l1"] > 0  # the robot moves
    noisy = score_episode(gt_rgb, gt01 + np.random.default_rng(0).normal(0, 0.05, gt01.shape), item)
    assert noisy["chamfer_l1"] > perfect["chamfer_l1"] and noisy["fscore"] < 1.0


def test_latent_l2_and_penetration(data_dir):
    """Latent L2 is 0 for a perfect prediction and the pixel-codec MSE otherwise; penetration is ~0 for the GT
    geometry and 100 % for points put at a link's centre (a convex combination of its hull vertices)."""
    from kinema4d.data.episodes import TorchEpisodes, frame_indices
    from kinema4d.eval.evaluate import _robot_pose
    from kinema4d.eval.metrics import link_hulls
    from kinema4d.geometry import transform_points
    from kinema4d.model.codec import PixelCodec

    ds = TorchEpisodes(data_dir, split="test", size=(H, W), frames=T)
    item = ds[0]
    gt_rgb = (item["rgb"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    gt01 = item["world_pointmap"].permute(0, 2, 3, 1).numpy()
    codec = PixelCodec(4)
    dark = np.clip(gt_rgb.astype(int) - 51, 0, 255).astype(np.uint8)
    assert score_episode(gt_rgb, gt01, item, codec=codec)["latent_l2"] == 0.0
    want = np.mean((2 * (dark.astype(float) - gt_rgb) / 255) ** 2)  # the pixel codec maps [0, 1] to [-1, 1]
    assert score_episode(dark, gt01, item, codec=codec)["latent_l2"] == pytest.approx(want, rel=1e-5)

    robots = {}
    robot, q, T_cam_world = pose = _robot_pose(ds, 0, T, robots)
    assert q.shape == (T, robot.dof) and _robot_pose(ds, 0, T, robots)[0] is robot  # cached
    raw_q = ds.ds.read_episode(0, keys=("q",))["q"]
    np.testing.assert_array_equal(q, raw_q[frame_indices(len(raw_q), T)])
    st = item["world_stats"].numpy().astype(np.float64)
    gt_m = np.where(item["world_valid"].numpy()[..., None] > 0.5, gt01 * (st[1] - st[0]) + st[0], 0.0)
    assert penetration_pct(gt_m, item, pose) < 5.0
    link = "panda_link3"
    assert link in link_hulls(robot)
    T_world_link = robot.fk(q, links=[link])[link]  # (T, 4, 4)
    centre_link = np.asarray(robot.link_meshes[link].vertices).mean(0)
    inside = np.zeros_like(gt_m)
    for t in range(T):
        inside[t] = transform_points(T_cam_world @ T_world_link[t], centre_link[None])[0]
    assert penetration_pct(inside, item, pose) == pytest.approx(100.0)
    scored = score_episode(gt_rgb, gt01, item, gt_m, robot_pose=pose)
    assert scored["penetration_pct"] == pytest.approx(penetration_pct(gt_m, item, pose))


def test_eval_cli_writes_report(data_dir, run_dir, tmp_path):
    out = tmp_path / "rep"
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(data_dir), "--split", "test", "--out", str(out),
                 "--steps", "2", "--videos", "1", "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["episodes"] == 2 and set(rep["summary"]) == {"kinema4d", "static"}
    assert np.isfinite(rep["summary"]["kinema4d"]["psnr"]) and np.isfinite(rep["summary"]["static"]["chamfer_l1"])
    assert "| kinema4d |" in (out / "report.md").read_text() and "<table" in (out / "report.html").read_text()
    assert (out / "per_frame.png").stat().st_size > 0 and len(list((out / "videos").glob("*.mp4"))) == 1
    assert rep["summary"]["kinema4d"]["lpips"] is None and rep["summary"]["static"]["fvd"] is None
    assert "n/a = not available" in (out / "report.md").read_text()
    assert np.isfinite(rep["summary"]["kinema4d"]["latent_l2"]) and np.isfinite(rep["gt_penetration_pct"])
    assert rep["robot_input"] == "stored" and rep["config"]["robot_input"] == "stored"
    md = (out / "report.md").read_text()
    assert "## Object (target object, last frame)" in md and "| GT frames (locator ceiling) |" in md
    assert "Object (target object, last frame)" in (out / "report.html").read_text()
    for m in ("kinema4d", "static"):  # the object table's columns for every method
        s = rep["summary"][m]
        assert 0.0 <= s["object_found_pct"] <= 100.0 and s["object_gt_moving"] == sum(rep["object_gt"]["per_episode"]
                                                                                        ["gt_moved"])
        assert len(rep["per_episode"][m]["object_endpoint_mm"]) == 2
        assert all(isinstance(f, bool) for f in rep["per_episode"][m]["object_found"])
    pe = rep["per_episode"]  # per-episode values behind the summary, for paired statistics
    assert all(len(pe[m]["psnr"]) == 2 and len(pe[m]["chamfer_l1"]) == 2 for m in ("kinema4d", "static"))
    # static's PSNR computed here from the episodes alone (frame 0 repeated vs frames 1:, 8-bit, mean over frames,
    # then over episodes), not from the report's own per-episode values
    from kinema4d.data.episodes import TorchEpisodes

    want = []
    for i in range(2):
        rgb = np.round(np.clip(TorchEpisodes(data_dir, split="test", size=(H, W), frames=T)[i]["rgb"].numpy(), 0, 1)
                       .transpose(0, 2, 3, 1) * 255).astype(np.float64)
        mse = ((rgb[1:] - rgb[:1]) ** 2).reshape(T - 1, -1).mean(1)
        want.append(float(np.mean(10 * np.log10(255.0 ** 2 / mse))))
    assert pe["static"]["psnr"] == pytest.approx(want, rel=1e-9)
    assert rep["summary"]["static"]["psnr"] == pytest.approx((want[0] + want[1]) / 2, rel=1e-9)
    assert re.search(r"kinema4d: PSNR higher in [0-2]/2, CD-L1 lower in [0-2]/2", (out / "report.md").read_text())
    assert main(["eval", "compare", str(out), str(out)]) == 0
    rep["summary"]["static"]["chamfer_l1"] = float("nan")  # e.g. an RGB-only model has no geometry to score
    md = render_markdown(rep)
    assert "| static |" in md and "nan |" not in md and "| n/a |" in md
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--data", str(data_dir), "--out", str(out)]) == 2


def test_wins_vs_static_by_hand():
    """The paired win counts of report.md against counts worked out by hand; None / NaN / inf episodes are left out
    of the pair count."""
    from kinema4d.eval.report import _wins_vs_static

    report = {"per_episode": {
        "kinema4d": {"psnr": [20.0, 25.0, float("inf"), None], "chamfer_l1": [0.01, 0.02, 0.03, 0.04]},
        "static": {"psnr": [22.0, 24.0, 30.0, 21.0], "chamfer_l1": [0.02, 0.01, 0.05, float("nan")]}}}
    # PSNR: (20, 22) no, (25, 24) yes, inf and None dropped -> 1/2; CD-L1: (0.01, 0.02) yes, (0.02, 0.01) no,
    # (0.03, 0.05) yes, NaN dropped -> 2/3
    assert _wins_vs_static(report, "kinema4d") == "PSNR higher in 1/2, CD-L1 lower in 2/3"
    report["per_episode"]["kinema4d"]["chamfer_l1"] = [None] * 4  # an RGB-only model: no CD-L1 pairs at all
    assert _wins_vs_static(report, "kinema4d") == "PSNR higher in 1/2"


def test_eval_baselines_same_harness(data_dir, run_dir, tmp_path):
    """--baselines NAME=CKPT: every model is scored on the same episodes; world_anchor and action_embedding models
    get their extra inputs (frame-0 pointmap, recorded actions); bad specs and mismatched sizes are clear errors."""
    from kinema4d.model.config import ModelConfig

    runs = {}
    for name, mcfg in {"binary_mask": ModelConfig(condition="binary_mask", world_anchor=True, prediction="x0"),
                       "action_embedding": ModelConfig(condition="action_embedding", mask="none",
                                                       world_anchor=True)}.items():
        runs[name] = tmp_path / name
        train_main(TrainConfig(model=mcfg, out_dir=str(runs[name]), steps=1, size=(H, W), frames=T,
                               progress=False, val_steps=1))
    out = tmp_path / "rep"
    base = ["eval", "--checkpoint", str(run_dir), "--data", str(data_dir), "--split", "test", "--steps", "2",
            "--videos", "1", "--no-progress"]
    assert main([*base, "--out", str(out), "--baselines", *[f"{k}={v}" for k, v in runs.items()]]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["summary"]) == ["kinema4d", "binary_mask", "action_embedding", "static"]
    for m in rep["summary"]:
        assert np.isfinite(rep["summary"][m]["psnr"]) and np.isfinite(rep["summary"][m]["chamfer_l1"]), m
        assert np.isfinite(rep["summary"][m]["object_found_pct"]), m  # object metrics for every method
        assert len(rep["per_episode"][m]["object_moved"]) == 2, m
    assert "| binary_mask |" in (out / "report.md").read_text()
    assert main([*base, "--out", str(out), "--baselines", "static=x"]) == 2
    other = tmp_path / "other"
    train_main(TrainConfig(out_dir=str(other), steps=1, size=(H, 2 * W), frames=T, progress=False, val_steps=1))
    assert main([*base, "--out", str(out), "--baselines", f"wide={other}"]) == 2


def test_checkpoint_without_training_size_is_an_error(data_dir, run_dir, tmp_path):
    """A checkpoint without train_config.json is not scored at an assumed size: ValueError telling the user to pass
    the size, which --size / --frames then supply (and must match checkpoints that record theirs)."""
    import shutil

    from kinema4d.eval.evaluate import load_methods

    ck = tmp_path / "ck"
    shutil.copytree(run_dir / "ckpt" / "step_0000002", ck)
    (ck / "train_config.json").unlink()
    with pytest.raises(ValueError, match=r"has no train_config.json, so the size .* --size H W --frames T"):
        load_methods(ck)
    assert load_methods(ck, size=(H, W), frames=T)[1:] == ((H, W), T)
    tc = json.loads((run_dir / "train_config.json").read_text())
    (ck / "train_config.json").write_text(json.dumps({k: v for k, v in tc.items() if k != "frames"}))
    with pytest.raises(ValueError, match='without "frames"'):
        load_methods(ck)
    assert load_methods(ck, frames=T)[1:] == ((H, W), T)
    with pytest.raises(ValueError, match=r"trained on 5 frames of \(16, 16\) \(train_config.json\), not the given"):
        load_methods(run_dir, size=(H, 2 * W))
    (ck / "train_config.json").unlink()
    base = ["eval", "--checkpoint", str(ck), "--data", str(data_dir), "--split", "test", "--steps", "1",
            "--videos", "0", "--episodes", "1", "--no-progress", "--no-penetration", "--out", str(tmp_path / "rep")]
    assert main(base) == 2
    assert main([*base, "--size", str(H), str(W), "--frames", str(T)]) == 0
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["summary"]["kinema4d"]["psnr"] > 0


def test_eval_feature_metrics_with_local_weights(data_dir, run_dir, tmp_path):
    """With local weights in the standard file layouts FID is scored; LPIPS (16 px frames, AlexNet needs 31) and FVD
    (4-frame clips, I3D needs 9) are n/a with the reason in the report; a file in another layout fails up front."""
    import torch

    from kinema4d.eval import featurenets as FN
    from kinema4d.eval.evaluate import EvalConfig, evaluate, feature_weights

    torch.manual_seed(0)
    w = tmp_path / "weights"
    w.mkdir()
    torch.save(FN.LpipsAlex().state_dict(), w / "alexnet.pth")  # torchvision features + lpips heads in one file
    torch.save(FN.InceptionV3().state_dict(), w / "pt_inception-2015-12-05-6726825d.pth")
    torch.save(FN.InceptionI3d().state_dict(), w / "rgb_imagenet.pt")
    out = tmp_path / "rep"
    with pytest.warns(UserWarning, match="n/a"):
        assert main(["eval", "--checkpoint", str(run_dir), "--data", str(data_dir), "--split", "test", "--out",
                     str(out), "--steps", "1", "--videos", "0", "--no-penetration", "--no-progress", "--lpips-weights",
                     str(w), "--fid-weights", str(w), "--fvd-weights", str(w)]) == 0
    rep = json.loads((out / "report.json").read_text())
    for m in ("kinema4d", "static"):
        assert rep["summary"][m]["fid"] is not None and np.isfinite(rep["summary"][m]["fid"]), m
        assert rep["summary"][m]["lpips"] is None and rep["summary"][m]["fvd"] is None, m
    assert "31 px" in rep["feature_metrics_na"]["lpips"] and "9 frames" in rep["feature_metrics_na"]["fvd"]
    md = (out / "report.md").read_text()
    assert "LPIPS is n/a: its AlexNet needs frames of at least 31 px" in md and "n/a = not available" not in md
    with pytest.raises(ValueError, match="rgb_imagenet.pt does not hold InceptionV3 weights"):
        evaluate(EvalConfig(checkpoint=run_dir, data=data_dir, out=out, fid_weights=w / "rgb_imagenet.pt"))
    with pytest.warns(UserWarning, match="FID is n/a.*pt_inception-2015-12-05-6726825d.pth"):
        weights, na = feature_weights(EvalConfig(fid_weights=tmp_path / "none"), (32, 48), 10)
    assert weights == {"lpips": None, "fid": None, "fvd": None} and set(na) == {"fid"}


def test_eval_pipeline_robot_input(data_dir, run_dir, tmp_path):
    """--robot-input pipeline: the commanded actions through IK and the kinematic render replace the stored robot
    pointmaps; the report says so and scores every method as in stored mode."""
    out = tmp_path / "pipe"
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(data_dir), "--split", "test", "--out", str(out),
                 "--steps", "1", "--videos", "0", "--robot-input", "pipeline", "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["robot_input"] == "pipeline" and rep["config"]["robot_input"] == "pipeline"
    assert len(rep["pipeline_ik_max_pos_err_mm"]) == 2
    for m in ("kinema4d", "static"):
        for k in ("psnr", "chamfer_l1", "adherence_mm", "object_found_pct"):
            assert np.isfinite(rep["summary"][m][k]), (m, k)
    assert np.isfinite(rep["summary"]["kinema4d"]["penetration_pct"]) and np.isfinite(rep["gt_penetration_pct"])
    md = (out / "report.md").read_text()
    assert "robot input 'pipeline'" in md and "Robot input: pipeline" in md
    with pytest.raises(SystemExit) as exc:  # tyro rejects other choices
        main(["eval", "--checkpoint", str(run_dir), "--data", str(data_dir), "--out", str(out),
              "--robot-input", "executed"])
    assert exc.value.code == 2
    from kinema4d.eval.evaluate import EvalConfig, evaluate

    with pytest.raises(ValueError, match="robot_input"):
        evaluate(EvalConfig(checkpoint=run_dir, data=data_dir, out=out, robot_input="executed"))


def test_predict_passes_robot_rgb_only_to_robot_rgb_models(data_dir, monkeypatch):
    """predict hands sample() the item's robot_rgb iff the model's config asks for it (older sample() has no such
    argument), and a robot-RGB model on an item without robot_rgb is a clear error."""
    import types

    import torch

    import kinema4d.model.sampling as sampling
    from kinema4d.eval.evaluate import predict

    seen = {}

    def fake_sample(model, codec, image0, rpm, mask, **kw):
        seen.clear()
        seen.update(kw)
        return torch.zeros(T, 3, H, W), None

    monkeypatch.setattr(sampling, "sample", fake_sample)
    raw = _item(data_dir)
    raw = raw | {"robot_rgb": torch.rand(T, 3, H, W)}
    cfg = dict(world_anchor=False, condition="pointmap")
    predict(types.SimpleNamespace(cfg=types.SimpleNamespace(**cfg)), None, raw, 1, 1.0, 0)
    assert "robot_rgb" not in seen
    predict(types.SimpleNamespace(cfg=types.SimpleNamespace(**cfg, robot_rgb=False)), None, raw, 1, 1.0, 0)
    assert "robot_rgb" not in seen
    predict(types.SimpleNamespace(cfg=types.SimpleNamespace(**cfg, robot_rgb=True)), None, raw, 1, 1.0, 0)
    assert seen["robot_rgb"] is raw["robot_rgb"]
    with pytest.raises(ValueError, match="robot_rgb"):
        predict(types.SimpleNamespace(cfg=types.SimpleNamespace(**cfg, robot_rgb=True)), None,
                {k: v for k, v in raw.items() if k != "robot_rgb"}, 1, 1.0, 0)
