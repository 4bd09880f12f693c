"""kinema4d.simulator: Simulator / Rollout on a tiny trained checkpoint, `kinema4d simulate`, `kinema4d train`.

The tiny checkpoint has 2 training steps: its outputs are not meaningful pictures, so these tests check contracts
(shapes, dtypes, determinism, the kinematic stage, the metric de-normalization, files), not image quality.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import kinema4d
from kinema4d import cli
from kinema4d.interactive.viewer import load_rollout_npz
from kinema4d.kinematics.camera import Camera, demo_camera
from kinema4d.kinematics.control import demo_actions
from kinema4d.kinematics.render import render_robot
from kinema4d.kinematics.robot import Robot
from kinema4d.model.train import train_main
from kinema4d.model.train_config import TrainConfig
from kinema4d.pointmap import normalize_pointmap
from kinema4d.simulator import DEFAULT_CHECKPOINT, DEMO_DIR, DEMO_FILES, Rollout, Simulator, resolve_checkpoint

torch.set_num_threads(1)
H = W = 16
T = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_run")
    train_main(TrainConfig(out_dir=str(d), steps=2, size=(H, W), frames=T, progress=False, val_steps=2))
    return d


@pytest.fixture(scope="module")
def robot():
    return Robot.builtin("panda")  # shared: the renderer (meshes) is cached per Robot object


@pytest.fixture(scope="module")
def camera():
    return demo_camera(width=W, height=H)


@pytest.fixture(scope="module")
def actions(robot):
    return demo_actions(robot, 49)[::12]  # (5, 8) ee_pose


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sim(run_dir, robot, camera):
    return Simulator(run_dir, robot=robot, camera=camera, steps=3)


@pytest.fixture(scope="module")
def rollout(sim, image, actions):
    return sim.rollout(image, actions)


def test_checkpoint_resolution(run_dir, sim):
    r = resolve_checkpoint(run_dir)
    assert r.dir == run_dir / "ckpt" / "step_0000002" and r.weights == "ema.safetensors"
    assert r.train_config["size"] == [H, W] and r.train_config["frames"] == T
    assert sim.size == (H, W) and sim.train_frames == T and sim.action_dim == 8
    assert resolve_checkpoint(r.dir).dir == r.dir  # the checkpoint dir itself works too


def test_rollout_contract(rollout, robot, camera, actions):
    ro = rollout
    assert isinstance(ro, Rollout) and ro.T == T and ro.robot_name == "panda" and ro.camera is camera
    assert ro.rgb.shape == (T, H, W, 3) and ro.rgb.dtype == np.uint8
    for pm in (ro.world_pointmap, ro.world_pointmap01, ro.robot_pointmap):
        assert pm.shape == (T, H, W, 3) and pm.dtype == np.float32 and np.isfinite(pm).all()
    assert ro.world_pointmap01.min() >= 0 and ro.world_pointmap01.max() <= 1
    assert ro.robot_mask.shape == (T, H, W) and ro.robot_mask.dtype == bool and ro.robot_mask.any(axis=(1, 2)).all()
    assert ro.q.shape == (T, robot.dof)
    # the kinematic stage is exactly render_robot at the IK joints, and the IK reaches the actions' poses
    ref = render_robot(robot, ro.q, camera)
    np.testing.assert_array_equal(ro.robot_pointmap, ref.pointmap)
    np.testing.assert_array_equal(ro.robot_mask, ref.mask)
    assert ro.info["ik_max_pos_err_m"] < 1e-3
    _, stats = normalize_pointmap(ref.pointmap, ref.mask)
    np.testing.assert_allclose(ro.robot_stats, np.stack([stats.min, stats.max]))


def test_world_pointmap_least_squares_fit(rollout):
    """Untrained model: the generated world pointmap is not a scene, but its de-normalization must be the
    per-channel least-squares affine fit to the robot pointmap on robot pixels, so on those pixels it is at least
    as close to the robot pointmap as the fallback mapping through the robot's own min-max stats."""
    ro = rollout
    m = ro.robot_mask
    lo, hi = ro.robot_stats
    for c in range(3):
        y = ro.robot_pointmap[..., c][m].astype(np.float64)
        g = ro.world_pointmap01[..., c][m].astype(np.float64)
        scale, offset = ro.world_fit[:, c]
        np.testing.assert_allclose(ro.world_pointmap[..., c], scale * ro.world_pointmap01[..., c] + offset,
                                   rtol=1e-5, atol=1e-5)
        sse_fit = ((scale * g + offset - y) ** 2).sum()
        sse_fallback = (((hi[c] - lo[c]) * g + lo[c] - y) ** 2).sum()
        assert sse_fit <= sse_fallback * (1 + 1e-5) + 1e-9


