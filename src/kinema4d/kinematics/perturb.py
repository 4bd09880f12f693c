"""Robot pointmap rendering (paper Sec. 3.1) and pointmap utilities (Supp. B.1, Tab. 4).

:func:`render_robot` turns joint positions ``q`` (T, dof) into per-pixel camera-space geometry of the robot:
pointmap (T, H, W, 3) float32 metres, mask (T, H, W) bool, depth (T, H, W) float32 z metres, link id (T, H, W)
int16 (index into ``robot.link_names``, -1 empty) and optionally RGB (T, H, W, 3) uint8. The first surface hit
per pixel is kept (z-buffer); pixel (c, r) samples the ray through (u, v) = (c, r) (``kinema4d.kinematics.camera``).

Two backends give the same images:

- ``"gl"``: OpenGL rasterizer through moderngl on a headless EGL context (Mesa llvmpipe on CPU). Each link's
  mesh is uploaded once; per frame only the link poses ``T_cam_link`` change. The fragment shader writes the
  interpolated camera-space z (perspective-correct, so it is the z of the exact ray/triangle hit at the pixel
  centre) and the link id to a float32 target; x and y follow from z along the pixel's ray, as in
  :meth:`Camera.depth_to_pointmap`.
- ``"embree"``: ray casting with trimesh + embreex, one BVH per link built once; the camera rays inside a link's
  projected bounding box are moved into that link's frame, and the nearest hit over links wins. The reference
  and the fallback when no EGL context can be created.

Pointmap utilities: :func:`normalize_pointmap` / :func:`denormalize_pointmap` (sequence-level per-channel
min-max to [0, 1]) and the robustness perturbations of Tab. 4 (:func:`drop_points`, :func:`gaussian_noise`,
:func:`translate`, :func:`rotate`).
"""

from __future__ import annotations

import mmap
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinema4d.geometry import invert_rigid, publish_dir
from kinema4d.kinematics.camera import T_GLCAM_CAM, Camera

BACKENDS = ("auto", "gl", "embree")
DEFAULT_NEAR, DEFAULT_FAR = 0.01, 20.0
# Default mesh decimation (triangles per link). On the Panda it cuts 103k to ~8.6k triangles (GL at 720x480:
# ~31 -> ~6 ms/frame on llvmpipe) for a mask IoU >= 0.98 and median |dz| ~0.3 mm against pybullet, which
# renders the full meshes (see tests/test_render.py and benchmarks/bench_control.py). None = full meshes.
DEFAULT_MAX_FACES_PER_LINK = 1000


@dataclass
class RobotRender:
    """Output of :func:`render_robot`. All arrays are indexed (T, H, W, ...) in the camera's pixel grid.

    ``pointmap`` (T, H, W, 3) float32 camera-frame (OpenCV) metres, 0 where empty; ``mask`` (T, H, W) bool;
    ``depth`` (T, H, W) float32 z metres, 0 where empty; ``link_id`` (T, H, W) int16 index into
    ``link_names`` (-1 empty); ``rgb`` (T, H, W, 3) uint8 (black background) or None.
    """

    pointmap: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    link_id: np.ndarray
    rgb: np.ndarray | None
    link_names: list[str]
    backend: str


# ---------------------------------------------------------------------- mesh preparation
@dataclass
class _LinkMesh:
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


def _link_meshes(robot, max_faces_per_link: int | None) -> list[_LinkMesh]:
    """The robot's visual meshes as :class:`_LinkMesh` (optionally decimated), in ``robot.link_names`` order."""
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
        out.append(_LinkMesh(k, v, f, c))
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
        links = {robot.link_names[lm.link_index]: lm for lm in _link_meshes(robot, max_faces_per_link)}
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


def _aabb_corners(vertices: np.ndarray) -> np.ndarray:
    """(8, 3) corners of the axis-aligned bounding box of vertices (V, 3)."""
    lo, hi = vertices.min(0), vertices.max(0)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _pixel_box(corners_link: np.ndarray, T_cam_link: np.ndarray, camera: Camera, near: float):
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


# ---------------------------------------------------------------------- output memory
# The value of an empty pixel in each output array.
_EMPTY = {"pointmap": 0, "depth": 0, "link_id": -1, "mask": False, "rgb": 0}


