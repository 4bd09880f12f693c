"""kinema4d eval policy (Tab. 3): setup scenes, the data-engine override, the report end to end on a tiny model;
--ranking: Pearson r / MMRV, the scripted policy family, the ranking report end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kinema4d.cli import main
from kinema4d.data import scene as sim
from kinema4d.data.datagen import DatagenConfig, datagen_main
from kinema4d.eval.policy import SETUPS, mmrv, pearson_r
from kinema4d.model.train import TrainConfig, train_main


@pytest.mark.parametrize("setup", list(SETUPS))
def test_setup_scenes(setup):
    """Every setup's distractor count is in range; no distractor shares the target's colour (the judge finds the
    target by colour); objects keep their minimum distance."""
    lo, hi = SETUPS[setup]
    for k in range(6):
        spec = sim.sample_scene(np.random.default_rng(k), "test", 48, 32, n_distractors=(lo, hi))
        n = len(spec.objects) - 1
        assert lo <= n <= hi
        target = spec.objects[0]
        assert all(o.colour != target.colour for o in spec.objects[1:]) and spec.pad_colour != target.colour
        xy = np.array([o.xy for o in spec.objects])
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy))
        assert d.min() >= 0.07 - 1e-9
    with pytest.raises(ValueError, match="n_distractors"):
        sim.sample_scene(np.random.default_rng(0), "test", 48, 32, n_distractors=(3, 2))


def test_datagen_distractors_is_content(tmp_path):
    cfg = DatagenConfig(out=tmp_path, episodes=1, split="test", resolution="32x48", frames=5,
                        failures_per_success=0, distractors=(3, 3), progress=False)
    datagen_main(cfg)
    from kinema4d.data.episodes import Dataset4D

    assert len(Dataset4D(tmp_path / "test").attrs(0)["objects"]) == 4
    datagen_main(cfg)  # a rerun with the same config resumes (the tuple survives the JSON round trip)
    with pytest.raises(ValueError, match="distractors"):
        datagen_main(DatagenConfig(out=tmp_path, episodes=1, split="test", resolution="32x48", frames=5,
                                   failures_per_success=0, distractors=(4, 5), progress=False))


def test_policy_eval_cli(tmp_path):
    run = tmp_path / "run"
    train_main(TrainConfig(out_dir=str(run), steps=1, size=(16, 16), frames=5, progress=False, val_steps=1))
    out = tmp_path / "rep"
    args = ["eval", "policy", "--checkpoint", str(run), "--data", str(tmp_path / "data"), "--out", str(out),
            "--setups", "canonical", "cluttered", "--episodes", "2", "--resolution", "32x48", "--steps", "2",
            "--no-progress"]
    assert main(args) == 0
    rep = json.loads((out / "policy.json").read_text())
    assert list(rep["setups"]) == ["canonical", "cluttered"]
    for s in rep["setups"].values():
        assert s["episodes"] == 2 and len(s["per_episode"]["gt"]) == 2
        assert set(s["methods"]) == {"judge on GT", "kinema4d"}
        gt = np.array(s["per_episode"]["gt"], float)
        assert s["gt_sr"] == pytest.approx(gt.mean())
        for m, v in s["methods"].items():
            sim_sr = np.mean(s["per_episode"][m])
            assert v["sim_sr"] == pytest.approx(sim_sr) and v["abs_diff"] == pytest.approx(abs(sim_sr - gt.mean()))
    assert "| cluttered |" in (out / "policy.md").read_text() and (out / "success_rates.png").stat().st_size > 0
    assert main([*args[:-1], "--setups", "messy"]) == 2


# ---------------------------------------------------------------------- policy ranking (SimplerEnv-style)
def test_ranking_metrics_perfect_order():
    gt = [0.1, 0.3, 0.5, 0.9]
    linear = [0.5 * g + 0.1 for g in gt]  # an exact affine image of GT: r = 1, every pair ordered as in GT
    assert pearson_r(linear, gt) == pytest.approx(1.0)
    assert mmrv(linear, gt) == 0.0
    assert mmrv([0.0, 0.01, 0.02, 0.7], gt) == 0.0  # MMRV only looks at the order, not the values
    assert pearson_r([0.5 - g for g in gt], gt) == pytest.approx(-1.0)


def test_ranking_metrics_one_swapped_pair():
    # 3 policies, the better two swapped in simulation: gt = [0, 0.5, 1], sim = [0, 1, 0.5].
    # Pearson: centred gt = [-0.5, 0, 0.5], centred sim = [-0.5, 0.5, 0]; sum of products = 0.25, both sums of
    # squares = 0.5 -> r = 0.25 / sqrt(0.5 * 0.5) = 0.5.
    # MMRV: policy 0 is last in both -> no violation, 0. Policy 1 vs 2: sim says 1 > 2 (1 > 0.5), GT says 1 < 2
    # (0.5 < 1) -> a violation costing |0.5 - 1| = 0.5, for policy 1 and (seen from 2) for policy 2.
    # Maxima per policy [0, 0.5, 0.5] -> MMRV = 1 / 3.
    assert pearson_r([0, 1, 0.5], [0, 0.5, 1]) == pytest.approx(0.5)
    assert mmrv([0, 1, 0.5], [0, 0.5, 1]) == pytest.approx(1 / 3)
    # 5 policies, GT [1.0, 0.8, 0.5, 0.3, 0.1]; simulation swaps the 2nd and 3rd: [0.9, 0.4, 0.6, 0.2, 0.0].
    # The only violated pair is (1, 2), cost |0.8 - 0.5| = 0.3, for both of them -> [0, 0.3, 0.3, 0, 0] -> 0.12.
    assert mmrv([0.9, 0.4, 0.6, 0.2, 0.0], [1.0, 0.8, 0.5, 0.3, 0.1]) == pytest.approx(0.12)
    # a policy's worst violation counts, not the sum: sim ranks the best policy last among [0.9, 0.5, 0.2]:
    # policy 0 violates with 1 (cost 0.4) and with 2 (cost 0.7) -> 0.7; policy 1 with 0 -> 0.4; policy 2 with 0
    # -> 0.7; MMRV = (0.7 + 0.4 + 0.7) / 3 = 0.6.
    assert mmrv([0.0, 0.5, 0.6], [0.9, 0.5, 0.2]) == pytest.approx(0.6)


def test_ranking_metrics_ties():
    # constant simulation (e.g. static): strict comparisons make sim ties a violation for the better policy only:
    # gt [0.2, 0.5, 0.9] -> policy 0: none; policy 1: vs 0 costs 0.3; policy 2: vs 0 costs 0.7 (vs 1: 0.4).
    # MMRV = (0 + 0.3 + 0.7) / 3 = 1 / 3; Pearson r is undefined.
    assert mmrv([0.0, 0.0, 0.0], [0.2, 0.5, 0.9]) == pytest.approx(1 / 3)
    assert pearson_r([0.0, 0.0, 0.0], [0.2, 0.5, 0.9]) is None
    assert mmrv([0.2, 0.8], [0.5, 0.5]) == 0.0  # a GT tie costs nothing
    assert pearson_r([0.2], [0.5]) is None
    with pytest.raises(ValueError):
        mmrv([0.1, 0.2], [0.1])


def test_policy_family_actions():
    """expert = the scripted demo; each member's grasp point moves by its stated offset; the place is unchanged
    without noise; members differ; the noise shares its random numbers (scales with sigma)."""
    robot = sim.make_robot()
    spec = sim.sample_scene(np.random.default_rng(3), "test", 48, 32, n_distractors=(0, 0))
    expert, phases = sim.scripted_pick_place(robot, spec)
    span = {n: (s, e) for n, s, e in phases}
    a, info = sim.policy_actions(robot, spec, "expert", np.random.default_rng(5))
    np.testing.assert_array_equal(a, expert)
    assert info["sigma"] == 0 and np.hypot(*info["grasp_offset_xy"]) == 0
    assert list(sim.POLICIES)[0] == "expert" and len(sim.POLICIES) >= 5
    offsets = [p.grasp_offset for p in sim.POLICIES.values()]
    sigmas = [p.sigma for p in sim.POLICIES.values()]
    assert offsets == sorted(offsets) and sigmas == sorted(sigmas)
    assert len(set(zip(offsets, sigmas, strict=True))) == len(offsets)
    acts, ref = {}, None
    for name, p in sim.POLICIES.items():
        acts[name], info = sim.policy_actions(robot, spec, name, np.random.default_rng(5))
        clean, cinfo = sim.policy_actions(robot, spec, dataclasses.replace(p, sigma=0.0), np.random.default_rng(5))
        off = np.array(cinfo["grasp_offset_xy"])
        assert np.hypot(*off) == pytest.approx(p.grasp_offset)
        assert info["grasp_offset_xy"] == cinfo["grasp_offset_xy"]  # same direction with or without noise
        s, e = span["grasp"]  # the grasp point: xy moved by exactly the offset, z / rotation / gripper untouched
        np.testing.assert_allclose(clean[s:e, :2] - expert[s:e, :2], np.broadcast_to(off, (e - s, 2)), atol=1e-12)
        np.testing.assert_array_equal(clean[:, 2:], expert[:, 2:])
        np.testing.assert_array_equal(clean[0], expert[0])  # start pose
        np.testing.assert_array_equal(clean[span["lower"][0]:], expert[span["lower"][0]:])  # the place
        np.testing.assert_array_equal(acts[name][:, 7], expert[:, 7])  # the gripper is never perturbed
        if p.sigma > 0:
            dev = (acts[name] - clean)[:, :2] / p.sigma  # xy noise per unit sigma (z may be clipped)
            if ref is not None:
                np.testing.assert_allclose(dev, ref, atol=1e-9)
            ref = dev
            assert np.abs(dev).max() > 0.01
    names = list(acts)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert np.abs(acts[names[i]] - acts[names[j]]).max() > 0.005, (names[i], names[j])


def test_datagen_policy_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown policy"):
        datagen_main(DatagenConfig(out=tmp_path, episodes=1, failures_per_success=0, policy="p9", progress=False))
    with pytest.raises(ValueError, match="failures_per_success=0"):
        datagen_main(DatagenConfig(out=tmp_path, episodes=1, policy="p1", progress=False))
    assert not (tmp_path / "train").exists()


def test_policy_ranking_cli(tmp_path):
    """2 policies x 2 episodes at 32x48 with the bundled default model: data, report, plot."""
    from kinema4d.data.episodes import Dataset4D

    out, data = tmp_path / "rank", tmp_path / "data"
    args = ["eval", "policy", "--ranking", "--policies", "expert", "p4", "--data", str(data), "--out", str(out),
            "--episodes", "2", "--resolution", "32x48", "--steps", "2", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    # the data: DATA/canonical/<policy>/test, the policy in the attrs, the same scenes for both policies
    ds = {p: Dataset4D(data / "canonical" / p / "test") for p in ("expert", "p4")}
    for p, d in ds.items():
        assert len(d) == 2
        for i in range(2):
            a = d.attrs(i)
            assert a["policy"] == p and a["variant"]["kind"] == "policy" and a["objects"][0]["shape"]
            assert len(a["objects"]) == 1  # canonical: no distractor
    for i in range(2):
        assert ds["expert"].attrs(i)["objects"] == ds["p4"].attrs(i)["objects"]
        assert ds["expert"].attrs(i)["goal_xy"] == ds["p4"].attrs(i)["goal_xy"]
    rep = json.loads((out / "policy_ranking.json").read_text())
    assert rep["policy_order"] == ["expert", "p4"] and list(rep["setups"]) == ["canonical"]
    s = rep["setups"]["canonical"]
    assert set(s["ranking"]) == {"judge on GT", "kinema4d", "static"}
    for p in ("expert", "p4"):
        r = s["policies"][p]
        assert r["episodes"] == 2
        assert r["per_episode"]["gt"] == [bool(ds[p].attrs(i)["success"]) for i in range(2)]  # physics, from the data
        assert r["per_episode"]["static"] == [False, False]  # nothing moves: the object never reaches the pad
    assert s["policies"]["expert"]["gt_sr"] == 1.0  # scenes are resampled until the expert succeeds
    for v in s["ranking"].values():
        assert 0.0 <= v["mmrv"] <= 1.0 and 0.0 <= v["agreement"] <= 1.0
    md = (out / "policy_ranking.md").read_text()
    assert "| p4 | 2 |" in md and "MMRV" in md and (out / "policy_ranking.png").stat().st_size > 0
    assert main([*args, "--policies", "nope"]) == 2
