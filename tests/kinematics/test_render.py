"""Robot rendering checked against pybullet's TinyRenderer (independent), brute force and the other backend."""

import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pybullet as p
import pytest
from trimesh.triangles import closest_point

from kinema4d.geometry import invert_rigid, transform_points
from kinema4d.kinematics import render as render_mod
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.meshes import DEFAULT_MAX_FACES_PER_LINK
from kinema4d.kinematics.perturb import drop_points, gaussian_noise, rotate, rotate_image, shift_image, translate
from kinema4d.kinematics.render import RobotRenderer, render_robot
from kinema4d.kinematics.robot import Robot

NEAR, FAR = 0.01, 20.0


# ---------------------------------------------------------------------- fixtures and the pybullet reference
@pytest.fixture(scope="module")
def panda():
    robot = Robot.builtin("panda")
    robot.link_meshes  # load once for the module  # noqa: B018
    return robot


@pytest.fixture(scope="module")
def kuka():
    return Robot.builtin("kuka_iiwa")


@pytest.fixture(scope="module")
def panda_cam():
    return Camera.look_at(eye=[1.35, 0.35, 0.95], target=[0.35, 0.0, 0.3], width=720, height=480, fov_y_deg=50.0)


@pytest.fixture(scope="module")
def panda_q(panda):
    q = np.vstack([panda.home, panda.random_q(2, np.random.default_rng(3))])
    q[1, -1] = 0.04  # one open gripper, one half closed
    q[2, -1] = 0.015
    return q


def _mimic_joints(urdf_path):
    """{joint: (master, multiplier, offset)} read straight from the URDF (independent of kinema4d.kinematics.robot)."""
    out = {}
    for j in ET.parse(urdf_path).getroot().iter("joint"):
        m = j.find("mimic")
        if m is not None:
            out[j.get("name")] = (m.get("joint"), float(m.get("multiplier", 1)), float(m.get("offset", 0)))
    return out


def pybullet_render(robot, q, cam):
    """TinyRenderer images for each row of q: list of (depth z (H, W) metres, mask (H, W), link name per pixel)."""
    cid = p.connect(p.DIRECT)
    try:
        body = p.loadURDF(str(robot.urdf_path), useFixedBase=True, physicsClientId=cid)
        joints, link_of = {}, {-1: p.getBodyInfo(body, physicsClientId=cid)[0].decode()}
        for j in range(p.getNumJoints(body, physicsClientId=cid)):
            info = p.getJointInfo(body, j, physicsClientId=cid)
            joints[info[1].decode()] = j
            link_of[j] = info[12].decode()
        mimic = _mimic_joints(robot.urdf_path)
        view, proj = cam.pybullet_matrices(NEAR, FAR)
        out = []
        for qt in q:
            values = dict(zip(robot.joint_names, qt, strict=True))
            for name, (master, mult, off) in mimic.items():
                values[name] = mult * values[master] + off
            for name, v in values.items():
                p.resetJointState(body, joints[name], float(v), physicsClientId=cid)
            _, _, _, d, seg = p.getCameraImage(cam.width, cam.height, view, proj, renderer=p.ER_TINY_RENDERER,
                                               flags=p.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX,
                                               physicsClientId=cid)
            d = np.asarray(d, np.float64).reshape(cam.height, cam.width)
            seg = np.asarray(seg, np.int64).reshape(cam.height, cam.width)
            mask = seg >= 0
            link_idx = np.where(mask, (seg >> 24) - 1, -2)
            names = np.full(seg.shape, "", dtype=object)
            for k, n in link_of.items():
                names[link_idx == k] = n
            out.append((Camera.opengl_depth_to_z(d, NEAR, FAR), mask, names))
        return out
    finally:
        p.disconnect(cid)


def compare(render, ref):
    """Per frame (IoU, median |dz| metres on common pixels, fraction of common pixels with the same link)."""
    stats = []
    for t, (z, mask, names) in enumerate(ref):
        both = mask & render.mask[t]
        iou = both.sum() / (mask | render.mask[t]).sum()
        dz = np.median(np.abs(z[both] - render.depth[t][both]))
        ours = np.asarray(render.link_names, dtype=object)[render.link_id[t][both]]
        stats.append((iou, dz, np.mean(ours == names[both])))
    return stats


