"""The ``"gl"`` backend of :mod:`kinema4d.kinematics.render`: an OpenGL rasterizer through moderngl on a headless
EGL context (Mesa llvmpipe on CPU).

Each link's mesh is uploaded once; per frame only the link poses ``T_cam_link`` change. The fragment shader writes
the interpolated camera-space z (perspective-correct, so it is the z of the exact ray/triangle hit at the pixel
centre) and the link id to a float32 target; x and y follow from z along the pixel's ray, as in
:meth:`Camera.depth_to_pointmap`. Only the robot's projected bounding box is cleared, drawn and read back.
"""

from __future__ import annotations

import gc

import numpy as np

from kinema4d.kinematics.camera import T_GLCAM_CAM, Camera
from kinema4d.kinematics.meshes import LinkMesh, aabb_corners, pixel_boxes

# The value of an empty pixel in each output array.
_EMPTY = {"pointmap": 0, "depth": 0, "link_id": -1, "mask": False, "rgb": 0}


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


class GLBackend:
    """Meshes uploaded once to one vertex/index buffer; one draw call per frame with per-link model matrices."""

    name = "gl"

    def __init__(self, links: list[LinkMesh]):
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
        self.corners = np.stack([aabb_corners(lm.vertices) for lm in links])  # (n_links, 8, 3)
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
        mgl = self._mgl
        self._set_state()
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

    def _set_state(self) -> None:
        """Depth test on; back faces culled, as pybullet's TinyRenderer does (the renderer the data engine records
        with and the tests compare against): through the holes of an open link mesh (the Panda's link3-link6 and
        hand, more of them after decimation) one sees what is behind, not the inside of the surface. On the
        decimated Panda at 720x480 this matches pybullet drawing the same meshes to ~1.5 pixels per frame instead
        of ~18, and skips about half the triangles. Meshes are wound counter-clockwise seen from outside; the
        y flip of the projection makes that clockwise in window coordinates, so GL's "front" faces are the back
        faces."""
        ctx, mgl = self.ctx, self._mgl
        ctx.enable(mgl.DEPTH_TEST | mgl.CULL_FACE)
        ctx.front_face = "ccw"
        ctx.cull_face = "front"

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
        prog, vao, fbo = self.programs[rgb], self.vaos[rgb], self._fbo(W, H, rgb)
        # Our projection maps image row r to OpenGL window row H-1-r; flipping y in clip space makes window row
        # r == image row r, so the read-back needs no flip (the flip also reverses winding, see _set_state).
        P = np.diag([1.0, -1.0, 1.0, 1.0]) @ camera.opengl_projection(near, far) @ T_GLCAM_CAM
        prog["P_clip_cam"].write(P.T.astype(np.float32).tobytes())  # GLSL is column-major
        self._set_state()
        rays = _ray_factors(camera)
        # Only the robot's projected bounding box is cleared, drawn and read back (scissor); the pixels outside it
        # are set to "empty" without any GL work.
        boxes = pixel_boxes(self.corners, T_cam_link, camera, near)
        gc_enabled = gc.isenabled()
        gc.disable()  # the loop makes no reference cycles; a collection would only scan the caller's heap
        try:
            self._render_frames(T_cam_link, boxes, out, fresh, rays, fbo, prog, vao, W, H, rgb)
        finally:
            if gc_enabled:
                gc.enable()
            fbo.scissor = None

    def _render_frames(self, T_cam_link, boxes, out, fresh, rays, fbo, prog, vao, W, H, rgb) -> None:
        """The per-frame loop of :meth:`render` (``boxes`` from :func:`pixel_boxes`)."""
        T_link_cols = np.ascontiguousarray(T_cam_link.transpose(0, 1, 3, 2), np.float32)  # column-major per link
        pending = None  # (t, box, z_id1 (h, w, 2), rgb (h, w, 3) or None) read back, not yet copied out
        poses, triangles = prog["T_cam_link"], self._mgl.TRIANGLES
        for t, box in enumerate(boxes):
            if box is not None:
                c0, c1, r0, r1 = box
                w, h = c1 - c0, r1 - r0
                vp = (c0, r0, w, h)  # window row == image row thanks to the flip above
                fbo.viewport, fbo.scissor = (0, 0, W, H), vp
                fbo.use()
                poses.write(T_link_cols[t])
                fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=vp)  # empty: z 0, id + 1 = 0, black
                vao.render(triangles)
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

    def release(self) -> None:
        for fbo in self._fbos.values():
            for a in list(fbo.color_attachments) + [fbo.depth_attachment]:
                a.release()
            fbo.release()
        for obj in list(self.vaos.values()) + list(self.programs.values()) + [self.vbo, self.ibo]:
            obj.release()
        self._fbos, self.vaos, self.programs, self._scratches = {}, {}, {}, {}
