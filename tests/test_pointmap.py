"""kinema4d.pointmap: every normalization against values worked out by hand (or built from known metres)."""

import numpy as np
import pytest
import torch

from kinema4d import pointmap as P


def _three_points():
    """(1, 2, 2, 3) pointmap: points (1, 2, 3), (3, 2, 7), (2, 2, 4) and one empty pixel."""
    pm = np.zeros((1, 2, 2, 3), np.float32)
    pm[0, 0, 0], pm[0, 0, 1], pm[0, 1, 0] = (1, 2, 3), (3, 2, 7), (2, 2, 4)
    return pm, np.any(pm != 0, axis=-1)


# ---------------------------------------------------------------------------------------- sequence min-max
def test_normalize_pointmap_by_hand():
    pm, mask = _three_points()
    pm01, st = P.normalize_pointmap(pm, mask)
    # x: (v - 1) / 2, y: zero extent -> 0, z: (v - 3) / 4; the empty pixel stays 0
    want = np.array([[[0, 0, 0], [1, 0, 1]], [[0.5, 0, 0.25], [0, 0, 0]]], np.float32)[None]
    assert pm01.dtype == np.float32
    np.testing.assert_array_equal(pm01, want)
    np.testing.assert_array_equal(st.min, [1, 2, 3])
    np.testing.assert_array_equal(st.max, [3, 2, 7])
    np.testing.assert_array_equal(P.normalize_pointmap(pm)[0], pm01)  # default mask: non-zero pixels
    with pytest.raises(ValueError, match="no valid points"):
        P.normalize_pointmap(np.zeros_like(pm))
    with pytest.raises(ValueError, match="mask must have shape"):
        P.normalize_pointmap(pm, mask[:, :1])
    bad = pm.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        P.normalize_pointmap(bad, mask)


def test_denormalize_pointmap_by_hand():
    pm, mask = _three_points()
    pm01, st = P.normalize_pointmap(pm, mask)
    stats = P.PointmapStats.from_dict(st.to_dict())
    back = P.denormalize_pointmap(pm01, stats, mask)
    assert back.dtype == np.float32
    # y has zero extent: every point comes back at y = 2 (the minimum), which is exactly right here
    np.testing.assert_array_equal(back, pm)
    # without the mask, the point at the minimum in all three channels, (1, 2, 3) -> (0, 0, 0), counts as empty
    no_mask = P.denormalize_pointmap(pm01, stats)
    np.testing.assert_array_equal(no_mask[0, 0, 0], [0, 0, 0])
    np.testing.assert_array_equal(no_mask[0, 0, 1], [3, 2, 7])
    np.testing.assert_array_equal(stats.as_array(), [[1, 2, 3], [3, 2, 7]])
    with pytest.raises(ValueError, match="missing key"):
        P.PointmapStats.from_dict({"min": [0, 0, 0]})
    with pytest.raises(ValueError, match="max < min"):
        P.PointmapStats.from_dict({"min": [0, 0, 1], "max": [1, 1, 0]})


def test_normalize_pointmap_roundtrip_random():
    rng = np.random.default_rng(1)
    mask = rng.random((4, 40, 60)) < 0.3
    pts = rng.uniform([-0.5, -0.3, 0.8], [0.4, 0.2, 1.9], (4, 40, 60, 3))
    pm = np.where(mask[..., None], pts, 0).astype(np.float32)
    pm01, stats = P.normalize_pointmap(pm, mask)
    assert np.all(pm01[~mask] == 0)
    np.testing.assert_allclose(pm01[mask].min(0), 0, atol=1e-7)
    np.testing.assert_allclose(pm01[mask].max(0), 1, atol=1e-6)
    np.testing.assert_allclose(stats.min, pm[mask].min(0))
    np.testing.assert_allclose(P.denormalize_pointmap(pm01, stats, mask), pm, atol=1e-6)


