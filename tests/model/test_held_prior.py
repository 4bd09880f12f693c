"""kinema4d.model.held_prior against a brute-force reference on an analytic scene (a box on a table, ray cast by hand).

The reference carries every source point through the end-effector motion one by one and keeps, per pixel, the
nearest point: no vectorization, no shared code with the module under test beyond the camera model (pinhole K).
"""

import numpy as np
import pytest
import torch

from kinema4d.model.held_prior import grasp_interval, held_object_prior

H, W = 48, 64
K = np.array([[60.0, 0, (W - 1) / 2], [0, 60.0, (H - 1) / 2], [0, 0, 1]])
BOX = (np.array([-0.03, -0.03, 0.0]), np.array([0.03, 0.03, 0.05]))  # world metres, on the table z = 0


def camera_looking_down(height=0.6, tilt=0.3):
    """T_cam_world of a camera above the table at (0, -0.2, height), pitched down at the origin."""
    eye, target = np.array([0.0, -0.25, height]), np.array([0.0, 0.0, 0.0])
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R_world_cam = np.stack([x, y, z], axis=1)
    T_world_cam = np.eye(4)
    T_world_cam[:3, :3], T_world_cam[:3, 3] = R_world_cam, eye
    return np.linalg.inv(T_world_cam)


def ray_cast(T_cam_world):
    """(H, W, 3) camera-frame pointmap of the table plane z = 0 and the box (slab test per pixel, by hand)."""
    T_world_cam = np.linalg.inv(T_cam_world)
    pm = np.zeros((H, W, 3))
    for r in range(H):
        for c in range(W):
            d_cam = np.linalg.solve(K, [c, r, 1.0])
            d = T_world_cam[:3, :3] @ d_cam
            o = T_world_cam[:3, 3]
            best = -o[2] / d[2] if d[2] < 0 else np.inf  # the table
            with np.errstate(divide="ignore"):
                t1, t2 = (BOX[0] - o) / d, (BOX[1] - o) / d
            tn, tf = np.minimum(t1, t2).max(), np.maximum(t1, t2).min()
            if tn <= tf and tn > 0:
                best = min(best, tn)
            if np.isfinite(best):
                pm[r, c] = d_cam * best  # z of d_cam is 1: a z-depth scaled ray
    return pm


def ee_actions():
    """(N, 8): down to the box centre (open), close, lift 10 cm, move 12 cm in +x, open, retreat up."""
    q = [1.0, 0.0, 0.0, 0.0]  # gripper pointing down (180 deg about x)
    rows = []
    for p, g in [((0, 0, 0.15), 1), ((0, 0, 0.025), 1), ((0, 0, 0.025), 0), ((0, 0, 0.125), 0),
                 ((0.12, 0, 0.125), 0), ((0.12, 0, 0.125), 1), ((0.12, 0, 0.25), 1)]:
        rows.append([*p, *q, g])
    return np.array(rows, dtype=np.float64)


def brute_force(rgb0, pm0, T_cam_world, actions, robot_mask0, radius=0.05, margin=0.01):
    """Per-point loops: (T, H, W) mask, (T, H, W, 3) xyz, (T, H, W) vacated."""
    T_world_cam = np.linalg.inv(T_cam_world)
    g = next(i for i in range(1, len(actions)) if actions[i, 7] < 0.5 <= actions[i - 1, 7])
    r = next((i for i in range(g, len(actions)) if actions[i, 7] >= 0.5), len(actions))
    src = []
    for v in range(H):
        for u in range(W):
            if pm0[v, u, 2] > 0 and not robot_mask0[v, u]:
                pw = T_world_cam[:3, :3] @ pm0[v, u] + T_world_cam[:3, 3]
                if np.linalg.norm(pw - actions[g, :3]) < radius:
                    src.append((v, u, pw))
    floor = min(p[2] for _, _, p in src)
    src = [s for s in src if s[2][2] > floor + margin]

    def pose(a):
        from scipy.spatial.transform import Rotation
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rotation.from_quat(a[3:7]).as_matrix(), a[:3]
        return T

    N = len(actions)
    mask, xyz, vac = np.zeros((N, H, W), bool), np.zeros((N, H, W, 3)), np.zeros((N, H, W), bool)
    zbuf = np.full((N, H, W), np.inf)
    for f in range(g, N):
        D = pose(actions[min(f, r - 1)]) @ np.linalg.inv(pose(actions[g]))
        for _, _, pw in src:
            pc = T_cam_world @ D @ np.r_[pw, 1.0]
            u, v = int(np.round(pc[0] * K[0, 0] / pc[2] + K[0, 2])), int(np.round(pc[1] * K[1, 1] / pc[2] + K[1, 2]))
            if 0 <= u < W and 0 <= v < H and pc[2] < zbuf[f, v, u]:
                zbuf[f, v, u], mask[f, v, u], xyz[f, v, u] = pc[2], True, pc[:3]
        for v0, u0, _ in src:
            vac[f, v0, u0] = not mask[f, v0, u0]
    return mask, xyz, vac, g, r


