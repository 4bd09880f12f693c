"""kinema4d.eval.metrics against independent references (scikit-image, brute force, closed forms)."""

import warnings

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from kinema4d.eval import metrics as M
from kinema4d.kinematics.robot import Robot


def _videos(seed=0, t=3, h=24, w=32, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (t, h, w, 3)).astype(np.uint8)
    gt = (0.5 * gt + 0.5 * np.roll(gt, 1, axis=2)).astype(np.uint8)  # some spatial structure
    pred = np.clip(gt.astype(int) + rng.integers(-30, 31, gt.shape), 0, 255).astype(np.uint8)
    if dtype != np.uint8:
        return pred.astype(dtype) / 255, gt.astype(dtype) / 255
    return pred, gt


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_psnr_ssim_match_skimage(dtype):
    pred, gt = _videos(dtype=dtype)
    r = 255 if dtype == np.uint8 else 1.0
    ref_psnr = [peak_signal_noise_ratio(g, p, data_range=r) for p, g in zip(pred, gt, strict=True)]
    ref_ssim = [structural_similarity(p, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                      channel_axis=-1, data_range=r) for p, g in zip(pred, gt, strict=True)]
    np.testing.assert_allclose(M.psnr_per_frame(pred, gt), ref_psnr, rtol=1e-5)
    np.testing.assert_allclose(M.ssim_per_frame(pred, gt), ref_ssim, atol=1e-5)
    assert M.psnr(pred, gt) == pytest.approx(np.mean(ref_psnr), rel=1e-5)
    assert M.ssim(pred, gt) == pytest.approx(np.mean(ref_ssim), abs=1e-5)
    assert M.psnr(pred[0], gt[0]) == pytest.approx(ref_psnr[0], rel=1e-5)  # single image (H, W, 3)
    assert M.ssim(pred[1], gt[1]) == pytest.approx(ref_ssim[1], abs=1e-5)


def test_psnr_identical_is_inf_and_ssim_one():
    _, gt = _videos()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.psnr(gt, gt) == np.inf
    assert M.ssim(gt, gt) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.psnr(gt, gt.astype(np.float32))  # mixed dtypes: ambiguous data range
    with pytest.raises(ValueError):
        M.ssim(gt[:, :8, :8], gt[:, :8, :8])  # smaller than the 11-tap window


def test_latent_l2():
    import torch

    a = np.zeros((2, 4, 3, 3), np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 2.0
    assert M.latent_l2(a, b) == pytest.approx(4.0 / a.size)
    assert M.latent_l2(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(4.0 / a.size)
    assert M.latent_l2(a, a) == 0.0


# ------------------------------------------------------------------------------------------------ geometry
def test_chamfer_matches_brute_force():
    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(200, 3)), rng.normal(size=(170, 3)) + 0.1
    d = np.linalg.norm(p[:, None] - q[None], axis=-1)
    l1 = 0.5 * (d.min(1).mean() + d.min(0).mean())
    l2 = 0.5 * ((d.min(1) ** 2).mean() + (d.min(0) ** 2).mean())
    out = M.chamfer(p, q)
    assert out["l1"] == pytest.approx(l1, rel=1e-10)
    assert out["l2"] == pytest.approx(l2, rel=1e-10)
    thr = float(np.median(d.min(1)))
    prec, rec = (d.min(1) < thr).mean(), (d.min(0) < thr).mean()
    assert M.fscore(p, q, thr) == pytest.approx(2 * prec * rec / (prec + rec))
    assert M.chamfer(p, p) == {"l1": 0.0, "l2": 0.0}


def test_fscore_hand_computed():
    q = np.array([[0.0, 0, 0]])
    p = np.array([[0.005, 0, 0], [0.02, 0, 0]])
    # precision: 1 of 2 predicted points within 0.01 of q; recall: q's nearest prediction is 0.005 away
    assert M.fscore(p, q, 0.01) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert M.fscore(p, q, 0.03) == pytest.approx(1.0)
    assert M.fscore(p, q, 0.001) == 0.0
    assert np.isnan(M.fscore(np.zeros((0, 3)), q))


def _grid_pm(t=3):
    """(t, 4, 5, 3) pointmap: a 0.25 m grid in x/y, z in [2, 3], pixel (0, 0) empty in every frame."""
    r, c = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    pm = np.stack([c * 0.25, r * 0.25, 2.0 + (r + c) / 7.0], -1)
    pm = np.repeat(pm[None], t, 0)
    valid = np.ones(pm.shape[:3], bool)
    valid[:, 0, 0] = False
    pm[~valid] = 0
    return pm, valid


def test_geometric_metrics_constructed():
    gt, valid = _grid_pm()
    out = M.geometric_metrics(gt, gt, valid, valid)
    assert out["chamfer_l1"] == 0 and out["chamfer_l2"] == 0 and out["fscore"] == 1
    assert out["chamfer_l1_temp"] == 0 and out["fscore_temp"] == 1  # static scene
    assert out["chamfer_l1_per_frame"].shape == (3,) and out["fscore_temp_per_frame"].shape == (2,)

    pred = gt.copy()
    pred[..., 0] += 0.005  # 5 mm in x; the GT x extent is 1 m -> 0.005 in normalized units
    pred[1:, ..., 0] += 0.02  # frames 1, 2 move 2 cm more -> 0.02 between frames 0 and 1
    pred_valid = valid.copy()
    pred_valid[2] = False  # an empty predicted frame -> nan, ignored by the means
    out = M.geometric_metrics(pred, gt, pred_valid, valid)
    np.testing.assert_allclose(out["chamfer_l1_per_frame"], [0.005, 0.025, np.nan])
    np.testing.assert_allclose(out["chamfer_l2_per_frame"], [0.005 ** 2, 0.025 ** 2, np.nan])
    np.testing.assert_allclose(out["fscore_per_frame"], [1.0, 0.0, np.nan])
    np.testing.assert_allclose(out["chamfer_l1_temp_per_frame"], [0.02, np.nan])
    np.testing.assert_allclose(out["fscore_temp_per_frame"], [0.0, np.nan])
    assert out["chamfer_l1"] == pytest.approx(0.015) and out["fscore"] == pytest.approx(0.5)


def test_geometric_metrics_subsampling_is_seeded():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, (2, 30, 40, 3))
    pred = gt + rng.normal(0, 0.01, gt.shape)
    v = np.ones(gt.shape[:3], bool)
    a = M.geometric_metrics(pred, gt, v, v, max_points=300, seed=3)
    b = M.geometric_metrics(pred, gt, v, v, max_points=300, seed=3)
    c = M.geometric_metrics(pred, gt, v, v, max_points=300, seed=4)
    assert a["chamfer_l1"] == b["chamfer_l1"] != c["chamfer_l1"]
    full = M.geometric_metrics(pred, gt, v, v)
    assert a["chamfer_l1"] > full["chamfer_l1"]  # sparser clouds -> larger NN distances