class _OutputPool:
    """Memory for output arrays: new arrays the caller owns, mapped page by page, recycled once dropped.

    Why not ``np.zeros``: numpy asks for transparent huge pages above 4 MB (``madvise(MADV_HUGEPAGE)``), and the
    first touch of a 2 MB page zeroes it whole. The renderer writes only the pixels in the robot's projected box
    (link id: all pixels), and a huge page new to the process is slow on a VM that hands free memory back to its
    host (measured on this project's 2-core VM: ~10 us per 4 kB on the first use of a huge page, 0.4 us when the
    process reuses one, 2-3 us per fresh 4 kB page). So the first call in a process paid for every output byte
    (bench_control.py at 720x480: 19.6 ms/frame on the first call, 4.7 on later ones). Here an array >= 4 MB is
    private anonymous memory with ``MADV_NOHUGEPAGE``: zero until touched, and only the touched pages (about half
    of the output at 720x480) cost a page fault.

    Recycling: when every array (and view) made from a buffer has been garbage-collected, the buffer returns to a
    free list (``MADV_FREE``: the kernel may take the pages back under memory pressure) and a later allocation of
    the same size reuses it, fault-free, flagged not fresh so that the renderer writes every pixel. So a result
    the caller keeps is never shared with another call. At most ``max_bytes`` are kept on the free list (the
    oldest buffers are unmapped first).
    Smaller arrays and platforms without these ``mmap`` options get ``np.zeros`` (always fresh).
    """

    MIN_BYTES = 4 << 20  # numpy's huge-page threshold: below it the allocator recycles memory itself

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self._free: list = []  # mmaps, oldest first
        self._free_bytes = 0
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out again (for tests and benchmarks)
        self._ok = hasattr(mmap, "MADV_NOHUGEPAGE") and hasattr(mmap, "MAP_PRIVATE")

    def zeros(self, shape, dtype) -> tuple[np.ndarray, bool]:
        """(array of ``shape``, ``dtype``, fresh): fresh arrays are all zeros, recycled ones hold old values."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        nbytes = n * dtype.itemsize
        if nbytes < self.MIN_BYTES or not self._ok:
            return np.zeros(shape, dtype), True
        with self._lock:
            mem = next((m for m in reversed(self._free) if len(m) == nbytes), None)
            if mem is not None:
                self._free.remove(mem)
                self._free_bytes -= nbytes
                self.reused += 1
        fresh = mem is None
        if fresh:
            try:
                mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
                mem.madvise(mmap.MADV_NOHUGEPAGE)
            except (OSError, ValueError):
                return np.zeros(shape, dtype), True
        flat = np.frombuffer(mem, dtype, count=n)
        # every view of the result has ``flat`` as its base (numpy collapses view chains up to it, as its own base
        # is a memoryview), so ``flat`` is collected only when the caller holds no array of this buffer any more
        weakref.finalize(flat, self._give_back, mem).atexit = False
        return flat.reshape(shape), fresh

    def _give_back(self, mem) -> None:
        nbytes = len(mem)
        if nbytes > self.max_bytes:
            return  # dropped: unmapped with the mmap object
        if hasattr(mmap, "MADV_FREE"):  # before it is on the list: nobody writes into it any more
            try:
                mem.madvise(mmap.MADV_FREE)
            except OSError:
                pass
        with self._lock:
            self._free.append(mem)
            self._free_bytes += nbytes
            while self._free_bytes > self.max_bytes:
                self._free_bytes -= len(self._free.pop(0))


_POOL = _OutputPool()


def _clear_outside(out: dict, t: int, box, fresh: frozenset) -> None:
    """Set frame ``t`` of every output array to its empty value outside ``box`` (c0, c1, r0, r1) (the whole frame
    if ``box`` is None). ``fresh``: names of arrays that are new zeros, where only a non-zero empty value (link
    id -1) is written, so that untouched memory stays unmapped."""
    for name, arr in out.items():
        if arr is None or (name in fresh and _EMPTY[name] == 0):
            continue
        a, v = arr[t], _EMPTY[name]
        if box is None:
            a[...] = v
            continue
        c0, c1, r0, r1 = box
        a[:r0] = v
        a[r1:] = v
        a[r0:r1, :c0] = v
        a[r0:r1, c1:] = v


def _ray_factors(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(x/z (H, W) or (1, W), y/z (H, 1)) float32 along each pixel's ray, as :meth:`Camera.unproject`."""
    K = camera.K
    fx, fy, cx, cy, s = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    y = (np.arange(camera.height, dtype=np.float64)[:, None] - cy) / fy
    x = (np.arange(camera.width, dtype=np.float64)[None, :] - cx) / fx
    if s != 0:
        x = x - s * y / fx
    return x.astype(np.float32), y.astype(np.float32)


