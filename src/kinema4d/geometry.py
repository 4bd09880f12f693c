"""Small geometry and I/O helpers on numpy. Poses are 4x4 ``T_a_b`` mapping b-coordinates to a."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation


def check_rigid(T: np.ndarray, name: str, tol: float = 1e-4) -> np.ndarray:
    """Validate (..., 4, 4) rigid transforms; raise ValueError naming ``name`` and the first bad index."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape (..., 4, 4), got {T.shape}")
    flat = T.reshape(-1, 4, 4)
    for i, M in enumerate(flat):
        where = f"{name}[{i}]" if T.ndim > 2 else name
        if not np.all(np.isfinite(M)):
            raise ValueError(f"{where} contains NaN or inf")
        R = M[:3, :3]
        if not np.allclose(M[3], [0, 0, 0, 1], atol=tol):
            raise ValueError(f"{where} is not a rigid transform: last row is {M[3].tolist()}, expected [0, 0, 0, 1]")
        err = np.abs(R @ R.T - np.eye(3)).max()
        if err > tol or np.linalg.det(R) < 0:
            raise ValueError(f"{where} is not a rigid transform: rotation part is not orthonormal "
                             f"(|R R^T - I| = {err:.2e}, det = {np.linalg.det(R):.4f})")
    return T


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of (..., 4, 4) rigid transforms."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[..., :3, :3], T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def transform_points(T_a_b: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """Apply (4, 4) ``T_a_b`` to points (..., 3) in frame b -> (..., 3) in frame a."""
    return p_b @ T_a_b[:3, :3].T + T_a_b[:3, 3]


def pose_to_matrix(pos: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    """(..., 3) positions + (..., 4) quaternions (x, y, z, w) -> (..., 4, 4)."""
    pos, quat = np.asarray(pos, dtype=np.float64), np.asarray(quat_xyzw, dtype=np.float64)
    batch = pos.shape[:-1]
    T = np.zeros(batch + (4, 4))
    T[..., :3, :3] = Rotation.from_quat(quat.reshape(-1, 4)).as_matrix().reshape(batch + (3, 3))
    T[..., :3, 3] = pos
    T[..., 3, 3] = 1.0
    return T


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 4, 4) -> ((..., 3) position, (..., 4) quaternion x, y, z, w)."""
    T = np.asarray(T, dtype=np.float64)
    batch = T.shape[:-2]
    quat = Rotation.from_matrix(T[..., :3, :3].reshape(-1, 3, 3)).as_quat().reshape(batch + (4,))
    return T[..., :3, 3].copy(), quat


def rotation_angle(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle (radians) between rotation matrices (..., 3, 3)."""
    R = np.swapaxes(R_a, -1, -2) @ R_b
    c = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.arccos(np.clip(c, -1.0, 1.0))


def check_pointmap_mask(pm, mask, name: str = "pm"):
    """(pm as an array, mask) after checking pm (..., H, W, 3) and mask (..., H, W) bool; mask None = the pixels
    where pm != 0. Raises ValueError naming ``name``."""
    pm = np.asarray(pm)
    if pm.ndim < 3 or pm.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., H, W, 3), got {pm.shape}")
    if mask is None:
        mask = np.any(pm != 0, axis=-1)
    mask = np.asarray(mask)
    if mask.shape != pm.shape[:-1]:
        raise ValueError(f"mask must have shape {pm.shape[:-1]} to match {name} {pm.shape}, got {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"mask must be a bool array, got {mask.dtype}")
    return pm, mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write through a temp file in the same directory, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def publish_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Rename the finished temp directory ``tmp`` to ``out``; if another process published ``out`` first, drop
    ``tmp`` and keep theirs (content-addressed caches: both copies are equal)."""
    import shutil

    try:
        os.rename(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def save_atomic_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def save_atomic_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez_compressed`` written atomically."""
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
