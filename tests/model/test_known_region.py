"""The known region (ModelConfig.known_region="swept"): where no robot pixel has been and no held-object pixel is,
the model's x0 is its input (I0 and the frame-0 pointmap). Checked against per-pixel loops written here."""

import numpy as np
import pytest
import torch

from kinema4d.model.checkpoint import robot_mean_colour
from kinema4d.model.codec import make_codec
from kinema4d.model.conditioning import changing_region
from kinema4d.model.config import ModelConfig
from kinema4d.model.network import WorldModel
from kinema4d.model.sampling import flow_matching_loss, sample


def region_by_hand(robot_mask: np.ndarray, held_mask: np.ndarray, dilate: int) -> np.ndarray:
    """(T, H, W) bool by loops: pixel (r, c) of frame t is in the region if a robot pixel of frames 0..t or a held
    pixel of frame t lies within ``dilate`` rows and columns of it."""
    T, H, W = robot_mask.shape
    out = np.zeros((T, H, W), bool)
    for t in range(T):
        for r in range(H):
            for c in range(W):
                rs, cs = slice(max(r - dilate, 0), r + dilate + 1), slice(max(c - dilate, 0), c + dilate + 1)
                out[t, r, c] = robot_mask[:t + 1, rs, cs].any() or held_mask[t, rs, cs].any()
    return out


def test_changing_region_matches_loops():
    g = np.random.default_rng(0)
    T, H, W = 4, 9, 11
    robot = g.random((T, H, W)) > 0.93
    held = {"mask": torch.from_numpy(g.random((T, H, W)) > 0.97).float(), "vacated": torch.zeros(T, H, W)}
    held["vacated"][2, 0, 10] = 1.0
    for dilate in (0, 1, 2):
        got = changing_region(torch.from_numpy(robot).float()[None], {k: v[None] for k, v in held.items()}, dilate)
        want = region_by_hand(robot, (held["mask"] + held["vacated"]).numpy() > 0.5, dilate)
        np.testing.assert_array_equal(got[0].numpy(), want)
    assert not changing_region(torch.zeros(1, T, H, W), None, 2).any()


def test_config_needs_x0_residual():
    ok = dict(known_region="swept", prediction="x0_residual", image_padding="repeat", world_anchor=True)
    ModelConfig(**ok)
    for k, bad in (("prediction", "x0"), ("image_padding", "zeros"), ("world_anchor", False)):
        with pytest.raises(ValueError, match="known_region"):
            ModelConfig(**(ok | {k: bad}))
    with pytest.raises(ValueError, match="known_dilate"):
        ModelConfig(**ok, known_dilate=-1)
    with pytest.raises(ValueError, match="known_region"):
        ModelConfig(known_region="everything", prediction="x0_residual")


