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
from kinema4d.model.train import train_main
from kinema4d.model.train_config import TrainConfig


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
    from kinema4d.data.episodes import Dataset4D

    for name, s in rep["setups"].items():
        assert s["episodes"] == 2 and set(s["methods"]) == {"judge on GT", "kinema4d"}
        # GT = the physics outcome the data engine recorded, read from the episodes (not from the report)
        physics = [bool(Dataset4D(tmp_path / "data" / name / "test").attrs(i)["success"]) for i in range(2)]
        assert s["per_episode"]["gt"] == physics
    # the aggregation (SR, |diff|, agreement) is checked against hand-computed values below
    assert "| cluttered |" in (out / "policy.md").read_text() and (out / "success_rates.png").stat().st_size > 0
    assert main([*args[:-1], "--setups", "messy"]) == 2


def _scripted_policy_eval(tmp_path, monkeypatch, roots, outcomes, episodes: int):
    """policy_eval / policy_ranking with the data engine, the models and the judge replaced by scripted outcomes:
    ``roots`` what generate_setups / generate_policy_episodes return, ``outcomes[(root name, i)]`` = (physics
    success, {method: judged success})."""
    from types import SimpleNamespace

    from kinema4d.data import episodes as kepisodes
    from kinema4d.eval import evaluate as kevaluate
    from kinema4d.eval import policy as kpolicy

    ck = SimpleNamespace(dir=tmp_path, weights="model.safetensors")
    monkeypatch.setattr(kevaluate, "load_methods", lambda *a, **k: ({"kinema4d": (ck, None, None)}, (16, 16), 5))
    monkeypatch.setattr(kpolicy, "generate_setups", lambda cfg: roots)
    monkeypatch.setattr(kpolicy, "generate_policy_episodes", lambda cfg: roots)

    class Episodes:
        def __init__(self, root, split, size, frames):
            self.root = root

        def __len__(self):
            return episodes

    def outcomes_of(cfg, ds, i, loaded, static=False):
        g, sim = outcomes[(ds.root.name, i)]
        return g, {m: v for m, v in sim.items() if static or m != "static"}

    monkeypatch.setattr(kepisodes, "TorchEpisodes", Episodes)
    monkeypatch.setattr(kpolicy, "_outcomes", outcomes_of)


def test_policy_eval_numbers_by_hand(tmp_path, monkeypatch):
    """SR, |SR - GT SR| and per-episode agreement against values worked out by hand on 4 scripted episodes."""
    from kinema4d.eval.policy import PolicyEvalConfig, policy_eval

    gt = [True, True, False, False]
    judge = [True, False, False, False]
    model = [False, True, True, False]
    outcomes = {("canonical", i): (gt[i], {"judge on GT": judge[i], "kinema4d": model[i]}) for i in range(4)}
    _scripted_policy_eval(tmp_path, monkeypatch, {"canonical": tmp_path / "canonical"}, outcomes, 4)
    rep = policy_eval(PolicyEvalConfig(out=tmp_path / "rep", episodes=4, setups=("canonical",), progress=False))
    s = rep["setups"]["canonical"]
    # GT SR 2/4. judge: SR 1/4, |diff| 1/4, agrees on episodes 0, 2, 3 -> 3/4.
    # model: SR 2/4, |diff| 0, agrees on episodes 1 and 3 -> 2/4 (same SR, different episodes).
    assert s["gt_sr"] == 0.5
    assert s["methods"]["judge on GT"] == {"sim_sr": 0.25, "abs_diff": 0.25, "agreement": 0.75}
    assert s["methods"]["kinema4d"] == {"sim_sr": 0.5, "abs_diff": 0.0, "agreement": 0.5}
    assert "| canonical | 4 | 0.50 | 0.25 (0.25, 0.75) | 0.50 (0.00, 0.50) |" in \
        (tmp_path / "rep" / "policy.md").read_text()


def test_policy_ranking_numbers_by_hand(tmp_path, monkeypatch):
    """Per-policy SRs, Pearson r, MMRV and pooled agreement against values worked out by hand: 3 policies x 4
    scripted episodes."""
    from kinema4d.eval.policy import PolicyEvalConfig, policy_ranking

    T, F = True, False
    gt = {"expert": [T, T, T, T], "p1": [T, T, F, F], "p4": [T, F, F, F]}  # GT SR 1, 0.5, 0.25
    model = {"expert": [T, T, F, F], "p1": [T, T, T, F], "p4": [F, F, F, F]}  # SR 0.5, 0.75, 0
    outcomes = {(p, i): (gt[p][i], {"judge on GT": gt[p][i], "kinema4d": model[p][i], "static": False})
                for p in gt for i in range(4)}
    _scripted_policy_eval(tmp_path, monkeypatch, {"canonical": {p: tmp_path / p for p in gt}}, outcomes, 4)
    rep = policy_ranking(PolicyEvalConfig(out=tmp_path / "rep", episodes=4, ranking=True,
                                          policies=("expert", "p1", "p4"), progress=False))
    s = rep["setups"]["canonical"]
    assert s["gt_srs"] == [1.0, 0.5, 0.25]
    assert [s["policies"][p]["methods"]["kinema4d"]["sim_sr"] for p in gt] == [0.5, 0.75, 0.0]
    assert [s["policies"][p]["methods"]["kinema4d"]["agreement"] for p in gt] == [0.5, 0.75, 0.75]
    k, st, j = (s["ranking"][m] for m in ("kinema4d", "static", "judge on GT"))
    # Pearson: GT [12, 6, 3]/12 centred [5, -1, -4]/12, sim [6, 9, 0]/12 centred [1, 4, -5]/12:
    # (5 - 4 + 20) / sqrt(42 * 42) = 0.5.
    assert k["pearson_r"] == pytest.approx(0.5)
    # MMRV: only expert vs p1 is out of order (sim 0.5 < 0.75, GT 1 > 0.5), cost 0.5 for both -> [0.5, 0.5, 0].
    assert k["mmrv"] == pytest.approx(1 / 3)
    assert k["agreement"] == pytest.approx(8 / 12)  # 2 + 3 + 3 of 12 episodes
    # static (never succeeds): r undefined; sim ties cost the better policy: expert max(0.5, 0.75), p1 0.25, p4 0;
    # agreement = the 5 GT failures of 12.
    assert st["pearson_r"] is None and st["mmrv"] == pytest.approx(1 / 3) and st["agreement"] == pytest.approx(5 / 12)
    assert j["pearson_r"] == pytest.approx(1.0) and j["mmrv"] == 0.0 and j["agreement"] == 1.0


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