@pytest.fixture(scope="module")
def scene():
    T_cam_world = camera_looking_down()
    pm0 = ray_cast(T_cam_world)
    rgb0 = np.random.default_rng(0).uniform(0, 1, (H, W, 3)).astype(np.float32)
    robot_mask0 = np.zeros((H, W), bool)
    robot_mask0[:4] = True  # a "robot" in the top rows: never carried
    return rgb0, pm0, T_cam_world, robot_mask0


def test_grasp_interval():
    assert grasp_interval(np.array([1, 1, 0.2, 0, 0, 1, 1])) == (2, 5)
    assert grasp_interval(np.array([1, 0.4, 0.4])) == (1, 3)  # never reopens
    assert grasp_interval(np.array([0, 0, 1, 1])) == (-1, -1)  # closed from the start: no grasp event
    assert grasp_interval(np.ones(5)) == (-1, -1)


def test_matches_brute_force(scene):
    rgb0, pm0, T_cam_world, robot_mask0 = scene
    a = ee_actions()
    prior = held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K)
    mask, xyz, vac, g, r = brute_force(rgb0, pm0, T_cam_world, a, robot_mask0)
    assert (prior.grasp_frame, prior.release_frame) == (g, r) == (2, 5)
    assert mask[g].sum() > 20  # the box is seen and carried
    np.testing.assert_array_equal(prior.mask, mask)
    np.testing.assert_allclose(prior.xyz.transpose(0, 2, 3, 1)[mask], xyz[mask], atol=1e-5)
    np.testing.assert_array_equal(prior.vacated, vac)
    assert not prior.mask[:g].any() and not prior.vacated[:g].any()
    # lifted 10 cm and moved 12 cm: the carried points are the box's (above the table), all of them z > 1 cm
    T_world_cam = np.linalg.inv(T_cam_world)
    pw = prior.xyz[-1].transpose(1, 2, 0)[prior.mask[-1]] @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    assert np.all(pw[:, 2] > 0.1 + 0.01 - 1e-6) and np.allclose(pw[:, :2].mean(0), [0.12, 0.0], atol=0.02)
    # colours travel with their points
    v, u = np.nonzero(prior.mask[g])
    np.testing.assert_allclose(prior.rgb[g][:, v, u].T, rgb0[v, u])  # at the grasp nothing has moved yet
    assert not prior.vacated[g].any()
    assert prior.vacated[-1].sum() > 10  # where the box stood


def test_vacated_pixels_show_the_table(scene):
    """Vacated pixels carry the uncovered support: their points lie on the analytic table plane z = 0 (world) on
    the pixel's own ray, and their colour is the median colour of the table ring 5-10 cm around the grasp point."""
    rgb0, pm0, T_cam_world, robot_mask0 = scene
    a = ee_actions()
    prior = held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K)
    T_world_cam = np.linalg.inv(T_cam_world)
    v, u = np.nonzero(prior.vacated[-1])
    p_cam = prior.xyz[-1][:, v, u].T
    p_world = p_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    np.testing.assert_allclose(p_world[:, 2], 0.0, atol=1e-6)  # float32 storage
    ray = np.stack([u, v, np.ones_like(u)], 1) @ np.linalg.inv(K).T
    np.testing.assert_allclose(p_cam / p_cam[:, 2:], ray, atol=1e-6)  # on the pixel's ray
    ring = []
    for r in range(H):
        for c in range(W):
            pw = T_world_cam[:3, :3] @ pm0[r, c] + T_world_cam[:3, 3]
            if pm0[r, c, 2] > 0 and not robot_mask0[r, c] and abs(pw[2]) < 1e-6 \
                    and 0.05 <= np.hypot(pw[0] - a[2, 0], pw[1] - a[2, 1]) < 0.10:
                ring.append(rgb0[r, c])
    assert len(ring) > 20
    np.testing.assert_allclose(prior.rgb[-1][:, v, u].T, np.median(ring, axis=0)[None].repeat(len(v), 0), atol=1e-6)
    off = ~(prior.mask | prior.vacated)
    assert not prior.rgb.transpose(0, 2, 3, 1)[off].any() and not prior.xyz.transpose(0, 2, 3, 1)[off].any()