def test_world_pointmap_recovers_metres(sim, image, actions, monkeypatch):
    """If the model generates a world pointmap that is an affine image of the (normalized) robot pointmap on robot
    pixels, the simulator's de-normalization returns the robot pointmap in metres there."""
    import kinema4d.model.sampling as model_mod

    def fake_sample(model, codec, image0, rpm01, mask, **kw):
        wpm = 0.25 + 0.5 * rpm01
        return image0[None].expand(rpm01.shape[0], -1, -1, -1), wpm

    monkeypatch.setattr(model_mod, "sample", fake_sample)
    ro = sim.rollout(image, actions)
    m = ro.robot_mask
    np.testing.assert_allclose(ro.world_pointmap[m], ro.robot_pointmap[m], atol=1e-4)
    assert (ro.rgb == image[None]).all()


def test_seeded_determinism(sim, image, actions):
    a = sim.rollout(image, actions, seed=7)
    b = sim.rollout(image, actions, seed=7)
    c = sim.rollout(image, actions, seed=8)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.world_pointmap, b.world_pointmap)
    assert not np.array_equal(a.world_pointmap01, c.world_pointmap01)
    assert not np.array_equal(a.rgb, c.rgb)


def test_other_frame_counts(sim, image, actions):
    ro = sim.rollout(image, actions[:3])  # T != the training T: the pixel codec accepts any T
    assert ro.rgb.shape == (3, H, W, 3) and np.isfinite(ro.world_pointmap).all()


def test_save_and_reload(rollout, tmp_path):
    written = rollout.save(tmp_path / "ro", ply=True)
    for k in ("rgb", "pointmap", "rollout"):
        assert written[k].is_file() and written[k].stat().st_size > 0, k
    assert written["rollout"].name == "rollout.npz"
    assert len(list(written["ply"].glob("frame_*.ply"))) == T
    assert not list((tmp_path / "ro").glob(".*tmp*"))
    seq = load_rollout_npz(written["rollout"])
    np.testing.assert_array_equal(seq.rgb, rollout.rgb)
    np.testing.assert_array_equal(seq.world_pointmap, rollout.world_pointmap)
    np.testing.assert_array_equal(seq.robot_pointmap, rollout.robot_pointmap)
    np.testing.assert_array_equal(seq.robot_mask, rollout.robot_mask)
    np.testing.assert_allclose(seq.q, rollout.q, atol=1e-6)  # stored float32
    assert seq.camera.to_dict() == rollout.camera.to_dict() and seq.robot_name == "panda" and seq.fps == rollout.fps


def _write_inputs(d, image, actions, camera):
    import imageio.v2 as imageio

    d.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(d / "init.png", image)
    np.save(d / "actions.npy", actions)
    camera.save(d / "camera.json")
    return d / "init.png", d / "actions.npy", d / "camera.json"