@pytest.fixture(scope="module")
def panda_ref(panda, panda_q, panda_cam):
    return pybullet_render(panda, panda_q, panda_cam)


@pytest.fixture(scope="module")
def panda_renders(panda, panda_q, panda_cam):
    """Renders shared by several tests: {(backend, max_faces_per_link): RobotRender (with RGB)}."""
    out = {}
    for key in [("gl", None), ("embree", None), ("gl", DEFAULT_MAX_FACES_PER_LINK)]:
        out[key] = render_robot(panda, panda_q, panda_cam, rgb=True, backend=key[0], max_faces_per_link=key[1])
    return out


# ---------------------------------------------------------------------- acceptance against pybullet
@pytest.mark.parametrize("key", [("gl", None), ("embree", None), ("gl", DEFAULT_MAX_FACES_PER_LINK)],
                         ids=["gl-full", "embree-full", "gl-default-simplified"])
def test_panda_matches_pybullet(panda_renders, panda_ref, key):
    r = panda_renders[key]
    assert r.backend == key[0]
    for t, (iou, dz, same_link) in enumerate(compare(r, panda_ref)):
        assert iou >= 0.95, f"frame {t}: IoU {iou:.4f}"
        assert dz <= 0.002, f"frame {t}: median |dz| {dz * 1000:.3f} mm"
        assert same_link >= 0.95, f"frame {t}: link agreement {same_link:.4f}"
        if key[1] is None:  # full meshes: essentially exact
            assert iou >= 0.999 and dz <= 1e-4 and same_link >= 0.999, (iou, dz, same_link)
    assert r.mask[0].sum() > 5000  # the robot is in view


@pytest.mark.parametrize("backend", ["gl", "embree"])
def test_kuka_matches_pybullet(kuka, backend):
    cam = Camera.look_at(eye=[1.6, -0.6, 1.1], target=[0.0, 0.0, 0.6], width=192, height=128, fov_y_deg=55.0)
    q = kuka.home[None]
    r = render_robot(kuka, q, cam, backend=backend, max_faces_per_link=None)
    (iou, dz, same_link), = compare(r, pybullet_render(kuka, q, cam))
    assert iou >= 0.95 and dz <= 0.002 and same_link >= 0.95, (iou, dz, same_link)


# ---------------------------------------------------------------------- brute-force consistency
@pytest.mark.parametrize("key", [("gl", None), ("embree", None), ("gl", DEFAULT_MAX_FACES_PER_LINK)])
def test_output_contract(panda_renders, panda_cam, key):
    r = panda_renders[key]
    T, H, W = len(r.mask), panda_cam.height, panda_cam.width
    assert r.pointmap.shape == (T, H, W, 3) and r.pointmap.dtype == np.float32
    assert r.depth.shape == (T, H, W) and r.depth.dtype == np.float32
    assert r.mask.shape == (T, H, W) and r.mask.dtype == bool
    assert r.link_id.shape == (T, H, W) and r.link_id.dtype == np.int16
    assert r.rgb.shape == (T, H, W, 3) and r.rgb.dtype == np.uint8
    assert np.all(r.pointmap[~r.mask] == 0) and np.all(r.depth[~r.mask] == 0) and np.all(r.link_id[~r.mask] == -1)
    assert np.all(r.rgb[~r.mask] == 0)
    assert np.all(r.depth[r.mask] > 0)
    assert np.mean(r.rgb[r.mask].max(-1) > 0) > 0.99  # robot pixels are lit
    # pointmap == camera.unproject(pixel centre, depth): x, y lie on the pixel's ray up to float32 rounding (GL
    # used to interpolate them apart from z, up to 9 um off the ray)
    pm = panda_cam.unproject(panda_cam.pixel_grid()[None], r.depth.astype(np.float64))
    err = np.abs(r.pointmap - pm).max(-1)
    assert err.max() < 1e-6