def _copy_box(out: dict, rays, t: int, box, z_id1: np.ndarray, rgb: np.ndarray | None) -> None:
    """Write the GL read-back of frame ``t``'s ``box`` (z, link index + 1; optional colour) into the outputs;
    ``rays`` from :func:`_ray_factors`."""
    c0, c1, r0, r1 = box
    z = z_id1[..., 0]
    pm = out["pointmap"][t, r0:r1, c0:c1]
    rx, ry = rays
    np.multiply(z, rx[r0:r1, c0:c1] if rx.shape[0] > 1 else rx[:, c0:c1], out=pm[..., 0])
    np.multiply(z, ry[r0:r1], out=pm[..., 1])
    pm[..., 2] = z
    out["depth"][t, r0:r1, c0:c1] = z
    np.subtract(z_id1[..., 1], 1.0, out=out["link_id"][t, r0:r1, c0:c1], casting="unsafe")
    np.greater(z_id1[..., 1], 0.5, out=out["mask"][t, r0:r1, c0:c1])
    if rgb is not None:
        out["rgb"][t, r0:r1, c0:c1] = rgb


def _gl_flush_function():
    """``glFlush`` of the current EGL context as a ctypes function (starts llvmpipe's rasterizer threads without
    waiting; moderngl has only ``finish``), or a no-op if it cannot be found."""
    try:
        import ctypes

        egl = ctypes.CDLL("libEGL.so.1")
        egl.eglGetProcAddress.restype = ctypes.c_void_p
        egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
        addr = egl.eglGetProcAddress(b"glFlush")
        if addr:
            return ctypes.CFUNCTYPE(None)(addr)
    except (OSError, AttributeError):
        pass
    return lambda: None


# ---------------------------------------------------------------------- GL backend
_GL_STATE: dict = {}  # "ctx" -> moderngl.Context or "error" -> str (one attempt per process)


def gl_context():
    """The process-wide headless moderngl context (EGL). Raises RuntimeError with the reason if unavailable."""
    if "ctx" in _GL_STATE:
        return _GL_STATE["ctx"]
    if "error" in _GL_STATE:
        raise RuntimeError(_GL_STATE["error"])
    try:
        import moderngl

        _GL_STATE["ctx"] = moderngl.create_standalone_context(backend="egl")
    except Exception as e:  # no libEGL, no device, driver errors: all mean "no GL here"
        _GL_STATE["error"] = f"could not create a headless EGL OpenGL context: {type(e).__name__}: {e}"
        raise RuntimeError(_GL_STATE["error"]) from None
    return _GL_STATE["ctx"]


_VERTEX_SHADER = """
#version 330
uniform mat4 T_cam_link[{n_links}];  // link -> camera (OpenCV frame)
uniform mat4 P_clip_cam;              // camera (OpenCV) -> clip, image rows top-down
in vec3 in_pos;                        // link frame, metres
in float in_link;                      // slot into T_cam_link
in vec3 in_color;                      // [0, 1]
out vec3 v_pcam;
flat out float v_link_id;
out vec3 v_color;
uniform float link_ids[{n_links}];     // slot -> index into robot.link_names
void main() {{
    int k = int(in_link);
    vec4 p = T_cam_link[k] * vec4(in_pos, 1.0);
    v_pcam = p.xyz;
    v_link_id = link_ids[k];
    v_color = in_color;
    gl_Position = P_clip_cam * p;
}}
"""

_FRAGMENT_SHADER = """
in vec3 v_pcam;
flat in float v_link_id;
in vec3 v_color;
// one target holds everything but colour, so a frame needs one read-back: camera-frame z (metres) and link
// index + 1 (0 = empty, the clear value); x and y follow from z on the CPU (two floats instead of four: ~15 %
// less llvmpipe time per frame)
layout(location = 0) out vec2 out_z_id1;
#ifdef WITH_RGB
layout(location = 1) out vec4 out_rgb;
#endif
void main() {
    out_z_id1 = vec2(v_pcam.z, v_link_id + 1.0);
#ifdef WITH_RGB
    vec3 n = normalize(cross(dFdx(v_pcam), dFdy(v_pcam)));  // flat (face) normal
    float shade = 0.25 + 0.75 * abs(dot(n, normalize(v_pcam)));  // Lambert, light at the camera
    out_rgb = vec4(v_color * shade, 1.0);
#endif
}
"""


