"""The robot's render meshes: each link's visual mesh in its link frame, optionally decimated (quadric
decimation with fast-simplification), the URDF copy that pybullet renders with exactly these meshes
(:func:`simplified_urdf`, used by the data engine), and link bounding boxes projected into a camera
(:func:`pixel_box`: the only pixels a link can cover). Both renderer backends (:mod:`.render_gl`,
:mod:`.render_embree`) draw :func:`link_meshes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinema4d.geometry import publish_dir
from kinema4d.kinematics.camera import Camera

# Default mesh decimation (triangles per link). On the Panda it cuts 103k to ~8.6k triangles (GL at 720x480:
# ~20 -> ~4 ms/frame on llvmpipe) for a mask IoU >= 0.98 and median |dz| ~0.3 mm against pybullet, which
# renders the full meshes (see tests/kinematics/test_render.py and benchmarks/bench_control.py). None = full meshes.
DEFAULT_MAX_FACES_PER_LINK = 1000


@dataclass
class LinkMesh:
    """A link's render mesh in the link frame: vertices (V, 3) float64, faces (F, 3) int64, colours (V, 3) uint8."""

    link_index: int  # index into robot.link_names
    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray


def _dedupe(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray):
    """Merge vertices with identical position and colour (meshes loaded with process=False repeat them)."""
    key = np.concatenate([vertices, colors.astype(np.float64)], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return vertices[first], inverse.reshape(-1)[faces], colors[first]


def simplify_mesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, max_faces: int):
    """Quadric decimation (fast-simplification) to at most ~``max_faces`` triangles; colours from the nearest
    original vertex. Returns (vertices (V', 3), faces (F', 3), colors (V', 3))."""
    import fast_simplification
    from scipy.spatial import cKDTree

    if len(faces) <= max_faces:
        return vertices, faces, colors
    # decimate the shape only: merge vertices by position so the surface is connected
    pos, inverse = np.unique(vertices, axis=0, return_inverse=True)
    f = inverse.reshape(-1)[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    v2, f2 = fast_simplification.simplify(pos, f.astype(np.int32), target_count=int(max_faces))
    _, nearest = cKDTree(vertices).query(v2)
    return np.asarray(v2, np.float64), np.asarray(f2, np.int64), colors[nearest]


def link_meshes(robot, max_faces_per_link: int | None) -> list[LinkMesh]:
    """The robot's visual meshes as :class:`LinkMesh` (optionally decimated), in ``robot.link_names`` order."""
    meshes = robot.link_meshes
    if not meshes:
        raise ValueError(f"robot {robot.name!r} has no visual geometry to render (URDF {robot.urdf_path})")
    if max_faces_per_link is not None and (int(max_faces_per_link) != max_faces_per_link or max_faces_per_link < 4):
        raise ValueError(f"max_faces_per_link must be an integer >= 4 or None, got {max_faces_per_link!r}")
    out = []
    for k, name in enumerate(robot.link_names):
        if name not in meshes:
            continue
        m = meshes[name]
        v = np.asarray(m.vertices, np.float64)
        f = np.asarray(m.faces, np.int64)
        c = np.asarray(m.visual.vertex_colors, np.uint8)[:, :3]
        v, f, c = _dedupe(v, f, c)
        if max_faces_per_link is not None:
            v, f, c = simplify_mesh(v, f, c, int(max_faces_per_link))
        out.append(LinkMesh(k, v, f, c))
    return out


def simplified_urdf(robot, max_faces_per_link: int = 1000, cache_dir=None) -> Path:
    """A copy of ``robot``'s URDF whose visuals are the decimated link meshes this module renders.

    One OBJ per link in the link frame (exactly the geometry of ``RobotRenderer(max_faces_per_link=...)``) with
    the link's mean vertex colour as its material; joints, inertials and collisions are kept (collision mesh
    paths made absolute). pybullet's TinyRenderer cost grows with the triangle count (the full Panda: ~30 ms per
    frame even at 64x96), so the data engine renders this copy: it is ~10x cheaper and pixel-consistent with the
    kinematic robot pointmap. Cached under ``cache_dir`` (default ``~/.cache/kinema4d/urdf``); returns its path.
    """
    import hashlib
    import shutil
    import tempfile
    import xml.etree.ElementTree as ET

    import trimesh

    from kinema4d.kinematics.robot import resolve_mesh_path

    src = robot.urdf_path.read_bytes()
    key = hashlib.sha1(src + f"{max_faces_per_link}".encode()).hexdigest()[:12]
    root_dir = Path(cache_dir or Path.home() / ".cache" / "kinema4d" / "urdf")
    out = root_dir / f"{robot.name}_{max_faces_per_link}_{key}"
    if (out / "robot.urdf").is_file():
        return out / "robot.urdf"
    root_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root_dir, prefix=".tmp-"))
    try:
        links = {robot.link_names[lm.link_index]: lm for lm in link_meshes(robot, max_faces_per_link)}
        xml = ET.fromstring(src)
        for link in xml.findall("link"):
            for tag in ("visual", "collision"):
                for el in link.findall(tag):
                    if tag == "visual":
                        link.remove(el)
                        continue
                    mesh = el.find("geometry/mesh")
                    if mesh is not None:
                        path = resolve_mesh_path(mesh.get("filename"), robot.urdf_path.parent, robot.package_dirs)
                        if path is not None:
                            mesh.set("filename", str(path))
            lm = links.get(link.get("name"))
            if lm is None:
                continue
            obj = tmp / f"{link.get('name')}.obj"
            trimesh.Trimesh(lm.vertices, lm.faces, process=False).export(obj)
            rgba = np.append(lm.colors.mean(0) / 255.0, 1.0)
            vis = ET.SubElement(link, "visual")
            ET.SubElement(ET.SubElement(vis, "geometry"), "mesh", filename=obj.name)  # relative: pybullet fails on
            # some long absolute ones (a robot name of 15 characters under ~/.cache was enough)
            mat = ET.SubElement(vis, "material", name=f"k4d_{link.get('name')}")
            ET.SubElement(mat, "color", rgba=" ".join(f"{v:.4f}" for v in rgba))
        ET.ElementTree(xml).write(tmp / "robot.urdf")
        publish_dir(tmp, out)  # another process finished first: use its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "robot.urdf"