# ------------------------------------------------------------------------------------------------ robot
def test_robot_adherence_constructed_offset():
    rng = np.random.default_rng(0)
    robot_pm = rng.uniform(0.2, 1.0, (3, 6, 8, 3))
    world_pm = robot_pm + np.array([0.003, 0, 0])
    mask = np.zeros((3, 6, 8), bool)
    mask[0, 1:3] = True
    mask[1, 4, 2:6] = True  # frame 2: no robot pixel
    world_pm[~mask] = 5.0  # errors outside the mask are ignored
    out = M.robot_adherence(world_pm, robot_pm, mask)
    assert out["mean_mm"] == pytest.approx(3.0) and out["median_mm"] == pytest.approx(3.0)
    np.testing.assert_allclose(out["per_frame_mm"], [3.0, 3.0, np.nan])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = M.robot_adherence(world_pm, robot_pm, np.zeros_like(mask))
    assert np.isnan(empty["mean_mm"]) and np.isnan(empty["median_mm"]) and np.isnan(empty["per_frame_mm"]).all()


BOX_URDF = """<robot name="slider">
  <link name="base"/>
  <link name="block"><visual><geometry><box size="0.2 0.2 0.2"/></geometry></visual></link>
  <joint name="slide" type="prismatic"><parent link="base"/><child link="block"/><axis xyz="1 0 0"/>
    <limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
</robot>"""


def test_penetration_posed_box(tmp_path):
    (tmp_path / "slider.urdf").write_text(BOX_URDF)
    robot = Robot.from_urdf(tmp_path / "slider.urdf")
    pts = np.array([[0.5, 0, 0], [0.55, 0.05, -0.05], [0.02, 0, 0.05], [0.75, 0, 0], [0.5, 0.15, 0]])
    assert M.penetration_rate(pts, None, robot, [0.5]) == pytest.approx(2 / 5)  # box centred at x = 0.5
    assert M.penetration_rate(pts, None, robot, [0.0]) == pytest.approx(1 / 5)
    assert M.penetration_rate(pts, None, robot, [0.5], margin=0.06) == pytest.approx(1 / 5)

    # pointmap in a camera frame 2 m along +z looking back, robot pixels excluded, empty pixels ignored
    T_cam_world = np.diag([1.0, -1.0, -1.0, 1.0])
    T_cam_world[2, 3] = 2.0
    pm = np.zeros((2, 2, 3, 3))
    pm[:, 0, :] = (pts[:3] @ T_cam_world[:3, :3].T + T_cam_world[:3, 3])
    pm[:, 1, :2] = (pts[3:] @ T_cam_world[:3, :3].T + T_cam_world[:3, 3])
    exclude = np.zeros((2, 2, 3), bool)
    exclude[1, 0, 0] = True  # frame 1: the point at the box centre is a robot pixel
    rate = M.penetration_rate(pm, exclude, robot, [[0.5], [0.5]], T_cam_world=T_cam_world)
    assert rate == pytest.approx((2 + 1) / (5 + 4))
    assert np.isnan(M.penetration_rate(np.zeros((1, 2, 2, 3)), None, robot, [[0.0]]))


