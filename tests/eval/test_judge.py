"""The rollout success judge agrees with the simulator's ground-truth labels."""

import numpy as np
import pytest

from kinema4d.data.datagen import DatagenConfig, datagen_main
from kinema4d.data.episodes import Dataset4D
from kinema4d.eval.judge import judge_episode, judge_place, judge_place_height, reference_colour
from kinema4d.kinematics.camera import Camera


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    datagen_main(DatagenConfig(out=out, episodes=10, resolution="64x96", frames=5, workers=1, progress=False))
    return Dataset4D(out / "train")


def test_judge_agrees_with_physics_labels(episodes):
    labels, verdicts = [], []
    for i in range(len(episodes)):
        e = episodes.read_episode(i)
        labels.append(bool(e["attrs"]["success"]))
        verdicts.append(judge_episode(e["rgb"], e["world_pointmap"], e["attrs"]).success)
    labels, verdicts = np.array(labels), np.array(verdicts)
    assert labels.any() and not labels.all()  # both outcomes present (clean + perturbed variants)
    assert (labels == verdicts).mean() >= 0.8, (labels, verdicts)
    assert verdicts[labels].mean() >= 0.5  # finds most successes, not just "always fail"


CAM = Camera.look_at(eye=[0.8, 0.0, 1.5], target=[0, 0, 0.6], width=96, height=64, fov_y_deg=50)
TABLE_Z = 0.6


def _scene(obj_xy, obj_z, cam=CAM, table_z=TABLE_Z):
    """(1, H, W, 3) rgb and pointmap: a grey table plane, and a red 6 cm square patch at height obj_z (the top face
    of an object) in front of it along each ray."""
    H, W = cam.height, cam.width
    rgb = np.full((1, H, W, 3), 180, np.uint8)
    ray = cam.unproject(cam.pixel_grid(), np.ones((H, W)))  # camera-frame rays with z = 1
    R, t = cam.T_world_cam[:3, :3], cam.T_world_cam[:3, 3]
    d_world = ray @ R.T
    depth = (table_z - t[2]) / d_world[..., 2]
    s_obj = (obj_z - t[2]) / d_world[..., 2]
    p_obj = t + d_world * s_obj[..., None]
    hit = (np.abs(p_obj[..., 0] - obj_xy[0]) < 0.03) & (np.abs(p_obj[..., 1] - obj_xy[1]) < 0.03)
    depth[hit] = s_obj[hit]
    rgb[0][hit] = (200, 20, 20)
    return rgb, cam.depth_to_pointmap(depth)[None]


def test_judge_constructed_scene():
    """A red patch 3 cm from the goal on a table plane: success; moved 10 cm away: failure; lifted: failure."""
    cam, table_z, goal, scene = CAM, TABLE_Z, np.array([0.0, 0.0]), _scene
    rgb, pm = scene((0.03, 0.0), table_z + 0.05)
    ref = reference_colour(rgb[0], cam, np.array([0.03, 0.0, table_z + 0.05]))
    np.testing.assert_allclose(ref, (200, 20, 20))
    j = judge_place(rgb, pm, cam, ref, goal, table_z, 0.05, last_frames=1)
    assert j.success and j.xy_err == pytest.approx(0.03, abs=0.01)
    rgb, pm = scene((0.10, 0.0), table_z + 0.05)
    assert not judge_place(rgb, pm, cam, ref, goal, table_z, 0.05, last_frames=1).success
    rgb, pm = scene((0.03, 0.0), table_z + 0.25)  # held 25 cm up
    assert not judge_place(rgb, pm, cam, ref, goal, table_z, 0.05, last_frames=1).success
    with pytest.raises(ValueError, match="must both be"):
        judge_place(rgb, pm[..., :2], cam, ref, goal, table_z, 0.05)


def test_height_judge_constructed_scene():
    """An object's top 5 cm above the table, 3 cm from the goal: success; 10 cm away: failure; held 15 cm up:
    failure; the same pixels marked as robot: failure (the gripper is not a placed object)."""
    goal, h = np.array([0.0, 0.0]), 0.05
    _, pm = _scene((0.03, 0.0), TABLE_Z + h)
    none = np.zeros(pm.shape[:3], bool)
    j = judge_place_height(pm, none, CAM, goal, TABLE_Z, h)
    assert j.success and j.pixels > 0 and j.z_above_table == pytest.approx(h, abs=1e-6) and j.xy_err <= 0.05
    assert not judge_place_height(_scene((0.10, 0.0), TABLE_Z + h)[1], none, CAM, goal, TABLE_Z, h).success
    assert not judge_place_height(_scene((0.03, 0.0), TABLE_Z + 0.15)[1], none, CAM, goal, TABLE_Z, h).success
    assert not judge_place_height(pm, ~none, CAM, goal, TABLE_Z, h).success
    with pytest.raises(ValueError, match="robot_mask"):
        judge_place_height(pm, none[0], CAM, goal, TABLE_Z, h)


def test_height_judge_agrees_with_physics_labels(episodes):
    from kinema4d.eval.judge import judge_episode as je

    labels, verdicts = [], []
    for i in range(len(episodes)):
        e = episodes.read_episode(i)
        labels.append(bool(e["attrs"]["success"]))
        verdicts.append(je(e["rgb"], e["world_pointmap"], e["attrs"], method="height",
                           robot_mask=e["robot_render_mask"]).success)
    labels, verdicts = np.array(labels), np.array(verdicts)
    assert (labels == verdicts).mean() >= 0.8, (labels, verdicts)
    assert verdicts[labels].mean() >= 0.5
    with pytest.raises(ValueError, match="robot_mask"):
        je(e["rgb"], e["world_pointmap"], e["attrs"], method="height")