@pytest.mark.parametrize("backend", ["gl", "embree"])
def test_link_id_consistent_with_fk(panda, panda_renders, panda_q, panda_cam, backend):
    """Points labelled link k, moved into link k's frame by FK, lie on link k's mesh: all within 1 mm (a wrong
    label is centimetres off), 99 % within 0.1 mm. With back faces culled a few pixels per thousand see link6
    through a crack of its mesh at 0.1-0.14 mm from its nearest triangle (the embree backend agrees on those
    depths to 1e-7 m)."""
    r = panda_renders[(backend, None)]
    rng = np.random.default_rng(0)
    T_world_link = panda.fk(panda_q)
    t = 1
    idx = np.argwhere(r.mask[t])
    idx = idx[rng.choice(len(idx), 200, replace=False)]
    p_cam = r.pointmap[t][idx[:, 0], idx[:, 1]].astype(np.float64)
    links = r.link_id[t][idx[:, 0], idx[:, 1]]
    dist = []
    for k in np.unique(links):
        name = panda.link_names[k]
        T_link_cam = invert_rigid(panda_cam.T_cam_world @ T_world_link[name][t])
        p_link = transform_points(T_link_cam, p_cam[links == k])
        tris = panda.link_meshes[name].triangles
        d = [np.linalg.norm(closest_point(tris, np.tile(x, (len(tris), 1))) - x, axis=1).min() for x in p_link]
        assert max(d) < 1e-3, f"{name}: {max(d) * 1000:.3f} mm off the mesh"
        dist += d
    assert np.quantile(dist, 0.99) < 1e-4, f"{np.quantile(dist, 0.99) * 1000:.3f} mm"


def test_gl_and_embree_agree(panda_renders):
    a, b = panda_renders[("gl", None)], panda_renders[("embree", None)]
    both = a.mask & b.mask
    assert both.sum() / (a.mask | b.mask).sum() > 0.999
    assert np.median(np.abs(a.depth[both] - b.depth[both])) < 1e-5
    assert np.mean(a.link_id[both] == b.link_id[both]) > 0.999
    # same colours and shading up to rounding and silhouette/edge pixels
    diff = np.abs(a.rgb[both].astype(int) - b.rgb[both].astype(int)).max(-1)
    assert np.mean(diff <= 3) > 0.98


def test_renderer_reuse_and_base_pose(kuka):
    """A moved base equals a camera moved the other way; RobotRenderer keeps working across calls and cameras."""
    cam = Camera.look_at(eye=[1.6, -0.6, 1.1], target=[0.0, 0.0, 0.6], width=96, height=64, fov_y_deg=55.0)
    T_world_base = np.eye(4)
    T_world_base[:3, 3] = [0.1, -0.05, 0.02]
    moved = Robot.builtin("kuka_iiwa", T_world_base=T_world_base)
    moved.__dict__["link_meshes"] = kuka.link_meshes  # same geometry: skip reloading
    cam_moved = Camera(K=cam.K, T_cam_world=cam.T_cam_world @ T_world_base, width=96, height=64)
    q = np.vstack([kuka.home, kuka.home * 0.5])
    for backend in ("gl", "embree"):
        r0 = RobotRenderer(moved, cam, backend=backend, max_faces_per_link=None)
        r1 = RobotRenderer(kuka, backend=backend, max_faces_per_link=None)
        a, b = r0.render(q), r1.render(q, camera=cam_moved)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.depth, b.depth, atol=1e-5)
        c = r1.render(q, camera=cam_moved.resized(48, 32))
        assert c.mask.shape == (2, 32, 48) and c.mask.any()
        r0.release()
        r1.release()


def test_simplification_reduces_faces(kuka):
    full = RobotRenderer(kuka, backend="embree", max_faces_per_link=None)
    small = RobotRenderer(kuka, backend="embree", max_faces_per_link=500)
    assert small.n_faces <= 8 * 520 < full.n_faces


def test_auto_falls_back_to_embree(kuka, monkeypatch):
    def no_gl():
        raise RuntimeError("could not create a headless EGL OpenGL context: test")

    monkeypatch.setattr(render_mod, "gl_context", no_gl)
    monkeypatch.setattr(render_mod, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="falling back to the embree"):
        r = RobotRenderer(kuka, backend="auto", max_faces_per_link=200)
    assert r.backend_name == "embree"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RobotRenderer(kuka, backend="auto", max_faces_per_link=200)  # warned once only


