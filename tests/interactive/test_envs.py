"""kinema4d.interactive.envs: the gymnasium closed-loop environment (chunked autoregressive rollouts of the world
model)."""

import warnings

import gymnasium
import numpy as np
import pytest

from kinema4d.interactive import envs
from kinema4d.interactive.envs import ENV_ID, Kinema4DEnv, arc_chunk
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.robot import joints_to_ee_actions

pytestmark = pytest.mark.filterwarnings("ignore:IK did not reach:UserWarning")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A 2-step tiny checkpoint (16x16, 5 frames) and a Simulator on it with a camera that sees the Panda."""
    from kinema4d.model.train import train_main
    from kinema4d.model.train_config import TrainConfig
    from kinema4d.simulator import Simulator

    out = tmp_path_factory.mktemp("tiny_run")
    train_main(TrainConfig(out_dir=str(out), steps=2, size=(16, 16), frames=5, progress=False))
    cam = Camera.look_at(eye=[1.45, 0.4, 1.05], target=[0.3, 0.0, 0.4], width=16, height=16, fov_y_deg=50.0)
    return Simulator(out / "ckpt" / "step_0000002", robot="panda", camera=cam, steps=2)


@pytest.fixture(scope="module")
def image0():
    return np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


class SpySimulator:
    """Delegates to a Simulator and records every rollout call (copies of its inputs)."""

    def __init__(self, sim):
        self._sim, self.calls = sim, []

    def __getattr__(self, name):
        return getattr(self._sim, name)

    def rollout(self, image, actions, q0=None, seed=None, **kw):
        self.calls.append({"image": np.array(image), "actions": np.array(actions), "q0": np.array(q0), "seed": seed,
                           **{k: np.array(v) for k, v in kw.items()}})
        return self._sim.rollout(image, actions, q0=q0, seed=seed, **kw)


def test_check_env(sim, image0):
    from gymnasium.utils.env_checker import check_env

    env = Kinema4DEnv(simulator=sim, image=image0)
    assert env.chunk == sim.train_frames - 1 == 4
    assert env.action_space.shape == (4, 8) and env.action_space.dtype == np.float32
    check_env(env.unwrapped, skip_render_check=True)


def test_closed_loop_three_chunks(sim, image0):
    spy = SpySimulator(sim)
    env = Kinema4DEnv(simulator=spy, image=image0, max_chunks=3, render_mode="rgb_array")
    obs, _ = env.reset(seed=1)
    assert obs["rgb"].dtype == np.uint8 and obs["rgb"].shape == (16, 16, 3)
    assert np.array_equal(obs["rgb"], image0) and np.allclose(obs["q"], sim.robot.home, atol=1e-6)
    assert obs in env.observation_space
    infos, obses = [], [obs]
    for k in range(3):
        target = arc_chunk(obs["ee_pose"], env.chunk, radius=0.04, angle=np.pi / 4)
        obs, reward, terminated, truncated, info = env.step(target.astype(np.float32))
        assert obs in env.observation_space
        assert reward == 0.0 and terminated is False and truncated is (k == 2)
        assert info["chunk_index"] == k
        T = env.chunk + 1
        assert info["rgb"].shape == (T, 16, 16, 3) and info["rgb"].dtype == np.uint8
        for key in ("world_pointmap", "robot_pointmap"):
            assert info[key].shape == (T, 16, 16, 3) and info[key].dtype == np.float32
            assert np.isfinite(info[key]).all()
        assert info["robot_mask"].shape == (T, 16, 16) and info["robot_mask"].dtype == bool
        assert info["robot_mask"].any()
        assert info["q"].shape == (T, sim.robot.dof) and np.isfinite(info["q"]).all()
        assert np.isfinite(info["adherence_mm"]) and info["adherence_per_frame_mm"].shape == (T,)
        assert np.array_equal(obs["rgb"], info["rgb"][-1]) and np.array_equal(env.render(), info["rgb"][-1])
        # the kinematic robot follows the scripted arc (reachable: IK error well under a millimetre)
        reached = joints_to_ee_actions(sim.robot, info["q"][1:])
        assert np.abs(reached[:, :3] - target[:, :3]).max() < 1e-3
        infos.append(info)
        obses.append(obs)

    calls = spy.calls
    assert len(calls) == 3
    assert np.array_equal(calls[0]["image"], image0)
    for k in range(3):
        # frame 0 of every chunk is the current pose; conditioning image = previous chunk's last frame
        assert calls[k]["actions"].shape == (env.chunk + 1, 8)
        assert np.allclose(calls[k]["actions"][0], obses[k]["ee_pose"], atol=1e-5)
        if k:
            assert np.array_equal(calls[k]["image"], infos[k - 1]["rgb"][-1])
            assert np.allclose(calls[k]["q0"], infos[k - 1]["q"][-1])
            # q continuity: IK seeded from the last q stays on its branch
            assert np.abs(infos[k]["q"][0] - infos[k - 1]["q"][-1]).max() < 1e-4
    q_all = np.concatenate([infos[0]["q"]] + [i["q"][1:] for i in infos[1:]])
    assert np.abs(np.diff(q_all, axis=0)).max() < 0.2  # 1 cm steps: no joint jumps
    assert len({c["seed"] for c in calls}) == 3

    seq = env.episode_sequence()
    assert seq.T == 1 + 3 * env.chunk and seq.rgb.shape == (seq.T, 16, 16, 3)
    assert seq.q.shape == (seq.T, sim.robot.dof)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(arc_chunk(obs["ee_pose"], env.chunk))

    # the same seed replays the same episode
    env.reset(seed=1)
    _, _, _, _, info2 = env.step(arc_chunk(obses[0]["ee_pose"], env.chunk, radius=0.04, angle=np.pi / 4))
    assert np.array_equal(info2["rgb"], infos[0]["rgb"])


def test_bad_actions_rejected(sim, image0):
    spy = SpySimulator(sim)
    env = Kinema4DEnv(simulator=spy, image=image0)
    obs, _ = env.reset(seed=0)
    good = arc_chunk(obs["ee_pose"], env.chunk)
    with pytest.raises(RuntimeError, match="reset"):
        Kinema4DEnv(simulator=sim, image=image0).step(good)
    cases = [
        ((2, 1), np.nan, r"frame 2: y is nan"),
        ((1, 0), 5.0, r"frame 1: x = 5.0000 m is outside the workspace"),
        ((3, 7), 1.5, r"frame 3: gripper = 1.5000 is outside \[0, 1\]"),
        ((0, 2), -np.inf, r"frame 0: z is -inf"),
    ]
    for (t, j), value, msg in cases:
        bad = good.copy()
        bad[t, j] = value
        with pytest.raises(ValueError, match=msg):
            env.step(bad)
    bad = good.copy()
    bad[2, 3:7] = 0.0
    with pytest.raises(ValueError, match="frame 2: quaternion .* zero norm"):
        env.step(bad)
    with pytest.raises(ValueError, match=r"shape \(chunk=4, 8\)"):
        env.step(good[:2])
    assert spy.calls == []  # nothing reached the simulator
    # a non-unit quaternion is normalised
    scaled = good.copy()
    scaled[:, 3:7] *= 3.0
    env.step(scaled)
    assert np.allclose(np.linalg.norm(spy.calls[0]["actions"][:, 3:7], axis=1), 1.0, atol=1e-6)


def test_reset_options(sim, image0):
    env = Kinema4DEnv(simulator=sim, image=image0)
    other = np.full((16, 16, 3), 7, np.uint8)
    q0 = sim.robot.home.copy()
    q0[0] = 0.3
    obs, _ = env.reset(options={"image": other, "q0": q0})
    assert np.array_equal(obs["rgb"], other) and np.allclose(obs["q"], q0)
    assert np.allclose(obs["ee_pose"], joints_to_ee_actions(sim.robot, q0[None])[0], atol=1e-5)
    with pytest.raises(ValueError, match="outside its limits"):
        env.reset(options={"q0": np.full(sim.robot.dof, 10.0)})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"camera": None})
    big = np.zeros((32, 32, 3), np.uint8)  # resized to the model size
    obs, _ = env.reset(options={"image": big})
    assert obs["rgb"].shape == (16, 16, 3)


def test_gymnasium_make(sim, image0):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.register()  # idempotent
    assert ENV_ID in gymnasium.registry
    env = gymnasium.make(ENV_ID, simulator=sim, image=image0, chunk=2, max_chunks=2)
    assert isinstance(env.unwrapped, Kinema4DEnv)
    obs, _ = env.reset(seed=0)
    assert env.action_space.shape == (2, 8)
    truncs = []
    for _ in range(2):
        obs, _, _, trunc, info = env.step(arc_chunk(obs["ee_pose"], 2).astype(np.float32))
        truncs.append(trunc)
        assert info["rgb"].shape == (3, 16, 16, 3)
    assert truncs == [False, True]
    env.close()


def test_default_checkpoint_demo():
    """The bundled model + demo inputs, 3 closed-loop chunks. Fails (never skips) when the assets are missing."""
    from kinema4d.simulator import DEFAULT_CHECKPOINT, DEMO_DIR

    for f in ("model_config.json", "train_config.json"):
        assert (DEFAULT_CHECKPOINT / f).is_file(), f"bundled model missing: {DEFAULT_CHECKPOINT / f}"
    for f in ("init.png", "camera.json", "actions.npy", "demo.json"):
        assert (DEMO_DIR / f).is_file(), f"bundled demo input missing: {DEMO_DIR / f}"
    env = Kinema4DEnv(steps=4, max_chunks=3)
    H, W = env.simulator.size
    obs, _ = env.reset(seed=0)
    assert obs["rgb"].shape == (H, W, 3)
    truncated = False
    for k in range(3):
        assert not truncated
        obs, _, _, truncated, info = env.step(arc_chunk(obs["ee_pose"], env.chunk, radius=0.03))
        assert info["rgb"].shape == (env.chunk + 1, H, W, 3)
        assert np.isfinite(info["world_pointmap"]).all() and info["robot_mask"].any()
        assert np.isfinite(info["adherence_mm"])
        if k:
            assert np.abs(info["q"][0] - env.history[k - 1].q[-1]).max() < 1e-4
    assert truncated
    assert env.episode_sequence().T == 1 + 3 * env.chunk


def test_world_anchor_chunks_chain_the_generated_pointmap(tmp_path, image0):
    """A world_anchor checkpoint: chunk 0 gets the given pointmap0, chunk k the last generated world pointmap;
    without pointmap0 the env says what is missing."""
    from kinema4d.model.config import ModelConfig
    from kinema4d.model.train import train_main
    from kinema4d.model.train_config import TrainConfig
    from kinema4d.simulator import Simulator

    train_main(TrainConfig(model=ModelConfig(world_anchor=True, prediction="x0"), out_dir=str(tmp_path), steps=1,
                           size=(16, 16), frames=5, progress=False, val_steps=1))
    cam = Camera.look_at(eye=[1.45, 0.4, 1.05], target=[0.3, 0.0, 0.4], width=16, height=16, fov_y_deg=50.0)
    spy = SpySimulator(Simulator(tmp_path, robot="panda", camera=cam, steps=2))
    with pytest.raises(ValueError, match="pointmap0"):
        Kinema4DEnv(simulator=spy, image=image0)
    depth = np.full((16, 16), 1.3)
    env = Kinema4DEnv(simulator=spy, image=image0, pointmap0=depth, max_chunks=2)
    env.reset(seed=0)
    _, _, _, _, info0 = env.step(arc_chunk(env.ee_pose(), env.chunk))
    env.step(arc_chunk(env.ee_pose(), env.chunk))
    np.testing.assert_allclose(spy.calls[0]["pointmap0"], cam.depth_to_pointmap(depth), atol=1e-6)
    np.testing.assert_array_equal(spy.calls[1]["pointmap0"], info0["world_pointmap"][-1])