def _model(seed: int = 0, f: int = 4):
    cfg = ModelConfig(world_anchor=True, prediction="x0_residual", known_region="swept", known_dilate=1,
                      image_padding="repeat", pixel_factor=f)
    wm, codec = WorldModel(cfg), make_codec(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights: an untrained x0_residual model would return its input everywhere
        for p in wm.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return wm, codec


def _inputs(T=5, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    robot_mask = torch.zeros(1, T, h, w)
    for t in range(T):  # a robot moving right along rows 2-4
        robot_mask[0, t, 2:5, 2 * t:2 * t + 3] = 1.0
    return dict(rgb0=torch.rand(1, 3, h, w, generator=g), robot_pointmap=torch.rand(1, T, 3, h, w, generator=g),
                robot_mask=robot_mask, world0=torch.rand(1, 3, h, w, generator=g))


def test_known_latents_are_the_input():
    wm, codec = _model()
    x = _inputs()
    prep = wm.prepare(codec, x["rgb0"], x["robot_pointmap"], x["robot_mask"], world0=x["world0"])
    f, C = 4, wm.cfg.latent_channels
    region = region_by_hand(x["robot_mask"][0].numpy() > 0.5, np.zeros((5, 16, 16), bool), 1)
    known = np.ones((5, 4, 4), bool)  # latent (t, i, j) is known when no region pixel is in its f x f cell
    for t in range(5):
        for i in range(4):
            for j in range(4):
                known[t, i, j] = not region[t, i * f:(i + 1) * f, j * f:(j + 1) * f].any()
    assert 0 < known.sum() < known.size
    want = torch.from_numpy(np.concatenate([known, known], axis=-1))  # both halves, (t, h, 2w)
    np.testing.assert_array_equal(prep["known"][0, 0].numpy(), want.numpy())
    x_t = torch.randn(1, C, 5, 4, 8)
    t = torch.full((1,), 0.6)
    v = wm.velocity(x_t, t, prep["cond"], wm.context(prep["context_input"]), None, prep["known"])
    x0 = x_t - 0.6 * v
    base = prep["cond"][:, 4:4 + C]
    k = want[None, None].expand_as(x0)
    torch.testing.assert_close(x0[k], base[k], atol=1e-5, rtol=0)
    assert (x0[~k] - base[~k]).abs().max() > 1e-2  # the rest is the network's


def test_loss_ignores_the_known_region():
    """A prediction that is exact off the known region and wrong on it has zero loss; wrong off it, it does not."""
    wm, codec = _model(1)
    x = _inputs(seed=1)
    g = torch.Generator().manual_seed(2)
    rgb, wpm = torch.rand(1, 5, 3, 16, 16, generator=g), torch.rand(1, 5, 3, 16, 16, generator=g)
    prep = wm.prepare(codec, x["rgb0"], x["robot_pointmap"], x["robot_mask"], rgb=rgb, world_pointmap=wpm,
                      world0=x["world0"])
    t, noise = torch.full((1,), 0.4), torch.randn(prep["x0"].shape, generator=g)
    known = prep["known"].expand_as(prep["x0"])
    for wrong_where, zero in ((known, True), (~known, False)):
        def model(*args, wrong_where=wrong_where):  # the true velocity, +1 where it is wrong
            return noise - prep["x0"] + wrong_where.float()
        loss = flow_matching_loss(model, wm, prep, t, noise, xyz_weight=4.0)
        assert (float(loss) == 0.0) == zero, float(loss)


def test_sample_keeps_the_input_off_the_region():
    wm, codec = _model(3)
    x = _inputs(seed=3)
    rgb, w01 = sample(wm, codec, x["rgb0"][0], x["robot_pointmap"][0], x["robot_mask"][0], steps=3,
                      world0=x["world0"][0])
    region = torch.from_numpy(region_by_hand(x["robot_mask"][0].numpy() > 0.5, np.zeros((5, 16, 16), bool), 1))
    off = ~region[:, None].expand(5, 3, 16, 16)
    torch.testing.assert_close(rgb[off], x["rgb0"][0].expand(5, 3, 16, 16)[off], atol=1e-6, rtol=0)
    torch.testing.assert_close(w01[off], x["world0"][0].expand(5, 3, 16, 16)[off], atol=1e-6, rtol=0)
    robot = (x["robot_mask"][0] > 0.5)[:, None].expand(5, 3, 16, 16)  # the robot's pixels: its pointmap, exactly
    torch.testing.assert_close(w01[robot], x["robot_pointmap"][0][robot], atol=1e-6, rtol=0)
    assert (rgb[robot] - x["robot_pointmap"][0][robot]).abs().max() > 1e-2  # (the RGB half is generated there)
    free = (region & (x["robot_mask"][0] < 0.5))[:, None].expand(5, 3, 16, 16)
    assert (w01[free] - x["world0"][0].expand(5, 3, 16, 16)[free]).abs().max() > 1e-2  # generated
    on = region[:, None].expand(5, 3, 16, 16)
    assert (rgb[on] - x["rgb0"][0].expand(5, 3, 16, 16)[on]).abs().max() > 1e-2


def test_robot_fill():
    """robot_fill: the robot's pixels of the RGB input show ``robot_colour``, every other pixel I0; the colour is the
    mean of the robot's pixels, as a loop over pixels computes it."""
    with pytest.raises(ValueError, match="robot_fill"):
        ModelConfig(robot_fill=True, robot_rgb=True)
    g = torch.Generator().manual_seed(4)
    rgb, mask = torch.rand(2, 3, 3, 5, 6, generator=g), (torch.rand(2, 3, 5, 6, generator=g) > 0.6).float()
    total, n = np.zeros(3), 0
    for b, t, r, c in np.argwhere(mask.numpy() > 0.5):
        total += rgb[b, t, :, r, c].numpy()
        n += 1
    colour = robot_mean_colour([{"rgb": rgb[:1], "robot_mask": mask[:1]}, {"rgb": rgb[1:], "robot_mask": mask[1:]}])
    np.testing.assert_allclose(colour.numpy(), total / n, rtol=1e-6)
    with pytest.raises(ValueError, match="no robot pixels"):
        robot_mean_colour([{"rgb": rgb, "robot_mask": torch.zeros_like(mask)}])
    cfg = ModelConfig(world_anchor=True, prediction="x0_residual", image_padding="repeat", robot_fill=True,
                      pixel_factor=1)  # the identity codec: the input latents are the pixels (normalized)
    wm, codec = WorldModel(cfg), make_codec(cfg)
    wm.robot_colour.copy_(torch.tensor([0.1, 0.7, 0.3]))
    x = _inputs(seed=4)
    cond = wm.prepare(codec, x["rgb0"], x["robot_pointmap"], x["robot_mask"], world0=x["world0"])["cond"]
    first = codec.decode(wm.denormalize(cond[:, 4:4 + cfg.latent_channels]))[0, :, :, :, :16]  # (3, T, H, W)
    on = x["robot_mask"][0] > 0.5
    want = torch.where(on[None], torch.tensor([0.1, 0.7, 0.3]).view(3, 1, 1, 1), x["rgb0"][0][:, None])
    torch.testing.assert_close(first, want.expand_as(first), atol=1e-5, rtol=0)