class _GLBackend:
    """Meshes uploaded once to one vertex/index buffer; one draw call per frame with per-link model matrices."""

    name = "gl"

    def __init__(self, links: list[_LinkMesh]):
        import moderngl

        self._mgl = moderngl
        self.ctx = gl_context()
        n = len(links)
        verts, cols, slots, faces = [], [], [], []
        offset = 0
        for slot, lm in enumerate(links):
            verts.append(lm.vertices)
            cols.append(lm.colors / 255.0)
            slots.append(np.full(len(lm.vertices), slot))
            faces.append(lm.faces + offset)
            offset += len(lm.vertices)
        data = np.concatenate([np.concatenate(verts), np.concatenate(slots)[:, None], np.concatenate(cols)], axis=1)
        self.n_faces = int(sum(len(f) for f in faces))
        self.corners = np.stack([_aabb_corners(lm.vertices) for lm in links])  # (n_links, 8, 3)
        self.vbo = self.ctx.buffer(data.astype(np.float32).tobytes())
        self.ibo = self.ctx.buffer(np.concatenate(faces).astype(np.uint32).tobytes())
        self.programs, self.vaos = {}, {}
        for rgb in (False, True):
            frag = ("#version 330\n#define WITH_RGB\n" if rgb else "#version 330\n") + _FRAGMENT_SHADER
            prog = self.ctx.program(vertex_shader=_VERTEX_SHADER.format(n_links=n), fragment_shader=frag)
            prog["link_ids"].write(np.array([lm.link_index for lm in links], np.float32).tobytes())
            self.programs[rgb] = prog
            # without RGB the colour attribute is compiled out: skip its 12 bytes
            layout = (self.vbo, "3f 1f 3f", "in_pos", "in_link", "in_color") if rgb else \
                (self.vbo, "3f 1f 12x", "in_pos", "in_link")
            self.vaos[rgb] = self.ctx.vertex_array(prog, [layout], index_buffer=self.ibo)
        self._fbos = {}
        self._scratches: dict[tuple, np.ndarray] = {}
        self._flush = _gl_flush_function()
        self._warm_up()

    def _warm_up(self) -> None:
        """Draw once into a tiny framebuffer per program: llvmpipe compiles its shader variants on the first draw,
        so this one-time cost (~10 ms) belongs to setup instead of the first :meth:`render` call."""
        ctx, mgl = self.ctx, self._mgl
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        eye = np.broadcast_to(np.eye(4, dtype=np.float32), (len(self.corners), 4, 4))
        for rgb in (False, True):
            fbo = self._fbo(8, 8, rgb)
            fbo.viewport, fbo.scissor = (0, 0, 8, 8), (0, 0, 8, 8)
            fbo.use()
            self.programs[rgb]["P_clip_cam"].write(np.eye(4, dtype=np.float32).tobytes())
            self.programs[rgb]["T_cam_link"].write(np.ascontiguousarray(eye).tobytes())
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=(0, 0, 8, 8))
            self.vaos[rgb].render(mgl.TRIANGLES)
            fbo.read(viewport=(0, 0, 1, 1), components=2, dtype="f4", attachment=0)
            fbo.scissor = None

    def _fbo(self, width: int, height: int, rgb: bool):
        key = (width, height, rgb)
        if key not in self._fbos:
            ctx = self.ctx
            attachments = [ctx.renderbuffer((width, height), 2, dtype="f4")]
            if rgb:
                attachments.append(ctx.renderbuffer((width, height), 4, dtype="f1"))
            self._fbos[key] = ctx.framebuffer(color_attachments=attachments,
                                              depth_attachment=ctx.depth_renderbuffer((width, height)))
        return self._fbos[key]

    def _scratch(self, slot: int, n: int, dtype) -> np.ndarray:
        """Read-back buffer ``slot`` (0 or 1) of at least ``n`` items, kept across calls (never given to the
        caller). Two slots: one holds the frame being copied out while the next is read back."""
        key = (slot, np.dtype(dtype).str)
        buf = self._scratches.get(key)
        if buf is None or buf.size < n:
            buf = self._scratches[key] = np.zeros(n, dtype)
        return buf[:n]

    def render(self, T_cam_link: np.ndarray, camera: Camera, near: float, far: float, out: dict,
               fresh: frozenset) -> None:
        """``T_cam_link`` (T, n_links, 4, 4); fills every pixel of the ``out`` arrays in place (see
        :func:`_clear_outside` for ``fresh``).

        Pipelined: frame t is drawn and flushed (llvmpipe's threads rasterize it), then the main thread copies
        frame t-1 from its read-back buffer into the outputs (the first writes to fresh output memory fault its
        pages in: the dominant cost of a first call), then frame t is read back.
        """
        W, H = camera.width, camera.height
        rgb = out["rgb"] is not None
        ctx, prog, vao, fbo = self.ctx, self.programs[rgb], self.vaos[rgb], self._fbo(W, H, rgb)
        # Our projection maps image row r to OpenGL window row H-1-r; flipping y in clip space makes window row
        # r == image row r, so the read-back needs no flip (the flip also reverses winding: no face culling).
        P = np.diag([1.0, -1.0, 1.0, 1.0]) @ camera.opengl_projection(near, far) @ T_GLCAM_CAM
        prog["P_clip_cam"].write(P.T.astype(np.float32).tobytes())  # GLSL is column-major
        ctx.enable(self._mgl.DEPTH_TEST)
        ctx.disable(self._mgl.CULL_FACE)
        T_link_cols = np.ascontiguousarray(T_cam_link.transpose(0, 1, 3, 2), np.float32)  # column-major per link
        rays = _ray_factors(camera)
        pending = None  # (t, box, z_id1 (h, w, 2), rgb (h, w, 3) or None) read back, not yet copied out
        for t in range(T_cam_link.shape[0]):
            # Only the robot's projected bounding box is cleared, drawn and read back (scissor); the pixels outside
            # it are set to "empty" without any GL work.
            box = _pixel_box(self.corners, T_cam_link[t], camera, near)
            if box is not None:
                c0, c1, r0, r1 = box
                w, h = c1 - c0, r1 - r0
                vp = (c0, r0, w, h)  # window row == image row thanks to the flip above
                fbo.viewport, fbo.scissor = (0, 0, W, H), vp
                fbo.use()
                prog["T_cam_link"].write(T_link_cols[t])
                fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=vp)  # empty: z 0, id + 1 = 0, black
                vao.render(self._mgl.TRIANGLES)
                self._flush()
            _clear_outside(out, t, box, fresh)
            if pending is not None:
                _copy_box(out, rays, *pending)
                pending = None
            if box is None:
                continue
            slot = t % 2
            buf = self._scratch(slot, h * w * 2, np.float32).reshape(h, w, 2)
            fbo.read_into(buf, viewport=vp, components=2, dtype="f4", attachment=0)
            cbuf = None
            if rgb:
                cbuf = self._scratch(slot, h * w * 3, np.uint8).reshape(h, w, 3)
                fbo.read_into(cbuf, viewport=vp, components=3, dtype="f1", attachment=1)
            pending = (t, box, buf, cbuf)
        if pending is not None:
            _copy_box(out, rays, *pending)
        fbo.scissor = None

    def release(self) -> None:
        for fbo in self._fbos.values():
            for a in list(fbo.color_attachments) + [fbo.depth_attachment]:
                a.release()
            fbo.release()
        for obj in list(self.vaos.values()) + list(self.programs.values()) + [self.vbo, self.ibo]:
            obj.release()
        self._fbos, self.vaos, self.programs, self._scratches = {}, {}, {}, {}