FLAT_URDF = """<robot name="flatslider">
  <link name="base"/>
  <link name="block"><visual><geometry><box size="0.2 0.2 0.2"/></geometry></visual></link>
  <link name="plate"><visual><geometry><box size="0.2 0.2 0.0"/></geometry></visual></link>
  <joint name="slide" type="prismatic"><parent link="base"/><child link="block"/><axis xyz="1 0 0"/>
    <limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <joint name="fix" type="fixed"><parent link="base"/><child link="plate"/><origin xyz="0 0 1"/></joint>
</robot>"""


def test_penetration_warns_once_about_links_without_a_hull(tmp_path, monkeypatch):
    """A link whose convex hull fails (a flat plate) is left out of penetration: said once, naming the link."""
    monkeypatch.setattr(M, "_HULL_WARNED", set())
    (tmp_path / "flatslider.urdf").write_text(FLAT_URDF)
    robot = Robot.from_urdf(tmp_path / "flatslider.urdf")
    pts = np.array([[0.5, 0, 0], [0.5, 0.15, 0]])
    with pytest.warns(RuntimeWarning, match=r"no convex hull for link\(s\) plate of robot .*under-counted"):
        assert M.penetration_rate(pts, None, robot, [0.5]) == pytest.approx(1 / 2)  # the block still counts
    assert list(M.link_hulls(robot)) == ["block"]
    again = Robot.from_urdf(tmp_path / "flatslider.urdf")  # same model: no second warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.penetration_rate(pts, None, again, [0.5]) == pytest.approx(1 / 2)
        M.link_hulls(Robot.builtin("kuka_iiwa"))  # every link has a hull: silent


def test_penetration_panda():
    robot = Robot.builtin("panda")
    q = robot.home[None]
    poses = robot.fk(q)
    rng = np.random.default_rng(0)
    inside, surface = [], []
    for link, mesh in robot.link_meshes.items():
        T = poses[link][0]
        m = mesh.copy()
        m.apply_transform(T)
        pts, fid = trimesh.sample.sample_surface(m, 400, seed=1)
        surface.append(pts)
        if link.endswith(("link1", "link2", "link3", "link4", "link5")):
            inside.append(pts[:40] - 0.003 * m.face_normals[fid[:40]])  # 3 mm below the surface
    inside, surface = np.concatenate(inside), np.concatenate(surface)
    box = rng.uniform(surface.min(0) - 0.4, surface.max(0) + 0.4, (4000, 3))
    far = box[cKDTree(surface).query(box)[0] > 0.2][:200]
    assert len(inside) >= 100 and len(far) >= 100
    assert M.penetration_rate(inside, None, robot, q) == pytest.approx(1.0)
    assert M.penetration_rate(far, None, robot, q) == 0.0
    both = np.concatenate([inside, far])
    assert M.penetration_rate(both, np.arange(len(both)) < 10, robot, q) == pytest.approx(
        (len(inside) - 10) / (len(both) - 10))


# ------------------------------------------------------------------------------------------------ objects
def _blob_scene():
    """(H, W, 3) uint8 frame, (H, W, 3) camera-frame pointmap and camera: a grey table plane at z = 0.6 seen by a
    look-at camera, and red pixels at the projections of three known world points (their pointmap values are those
    points), one more red pixel at a known point marked as robot, a red pixel without a point (empty pointmap) and
    a pixel 45 colour units from red (outside the 40 tolerance)."""
    from kinema4d.geometry import transform_points
    from kinema4d.kinematics.camera import Camera

    cam = Camera.look_at(eye=[0.8, 0.0, 1.5], target=[0, 0, 0.6], width=96, height=64, fov_y_deg=50)
    H, W = cam.height, cam.width
    rgb = np.full((H, W, 3), 180, np.uint8)
    d_world = cam.unproject(cam.pixel_grid(), np.ones((H, W))) @ cam.T_world_cam[:3, :3].T
    depth = (0.6 - cam.T_world_cam[2, 3]) / d_world[..., 2]  # z-depth along each pixel's ray to the table
    pm = cam.depth_to_pointmap(depth)
    red = (200, 20, 20)
    pts = {"object": [[0.10, 0.20, 0.65], [0.12, 0.21, 0.65], [0.14, 0.25, 0.65]], "robot": [[0.30, 0.10, 0.70]],
           "empty": [[-0.20, -0.20, 0.60]], "off_colour": [[-0.10, 0.30, 0.60]]}
    robot_mask = np.zeros((H, W), bool)
    pix = set()
    for kind, ps in pts.items():
        for p in ps:
            uv, z = cam.project(np.asarray([p], np.float64))
            c, r = np.round(uv[0]).astype(int)
            assert 0 <= r < H and 0 <= c < W and z[0] > 0 and (r, c) not in pix
            pix.add((r, c))
            rgb[r, c] = (200, 20, 65) if kind == "off_colour" else red  # 45 from red
            pm[r, c] = 0.0 if kind == "empty" else transform_points(cam.T_cam_world, np.asarray(p))
            robot_mask[r, c] = kind == "robot"
    return rgb, pm, cam, robot_mask, red