def test_cli_simulate(run_dir, robot, image, actions, camera, tmp_path, monkeypatch):
    import kinema4d.simulator

    monkeypatch.setattr(kinema4d.simulator, "load_robot", lambda spec: robot)  # reuse the cached renderer
    png, npy, cam = _write_inputs(tmp_path / "in", image, actions, camera)
    out = tmp_path / "out"
    rc = cli.main(["simulate", "--checkpoint", str(run_dir), "--robot", "panda", "--camera", str(cam), "--image",
                   str(png), "--actions", str(npy), "--mode", "ee_pose", "--out", str(out), "--ply", "--steps", "2",
                   "--seed", "3"])
    assert rc == 0
    for f in ("rgb.mp4", "pointmap.mp4", "rollout.npz", "simulate.json", "ply/frame_000000.ply"):
        assert (out / f).is_file(), f
    js = json.loads((out / "simulate.json").read_text())
    assert js["config"]["seed"] == 3 and js["rollout"]["frames"] == T and js["simulator"]["steps"] == 2
    assert js["simulator"]["checkpoint"].endswith("step_0000002") and js["simulator"]["action_rate"] == "episode"
    assert cli.main(["simulate", "--checkpoint", str(run_dir), "--camera", str(cam), "--image", str(png), "--actions",
                     str(npy), "--out", str(tmp_path / "bad"), "--action-rate", "per_step"]) == 2
    seq = load_rollout_npz(out / "rollout.npz")
    ref = Simulator(run_dir, robot=robot, camera=camera, steps=2, seed=3).rollout(png, actions)
    np.testing.assert_array_equal(seq.rgb, ref.rgb)  # the PNG round trip is lossless


def test_image_size_mismatch(sim, actions):
    with pytest.raises(ValueError, match=r"image is 24x16 .*camera is 16x16"):
        sim.rollout(np.zeros((16, 24, 3), np.uint8), actions)


def test_native_size_inputs_are_resampled(run_dir, robot, image, actions, rollout):
    """A camera and image at another size than the model's are resampled to it (K scaled) and the rollout says so;
    an image 2x the size (each pixel repeated) gives exactly the model-size rollout."""
    big = Simulator(run_dir, robot=robot, camera=demo_camera(width=2 * W, height=2 * H), steps=3)
    assert big.resampled == {"from_wh": [2 * W, 2 * H], "to_wh": [W, H], "aspect_changed": False}
    np.testing.assert_allclose(big.camera.K, demo_camera(width=W, height=H).K)
    ro = big.rollout(image.repeat(2, 0).repeat(2, 1), actions)
    assert ro.info["resampled"] == {"image": [2 * W, 2 * H], "to_wh": [W, H], "K_scaled": True}
    assert ro.rgb.shape == rollout.rgb.shape and ro.camera.width == W
    np.testing.assert_array_equal(ro.rgb, rollout.rgb)
    assert rollout.info["resampled"] is None
    with pytest.raises(ValueError, match=r"image is 24x16 .*camera is 32x32 and the model runs at 16x16"):
        big.rollout(np.zeros((16, 24, 3), np.uint8), actions)


def test_wrong_action_dim(sim, image, actions):
    with pytest.raises(ValueError, match=r"\(T, 8\) for mode 'ee_pose'.*got \(5, 7\)"):
        sim.rollout(image, actions[:, :7])