# ---------------------------------------------------------------------- Embree backend
class _EmbreeBackend:
    """One embree BVH per link (built once); camera rays moved into each link's frame."""

    name = "embree"

    def __init__(self, links: list[_LinkMesh]):
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
        self.corners = np.stack([_aabb_corners(lm.vertices) for lm in links])  # (n_links, 8, 3)
        self.n_faces = int(sum(len(lm.faces) for lm in links))

    def render(self, T_cam_link: np.ndarray, camera: Camera, near: float, far: float, out: dict,
               fresh: frozenset) -> None:
        """Like :meth:`_GLBackend.render`; every pixel of every frame is written (``fresh`` is not needed)."""
        W, H = camera.width, camera.height
        rgb = out["rgb"] is not None
        for t in range(T_cam_link.shape[0]):
            zbuf = np.full((H, W), np.inf)
            link = np.full((H, W), -1, np.int16)
            color = np.zeros((H, W, 3), np.float64) if rgb else None
            for s, lm in enumerate(self.links):
                T_cl = T_cam_link[t, s]
                box = _pixel_box(self.corners[s:s + 1], T_cl[None], camera, near)
                if box is None:
                    continue
                c0, c1, r0, r1 = box
                rows, cols = np.mgrid[r0:r1, c0:c1]
                rows, cols = rows.ravel(), cols.ravel()
                d_cam = camera.unproject(np.stack([cols, rows], -1).astype(np.float64), np.ones(len(rows)))
                T_lc = invert_rigid(T_cl)
                d_link = d_cam @ T_lc[:3, :3].T  # rays with unit camera z: ray parameter == depth z
                o_link = np.broadcast_to(T_lc[:3, 3], d_link.shape)
                tri = self.intersectors[s].intersects_first(o_link, d_link)
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

    @staticmethod
    def _shade(lm: _LinkMesh, tri, p_link, d_link, n):
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


