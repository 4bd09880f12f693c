"""Pinhole camera in the OpenCV convention.

Conventions (used everywhere in kinema4d):
- Camera frame: x right, y down, z forward (metres).
- ``K`` (3, 3) in pixels. Pixel (col c, row r) has its centre at image coordinates (u, v) = (c, r), so a
  point projects to ``u = fx * x / z + cx``; the image spans u in [-0.5, W - 0.5].
- ``T_cam_world`` (4, 4) maps world points to camera points: ``p_cam = T_cam_world @ p_world``.
- OpenGL camera frame: x right, y up, z backward, ``T_glcam_cam = diag(1, -1, -1, 1)``.

pybullet's TinyRenderer does not sample pixel centres (column c at x_ndc = 2c/W - 1, row r at
y_ndc = 1 - 2(r+1)/H; see ``shared/notes/verified-facts.md``). :meth:`Camera.pybullet_matrices` shifts
the projection by half a pixel so that a pybullet image is sampled exactly like our camera's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinema4d.geometry import check_rigid, invert_rigid, save_atomic_text

T_GLCAM_CAM = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Camera:
    """A pinhole camera. ``K`` (3, 3) pixels, ``T_cam_world`` (4, 4), image ``width`` x ``height`` pixels."""

    K: np.ndarray
    T_cam_world: np.ndarray
    width: int
    height: int

    def __post_init__(self):
        K = np.asarray(self.K, dtype=np.float64)
        T = np.asarray(self.T_cam_world, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"Camera.K must have shape (3, 3), got {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError(f"Camera.K has non-finite entries: {K.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"Camera.K focal lengths must be > 0, got fx={K[0, 0]}, fy={K[1, 1]}")
        if not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
            raise ValueError(f"Camera.K must be upper triangular with last row [0, 0, 1], got {K.tolist()}")
        check_rigid(T, "Camera.T_cam_world")
        w, h = self.width, self.height
        if int(w) != w or int(h) != h or w < 1 or h < 1:
            raise ValueError(f"Camera size must be positive integers, got width={w}, height={h}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "T_cam_world", T)
        object.__setattr__(self, "width", int(w))
        object.__setattr__(self, "height", int(h))

    # ------------------------------------------------------------------ construction
    @classmethod
    def look_at(cls, eye, target, up=(0.0, 0.0, 1.0), width=720, height=480, fov_y_deg=60.0) -> Camera:
        """Camera at ``eye`` (3,) looking at ``target`` (3,) world metres, ``up`` the world up, vertical FOV degrees."""
        eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
        if not (0.0 < fov_y_deg < 180.0):
            raise ValueError(f"fov_y_deg must be in (0, 180), got {fov_y_deg}")
        z = target - eye
        if np.linalg.norm(z) < 1e-9:
            raise ValueError(f"look_at: eye {eye.tolist()} and target {target.tolist()} coincide")
        z = z / np.linalg.norm(z)
        x = np.cross(z, up)
        if np.linalg.norm(x) < 1e-9:
            raise ValueError(f"look_at: up {up.tolist()} is parallel to the viewing direction")
        x = x / np.linalg.norm(x)
        y = np.cross(z, x)
        T_world_cam = np.eye(4)
        T_world_cam[:3, :3] = np.stack([x, y, z], axis=1)
        T_world_cam[:3, 3] = eye
        f = 0.5 * height / np.tan(np.deg2rad(fov_y_deg) / 2)
        K = np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
        return cls(K=K, T_cam_world=invert_rigid(T_world_cam), width=width, height=height)

    @property
    def T_world_cam(self) -> np.ndarray:
        return invert_rigid(self.T_cam_world)

    def resized(self, width: int, height: int) -> Camera:
        """Same camera for an image resized to ``width`` x ``height`` (pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 1] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return Camera(K=K, T_cam_world=self.T_cam_world, width=width, height=height)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict:
        return {
            "K": self.K.tolist(),
            "T_cam_world": self.T_cam_world.tolist(),
            "width": self.width,
            "height": self.height,
            "convention": "opencv (x right, y down, z forward); pixel centres at integer (u, v)",
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "camera dict") -> Camera:
        missing = [k for k in ("K", "T_cam_world", "width", "height") if k not in d]
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        try:
            return cls(K=np.array(d["K"], dtype=np.float64), T_cam_world=np.array(d["T_cam_world"], dtype=np.float64),
                       width=d["width"], height=d["height"])
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        save_atomic_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Camera:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"camera file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"camera file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d, source=f"camera file {path}")

    # ------------------------------------------------------------------ geometry
    def world_to_cam(self, p_world: np.ndarray) -> np.ndarray:
        """(..., 3) world metres -> (..., 3) camera metres."""
        p = np.asarray(p_world, dtype=np.float64)
        return p @ self.T_cam_world[:3, :3].T + self.T_cam_world[:3, 3]

    def project(self, p_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., 3) world points -> (uv (..., 2) pixels, z (...,) metres). Points behind the camera get z <= 0."""
        p_cam = self.world_to_cam(p_world)
        z = p_cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = p_cam[..., :2] / z[..., None]
        uv = xy @ self.K[:2, :2].T + self.K[:2, 2]
        return uv, z

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels (..., 2) and z-depth (...,) metres -> camera-frame points (..., 3)."""
        uv = np.asarray(uv, dtype=np.float64)
        depth = np.asarray(depth, dtype=np.float64)
        fx, fy, cx, cy, s = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2], self.K[0, 1]
        y = (uv[..., 1] - cy) / fy
        x = (uv[..., 0] - cx - s * y) / fx
        return np.stack([x * depth, y * depth, depth], axis=-1)

    def pixel_grid(self) -> np.ndarray:
        """(H, W, 2) float64 pixel-centre coordinates (u = column, v = row)."""
        v, u = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        return np.stack([u, v], axis=-1).astype(np.float64)

    def depth_to_pointmap(self, depth: np.ndarray) -> np.ndarray:
        """z-depth (..., H, W) metres -> camera-space pointmap (..., H, W, 3) float32; 0 where depth is 0/inf/NaN."""
        depth = np.asarray(depth)
        if depth.shape[-2:] != (self.height, self.width):
            raise ValueError(f"depth has shape {depth.shape}, expected (..., {self.height}, {self.width})")
        valid = np.isfinite(depth) & (depth > 0)
        d = np.where(valid, depth, 0.0)
        pm = self.unproject(self.pixel_grid(), d)
        return pm.astype(np.float32)

    # ------------------------------------------------------------------ OpenGL / pybullet
    def opengl_projection(self, near: float = 0.01, far: float = 10.0, pixel_offset=(0.0, 0.0)) -> np.ndarray:
        """(4, 4) OpenGL projection (row-major) whose pixel centres sample exactly our (u, v) = (c, r).

        ``pixel_offset`` (du, dv) in pixels shifts the principal point, for renderers that sample elsewhere.
        """
        if not (0 < near < far):
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        W, H = self.width, self.height
        fx, fy, s = self.K[0, 0], self.K[1, 1], self.K[0, 1]
        cx, cy = self.K[0, 2] + pixel_offset[0], self.K[1, 2] + pixel_offset[1]
        P = np.zeros((4, 4))
        P[0, 0] = 2 * fx / W
        P[0, 1] = -2 * s / W
        P[0, 2] = 1 - (2 * cx + 1) / W
        P[1, 1] = 2 * fy / H
        P[1, 2] = (2 * cy + 1) / H - 1
        P[2, 2] = -(far + near) / (far - near)
        P[2, 3] = -2 * far * near / (far - near)
        P[3, 2] = -1.0
        return P

    def opengl_view(self) -> np.ndarray:
        """(4, 4) OpenGL view matrix (row-major) = T_glcam_world."""
        return T_GLCAM_CAM @ self.T_cam_world

    def pybullet_matrices(self, near: float = 0.01, far: float = 10.0) -> tuple[list[float], list[float]]:
        """(viewMatrix, projectionMatrix) as pybullet's column-major 16-float lists for ``getCameraImage``.

        pybullet samples column c at our u = c - 0.5 and row r at v = r + 0.5; shifting the principal point by
        (-0.5, +0.5) pixels makes its pixel (c, r) show exactly what our pixel (c, r) shows.
        """
        P = self.opengl_projection(near, far, pixel_offset=(-0.5, 0.5))
        return self.opengl_view().T.reshape(-1).tolist(), P.T.reshape(-1).tolist()

    @classmethod
    def from_pybullet(cls, view_matrix, projection_matrix, width: int, height: int) -> Camera:
        """Inverse of :meth:`pybullet_matrices`: the camera whose pixel (c, r) is pybullet's pixel (c, r)."""
        V = np.asarray(view_matrix, dtype=np.float64).reshape(4, 4).T
        P = np.asarray(projection_matrix, dtype=np.float64).reshape(4, 4).T
        if abs(P[3, 2] + 1) > 1e-6 or P[0, 0] <= 0 or P[1, 1] <= 0:
            raise ValueError(f"not a perspective OpenGL projection matrix: {P.tolist()}")
        W, H = width, height
        fx, fy = P[0, 0] * W / 2, P[1, 1] * H / 2
        s = -P[0, 1] * W / 2
        cx = ((1 - P[0, 2]) * W - 1) / 2 + 0.5
        cy = ((P[1, 2] + 1) * H - 1) / 2 - 0.5
        K = np.array([[fx, s, cx], [0, fy, cy], [0, 0, 1]])
        return cls(K=K, T_cam_world=T_GLCAM_CAM @ V, width=W, height=H)

    @staticmethod
    def opengl_depth_to_z(depth_buffer: np.ndarray, near: float, far: float) -> np.ndarray:
        """Non-linear [0, 1] depth buffer -> metric z (metres); background (d == 1) -> 0."""
        d = np.asarray(depth_buffer, dtype=np.float64)
        z = far * near / (far - (far - near) * d)
        return np.where(d >= 1.0, 0.0, z)


def demo_camera(width: int = 720, height: int = 480) -> Camera:
    """The demo / default camera (``width`` x ``height`` px, 50 deg vertical field of view): a medial-frontal,
    oblique top-down view of a Panda at the world origin, from (1.45, 0.4, 1.05) m towards (0.3, 0.0, 0.4) m."""
    return Camera.look_at(eye=[1.45, 0.4, 1.05], target=[0.3, 0.0, 0.4], width=width, height=height,
                          fov_y_deg=50.0)
