"""Issue 12 on real data-engine episodes (64x96, 49 frames): the object locator on ground-truth frames against the
recorded object poses, and the full-pipeline robot inputs (commanded actions -> IK -> render) against the stored
render of the executed joints."""

from __future__ import annotations

import numpy as np
import pytest

from kinema4d.data.datagen import DatagenConfig, datagen_main
from kinema4d.data.episodes import TorchEpisodes, frame_indices
from kinema4d.eval.evaluate import object_context, object_scores, object_summary, pipeline_robot_inputs
from kinema4d.interactive.media import video_to_uint8
from kinema4d.pointmap import to_metres

FRAMES = 9  # the model's frame count (the default preset)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    d = tmp_path_factory.mktemp("objdata")  # one clean episode + one with perturbed actions
    datagen_main(DatagenConfig(out=d, episodes=2, split="test", resolution="64x96", frames=49,
                               failures_per_success=1, progress=False))
    return TorchEpisodes(d, split="test", size=None, frames=FRAMES)


def _gt_metres(raw):
    stats = raw["world_stats"].numpy().astype(np.float64)
    valid = raw["world_valid"].numpy() > 0.5
    return np.where(valid[..., None], to_metres(raw["world_pointmap"].permute(0, 2, 3, 1).numpy(), stats), 0.0)


def test_gt_frames_small_endpoint_error(ds):
    """Fed the ground-truth frames, the locator finds the target object within half its horizontal size of the
    recorded centre (the bound of the surface-vs-centre bias; measured 5-7 mm here); a static rollout (I0 repeated)
    finds it where it started, so its error is the object's recorded displacement (within the same bound)."""
    gt_rows, moved, static_rows = [], [], []
    for i in range(len(ds)):
        raw = ds[i]
        e = ds.ds.read_episode(raw["index"], keys=("object_poses",))
        poses, obj = e["object_poses"], e["attrs"]["objects"][0]
        half = 1000.0 * 0.5 * max(obj["size"][:2])
        gt_m, rgb = _gt_metres(raw), video_to_uint8(raw["rgb"])
        ctx = object_context(ds, raw, gt_m[0])
        assert ctx["ref"] is not None  # 64x96 resolves the object in I0
        np.testing.assert_array_equal(ctx["xy_end"], poses[-1, 0, :2])
        gt = object_scores(rgb, gt_m, ctx)
        assert gt["object_found"] and gt["object_endpoint_mm"] < half, (i, gt, half)
        disp_mm = 1000.0 * np.linalg.norm(poses[-1, 0, :2] - poses[0, 0, :2])
        assert gt["object_moved"] == (disp_mm > 30.0)
        static = object_scores(np.repeat(rgb[:1], FRAMES, 0), np.repeat(gt_m[:1], FRAMES, 0), ctx)
        assert static["object_found"] and static["object_moved"] is False
        assert static["object_endpoint_mm"] == pytest.approx(disp_mm, abs=half)
        gt_rows.append(gt)
        static_rows.append(static)
        moved.append(disp_mm > 30.0)
    assert any(moved)  # the clean episode carries the object to the pad
    s = object_summary(gt_rows, moved)
    assert s["object_found_pct"] == 100.0 and s["object_motion_recall"] == 1.0
    assert s["object_gt_moving"] == sum(moved)
    st = object_summary(static_rows, moved)
    assert st["object_motion_recall"] == 0.0 and np.isnan(st["object_motion_precision"])  # static never moves


def test_pipeline_robot_inputs_match_stored(ds):
    """The pipeline's robot (commanded actions through the seeded IK, rendered at the item's size) covers nearly
    the same pixels as the stored render of the executed joints: mask IoU 0.97 on both episodes (measured). The
    residual is commanded vs executed joints: the arm lags its commanded pose while moving and the fingers stop
    on the grasped object (commanded closed); on 40 data-engine episodes the IoU was 0.95 mean, 0.69 minimum (a
    perturbed command the physical arm could not follow). Rendering the stored executed joints through the same
    renderer reproduces the stored mask exactly, so the difference is not a rendering one."""
    from kinema4d.kinematics.render import render_robot

    for i in range(len(ds)):
        raw = ds[i]
        item, (robot, q, T_cam_world), ik_mm = pipeline_robot_inputs(ds, raw, {}, return_ik_error=True)
        stored, pipe = raw["robot_mask"].numpy() > 0.5, item["robot_mask"].numpy() > 0.5
        iou = (stored & pipe).sum() / (stored | pipe).sum()
        assert iou > 0.9, (i, iou)  # see the docstring: measured 0.97
        assert ik_mm < 1.0  # the commanded poses are reachable
        e = ds.ds.read_episode(raw["index"], keys=("q", "robot_pointmap"))
        idx = frame_indices(len(e["q"]), FRAMES)
        assert q.shape == (FRAMES, robot.dof)
        np.testing.assert_allclose(T_cam_world, e["camera"].T_cam_world)
        executed = render_robot(robot, e["q"][idx], e["camera"])
        np.testing.assert_array_equal(executed.mask, stored)

        # normalized like TorchEpisodes: back in metres it is the render; on shared pixels near the stored one
        rs = item["robot_stats"].numpy().astype(np.float64)
        pm = to_metres(item["robot_pointmap"].permute(0, 2, 3, 1).numpy(), rs)
        assert item["robot_pointmap"][item["robot_mask"][:, None].expand(-1, 3, -1, -1) > 0.5].min() >= 0.0
        assert float(item["robot_pointmap"].max()) == pytest.approx(1.0)
        both = stored & pipe
        d = np.linalg.norm(pm[both] - e["robot_pointmap"][idx][both], axis=-1)
        assert np.median(d) < 0.01, np.median(d)  # metres

        rgb = item["robot_rgb"].numpy()
        assert rgb.shape == (FRAMES, 3, *stored.shape[1:]) and rgb.dtype == np.float32
        assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and rgb.max() > 0.2
        assert not rgb.transpose(0, 2, 3, 1)[~pipe].any()  # black off the robot
        for k in ("rgb", "world_pointmap", "world_stats", "action"):  # the rest of the item is untouched
            assert item[k] is raw[k]