# ---------------------------------------------------------------------- public renderer
class RobotRenderer:
    """Renders one robot; keeps its meshes (GPU buffers or BVHs) across calls. Reuse it for speed.

    ``camera`` is the default camera of :meth:`render`; ``backend`` one of "auto" (gl if an EGL context can be
    created, else embree with a warning), "gl", "embree"; ``max_faces_per_link`` decimates each link's mesh to
    at most that many triangles (None: full meshes); ``near``/``far`` metres clip the rendered depth range.
    """

    def __init__(self, robot, camera: Camera | None = None, backend: str = "auto",
                 max_faces_per_link: int | None = DEFAULT_MAX_FACES_PER_LINK, near: float = DEFAULT_NEAR,
                 far: float = DEFAULT_FAR):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if camera is not None:
            _check_camera(camera)
        if not (0 < near < far):
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        self.robot, self.camera, self.near, self.far = robot, camera, float(near), float(far)
        self.max_faces_per_link = max_faces_per_link
        links = _link_meshes(robot, max_faces_per_link)
        self.link_names = [robot.link_names[lm.link_index] for lm in links]  # links with geometry, draw order
        if backend == "auto":
            try:
                gl_context()
                backend = "gl"
            except RuntimeError as e:
                _warn_once(f"render backend 'auto': {e}; falling back to the embree ray caster (slower)")
                backend = "embree"
        self.backend_name = backend
        self._backend = _GLBackend(links) if backend == "gl" else _EmbreeBackend(links)
        self.n_faces = self._backend.n_faces

    def render(self, q, camera: Camera | None = None, rgb: bool = False, out: RobotRender | None = None
               ) -> RobotRender:
        """Joint positions ``q`` (T, dof) (or (dof,)) -> :class:`RobotRender` with T frames.

        Without ``out`` every call returns new arrays that the caller owns (nothing is shared with the renderer
        or with other calls). ``out``: a :class:`RobotRender` whose arrays (T, H, W, ...) of the documented
        dtypes are overwritten in place (every pixel; ``out.rgb`` is needed iff ``rgb``), e.g. the result of an
        earlier call, to reuse memory across calls; the returned RobotRender holds those same arrays.
        """
        camera = camera if camera is not None else self.camera
        if camera is None:
            raise ValueError("no camera: pass camera= to RobotRenderer(...) or to render(...)")
        _check_camera(camera)
        q = self.robot.check_q(q, "q")
        T, H, W = q.shape[0], camera.height, camera.width
        if out is not None:
            arrays = _check_out(out, (T, H, W), rgb)
        T_world_link = self.robot.fk(q, self.link_names)
        T_cam_link = np.stack([camera.T_cam_world @ T_world_link[n] for n in self.link_names], axis=1)  # (T, L, 4, 4)
        fresh = set()
        if out is None:
            # new arrays (see _OutputPool); the backends write every pixel of those not fresh (zero)
            shapes = {"pointmap": ((T, H, W, 3), np.float32), "depth": ((T, H, W), np.float32),
                      "link_id": ((T, H, W), np.int16), "mask": ((T, H, W), np.bool_)}
            if rgb:
                shapes["rgb"] = ((T, H, W, 3), np.uint8)
            arrays = {"rgb": None}
            for name, (shape, dtype) in shapes.items():
                arrays[name], is_fresh = _POOL.zeros(shape, dtype)
                if is_fresh:
                    fresh.add(name)
        self._backend.render(T_cam_link, camera, self.near, self.far, arrays, fresh=frozenset(fresh))
        return RobotRender(pointmap=arrays["pointmap"], mask=arrays["mask"], depth=arrays["depth"],
                           link_id=arrays["link_id"], rgb=arrays["rgb"], link_names=list(self.robot.link_names),
                           backend=self.backend_name)

    def release(self) -> None:
        """Free GPU buffers / BVHs now (they are freed with the object otherwise)."""
        self._backend.release()


_RENDERERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # robot -> {(backend, max_faces): renderer}


def render_robot(robot, q, camera: Camera, rgb: bool = False, backend: str = "auto",
                 max_faces_per_link: int | None = DEFAULT_MAX_FACES_PER_LINK,
                 out: RobotRender | None = None) -> RobotRender:
    """Render ``robot`` at joint positions ``q`` (T, dof) seen by ``camera`` -> :class:`RobotRender`.

    Link poses come from ``robot.fk(q)`` (world frame, including ``robot.T_world_base``). The renderer (uploaded
    meshes) is cached per robot, backend and ``max_faces_per_link``; see :class:`RobotRenderer` for the options
    and :meth:`RobotRenderer.render` for ``out`` (write into the caller's arrays; by default each call returns
    new arrays the caller owns).
    """
    _check_camera(camera)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    robot.check_q(q, "q")  # fail on bad q before loading meshes
    per_robot = _RENDERERS.setdefault(robot, {})
    key = (backend, max_faces_per_link)
    if key not in per_robot:
        per_robot[key] = RobotRenderer(robot, backend=backend, max_faces_per_link=max_faces_per_link)
    return per_robot[key].render(q, camera, rgb=rgb, out=out)