def test_normalize_sequence_by_hand():
    pm, mask = _three_points()
    pm_t = torch.from_numpy(pm).permute(0, 3, 1, 2)  # (T, 3, H, W)
    pm01, st = P.normalize_sequence(pm_t, torch.from_numpy(mask))
    assert pm01.shape == (1, 3, 2, 2) and pm01.dtype == st.dtype == torch.float32 and pm01.is_contiguous()
    np.testing.assert_array_equal(pm01[0, :, 1, 0].numpy(), [0.5, 0, 0.25])  # pixel (row 1, col 0) = (2, 2, 4)
    np.testing.assert_array_equal(st.numpy(), [[1, 2, 3], [3, 2, 7]])
    z01, zst = P.normalize_sequence(pm_t, torch.zeros(1, 2, 2, dtype=torch.bool))  # no valid pixel: all zeros
    assert not z01.any() and not zst.any() and zst.shape == (2, 3)


# ---------------------------------------------------------------------------------------- metres conversion
def test_to_metres_by_hand():
    stats = np.array([[0.0, -1.0, 2.0], [2.0, 1.0, 4.0]])
    pm01 = np.full((1, 1, 2, 3), 0.5)
    pm01[0, 0, 1] = (0.0, 1.0, 0.25)
    want = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 2.5]])
    np.testing.assert_array_equal(P.to_metres(pm01, stats)[0, 0], want)
    # channels-first tensors give the same numbers
    out_t = P.to_metres(torch.from_numpy(pm01).permute(0, 3, 1, 2), torch.from_numpy(stats), channel_axis=1)
    np.testing.assert_array_equal(out_t.permute(0, 2, 3, 1)[0, 0].numpy(), want)
    np.testing.assert_array_equal(P.scale_offset(stats), [[2, 2, 2], [0, -1, 2]])
    with pytest.raises(ValueError, match="3 channels on axis 1"):
        P.to_metres(pm01, stats, channel_axis=1)


# ---------------------------------------------------------------------------------------- anchored
def test_generated_valid_by_hand():
    pm01 = np.array([[0.5, 0.5, 0.5],    # a point under both rules
                     [0.0, 0.05, 0.0],   # noise on one channel of an empty pixel: a point only under the max rule
                     [0.0, 0.4, 0.7],    # sequence min-max: a point at the minimum of x
                     [0.0, 0.0, 0.0]])   # empty
    np.testing.assert_array_equal(P.generated_valid(pm01, anchored=True), [True, False, False, False])
    np.testing.assert_array_equal(P.generated_valid(pm01, anchored=False), [True, True, True, False])
    assert not P.generated_valid(np.full(3, P.EMPTY_LEVEL), anchored=True)  # strictly above the level


def test_anchored_to_metres_by_hand():
    stats = np.array([[0.0, -1.0, 2.0], [2.0, 1.0, 4.0]])
    pm01 = np.array([[[0.5, 0.5, 0.5], [0.0, 0.05, 0.0]]])
    out = P.anchored_to_metres(pm01, stats)
    np.testing.assert_array_equal(out, [[[1.0, 0.0, 3.0], [0.0, 0.0, 0.0]]])  # the 'empty' pixel is 0, not min


def test_anchor_stats_by_hand():
    world0 = torch.zeros(3, 2, 2)
    world0[:, 0, 0], world0[:, 0, 1] = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])
    world0[:, 1, 1] = torch.tensor([9.0, 9.0, 9.0])  # not valid: ignored
    world0_valid = torch.tensor([[True, True], [False, False]])
    robot = torch.zeros(2, 3, 2, 2)
    robot[1, :, 1, 0] = torch.tensor([0.5, 1.0, 4.0])  # the robot widens z to 4
    robot_mask = torch.zeros(2, 2, 2)
    robot_mask[1, 1, 0] = 1
    st = P.anchor_stats(world0, world0_valid, robot, robot_mask, margin=0.05)
    # range (1, 2, 3): min (0, 0, 1) - 5 %, max (1, 2, 4) + 5 %
    torch.testing.assert_close(st, torch.tensor([[-0.05, -0.1, 0.85], [1.05, 2.1, 4.15]]))
    flat = P.anchor_stats(world0[:, :1, :1], world0_valid[:1, :1], robot[:, :, :1, :1], robot_mask[:, :1, :1])
    torch.testing.assert_close(flat[1] - flat[0], torch.full((3,), 2 * 0.05 * 1e-3))  # one point: 1 mm clamp
    with pytest.raises(ValueError, match="neither"):
        P.anchor_stats(world0, torch.zeros(2, 2), robot, torch.zeros(2, 2, 2))