# ---------------------------------------------------------------------- output memory: ownership and out=
def _fields(r):
    return {"pointmap": r.pointmap, "depth": r.depth, "link_id": r.link_id, "mask": r.mask, "rgb": r.rgb}


def _small_kuka_cam():
    return Camera.look_at(eye=[1.6, -0.6, 1.1], target=[0.0, 0.0, 0.6], width=96, height=64, fov_y_deg=55.0)


@pytest.mark.parametrize("backend", ["gl", "embree"])
def test_each_call_returns_arrays_the_caller_owns(panda, panda_q, panda_cam, kuka, backend):
    """No two results (or two fields of one result) share memory, so keeping a result across calls is safe."""
    # gl at 720x480: outputs of >= 4 MB come from the renderer's lazily mapped memory
    robot, q, cam = (panda, panda_q, panda_cam) if backend == "gl" else (kuka, np.vstack([kuka.home] * 2),
                                                                           _small_kuka_cam())
    r = RobotRenderer(robot, cam, backend=backend)
    a = r.render(q, rgb=True)
    keep = {k: v.copy() for k, v in _fields(a).items()}
    b = r.render(q[::-1], rgb=True)
    c = r.render(q, rgb=True)
    for k in keep:
        np.testing.assert_array_equal(_fields(a)[k], keep[k], err_msg=f"{k} changed by a later call")
        np.testing.assert_array_equal(_fields(c)[k], keep[k], err_msg=k)
        for other in (b, c):
            assert not np.shares_memory(_fields(a)[k], _fields(other)[k]), k
        for k2 in keep:
            assert k == k2 or not np.shares_memory(_fields(a)[k], _fields(a)[k2]), (k, k2)
    a.pointmap[:] = 7.0  # the caller may write into its arrays
    a.link_id[:] = 3
    np.testing.assert_array_equal(c.pointmap, keep["pointmap"])
    np.testing.assert_array_equal(r.render(q, rgb=True).link_id, keep["link_id"])


def test_dropped_outputs_are_recycled_and_fully_rewritten(panda, panda_q, panda_cam):
    """Output memory (arrays >= 4 MB) whose arrays the caller dropped is reused by a later call, which then
    writes every pixel: same result as on new memory; memory still referenced (even by a view) is not reused."""
    import gc

    r = RobotRenderer(panda, panda_cam)
    q_a, q_b = panda_q[[0, 1, 2, 1]], panda_q[[2, 0, 1, 0]]
    want = {k: v.copy() for k, v in _fields(r.render(q_b, rgb=True)).items()}
    gc.collect()
    a = r.render(q_a, rgb=True)
    view = a.depth[1]  # a view keeps the whole buffer alive
    ptrs = {k: v.ctypes.data for k, v in _fields(a).items() if v.nbytes >= render_mod._POOL.MIN_BYTES}
    assert set(ptrs) == {"pointmap", "depth"}  # 4 frames of 720x480: the arrays >= 4 MB
    del a
    gc.collect()
    reused = render_mod._POOL.reused
    b = r.render(q_b, rgb=True)
    assert render_mod._POOL.reused - reused == 1  # the pointmap from a's memory; its depth is still in use
    assert b.pointmap.ctypes.data == ptrs["pointmap"] and not np.shares_memory(b.depth, view)
    for k, v in want.items():
        np.testing.assert_array_equal(_fields(b)[k], v, err_msg=k)


