"""Synthetic data engine: kinematic robot render vs pybullet's own view, scripted success, failure synthesis."""

import numpy as np
import pytest

from kinema4d.data import scene as sim
from kinema4d.data.datagen import variant_of


@pytest.fixture(scope="module")
def robot():
    return sim.make_robot()


@pytest.fixture(scope="module")
def episode(robot):
    spec = sim.sample_scene(np.random.default_rng(7), "train", 160, 120)
    actions, _ = sim.scripted_pick_place(robot, spec)
    return sim.run_episode(robot, spec, actions, frames=9)


def test_episode_arrays(robot, episode):
    ep = episode
    assert ep.rgb.shape == (9, 120, 160, 3) and ep.rgb.dtype == np.uint8
    assert ep.q.shape == (9, robot.dof) and ep.actions.shape == (9, 8)
    assert ep.robot_pointmap.shape == ep.world_pointmap.shape == (9, 120, 160, 3)
    assert ep.robot_mask.shape == ep.robot_render_mask.shape == (9, 120, 160)
    # the world pointmap is empty exactly where nothing was hit
    assert (ep.world_pointmap[..., 2] > 0).mean() > 0.3


def test_kinematic_robot_matches_pybullet(episode):
    """The stored kinematic robot render (render_robot of the recorded q: robot_render_mask, robot_pointmap) against
    pybullet's own view of the robot in the same scene (TinyRenderer segmentation -> robot_mask, depth buffer ->
    world_pointmap), frame by frame.

    Bounds from measurement (4 episodes: seeds 7, 8 at 160x120, 9 at 96x64, 7 at 320x240): per-frame IoU 0.978 ..
    1.0, median over frames >= 0.997; median |dz| on pixels both call robot <= 0.001 mm, 90th percentile < 0.01 mm
    (the scene draws the decimated meshes the kinematic renderer uses, meshes.simplified_urdf). The IoU loss is the
    right finger during the grasp: the recorded q has one finger joint (the second mimics it kinematically) while
    pybullet simulates both fingers, and contact moves them apart by a few pixels."""
    seg, ren = episode.robot_mask, episode.robot_render_mask
    z_pb, z_kin = episode.world_pointmap[..., 2], episode.robot_pointmap[..., 2]
    ious = []
    for t in range(len(seg)):
        both = seg[t] & ren[t]
        ious.append(both.sum() / (seg[t] | ren[t]).sum())
        assert both.sum() > 500, f"frame {t}: the robot is in view"
        dz = np.abs(z_pb[t][both] - z_kin[t][both])
        assert np.median(dz) <= 5e-5, f"frame {t}: median |dz| {np.median(dz) * 1000:.3f} mm"
        assert np.percentile(dz, 90) <= 5e-4, f"frame {t}: 90th percentile |dz| {np.percentile(dz, 90) * 1000:.3f} mm"
        np.testing.assert_array_equal(episode.robot_pointmap[t][~ren[t]], 0)
    assert min(ious) >= 0.97 and np.median(ious) >= 0.99, np.round(ious, 4)


def test_scripted_clean_succeeds_and_frame0_is_initial(robot, episode):
    assert episode.success, episode.meta["outcome"]
    assert episode.meta["record_steps"][0] == 0
    poses = episode.object_poses
    spec_xy = episode.meta["scene"]["objects"][0]["xy"]
    np.testing.assert_allclose(poses[0, 0, :2], spec_xy, atol=2e-3)  # object untouched in frame 0
    assert "pick up the" in episode.meta["instruction"] and "pad" in episode.meta["instruction"]


def test_perturb_actions_segments_and_gripper(robot):
    spec = sim.sample_scene(np.random.default_rng(1), "train", 32, 48)
    a, phases = sim.scripted_pick_place(robot, spec)
    assert a.shape[1] == 8 and [ph[0] for ph in phases][:3] == ["start", "approach", "descend"]
    seg = np.array_split(np.arange(len(a)), 3)
    pa = sim.perturb_actions(a, 1, 1.2, np.random.default_rng(0))
    np.testing.assert_array_equal(pa[:, 7], a[:, 7])  # gripper untouched
    np.testing.assert_array_equal(pa[seg[0]], a[seg[0]])  # before the segment: clean
    d = np.linalg.norm(pa[:, :3] - a[:, :3], axis=1)
    assert d[seg[1][-1]] > 0 and np.all(d[seg[2]] > 0)  # error held after the segment
    assert pa[:, 2].min() >= sim.TABLE_TOP + 0.01 - 1e-9
    np.testing.assert_allclose(np.linalg.norm(pa[:, 3:7], axis=1), 1.0, atol=1e-9)
    # deterministic given the rng
    np.testing.assert_array_equal(pa, sim.perturb_actions(a, 1, 1.2, np.random.default_rng(0)))


def test_scenes_coexist_and_reset_is_deterministic(robot):
    specs = [sim.sample_scene(np.random.default_rng(s), "train", 32, 24) for s in (3, 4)]
    a, _ = sim.scripted_pick_place(robot, specs[0])
    with sim.Scene(robot, specs[0]) as s0, sim.Scene(robot, specs[1]) as s1:
        assert s0.cid != s1.cid
        e1 = sim.run_episode(robot, specs[0], a[:40], frames=3, render_robot_pm=False, scene=s0)
        sim.run_episode(robot, specs[1], a[:10], frames=2, render_robot_pm=False, scene=s1)
        e2 = sim.run_episode(robot, specs[0], a[:40], frames=3, render_robot_pm=False, scene=s0)
    np.testing.assert_array_equal(e1.q, e2.q)
    np.testing.assert_array_equal(e1.object_poses, e2.object_poses)


def test_ood_split_is_disjoint_from_train():
    tr, ood = sim.split_ranges("train"), sim.split_ranges("ood")
    assert not set(tr.shapes) & set(ood.shapes) and not set(tr.colours) & set(ood.colours)
    assert tr.cam_elevation_deg[1] < ood.cam_elevation_deg[0]
    spec = sim.sample_scene(np.random.default_rng(0), "ood", 48, 32)
    assert spec.objects[0].shape in ood.shapes
    with pytest.raises(ValueError, match="unknown split"):
        sim.split_ranges("bogus")


def test_failure_synthesis_changes_outcomes(robot):
    """4 clean scripted episodes + their 9 perturbed variants each: clean succeed, perturbed mostly do not."""
    clean, pert = [], []
    for b in range(4):
        spec = sim.sample_scene(np.random.default_rng(200 + b), "train", 48, 32)
        a, _ = sim.scripted_pick_place(robot, spec)
        with sim.Scene(robot, spec) as scene:
            clean.append(sim.run_episode(robot, spec, a, frames=2, render_robot_pm=False, scene=scene).success)
            for v in range(1, 10):
                segment, sigma = variant_of(v)
                pa = sim.perturb_actions(a, segment, sigma, np.random.default_rng(1000 * b + v))
                pert.append(sim.run_episode(robot, spec, pa, frames=2, render_robot_pm=False, scene=scene).success)
    clean_rate, pert_rate = np.mean(clean), np.mean(pert)
    print(f"clean success {clean_rate:.2f} ({len(clean)}), perturbed success {pert_rate:.2f} ({len(pert)})")
    assert clean_rate >= 0.75
    assert pert_rate <= 0.6 and pert_rate <= clean_rate - 0.35