def test_locate_object_hand_computed():
    """Median xy of the red points with a point, not robot: x of (0.10, 0.12, 0.14) -> 0.12, y of (0.20, 0.21,
    0.25) -> 0.21; against a GT centre (0.15, 0.25) that is sqrt(0.03^2 + 0.04^2) = 50 mm. Without the robot mask
    the robot pixel (0.30, 0.10) joins: medians of 4 values, x (0.12 + 0.14) / 2 = 0.13, y (0.20 + 0.21) / 2."""
    rgb, pm, cam, robot_mask, red = _blob_scene()
    xy, n = M.locate_object(rgb, pm, cam, red, robot_mask)
    assert n == 3
    np.testing.assert_allclose(xy, [0.12, 0.21], atol=1e-9)
    assert M.object_endpoint_error_mm(xy, [0.15, 0.25]) == pytest.approx(50.0)
    assert M.object_endpoint_error_mm(xy, [0.15, 0.25, 0.6]) == pytest.approx(50.0)  # z ignored: planar error
    xy_all, n_all = M.locate_object(rgb, pm, cam, red)
    assert n_all == 4
    np.testing.assert_allclose(xy_all, [0.13, 0.205], atol=1e-9)
    assert M.object_moved(xy, [0.12, 0.19]) is False  # 2 cm
    assert M.object_moved(xy, [0.12, 0.25]) is True  # 4 cm > 3 cm
    assert M.locate_object(rgb, pm, cam, red, robot_mask, min_pixels=4) == (None, 3)
    none, n0 = M.locate_object(rgb, pm, cam, (20, 200, 20), robot_mask)  # no green pixel: not found
    assert none is None and n0 == 0
    assert np.isnan(M.object_endpoint_error_mm(none, [0.15, 0.25])) and M.object_moved(none, [1.0, 1.0]) is False
    with pytest.raises(ValueError, match="robot_mask"):
        M.locate_object(rgb, pm, cam, red, robot_mask[:-1])


def test_motion_recall_precision_hand_computed():
    gt = [True, True, True, False, False]
    gen = [True, False, False, True, False]
    out = M.motion_recall_precision(gt, gen)  # 1 of 3 GT-moving found moving; 1 of 2 rollout-moving is right
    assert out == {"recall": pytest.approx(1 / 3), "precision": pytest.approx(1 / 2), "gt_moving": 3,
                   "gen_moving": 2}
    still = M.motion_recall_precision([False, False], [True, False])  # nothing moves in GT: recall undefined
    assert np.isnan(still["recall"]) and still["precision"] == 0.0 and still["gt_moving"] == 0
    frozen = M.motion_recall_precision([True, False], [False, False])  # the rollout never moves: no precision
    assert frozen["recall"] == 0.0 and np.isnan(frozen["precision"]) and frozen["gen_moving"] == 0
    empty = M.motion_recall_precision([], [])
    assert np.isnan(empty["recall"]) and np.isnan(empty["precision"])
    perfect = M.motion_recall_precision([True, False, True], [True, False, True])
    assert perfect["recall"] == 1.0 and perfect["precision"] == 1.0
    with pytest.raises(ValueError):
        M.motion_recall_precision([True], [True, False])


# ------------------------------------------------------------------------------------------------ networks
def test_model_metrics_need_local_weights():
    pred, gt = _videos()
    with pytest.raises(M.MetricUnavailable, match="LPIPS"):
        M.lpips(pred, gt)
    with pytest.raises(M.MetricUnavailable, match="FID"):
        M.fid(pred, gt)
    with pytest.raises(M.MetricUnavailable, match="FVD"):
        M.fvd(pred[None], gt[None])


def test_frechet_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # = 5 + 1 + 1 + 0
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)
    assert M.frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0, abs=1e-9)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) * 2 + 1
    ref = M.frechet_distance(a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T))
    assert M.fid(a, b) == pytest.approx(ref) and M.fvd(a, b) == pytest.approx(ref)  # features need no network