def _check_out(out, shape: tuple[int, int, int], rgb: bool) -> dict:
    """The arrays of ``out`` (a RobotRender) after checking their shapes and dtypes against (T, H, W)."""
    if not isinstance(out, RobotRender):
        raise TypeError(f"out must be a RobotRender, got {type(out).__name__}")
    want = {"pointmap": (shape + (3,), np.float32), "depth": (shape, np.float32), "link_id": (shape, np.int16),
            "mask": (shape, np.bool_)}
    if rgb:
        want["rgb"] = (shape + (3,), np.uint8)
    arrays = {"rgb": None}
    for name, (shp, dt) in want.items():
        a = getattr(out, name)
        if not isinstance(a, np.ndarray) or a.shape != shp or a.dtype != dt or not a.flags.writeable:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"out.{name} must be a writeable {np.dtype(dt)} array of shape {shp}, got {got}")
        arrays[name] = a
    return arrays


def _check_camera(camera) -> None:
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a kinema4d.kinematics.camera.Camera, got {type(camera).__name__}")


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------- pointmap normalization (Supp. B.1)
@dataclass
class PointmapStats:
    """Per-channel extrema of a pointmap sequence: ``min`` (3,), ``max`` (3,) metres (float64)."""

    min: np.ndarray
    max: np.ndarray

    def to_dict(self) -> dict:
        return {"min": [float(v) for v in self.min], "max": [float(v) for v in self.max]}

    @classmethod
    def from_dict(cls, d: dict) -> PointmapStats:
        try:
            lo, hi = np.asarray(d["min"], np.float64), np.asarray(d["max"], np.float64)
        except KeyError as e:
            raise ValueError(f"PointmapStats dict is missing key {e}") from None
        if lo.shape != (3,) or hi.shape != (3,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError(f"PointmapStats min/max must be 3 finite numbers each, got {d}")
        if np.any(hi < lo):
            raise ValueError(f"PointmapStats max < min: {d}")
        return cls(min=lo, max=hi)


def _check_pm_mask(pm, mask, name: str = "pm"):
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


def normalize_pointmap(pm, mask=None) -> tuple[np.ndarray, PointmapStats]:
    """Sequence-level per-channel min-max normalization to [0, 1] over the valid points (Supp. B.1).

    ``pm`` (T, H, W, 3) metres; ``mask`` (T, H, W) bool (default: pixels where pm != 0). Returns (pm01 float32,
    stats); empty pixels stay 0. A channel with zero extent maps to 0. Raises if no pixel is valid.
    """
    pm, mask = _check_pm_mask(pm, mask)
    if not mask.any():
        raise ValueError("normalize_pointmap: the pointmap has no valid points (mask is all False)")
    pts = pm[mask].astype(np.float64)
    if not np.all(np.isfinite(pts)):
        raise ValueError("normalize_pointmap: pm has non-finite values at valid pixels")
    stats = PointmapStats(min=pts.min(0), max=pts.max(0))
    span = stats.max - stats.min
    scale = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0)
    out = np.zeros(pm.shape, np.float32)
    out[mask] = (pts - stats.min) * scale
    return out, stats


def denormalize_pointmap(pm01, stats: PointmapStats, mask=None) -> np.ndarray:
    """Inverse of :func:`normalize_pointmap`: (T, H, W, 3) in [0, 1] -> float32 metres, 0 where ``mask`` is False.

    Without ``mask``, pixels where pm01 == 0 in all channels count as empty (pass the mask to be exact: a
    point at the per-channel minimum in all three channels normalizes to 0 too).
    """
    pm01, mask = _check_pm_mask(pm01, mask, "pm01")
    out = np.zeros(pm01.shape, np.float32)
    out[mask] = pm01[mask].astype(np.float64) * (stats.max - stats.min) + stats.min
    return out


# ---------------------------------------------------------------------- robustness perturbations (Tab. 4)
def drop_points(pm, mask, frac: float = 0.05, rng: np.random.Generator | None = None):
    """Remove ``round(frac * n_valid)`` valid points chosen uniformly over the whole sequence.

    ``pm`` (..., H, W, 3), ``mask`` (..., H, W) bool -> new (pm, mask); dropped pixels become empty (0, False).
    """
    pm, mask = _check_pm_mask(pm, mask)
    if not (0.0 <= frac <= 1.0):
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    rng = rng if rng is not None else np.random.default_rng()
    valid = np.flatnonzero(mask)
    drop = rng.choice(valid, size=int(round(frac * len(valid))), replace=False)
    mask = mask.copy()
    mask.reshape(-1)[drop] = False
    return np.where(mask[..., None], pm, 0).astype(pm.dtype), mask


