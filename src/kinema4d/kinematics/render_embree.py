"""The ``"embree"`` backend of :mod:`kinema4d.kinematics.render`: ray casting with trimesh + embreex, one BVH per
link built once; the camera rays inside a link's projected bounding box are moved into that link's frame, and the
nearest hit over links wins. The reference for the GL backend and the fallback when no EGL context exists.
"""

from __future__ import annotations

import numpy as np

from kinema4d.geometry import invert_rigid
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.meshes import LinkMesh, aabb_corners, pixel_box


class EmbreeBackend:
    """One embree BVH per link (built once); camera rays moved into each link's frame."""

    name = "embree"

    def __init__(self, links: list[LinkMesh]):
        import trimesh
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        self.links = links
        self.intersectors, self.normals = [], []
        for lm in links:
            mesh = trimesh.Trimesh(lm.vertices, lm.faces, process=False)
            rmi = RayMeshIntersector(mesh)
            rmi.intersects_first(np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]))  # build the BVH now
            self.intersectors.append(rmi)
            self.normals.append(np.asarray(mesh.face_normals, np.float64))
        self.corners = np.stack([aabb_corners(lm.vertices) for lm in links])  # (n_links, 8, 3)
        self.n_faces = int(sum(len(lm.faces) for lm in links))

    def render(self, T_cam_link: np.ndarray, camera: Camera, near: float, far: float, out: dict,
               fresh: frozenset) -> None:
        """Like :meth:`GLBackend.render`; every pixel of every frame is written (``fresh`` is not needed)."""
        W, H = camera.width, camera.height
        rgb = out["rgb"] is not None
        for t in range(T_cam_link.shape[0]):
            zbuf = np.full((H, W), np.inf)
            link = np.full((H, W), -1, np.int16)
            color = np.zeros((H, W, 3), np.float64) if rgb else None
            for s, lm in enumerate(self.links):
                T_cl = T_cam_link[t, s]
                box = pixel_box(self.corners[s:s + 1], T_cl[None], camera, near)
                if box is None:
                    continue
                c0, c1, r0, r1 = box
                rows, cols = np.mgrid[r0:r1, c0:c1]
                rows, cols = rows.ravel(), cols.ravel()
                d_cam = camera.unproject(np.stack([cols, rows], -1).astype(np.float64), np.ones(len(rows)))
                T_lc = invert_rigid(T_cl)
                d_link = d_cam @ T_lc[:3, :3].T  # rays with unit camera z: ray parameter == depth z
                o_link = np.broadcast_to(T_lc[:3, 3], d_link.shape)
                tri = self._front_hits(s, o_link, d_link, self.intersectors[s].intersects_first(o_link, d_link))
                hit = tri >= 0
                if not hit.any():
                    continue
                tri, d_link, rows, cols = tri[hit], d_link[hit], rows[hit], cols[hit]
                n = self.normals[s][tri]
                v0 = lm.vertices[lm.faces[tri, 0]]
                z = np.einsum("ij,ij->i", n, v0 - T_lc[:3, 3]) / np.einsum("ij,ij->i", n, d_link)
                closer = (z > near) & (z < far) & (z < zbuf[rows, cols])
                if not closer.any():
                    continue
                tri, z, rows, cols = tri[closer], z[closer], rows[closer], cols[closer]
                d_link, n = d_link[closer], n[closer]
                zbuf[rows, cols] = z
                link[rows, cols] = lm.link_index
                if rgb:
                    color[rows, cols] = self._shade(lm, tri, T_lc[:3, 3] + z[:, None] * d_link, d_link, n)
            hit = np.isfinite(zbuf)
            depth = np.where(hit, zbuf, 0.0)
            out["pointmap"][t] = camera.depth_to_pointmap(depth)
            out["depth"][t] = depth
            out["link_id"][t] = link
            out["mask"][t] = link >= 0
            if rgb:
                out["rgb"][t] = np.clip(np.round(color * 255), 0, 255).astype(np.uint8)

    def _front_hits(self, s: int, origins: np.ndarray, d_link: np.ndarray, tri: np.ndarray) -> np.ndarray:
        """The first front-facing hit of each ray on link slot ``s`` (-1: none). Back faces are culled, as by the GL
        backend and pybullet's TinyRenderer: a ray whose first hit is a back face (its winding normal points away
        from the camera) is cast again from just behind it."""
        lm, normals = self.links[s], self.normals[s]
        tri, o = tri.copy(), np.array(origins, np.float64)
        for _ in range(16):
            idx = np.flatnonzero(tri >= 0)
            back = idx[np.einsum("ij,ij->i", normals[tri[idx]], d_link[idx]) > 0]
            if len(back) == 0:
                return tri
            n, v0 = normals[tri[back]], lm.vertices[lm.faces[tri[back], 0]]
            lam = np.einsum("ij,ij->i", n, v0 - o[back]) / np.einsum("ij,ij->i", n, d_link[back])
            o[back] += (lam + 1e-6)[:, None] * d_link[back]
            tri[back] = self.intersectors[s].intersects_first(o[back], d_link[back])
        tri[back] = -1  # still behind back faces after 16 surfaces: call it empty
        return tri

    @staticmethod
    def _shade(lm: LinkMesh, tri, p_link, d_link, n):
        """Barycentric vertex colour times the same Lambert headlight as the GL shader -> (N, 3) in [0, 1]."""
        a, b, c = (lm.vertices[lm.faces[tri, i]] for i in range(3))
        v0, v1, v2 = b - a, c - a, p_link - a
        d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
        d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
        den = d00 * d11 - d01 * d01
        den = np.where(np.abs(den) < 1e-30, 1.0, den)
        wb = (d11 * d20 - d01 * d21) / den
        wc = (d00 * d21 - d01 * d20) / den
        wa = 1.0 - wb - wc
        cols = lm.colors[lm.faces[tri]].astype(np.float64) / 255.0  # (N, 3 vertices, 3)
        col = wa[:, None] * cols[:, 0] + wb[:, None] * cols[:, 1] + wc[:, None] * cols[:, 2]
        cos = np.abs((n * d_link).sum(1)) / np.linalg.norm(d_link, axis=1)
        return col * (0.25 + 0.75 * cos)[:, None]

    def release(self) -> None:
        self.intersectors = []