def test_frames_subset_and_empty_cases(scene):
    rgb0, pm0, T_cam_world, robot_mask0 = scene
    a = ee_actions()
    full = held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K)
    sub = held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K, frames=np.array([0, 3, 6]))
    np.testing.assert_array_equal(sub.mask, full.mask[[0, 3, 6]])
    np.testing.assert_array_equal(sub.xyz, full.xyz[[0, 3, 6]])
    never = a.copy()
    never[:, 7] = 1.0
    assert not held_object_prior(rgb0, pm0, robot_mask0, never, T_cam_world, K).mask.any()
    far = a.copy()
    far[:, 0] += 0.5  # the gripper closes on empty table: nothing above the support is near
    assert not held_object_prior(rgb0, pm0, robot_mask0, far, T_cam_world, K).mask.any()
    all_robot = np.ones((H, W), bool)
    assert not held_object_prior(rgb0, pm0, all_robot, a, T_cam_world, K).mask.any()


def test_grasp_gate(scene):
    """The gate compares the carried points' centroid in the gripper frame at the grasp with (across, along) the
    closing direction. Centroid by hand: the seen points within 5 cm of the grasp point and more than 1 cm above the
    lowest of them (the table). The gripper points down (180 deg about x): its x is the world's x (across), its y
    the world's -y (along)."""
    rgb0, pm0, T_cam_world, robot_mask0 = scene
    T_world_cam = np.linalg.inv(T_cam_world)
    seen = np.array([T_world_cam[:3, :3] @ pm0[v, u] + T_world_cam[:3, 3] for v in range(H) for u in range(W)
                     if pm0[v, u, 2] > 0 and not robot_mask0[v, u]])
    for axis, k, sign in ((0, 0, 1.0), (1, 1, -1.0)):  # (world axis moved, gate entry, ee axis = sign * world)
        a = ee_actions()
        a[:3, axis] += 0.015  # the grasp (frame 2) is 1.5 cm off along that world axis
        ball = seen[np.linalg.norm(seen - a[2, :3], axis=1) < 0.05]
        c = ball[ball[:, 2] > ball[:, 2].min() + 0.01].mean(0)
        off = abs(sign * (c[axis] - a[2, axis]))  # |centroid - grasp| along the gripper's axis
        assert off > 0.005
        wide, narrow = [0.1, 0.1], [0.1, 0.1]
        wide[k], narrow[k] = off + 0.002, off - 0.002
        kept = held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K, gate=tuple(wide))
        gated = held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K, gate=tuple(narrow))
        np.testing.assert_array_equal(kept.mask, held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K).mask)
        assert kept.mask[-1].sum() > 20
        assert not gated.mask.any() and not gated.vacated.any() and (gated.grasp_frame, gated.release_frame) == (2, 5)


def test_gate_config():
    from kinema4d.model.config import ModelConfig

    with pytest.raises(ValueError, match="held_gate"):
        ModelConfig(world_anchor=True, held_gate=(0.02, 0.03))  # no held_prior
    with pytest.raises(ValueError, match="held_gate"):
        ModelConfig(world_anchor=True, held_prior=True, held_gate=(0.0, 0.03))
    cfg = ModelConfig(world_anchor=True, held_prior=True, held_gate=(0.02, 0.03))
    assert ModelConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg  # lists -> tuples on load


def test_bad_inputs_are_named(scene):
    rgb0, pm0, T_cam_world, robot_mask0 = scene
    with pytest.raises(ValueError, match="actions must be"):
        held_object_prior(rgb0, pm0, robot_mask0, np.zeros((5, 7)), T_cam_world, K)
    with pytest.raises(ValueError, match="pointmap0"):
        held_object_prior(rgb0, pm0[:-1], robot_mask0, ee_actions(), T_cam_world, K)
    with pytest.raises(ValueError, match="out of range"):
        held_object_prior(rgb0, pm0, robot_mask0, ee_actions(), T_cam_world, K, frames=np.array([0, 9]))


@pytest.mark.parametrize("gate", [(0.0, 0.03), (0.02, -0.03), (float("nan"), 0.03), (0.02, float("inf")), (0.02,),
                                  (0.02, 0.03, 0.04), 0.02, "ab", (True, 0.03), ("x", 0.03)])
def test_bad_gate_is_named(scene, gate):
    """``gate`` is validated before anything else, even for actions whose gripper never closes (where the function
    returns early): None or two positive finite floats, else a ValueError naming the argument."""
    rgb0, pm0, T_cam_world, robot_mask0 = scene
    never = ee_actions()
    never[:, 7] = 1.0
    for a in (ee_actions(), never):
        with pytest.raises(ValueError, match="gate must be None or two positive finite"):
            held_object_prior(rgb0, pm0, robot_mask0, a, T_cam_world, K, gate=gate)
    ok = held_object_prior(rgb0, pm0, robot_mask0, ee_actions(), T_cam_world, K, gate=np.array([0.1, 0.1]))
    assert ok.mask.any()


