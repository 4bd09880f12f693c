"""Camera conventions, checked against pybullet's renderer (independent) and by round trips."""

import numpy as np
import pybullet as p
import pytest

from kinema4d.kinematics.camera import Camera


@pytest.fixture
def cam():
    return Camera.look_at(eye=[1.2, 0.3, 1.0], target=[0.1, 0.0, 0.3], width=160, height=120, fov_y_deg=50)


def test_look_at_conventions(cam):
    uv, z = cam.project(np.array([[0.1, 0.0, 0.3]]))
    np.testing.assert_allclose(uv[0], [(160 - 1) / 2, (120 - 1) / 2], atol=1e-9)  # target at the image centre
    assert z[0] == pytest.approx(np.linalg.norm(np.array([1.2, 0.3, 1.0]) - [0.1, 0.0, 0.3]))
    # a point above the target appears higher in the image (smaller v): y points down
    uv_up, _ = cam.project(np.array([[0.1, 0.0, 0.5]]))
    assert uv_up[0, 1] < uv[0, 1]


def test_project_unproject_roundtrip(cam):
    rng = np.random.default_rng(0)
    pts = rng.uniform([-0.3, -0.3, 0.0], [0.3, 0.3, 0.6], size=(50, 3))
    uv, z = cam.project(pts)
    p_cam = cam.unproject(uv, z)
    np.testing.assert_allclose(p_cam, cam.world_to_cam(pts), atol=1e-12)


def test_json_roundtrip(cam, tmp_path):
    cam.save(tmp_path / "cam.json")
    back = Camera.load(tmp_path / "cam.json")
    np.testing.assert_allclose(back.K, cam.K)
    np.testing.assert_allclose(back.T_cam_world, cam.T_cam_world)
    assert (back.width, back.height) == (cam.width, cam.height)


def test_pybullet_matrices_roundtrip(cam):
    view, proj = cam.pybullet_matrices(near=0.05, far=5.0)
    back = Camera.from_pybullet(view, proj, cam.width, cam.height)
    np.testing.assert_allclose(back.K, cam.K, atol=1e-9)
    np.testing.assert_allclose(back.T_cam_world, cam.T_cam_world, atol=1e-12)


def test_resized_keeps_rays(cam):
    small = cam.resized(80, 60)
    pts = np.array([[0.0, 0.1, 0.2], [0.2, -0.1, 0.4]])
    uv_big, _ = cam.project(pts)
    uv_small, _ = small.project(pts)
    np.testing.assert_allclose((uv_small + 0.5) * 2 - 0.5, uv_big, atol=1e-9)


def _pybullet_render(cam, bodies, near=0.05, far=5.0):
    """bodies: list of (shape kwargs, position). Returns (depth z metres, seg) rendered by TinyRenderer."""
    cid = p.connect(p.DIRECT)
    try:
        for kwargs, pos in bodies:
            vis = p.createVisualShape(physicsClientId=cid, **kwargs)
            p.createMultiBody(baseMass=0, baseVisualShapeIndex=vis, basePosition=pos, physicsClientId=cid)
        view, proj = cam.pybullet_matrices(near, far)
        _, _, _, d, seg = p.getCameraImage(cam.width, cam.height, view, proj, renderer=p.ER_TINY_RENDERER,
                                           physicsClientId=cid)
        d = np.asarray(d, dtype=np.float64).reshape(cam.height, cam.width)
        return Camera.opengl_depth_to_z(d, near, far), np.asarray(seg).reshape(cam.height, cam.width)
    finally:
        p.disconnect(cid)


def test_pybullet_pixel_alignment():
    """A small sphere rendered by pybullet lands where Camera.project puts its centre (sub-pixel)."""
    cam = Camera.look_at(eye=[0.0, -1.0, 1.0], target=[0, 0, 0], width=192, height=128, fov_y_deg=45)
    centre = np.array([0.07, 0.05, 0.02])
    _, seg = _pybullet_render(cam, [(dict(shapeType=p.GEOM_SPHERE, radius=0.08), centre.tolist())])
    rows, cols = np.nonzero(seg == 0)
    assert len(rows) > 200
    uv, _ = cam.project(centre[None])
    # the silhouette centroid of a sphere is within a fraction of a pixel of the projected centre at this size
    assert abs(cols.mean() - uv[0, 0]) < 0.3 and abs(rows.mean() - uv[0, 1]) < 0.3


def test_depth_to_pointmap_against_pybullet_plane():
    """Unprojecting pybullet's depth of a horizontal plate gives world points on that plate (mm level)."""
    cam = Camera.look_at(eye=[0.3, -0.8, 1.1], target=[0, 0, 0.2], width=160, height=120, fov_y_deg=50)
    depth, seg = _pybullet_render(cam, [(dict(shapeType=p.GEOM_BOX, halfExtents=[2, 2, 0.01]), [0, 0, 0.19])])
    pm = cam.depth_to_pointmap(depth)
    valid = seg == 0
    assert valid.mean() > 0.5
    p_world = (pm[valid].astype(np.float64) - cam.T_cam_world[:3, 3]) @ cam.T_cam_world[:3, :3]
    assert np.median(np.abs(p_world[:, 2] - 0.2)) < 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(K=np.diag([0.0, 100.0, 1.0])), "focal lengths"),
    (dict(K=np.array([[100, 0, 50], [0, 100, np.nan], [0, 0, 1.0]])), "non-finite"),
    (dict(width=0), "positive integers"),
    (dict(T_cam_world=np.diag([2.0, 1, 1, 1])), "not a rigid transform"),
])
def test_degenerate_camera(kwargs, match):
    base = dict(K=np.array([[100, 0, 50], [0, 100, 40], [0, 0, 1.0]]), T_cam_world=np.eye(4), width=100, height=80)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Camera(**base)


def test_look_at_degenerate_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="coincide"):
        Camera.look_at([0, 0, 1], [0, 0, 1])
    with pytest.raises(ValueError, match="parallel"):
        Camera.look_at([0, 0, 1], [0, 0, 0], up=[0, 0, 1])
    with pytest.raises(FileNotFoundError, match="camera file not found"):
        Camera.load(tmp_path / "missing.json")
    (tmp_path / "c.json").write_text('{"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}')
    with pytest.raises(ValueError, match="missing keys"):
        Camera.load(tmp_path / "c.json")