def test_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not found"):
        Simulator(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        Simulator(tmp_path / "empty")
    assert cli.main(["simulate", "--checkpoint", str(tmp_path / "nope"), "--image", "x.png", "--actions",
                     "a.npy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kinema4d simulate: error:") and "nope" in err and len(err.splitlines()) == 1


def test_cli_debug_reraises(tmp_path, capsys, monkeypatch):
    """`kinema4d --debug ...` and KINEMA4D_DEBUG=1 re-raise a user error with its traceback; default is one line."""
    args = ["simulate", "--checkpoint", str(tmp_path / "nope"), "--image", "x.png", "--actions", "a.npy"]
    monkeypatch.delenv("KINEMA4D_DEBUG", raising=False)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("(kinema4d --debug simulate ... shows the traceback)")
    with pytest.raises(FileNotFoundError, match="nope"):
        cli.main(["--debug", *args])
    monkeypatch.setenv("KINEMA4D_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="nope"):
        cli.main(args)
    monkeypatch.setenv("KINEMA4D_DEBUG", "0")
    assert cli.main(args) == 2
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--debug" in out and "KINEMA4D_DEBUG=1" in out


def test_checkpoint_config_mismatch(run_dir, tmp_path, image, actions, camera, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir / "ckpt" / "step_0000002", bad)
    mc = json.loads((bad / "model_config.json").read_text())
    mc["num_layers"] += 1
    (bad / "model_config.json").write_text(json.dumps(mc))
    with pytest.raises(ValueError, match=f"checkpoint {bad}.*missing keys"):
        Simulator(bad)
    png, npy, cam = _write_inputs(tmp_path / "in", image, actions, camera)
    assert cli.main(["simulate", "--checkpoint", str(bad), "--image", str(png), "--actions", str(npy), "--camera",
                     str(cam), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and len(err.strip().splitlines()) == 1


def test_lazy_exports():
    code = "import sys, kinema4d; assert 'torch' not in sys.modules; print(kinema4d.Simulator.__module__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "kinema4d.simulator", res.stderr
    assert kinema4d.Rollout is Rollout and kinema4d.Simulator is Simulator


def test_cli_train(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0 and "tiny" in capsys.readouterr().out
    assert cli.main(["train", "tiny", "--out-dir", str(tmp_path), "--steps", "1", "--val-steps", "1",
                     "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 1
    assert (tmp_path / "ckpt" / "step_0000001" / "ema.safetensors").is_file()


def test_simulate_demo(tmp_path):
    """The bundled model + demo inputs must ship with the package: this FAILS (not skips) when they are missing."""
    missing = [str(p) for p in (DEFAULT_CHECKPOINT / "model_config.json",
                                *(DEFAULT_CHECKPOINT / f for f in ("train_config.json", "model.safetensors")),
                                *(DEMO_DIR / f for f in DEMO_FILES)) if not p.is_file()]
    assert not missing, f"bundled assets missing: {missing}"
    out = tmp_path / "demo"
    assert cli.main(["simulate", "--demo", "--out", str(out), "--steps", "4"]) == 0
    seq = load_rollout_npz(out / "rollout.npz")
    cam = Camera.load(DEMO_DIR / "camera.json")
    T_actions = np.load(DEMO_DIR / "actions.npy").shape[0]
    assert T_actions == 49  # one per recorded frame: the model generates its trained frames (9 at stride 6) from them
    T_model = json.loads((DEFAULT_CHECKPOINT / "train_config.json").read_text())["frames"]
    assert seq.rgb.shape == (T_model, cam.height, cam.width, 3) and seq.world_pointmap is not None
    assert np.isfinite(seq.world_pointmap).all() and seq.robot_mask.any()
    assert (out / "rgb.mp4").is_file() and (out / "pointmap.mp4").is_file() and (out / "simulate.json").is_file()


# ---------------------------------------------------------------------------------------------------- world anchor
@pytest.fixture(scope="module")
def anchor_sim(tmp_path_factory, robot, camera):
    from kinema4d.model.config import ModelConfig

    d = tmp_path_factory.mktemp("anchor_run")
    train_main(TrainConfig(model=ModelConfig(world_anchor=True, prediction="x0"), out_dir=str(d), steps=2,
                           size=(H, W), frames=T, progress=False, val_steps=1))
    return Simulator(d, robot=robot, camera=camera, steps=2)


def test_world_anchor_rollout(anchor_sim, image, actions, camera, tmp_path):
    """A world_anchor model needs pointmap0 (clear error without / with a wrong shape); depth and the equivalent
    pointmap give the same rollout; the metres are exact (anchor stats), 0 where the model generated 'empty'."""
    from kinema4d.pointmap import generated_valid

    assert anchor_sim.needs_pointmap0
    with pytest.raises(ValueError, match="pointmap0"):
        anchor_sim.rollout(image, actions)
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        anchor_sim.rollout(image, actions, pointmap0=np.ones((3, 3)))
    with pytest.raises(ValueError, match="no valid point"):
        anchor_sim.rollout(image, actions, pointmap0=np.zeros((H, W)))
    depth = np.full((H, W), 1.4)
    depth[:3] = np.nan  # unmeasured rows
    np.save(tmp_path / "pm0.npy", camera.depth_to_pointmap(depth))
    a = anchor_sim.rollout(image, actions, pointmap0=depth)
    b = anchor_sim.rollout(image, actions, pointmap0=tmp_path / "pm0.npy")
    np.testing.assert_array_equal(a.world_pointmap, b.world_pointmap)
    lo, hi = a.robot_stats
    assert np.all(lo <= a.robot_pointmap[a.robot_mask].min(0)) and np.all(a.robot_pointmap[a.robot_mask].max(0) <= hi)
    assert np.all(lo[2] <= 1.4) and hi[2] >= 1.4  # the frame-0 geometry is inside the normalization range
    empty = ~generated_valid(a.world_pointmap01, anchored=True)
    assert np.all(a.world_pointmap[empty] == 0)
    np.testing.assert_allclose(a.world_pointmap[~empty], a.world_pointmap01[~empty] * (hi - lo) + lo, rtol=1e-5,
                               atol=1e-6)


def test_cli_simulate_pointmap0(anchor_sim, image, actions, camera, tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "init.png", image)
    np.save(tmp_path / "actions.npy", actions)
    camera.save(tmp_path / "cam.json")
    np.save(tmp_path / "depth.npy", np.full((H, W), 1.2))
    args = ["simulate", "--checkpoint", str(anchor_sim.checkpoint), "--camera", str(tmp_path / "cam.json"),
            "--image", str(tmp_path / "init.png"), "--actions", str(tmp_path / "actions.npy"), "--steps", "2"]
    assert cli.main([*args, "--out", str(tmp_path / "o1")]) == 2  # a world_anchor model without --pointmap0
    assert cli.main([*args, "--out", str(tmp_path / "o2"), "--pointmap0", str(tmp_path / "depth.npy")]) == 0
    rep = json.loads((tmp_path / "o2" / "simulate.json").read_text())
    assert rep["inputs"]["pointmap0"].endswith("depth.npy")


def test_frame_spacing_is_enforced(run_dir, robot, camera, image, tmp_path):
    """A model trained on 5 of 9 recorded frames (stride 2) generates every second action's frame from 9 actions,
    refuses 8, and takes per-frame actions only when told (action_rate='model'). A checkpoint trained on data
    before episode_frames was recorded is taken as 49-frame data-engine episodes."""
    ck = tmp_path / "ck"
    shutil.copytree(resolve_checkpoint(run_dir).dir, ck)
    tc = json.loads((ck / "train_config.json").read_text())
    (ck / "train_config.json").write_text(json.dumps(tc | {"data": "data/x", "episode_frames": 2 * (T - 1) + 1}))
    sim = Simulator(ck, robot=robot, camera=camera, steps=2)
    assert sim.frame_stride == 2
    a = demo_actions(robot, 49)[::6]  # (9, 8) at the recording rate
    ro = sim.rollout(image, a)
    assert ro.rgb.shape[0] == T and ro.info["frame_indices"] == [0, 2, 4, 6, 8]
    from kinema4d.kinematics.robot import actions_to_joints

    np.testing.assert_allclose(ro.q, actions_to_joints(robot, a, "ee_pose").q[::2], atol=1e-9)
    np.testing.assert_array_equal(ro.robot_mask, render_robot(robot, ro.q, camera).mask)
    with pytest.raises(ValueError, match="frame spacing"):
        sim.rollout(image, a[:8])
    per_frame = Simulator(ck, robot=robot, camera=camera, steps=2, action_rate="model")
    assert per_frame.rollout(image, a[:3]).rgb.shape[0] == 3
    with pytest.raises(ValueError, match="action_rate"):
        Simulator(ck, robot=robot, camera=camera, action_rate="per_step")
    del tc["episode_frames"]
    (ck / "train_config.json").write_text(json.dumps(tc | {"data": "data/x"}))
    assert Simulator(ck, robot=robot, camera=camera).frame_stride == 48 // (T - 1)


# --------------------------------------------------------------------------------------------- held-object prior
def test_held_prior_rollout(robot, camera, image, actions, anchor_sim, tmp_path_factory):
    """A held_prior checkpoint builds the prior from the rollout's own kinematics: the demo closes the gripper at
    action 2 of 5 (at the world point (0.55, 0.05, 0.12)); one scene point there (and one 3 cm below it, the
    support) -> that one point is carried from action 2 on, nothing before; a model without the prior reports None."""
    from kinema4d.model.config import ModelConfig

    d = tmp_path_factory.mktemp("held_run")
    train_main(TrainConfig(model=ModelConfig(world_anchor=True, prediction="x0_residual", held_prior=True),
                           out_dir=str(d), steps=2, size=(H, W), frames=T, progress=False, val_steps=1))
    sim = Simulator(d, robot=robot, camera=camera, steps=2)
    pm0 = camera.depth_to_pointmap(np.full((H, W), 1.4))
    for p_world in (np.array([0.55, 0.05, 0.12]), np.array([0.55, 0.05, 0.09])):
        p_cam = camera.T_cam_world[:3, :3] @ p_world + camera.T_cam_world[:3, 3]
        u, v = np.round((camera.K @ p_cam)[:2] / p_cam[2]).astype(int)
        if p_world[2] < 0.1:  # the support point: one pixel beside the object's
            u = u + 1 if u + 1 < W else u - 1
        pm0[v, u] = p_cam
    ro = sim.rollout(image, actions, pointmap0=pm0)
    assert ro.info["held_prior"]["grasp_frame"] == 2
    assert ro.info["held_prior"]["pixels_per_frame"][:3] == [0, 0, 1]
    assert ro.rgb.shape == (T, H, W, 3)
    assert anchor_sim.rollout(image, actions, pointmap0=pm0).info["held_prior"] is None


def test_rollout_is_a_sequence4d(tmp_path):
    """A Rollout is the viewer's Sequence4D (one container): it saves and loads as one, checks shapes as one, and
    refuses to miss what every generated rollout has."""
    from kinema4d.interactive.viewer import Sequence4D, load_rollout_npz, save_rollout_npz

    cam, T = demo_camera(width=8, height=6), 2
    rng = np.random.default_rng(0)
    parts = {"rgb": rng.integers(0, 256, (T, 6, 8, 3), dtype=np.uint8),
             "robot_pointmap": rng.random((T, 6, 8, 3), dtype=np.float32), "robot_mask": rng.random((T, 6, 8)) > 0.5,
             "q": rng.random((T, 9)), "robot_name": "panda"}
    ro = Rollout(camera=cam, world_pointmap=None, world_pointmap01=None, **parts)
    assert isinstance(ro, Sequence4D) and ro.T == T and ro.to_sequence() is ro and ro.info == {}
    back = load_rollout_npz(save_rollout_npz(tmp_path / "r.npz", ro))
    for k in ("rgb", "robot_pointmap", "robot_mask"):
        np.testing.assert_array_equal(getattr(back, k), parts[k])
    with pytest.raises(ValueError, match="Rollout needs q"):
        Rollout(camera=cam, **{k: v for k, v in parts.items() if k != "q"})
    with pytest.raises(ValueError, match="robot_mask has"):  # Sequence4D's own shape checks
        Rollout(camera=cam, **(parts | {"robot_mask": parts["robot_mask"][:1]}))
    with pytest.raises(ValueError, match="world_pointmap01 must have the shape of rgb"):
        Rollout(camera=cam, world_pointmap01=np.zeros((T, 6, 8, 2), np.float32), **parts)
