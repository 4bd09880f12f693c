"""Robot pointmap rendering (paper Sec. 3.1).

:func:`render_robot` turns joint positions ``q`` (T, dof) into per-pixel camera-space geometry of the robot:
pointmap (T, H, W, 3) float32 metres, mask (T, H, W) bool, depth (T, H, W) float32 z metres, link id (T, H, W)
int16 (index into ``robot.link_names``, -1 empty) and optionally RGB (T, H, W, 3) uint8. The first surface hit
per pixel is kept (z-buffer); pixel (c, r) samples the ray through (u, v) = (c, r) (``kinema4d.kinematics.camera``).

Two backends give the same images: ``"gl"`` (:mod:`.render_gl`, an OpenGL rasterizer on a headless EGL context;
the default) and ``"embree"`` (:mod:`.render_embree`, ray casting; the reference and the fallback without EGL).
Both draw the link meshes of :mod:`.meshes` (decimated to ``DEFAULT_MAX_FACES_PER_LINK`` triangles per link by
default). This module holds the public renderer (:class:`RobotRenderer`, :func:`render_robot`) and the memory its
results live in (:class:`_OutputPool`). The robustness perturbations of Tab. 4 are in :mod:`.perturb`; pointmap
normalization (``normalize_pointmap`` etc., still importable from here) is in :mod:`kinema4d.pointmap`.
"""

from __future__ import annotations

import mmap
import threading
import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.meshes import (  # noqa: F401  (simplify_mesh, simplified_urdf: importable from here too)
    DEFAULT_MAX_FACES_PER_LINK,
    link_meshes,
    simplified_urdf,
    simplify_mesh,
)
from kinema4d.kinematics.render_embree import EmbreeBackend
from kinema4d.kinematics.render_gl import GLBackend, gl_context
from kinema4d.pointmap import PointmapStats, denormalize_pointmap, normalize_pointmap  # noqa: F401  (re-exported)

BACKENDS = ("auto", "gl", "embree")
DEFAULT_NEAR, DEFAULT_FAR = 0.01, 20.0


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


# ---------------------------------------------------------------------- output memory
class _OutputPool:
    """Memory for output arrays: new arrays the caller owns, mapped page by page, recycled once dropped.

    Why not ``np.zeros``: numpy asks for transparent huge pages above 4 MB (``madvise(MADV_HUGEPAGE)``), and the
    first touch of a 2 MB page zeroes it whole. The renderer writes only the pixels in the robot's projected box
    (link id: all pixels), and a huge page new to the process is slow on a VM that hands free memory back to its
    host (a fresh 4 kB page costs a fault too, but only the touched ones are paid). So the first call in a process
    paid for every output byte, several times what later calls cost (``benchmarks/bench_control.py`` times the first
    call in a fresh process apart from later ones, and prints its page faults). Here an array >= 4 MB is
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
        links = link_meshes(robot, max_faces_per_link)
        self.link_names = [robot.link_names[lm.link_index] for lm in links]  # links with geometry, draw order
        if backend == "auto":
            try:
                gl_context()
                backend = "gl"
            except RuntimeError as e:
                _warn_once(f"render backend 'auto': {e}; falling back to the embree ray caster (slower)")
                backend = "embree"
        self.backend_name = backend
        self._backend = GLBackend(links) if backend == "gl" else EmbreeBackend(links)
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