def test_normalize_with_stats_by_hand():
    stats = torch.tensor([[0.0, -1.0, 2.0], [2.0, 1.0, 4.0]])
    pm = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    pm[0, :, 0, 0] = torch.tensor([1.0, 0.0, 3.0])
    pm[0, :, 0, 1] = torch.tensor([5.0, 5.0, 5.0])  # not valid: 0
    valid = torch.tensor([[[True, False]]])
    out = P.normalize_with_stats(pm, valid, stats)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 0.5, 0.5]))
    assert not out[0, :, 0, 1].any()
    back = P.to_metres(out, stats, channel_axis=1)  # the inverse on valid pixels
    torch.testing.assert_close(back[0, :, 0, 0], pm[0, :, 0, 0].float())


# ---------------------------------------------------------------------------------------- fitted to the robot
def test_denormalize_world_pointmap_recovers_metres():
    """A world pointmap normalized with its own (unknown to the function) min/max comes back to the metres it was
    built from, through the fit on robot pixels; without robot pixels the robot stats are used."""
    T, H, W = 5, 16, 16
    g = torch.Generator().manual_seed(0)
    metres = torch.rand(T, 3, H, W, generator=g) * torch.tensor([0.6, 0.4, 1.0]).view(1, 3, 1, 1) \
        + torch.tensor([-0.3, -0.2, 0.5]).view(1, 3, 1, 1)
    wlo, whi = metres.amin((0, 2, 3)), metres.amax((0, 2, 3))
    world01 = (metres - wlo.view(1, 3, 1, 1)) / (whi - wlo).view(1, 3, 1, 1)
    mask = torch.zeros(T, H, W)
    mask[:, 4:10, 3:9] = 1
    rpts = metres.permute(0, 2, 3, 1)[mask > 0.5]
    rlo, rhi = rpts.min(0).values, rpts.max(0).values
    robot01 = ((metres - rlo.view(1, 3, 1, 1)) / (rhi - rlo).view(1, 3, 1, 1)) * mask[:, None]
    out, aff = P.denormalize_world_pointmap(world01, robot01, mask, torch.stack([rlo, rhi]))
    assert torch.allclose(out, metres, atol=1e-4)
    assert torch.allclose(aff[0], whi - wlo, atol=1e-4) and torch.allclose(aff[1], wlo, atol=1e-4)
    _, aff0 = P.denormalize_world_pointmap(world01, robot01, torch.zeros_like(mask), torch.stack([rlo, rhi]))
    assert torch.allclose(aff0[0], rhi - rlo) and torch.allclose(aff0[1], rlo)  # fallback: robot stats


# ---------------------------------------------------------------------------------------- ground-truth extent
def test_normalize_pair_by_hand():
    pm, mask = _three_points()
    pred_n, gt_n = P.normalize_pair(pm * 2, pm, mask)
    assert pred_n.dtype == gt_n.dtype == np.float64
    # GT min (1, 2, 3), extent (2, 0 -> 1, 4): y is only translated, so a scale error on y stays visible
    np.testing.assert_allclose(gt_n[0, 0, 1], [1, 0, 1])
    np.testing.assert_allclose(pred_n[0, 0, 1], [(6 - 1) / 2, (4 - 2) / 1, (14 - 3) / 4])
    np.testing.assert_allclose(pred_n[0, 1, 0], [(4 - 1) / 2, (4 - 2) / 1, (8 - 3) / 4])
    with pytest.raises(ValueError, match="holds no point"):
        P.normalize_pair(pm, pm, np.zeros_like(mask))
    with pytest.raises(ValueError, match="must be"):
        P.normalize_pair(pm, pm, mask[0])