def test_output_pool_reuse_and_cap():
    import gc

    pool = render_mod._OutputPool(max_bytes=10 << 20)
    n4 = (4 << 20) // 4  # float32 items in 4 MB
    a, fresh = pool.zeros((n4,), np.float32)
    assert fresh and not a.any() and a.flags.writeable
    small, fresh = pool.zeros((1000,), np.float32)  # below MIN_BYTES: plain np.zeros, never recycled
    assert fresh and small.base is None
    a[:] = 5.0
    del a
    gc.collect()
    b, fresh = pool.zeros((2, n4 // 2), np.float32)  # same size: recycled, old values inside
    assert not fresh and pool.reused == 1 and b.shape == (2, n4 // 2)
    del b
    gc.collect()
    c, _ = pool.zeros((2 * n4,), np.float32)
    del c
    gc.collect()  # 4 + 8 MB > 10 MB: the oldest (4 MB) buffer is unmapped
    d, fresh = pool.zeros((n4,), np.float32)
    assert fresh and not d.any() and pool.reused == 1


@pytest.mark.parametrize("backend", ["gl", "embree"])
def test_render_into_out(panda, panda_q, panda_cam, kuka, backend):
    """out=: the caller's arrays are filled in place, every pixel overwritten, same values as a fresh call."""
    robot, q, cam = (panda, panda_q, panda_cam) if backend == "gl" else (kuka, np.vstack([kuka.home] * 3),
                                                                           _small_kuka_cam())
    if backend == "embree":
        q[1, 1] += 0.4
    r = RobotRenderer(robot, cam, backend=backend)
    fresh = r.render(q, rgb=True)
    T, H, W = q.shape[0], cam.height, cam.width
    garbage = render_mod.RobotRender(pointmap=np.full((T, H, W, 3), 5.0, np.float32),
                                     mask=np.ones((T, H, W), bool), depth=np.full((T, H, W), 9.0, np.float32),
                                     link_id=np.full((T, H, W), 7, np.int16), rgb=np.full((T, H, W, 3), 200, np.uint8),
                                     link_names=[], backend="none")
    res = r.render(q, rgb=True, out=garbage)
    for k, v in _fields(fresh).items():
        assert _fields(res)[k] is _fields(garbage)[k], k
        np.testing.assert_array_equal(_fields(res)[k], v, err_msg=k)
    assert res.backend == backend and res.link_names == fresh.link_names
    # reuse for other frames (the robot's box moves): still every pixel right
    res2 = render_robot(robot, q[::-1], cam, rgb=True, backend=backend, out=res)
    np.testing.assert_array_equal(res2.link_id, fresh.link_id[::-1])
    np.testing.assert_array_equal(res2.pointmap, fresh.pointmap[::-1])
    # without rgb the colour array is left alone and not returned
    res3 = r.render(q, out=res)
    assert res3.rgb is None and res3.depth is garbage.depth


def test_render_into_out_errors(kuka):
    cam = _small_kuka_cam()
    r = RobotRenderer(kuka, cam, backend="embree", max_faces_per_link=200)
    ok = r.render(kuka.home[None])
    with pytest.raises(TypeError, match="out must be a RobotRender"):
        r.render(kuka.home[None], out=_fields(ok))
    with pytest.raises(ValueError, match=r"out.pointmap must be a writeable float32 array of shape \(2, 64, 96, 3\)"):
        r.render(np.vstack([kuka.home] * 2), out=ok)
    with pytest.raises(ValueError, match="out.rgb must be"):
        r.render(kuka.home[None], rgb=True, out=ok)
    ok.depth.flags.writeable = False
    with pytest.raises(ValueError, match="out.depth must be a writeable"):
        r.render(kuka.home[None], out=ok)


# ---------------------------------------------------------------------- errors
def test_bad_inputs(kuka):
    cam = Camera.look_at(eye=[1.6, -0.6, 1.1], target=[0.0, 0.0, 0.6], width=32, height=24)
    with pytest.raises(ValueError, match=r"q must have shape \(T, 7\)"):
        render_robot(kuka, np.zeros((3, 6)), cam)
    q = np.zeros((3, 7))
    q[1, 2] = np.nan
    with pytest.raises(ValueError, match="q has a non-finite value at frame 1"):
        render_robot(kuka, q, cam)
    with pytest.raises(TypeError, match="camera must be a kinema4d.kinematics.camera.Camera, got dict"):
        render_robot(kuka, np.zeros((1, 7)), cam.to_dict())
    with pytest.raises(ValueError, match="backend must be one of"):
        render_robot(kuka, np.zeros((1, 7)), cam, backend="vulkan")
    with pytest.raises(ValueError, match="max_faces_per_link"):
        RobotRenderer(kuka, backend="embree", max_faces_per_link=2.5)
    with pytest.raises(ValueError, match="no camera"):
        RobotRenderer(kuka, backend="embree", max_faces_per_link=200).render(np.zeros((1, 7)))


# ---------------------------------------------------------------------- perturbations
@pytest.fixture
def toy_pm():
    """(4, 40, 60, 3) pointmap with a moving rectangle of valid points."""
    rng = np.random.default_rng(1)
    mask = np.zeros((4, 40, 60), bool)
    for t in range(4):
        mask[t, 10 + t:25 + t, 15 + 2 * t:40 + 2 * t] = True
    pm = np.zeros((4, 40, 60, 3), np.float32)
    pm[mask] = rng.uniform([-0.5, -0.3, 0.8], [0.4, 0.2, 1.9], size=(mask.sum(), 3))
    return pm, mask


def test_drop_points(toy_pm):
    pm, mask = toy_pm
    pm2, mask2 = drop_points(pm, mask, frac=0.05, rng=np.random.default_rng(0))
    assert not np.any(mask2 & ~mask)
    assert (mask & ~mask2).sum() == round(0.05 * mask.sum())
    assert np.all(pm2[~mask2] == 0) and np.array_equal(pm2[mask2], pm[mask2])


def test_gaussian_noise(toy_pm):
    pm, mask = toy_pm
    pm2, mask2 = gaussian_noise(pm, mask, sigma_m=0.01, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(mask2, mask)
    d = (pm2 - pm)[mask]
    assert abs(d.std() - 0.01) < 0.001 and abs(d.mean()) < 0.001
    assert np.all(pm2[~mask] == 0)


def _centroid(mask):
    """(x, y) pixel centroid of a (H, W) mask."""
    r, c = np.nonzero(mask)
    return np.array([c.mean(), r.mean()])


def test_translate(toy_pm):
    pm, mask = toy_pm
    moved = 0
    for seed in range(10):
        pm2, mask2 = translate(pm, mask, max_px=5, rng=np.random.default_rng(seed))
        shift = _centroid(mask2[0]) - _centroid(mask[0])
        assert np.all(np.abs(shift) <= 5 + 1e-9)
        assert mask2.sum() == mask.sum()  # the toy content stays inside the image
        dx, dy = np.rint(shift).astype(int)
        np.testing.assert_array_equal(pm2, shift_image(pm, mask, dx, dy)[0])  # one shift for all frames
        moved += bool(dx or dy)
    assert moved >= 8
    pm3, mask3 = shift_image(pm, mask, 3, -2)
    np.testing.assert_array_equal(mask3[:, :-2, 3:], mask[:, 2:, :-3])  # right 3, up 2
    np.testing.assert_array_equal(pm3[:, :-2, 3:], pm[:, 2:, :-3])
    assert not mask3[:, :, :3].any() and not mask3[:, -2:].any()
    _, mask4 = translate(pm, mask, max_px=5, rng=np.random.default_rng(0), per_frame=True)
    assert mask4.shape == mask.shape


def test_rotate():
    mask = np.zeros((2, 40, 60), bool)
    mask[:, 3:12, 40:56] = True  # a block far from the image centre
    pm = np.where(mask[..., None], np.random.default_rng(2).uniform(0.5, 1.5, (2, 40, 60, 3)), 0).astype(np.float32)
    centre = np.array([(60 - 1) / 2, (40 - 1) / 2])
    angles = []
    for seed in range(8):
        pm2, mask2 = rotate(pm, mask, max_deg=5, rng=np.random.default_rng(seed))
        assert abs(int(mask2.sum()) - int(mask.sum())) < 0.1 * mask.sum()
        assert set(np.unique(pm2[mask2][:, 0])) <= set(np.unique(pm[mask][:, 0]))  # values moved, not changed
        np.testing.assert_array_equal(mask2[0], mask2[1])  # one angle for the sequence
        a, b = _centroid(mask[0]) - centre, _centroid(mask2[0]) - centre
        angles.append(np.degrees(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b)))
        assert abs(np.linalg.norm(a) - np.linalg.norm(b)) < 1.0
    assert np.all(np.abs(angles) <= 5.5) and np.ptp(angles) > 2
    # 90 degrees on a square image is an exact pixel permutation (counter-clockwise on screen)
    sq = np.zeros((1, 5, 5), bool)
    sq[0, 0, 4] = True  # top-right corner
    _, rot = rotate_image(np.where(sq[..., None], np.ones(3), 0.0), sq, 90.0)
    assert rot[0, 0, 0]  # -> top-left corner
    _, mask0 = rotate(pm, mask, max_deg=0.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(mask0, mask)


@pytest.mark.parametrize("backend", ["gl", "embree"])
def test_simplified_urdf_matches_renderer_in_pybullet(tmp_path, backend):
    """pybullet drawing the simplified URDF agrees with our renderer at the same face limit (data engine path), to
    a pixel: both cull back faces (without culling, frame 0 differed by 6 pixels, IoU 0.9955, where the holes that
    decimation opens showed the inside of a link; now 0-1 pixels, IoU >= 0.999)."""
    from kinema4d.kinematics.meshes import simplified_urdf

    robot = Robot.builtin("panda")
    urdf = simplified_urdf(robot, 1000, cache_dir=tmp_path)
    assert simplified_urdf(robot, 1000, cache_dir=tmp_path) == urdf  # cached
    twin = Robot.from_urdf(urdf)
    assert twin.joint_names == robot.joint_names
    q = robot.random_q(2, np.random.default_rng(3))
    for link in ("panda_hand", "panda_link4"):  # same kinematics
        np.testing.assert_allclose(twin.fk(q)[link], robot.fk(q)[link], atol=1e-12)
    cam = Camera.look_at(eye=[1.45, 0.4, 1.05], target=[0.3, 0.0, 0.4], width=192, height=128, fov_y_deg=50)
    ours = render_robot(robot, q, cam, backend=backend, max_faces_per_link=1000)
    cid = p.connect(p.DIRECT)
    try:
        body = p.loadURDF(str(urdf), useFixedBase=True, physicsClientId=cid)
        names = {p.getJointInfo(body, j, physicsClientId=cid)[1].decode(): j
                 for j in range(p.getNumJoints(body, physicsClientId=cid))}
        view, proj = cam.pybullet_matrices(0.05, 5.0)
        for t in range(len(q)):
            for n, v in zip(robot.joint_names, q[t], strict=True):
                p.resetJointState(body, names[n], v, physicsClientId=cid)
            p.resetJointState(body, names["panda_finger_joint2"], q[t, -1], physicsClientId=cid)
            _, _, _, d, seg = p.getCameraImage(192, 128, view, proj, renderer=p.ER_TINY_RENDERER, physicsClientId=cid)
            m = np.asarray(seg).reshape(128, 192) == body
            z = Camera.opengl_depth_to_z(np.asarray(d).reshape(128, 192), 0.05, 5.0)
            both = m & ours.mask[t]
            assert both.sum() / (m | ours.mask[t]).sum() >= 0.998
            assert np.median(np.abs(z[both] - ours.depth[t][both])) < 1e-3
    finally:
        p.disconnect(cid)


def test_pixel_boxes_equal_pixel_box(panda):
    """The frame-vectorized boxes equal the per-frame ones: in view, partly out of the image, crossing the near
    plane, behind the camera."""
    from kinema4d.kinematics.meshes import aabb_corners, link_meshes, pixel_box, pixel_boxes

    links = link_meshes(panda, 200)
    names = [panda.link_names[lm.link_index] for lm in links]
    corners = np.stack([aabb_corners(lm.vertices) for lm in links])
    q = panda.random_q(6, np.random.default_rng(0))
    T_world = panda.fk(q, names)
    for eye, target in (([1.35, 0.35, 0.95], [0.35, 0.0, 0.3]), ([0.3, 0.1, 0.5], [0.3, 0.0, 0.0]),
                        ([0.05, 0.0, 0.3], [1.0, 0.0, 0.3]), ([-1.0, 0.0, 0.5], [-2.0, 0.0, 0.5])):
        cam = Camera.look_at(eye=eye, target=target, width=96, height=64, fov_y_deg=50.0)
        T = np.stack([cam.T_cam_world @ T_world[n] for n in names], axis=1)
        assert pixel_boxes(corners, T, cam, NEAR) == [pixel_box(corners, T[t], cam, NEAR) for t in range(len(q))]