def gaussian_noise(pm, mask, sigma_m: float, rng: np.random.Generator | None = None):
    """Add i.i.d. N(0, sigma_m^2) metres to each coordinate of every valid point; the mask is unchanged."""
    pm, mask = _check_pm_mask(pm, mask)
    if not (sigma_m >= 0):
        raise ValueError(f"sigma_m must be >= 0 metres, got {sigma_m}")
    rng = rng if rng is not None else np.random.default_rng()
    out = pm.copy()
    out[mask] = pm[mask] + rng.normal(0.0, sigma_m, size=(int(mask.sum()), 3)).astype(pm.dtype)
    return out, mask.copy()


def shift_image(pm, mask, dx: int, dy: int):
    """Move the image content by (dx, dy) whole pixels (+x right, +y down); vacated pixels become empty."""
    pm, mask = _check_pm_mask(pm, mask)
    H, W = mask.shape[-2:]
    out_pm, out_mask = np.zeros_like(pm), np.zeros_like(mask)
    dx, dy = int(dx), int(dy)
    src_r, dst_r = slice(max(0, -dy), min(H, H - dy)), slice(max(0, dy), min(H, H + dy))
    src_c, dst_c = slice(max(0, -dx), min(W, W - dx)), slice(max(0, dx), min(W, W + dx))
    out_pm[..., dst_r, dst_c, :] = pm[..., src_r, src_c, :]
    out_mask[..., dst_r, dst_c] = mask[..., src_r, src_c]
    out_pm[~out_mask] = 0
    return out_pm, out_mask


def rotate_image(pm, mask, angle_deg: float):
    """Rotate the image content by ``angle_deg`` (counter-clockwise as displayed, y down) about the image centre
    ((W-1)/2, (H-1)/2), nearest neighbour; pixels rotated in from outside are empty."""
    pm, mask = _check_pm_mask(pm, mask)
    H, W = mask.shape[-2:]
    a = np.deg2rad(angle_deg)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    r, c = np.mgrid[0:H, 0:W]
    x, y = c - cx, r - cy
    # destination (x, y) = R(a) source, with R counter-clockwise on screen (y down): source = R(-a) destination
    src_c = np.rint(cx + np.cos(a) * x - np.sin(a) * y).astype(int)
    src_r = np.rint(cy + np.sin(a) * x + np.cos(a) * y).astype(int)
    inside = (src_c >= 0) & (src_c < W) & (src_r >= 0) & (src_r < H)
    src_c, src_r = np.clip(src_c, 0, W - 1), np.clip(src_r, 0, H - 1)
    out_mask = mask[..., src_r, src_c] & inside
    out_pm = np.where(out_mask[..., None], pm[..., src_r, src_c, :], 0).astype(pm.dtype)
    return out_pm, out_mask


def translate(pm, mask, max_px: int = 5, rng: np.random.Generator | None = None, per_frame: bool = False):
    """Shift the image content by integer (dx, dy) uniform in [-max_px, max_px] pixels (Tab. 4 "trans.").

    One shift for the whole sequence (a calibration-like error) unless ``per_frame`` (pm (T, H, W, 3)).
    """
    pm, mask = _check_pm_mask(pm, mask)
    rng = rng if rng is not None else np.random.default_rng()
    if not per_frame:
        dx, dy = rng.integers(-max_px, max_px + 1, size=2)
        return shift_image(pm, mask, dx, dy)
    outs = [shift_image(pm[t], mask[t], *rng.integers(-max_px, max_px + 1, size=2)) for t in range(len(pm))]
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])


def rotate(pm, mask, max_deg: float = 5.0, rng: np.random.Generator | None = None, per_frame: bool = False):
    """Rotate the image content about the image centre by an angle uniform in [-max_deg, max_deg] degrees,
    nearest neighbour (Tab. 4 "rot."). One angle for the sequence unless ``per_frame`` (pm (T, H, W, 3))."""
    pm, mask = _check_pm_mask(pm, mask)
    rng = rng if rng is not None else np.random.default_rng()
    if not per_frame:
        return rotate_image(pm, mask, rng.uniform(-max_deg, max_deg))
    outs = [rotate_image(pm[t], mask[t], rng.uniform(-max_deg, max_deg)) for t in range(len(pm))]
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