def aabb_corners(vertices: np.ndarray) -> np.ndarray:
    """(8, 3) corners of the axis-aligned bounding box of vertices (V, 3)."""
    lo, hi = vertices.min(0), vertices.max(0)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def pixel_box(corners_link: np.ndarray, T_cam_link: np.ndarray, camera: Camera, near: float):
    """Pixel range (c0, c1, r0, r1), end-exclusive, holding every pixel centre that can see the boxes.

    ``corners_link`` (N, 8, 3) box corners in their link frames, ``T_cam_link`` (N, 4, 4). The projection of a
    box in front of the camera lies in the hull of its projected corners. Returns None if nothing is in view and
    the whole image if a box crosses the near plane.
    """
    p = np.einsum("nij,nkj->nki", T_cam_link[:, :3, :3], corners_link) + T_cam_link[:, None, :3, 3]
    front = np.any(p[..., 2] > near, axis=1)  # boxes not entirely behind the near plane
    if not front.any():
        return None
    p = p[front].reshape(-1, 3)
    W, H = camera.width, camera.height
    if np.any(p[:, 2] <= near):
        return 0, W, 0, H
    uv = (p[:, :2] / p[:, 2:]) @ camera.K[:2, :2].T + camera.K[:2, 2]
    c0, r0 = np.floor(uv.min(0)).astype(int)
    c1, r1 = np.ceil(uv.max(0)).astype(int) + 1
    c0, c1, r0, r1 = max(c0, 0), min(c1, W), max(r0, 0), min(r1, H)
    return None if c0 >= c1 or r0 >= r1 else (int(c0), int(c1), int(r0), int(r1))


def pixel_boxes(corners_link: np.ndarray, T_cam_link: np.ndarray, camera: Camera, near: float) -> list:
    """:func:`pixel_box` of every frame of ``T_cam_link`` (T, N, 4, 4) at once (the projections vectorized over
    frames): a list of T boxes (c0, c1, r0, r1) or None."""
    R, t = T_cam_link[..., :3, :3], T_cam_link[..., :3, 3]
    p = np.einsum("tnij,nkj->tnki", R, corners_link) + t[:, :, None, :]  # (T, N, 8, 3)
    z = p[..., 2]
    front = np.any(z > near, axis=2)  # (T, N) boxes not entirely behind the near plane
    corner = np.broadcast_to(front[..., None], z.shape)  # corners of those boxes
    crosses = np.any(corner & (z <= near), axis=(1, 2))
    uv = (p[..., :2] / np.where(corner & (z > near), z, 1.0)[..., None]) @ camera.K[:2, :2].T + camera.K[:2, 2]
    lo = np.floor(np.where(corner[..., None], uv, np.inf).min(axis=(1, 2)))
    hi = np.ceil(np.where(corner[..., None], uv, -np.inf).max(axis=(1, 2)))
    W, H = camera.width, camera.height
    boxes = []
    for k in range(len(T_cam_link)):
        if not front[k].any():
            boxes.append(None)
        elif crosses[k]:
            boxes.append((0, W, 0, H))
        else:
            c0, r0 = max(int(lo[k, 0]), 0), max(int(lo[k, 1]), 0)
            c1, r1 = min(int(hi[k, 0]) + 1, W), min(int(hi[k, 1]) + 1, H)
            boxes.append(None if c0 >= c1 or r0 >= r1 else (c0, c1, r0, r1))
    return boxes