def test_model_input_channels():
    """A held_prior model takes 8 + C more input channels; without the prior it raises naming the keys; at init an
    x0_residual model still predicts exactly its input latents (the extra channels do not enter the base)."""
    from kinema4d.model.codec import make_codec
    from kinema4d.model.config import ModelConfig
    from kinema4d.model.network import WorldModel

    with pytest.raises(ValueError, match="world_anchor"):
        ModelConfig(held_prior=True)
    cfg = ModelConfig(world_anchor=True, held_prior=True, prediction="x0_residual")
    assert cfg.in_channels == ModelConfig(world_anchor=True).in_channels + 8 + cfg.latent_channels
    wm, codec = WorldModel(cfg), make_codec(cfg)
    B, T, h, w = 1, 5, 16, 16
    g = torch.Generator().manual_seed(0)
    args = (codec, torch.rand(B, 3, h, w, generator=g), torch.rand(B, T, 3, h, w, generator=g),
            (torch.rand(B, T, h, w, generator=g) > 0.7).float())
    kw = dict(world0=torch.rand(B, 3, h, w, generator=g))
    with pytest.raises(ValueError, match="held_prior=True"):
        wm.prepare(*args, **kw)
    held = {"rgb": torch.rand(B, T, 3, h, w), "xyz01": torch.rand(B, T, 3, h, w),
            "mask": (torch.rand(B, T, h, w) > 0.9).float(), "vacated": (torch.rand(B, T, h, w) > 0.9).float()}
    prep = wm.prepare(*args, **kw, held=held)
    C = cfg.latent_channels
    assert prep["cond"].shape[1] == 4 + C + 8 + C
    x_t = torch.randn(B, C, *prep["cond"].shape[2:])
    t = torch.full((B,), 0.5)
    v = wm.velocity(x_t, t, prep["cond"], wm.context(prep["context_input"]))
    x0_pred = x_t - t.view(-1, 1, 1, 1, 1) * v
    torch.testing.assert_close(x0_pred, prep["cond"][:, 4:4 + C], atol=1e-5, rtol=1e-5)


def test_prior_written_into_the_input():
    """held_prior_input: the input latents show the prior on landing / vacated pixels off the robot, I0 and the
    anchored pointmap elsewhere, so that an untrained x0_residual model predicts the carried object."""
    from kinema4d.model.codec import make_codec
    from kinema4d.model.config import ModelConfig
    from kinema4d.model.network import WorldModel

    with pytest.raises(ValueError, match="held_prior_input"):
        ModelConfig(world_anchor=True, held_prior_input=True)
    B, T, h, w = 1, 5, 16, 16
    g = torch.Generator().manual_seed(1)
    rgb0, world0 = torch.rand(B, 3, h, w, generator=g), torch.rand(B, 3, h, w, generator=g)
    robot_pm, robot_mask = torch.rand(B, T, 3, h, w, generator=g), torch.zeros(B, T, h, w)
    robot_mask[:, :, :3] = 1.0
    held = {"rgb": torch.rand(B, T, 3, h, w, generator=g), "xyz01": torch.rand(B, T, 3, h, w, generator=g),
            "mask": torch.zeros(B, T, h, w), "vacated": torch.zeros(B, T, h, w)}
    held["mask"][:, 2:, 1:6, 4:8] = 1.0  # rows 1-2 are under the robot: the robot stays in front there
    held["vacated"][:, 3:, 8:12, 8:12] = 1.0
    out = {}
    for flag in (False, True):
        cfg = ModelConfig(world_anchor=True, held_prior=True, held_prior_input=flag, prediction="x0_residual",
                          pixel_factor=1)  # the identity codec: latents are pixels (normalized)
        wm, codec = WorldModel(cfg), make_codec(cfg)
        cond = wm.prepare(codec, rgb0, robot_pm, robot_mask, world0=world0, held=held)["cond"]
        lat = cond[:, 4:4 + cfg.latent_channels]
        out[flag] = codec.decode(wm.denormalize(lat))  # back to pixels in [0, 1]
    base, comp = out[False], out[True]  # (B, 3, T, h, 2w): [RGB | XYZ]
    sel = ((held["mask"] + held["vacated"]) > 0.5) & (robot_mask < 0.5)
    assert sel.sum() > 30
    want_rgb = torch.where(sel[:, None], held["rgb"].transpose(1, 2), base[..., :w])
    want_xyz = torch.where(sel[:, None], held["xyz01"].transpose(1, 2), base[..., w:])
    torch.testing.assert_close(comp[..., :w], want_rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(comp[..., w:], want_xyz, atol=1e-5, rtol=0)
    assert not torch.allclose(comp, base)
