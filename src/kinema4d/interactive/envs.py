"""Gymnasium environment around the world model: chunked autoregressive closed-loop rollouts (issue 6).

:class:`Kinema4DEnv` turns a :class:`kinema4d.simulator.Simulator` into a ``gymnasium.Env``. An episode starts
from one RGB image of the scene (``reset``); every ``step`` takes a chunk of end-effector pose targets
(``ee_pose`` actions, docs/CONVENTIONS.md), generates the next ``chunk`` frames with the world model and continues
from the last generated frame and the last joint state::

    actions sent to the simulator   [ee(q_k) | a_1 ... a_chunk]                 (chunk + 1, D)
    conditioning image              last generated frame (= frame 0 of the new chunk)
    IK seed (q0)                    last joint state q_k
    rollout                         frames 0 .. chunk; frame 0 re-renders the conditioning image

Registered as ``"kinema4d/Kinema4D-v0"`` when this module is imported (``gymnasium.make("kinema4d/Kinema4D-v0",
simulator=sim)``, or ``gymnasium.make("kinema4d.interactive.envs:kinema4d/Kinema4D-v0")`` to import it on the fly).

Spaces (``D = 8`` for a robot with a gripper: xyz metres + quaternion xyzw + gripper opening in [0, 1], 1 = open;
``D = 7`` without a gripper):

- ``action_space``: Box float32 (chunk, D): pose targets of ``robot.ee_link`` in the world frame for the next
  ``chunk`` frames. Positions must lie in ``workspace`` (default: a box around the robot base holding every pose
  the arm reaches, with 10 % margin), the gripper in [0, 1]. Quaternions are normalised (any non-zero norm is
  accepted); NaN / inf / out-of-bounds values raise ``ValueError`` naming the frame and column.
- ``observation_space``: Dict ``rgb`` Box uint8 (H, W, 3) the latest (generated) frame, ``q`` Box float32 (dof,)
  joint state (``robot.joint_names`` order), ``ee_pose`` Box float32 (D,) the end-effector pose of ``q``.

Reward is 0.0: whether a task succeeded needs a judge of the generated video (e.g. :mod:`kinema4d.eval.judge`),
which is task-specific; pass ``reward_fn(env, rollout, info) -> float`` to compute one. ``terminated`` is always
False; ``truncated`` becomes True after ``max_chunks`` steps (then call ``reset``).

``info`` of ``step``: ``rgb`` (chunk+1, H, W, 3) uint8, ``world_pointmap`` (chunk+1, H, W, 3) float32 metres
(None for RGB-only models), ``robot_pointmap`` (chunk+1, H, W, 3) float32 metres (kinematic, rendered from ``q``),
``robot_mask`` (chunk+1, H, W) bool, ``q`` (chunk+1, dof), ``actions`` (chunk+1, D) as sent to the simulator,
``adherence_mm`` (mean distance of the generated world pointmap to the kinematic robot pointmap on robot pixels,
mm; None without a world pointmap), ``adherence_per_frame_mm`` (chunk+1,), ``chunk_index`` (0-based) and ``seed``
(the sampler seed of this chunk, drawn from ``env.np_random``, so ``reset(seed=s)`` makes an episode reproducible).
The arrays are those of the simulator's rollout, also kept in ``env.history`` (do not modify them in place).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium import spaces

from kinema4d.eval.metrics import robot_adherence
from kinema4d.interactive.media import load_image
from kinema4d.kinematics.robot import Robot, action_dim, joints_to_ee_actions

if TYPE_CHECKING:
    from kinema4d.interactive.viewer import Sequence4D
    from kinema4d.simulator import Rollout, Simulator

ENV_ID = "kinema4d/Kinema4D-v0"
_COLUMNS = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper")


class Kinema4DEnv(gymnasium.Env):
    """Closed-loop world-model environment (module docstring).

    Args:
        simulator: a ready :class:`~kinema4d.simulator.Simulator` (``mode="ee_pose"``; each step's actions are one
            per generated frame, so build it with ``action_rate="model"``: the targets are then spaced as the model's
            training frames, ``simulator.frame_stride`` recorded frames apart); None builds one from
            ``checkpoint`` (default ``kinema4d.simulator.DEFAULT_CHECKPOINT``), ``camera`` (default the demo
            camera, ``DEMO_DIR/camera.json``), ``robot``, ``steps``, ``cfg_scale``.
        image: the initial frame, uint8 (H, W, 3) or an image path; default the demo image ``DEMO_DIR/init.png``.
            Resized to ``simulator.size`` if needed. ``reset(options={"image": ...})`` overrides it per episode.
        q0: initial joint state (dof,); default: from ``DEMO_DIR/demo.json`` ("q0") or the IK of the first demo
            action when the demo image is used, else ``robot.home``. ``reset(options={"q0": ...})`` overrides it.
        pointmap0: frame-0 scene geometry for ``world_anchor`` checkpoints (``simulator.needs_pointmap0``): (H, W, 3)
            camera-space metres or (H, W) depth metres, array or .npy path; default ``DEMO_DIR/pointmap0.npy`` with
            the demo image. ``reset(options={"pointmap0": ...})`` overrides it. Each later chunk starts from the
            last generated world pointmap (as it starts from the last generated frame).
        chunk: new frames per step; default ``simulator.train_frames - 1`` (one full model window per step).
        max_chunks: steps per episode before ``truncated`` (None: never).
        workspace: ((xmin, ymin, zmin), (xmax, ymax, zmax)) world metres allowed for end-effector targets.
        reward_fn: optional ``reward_fn(env, rollout, info) -> float``; default reward 0.0.
        render_mode: None or "rgb_array" (``render()`` returns the latest frame).
        seed: default seed of the first ``reset()`` without a seed.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, simulator: Simulator | None = None, checkpoint=None, image=None, camera=None,
                 robot: str | Robot = "panda", chunk: int | None = None, max_chunks: int | None = 3, steps: int = 20,
                 cfg_scale: float = 1.0, seed: int = 0, q0=None, workspace=None,
                 reward_fn: Callable[[Kinema4DEnv, Any, dict], float] | None = None,
                 render_mode: str | None = None, keep_history: bool = True, pointmap0=None,
                 ee_link: str | None = None, gripper_joints=None, package_dirs=None, base_pose=None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        use_demo = simulator is None and checkpoint is None and camera is None
        if simulator is None:
            from kinema4d import simulator as simmod

            ckpt = checkpoint if checkpoint is not None else simmod.DEFAULT_CHECKPOINT
            cam = camera
            if cam is None:  # the demo camera, at the checkpoint's training size
                from kinema4d.kinematics.camera import Camera

                cam = Camera.load(Path(simmod.DEMO_DIR) / "camera.json")
                size = (simmod.resolve_checkpoint(ckpt).train_config or {}).get("size")
                if size is not None and (cam.height, cam.width) != tuple(size):
                    cam = cam.resized(width=int(size[1]), height=int(size[0]))
            simulator = simmod.Simulator(ckpt, robot=robot, camera=cam, mode="ee_pose", steps=steps,
                                         cfg_scale=cfg_scale, seed=seed, action_rate="model", ee_link=ee_link,
                                         gripper_joints=gripper_joints, package_dirs=package_dirs,
                                         base_pose=base_pose)
        elif any(v is not None for v in (ee_link, gripper_joints, package_dirs, base_pose)):
            raise ValueError("ee_link / gripper_joints / package_dirs / base_pose build the simulator's robot: pass "
                             "them to the Simulator you give, or give no simulator")
        mode = getattr(simulator, "mode", "ee_pose")
        if mode != "ee_pose":
            raise ValueError(f"Kinema4DEnv needs a Simulator with mode='ee_pose', got mode={mode!r}")
        self.simulator = simulator
        self.robot: Robot = simulator.robot
        self.camera = simulator.camera
        if simulator.size is None or (chunk is None and simulator.train_frames is None):
            raise ValueError("the simulator's checkpoint has no train_config.json (image size / frames unknown): "
                             "Kinema4DEnv needs simulator.size, and chunk= when train_frames is unknown")
        self.H, self.W = (int(v) for v in simulator.size)
        self.action_dim = action_dim(self.robot, "ee_pose")
        self.chunk = int(simulator.train_frames - 1 if chunk is None else chunk)
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1 new frames per step, got {self.chunk}")
        if max_chunks is not None and max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1 or None, got {max_chunks}")
        self.max_chunks = max_chunks
        self.reward_fn = reward_fn
        self.render_mode = render_mode
        self.keep_history = keep_history
        self._default_seed = int(seed)

        if image is None:
            from kinema4d import simulator as simmod

            demo_img = Path(simmod.DEMO_DIR) / "init.png"
            if not demo_img.is_file():
                raise ValueError(f"no initial image: pass image= (uint8 (H, W, 3) or a path); the demo image "
                                 f"{demo_img} does not exist")
            image = demo_img
            use_demo = use_demo or q0 is None
            if pointmap0 is None and (demo_img.parent / "pointmap0.npy").is_file():
                pointmap0 = demo_img.parent / "pointmap0.npy"
        self.resampled: dict = {}  # inputs given at the native camera's size, resampled to the model's (K scaled)
        self._image0 = self._load_image(image)
        self._pointmap0 = self._load_pointmap0(pointmap0)
        if q0 is None and use_demo:
            q0 = _demo_q0(self.robot)
        self._q_init = self._check_q0(self.robot.home if q0 is None else q0)

        self.workspace = np.asarray(_default_workspace(self.robot) if workspace is None else workspace, np.float64)
        if self.workspace.shape != (2, 3) or not np.all(self.workspace[0] < self.workspace[1]):
            raise ValueError(f"workspace must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with min < max, got "
                             f"{self.workspace.tolist()}")
        g = 1 if self.robot.gripper_joint else 0
        lo = np.concatenate([self.workspace[0], -np.ones(4), np.zeros(g)]).astype(np.float32)
        hi = np.concatenate([self.workspace[1], np.ones(4), np.ones(g)]).astype(np.float32)
        self.action_space = spaces.Box(np.tile(lo, (self.chunk, 1)), np.tile(hi, (self.chunk, 1)),
                                       dtype=np.float32)
        qlo, qhi = self.robot.joint_limits[:, 0], self.robot.joint_limits[:, 1]
        qlo, qhi = np.where(np.isfinite(qlo), qlo, -4 * np.pi), np.where(np.isfinite(qhi), qhi, 4 * np.pi)
        # observation bounds cover every reachable pose (the workspace default does, custom ones might not)
        reach = _default_workspace(self.robot)
        olo, ohi = lo.copy(), hi.copy()
        olo[:3], ohi[:3] = np.minimum(lo[:3], reach[0]), np.maximum(hi[:3], reach[1])
        self.observation_space = spaces.Dict({
            "rgb": spaces.Box(0, 255, (self.H, self.W, 3), dtype=np.uint8),
            "q": spaces.Box(qlo.astype(np.float32), qhi.astype(np.float32), dtype=np.float32),
            "ee_pose": spaces.Box(olo, ohi, dtype=np.float32),
        })
        fps = getattr(simulator, "fps", None)
        if fps:
            self.metadata = {**self.metadata, "render_fps": fps}

        self.history: list[Rollout] = []
        self._frame: np.ndarray | None = None
        self._pointmap: np.ndarray | None = None
        self._q: np.ndarray | None = None
        self._chunk_index = 0
        self._needs_reset = True

    # ------------------------------------------------------------------ helpers
    def _load_pointmap0(self, pointmap0) -> np.ndarray | None:
        if not getattr(self.simulator, "needs_pointmap0", False):
            return None
        if pointmap0 is None:
            raise ValueError("the checkpoint is a world_anchor model: pass pointmap0= (the frame-0 world pointmap "
                             "(H, W, 3) or depth (H, W) in metres of the initial image)")
        from kinema4d.simulator import load_npy, load_pointmap0, resize_pointmap

        native = getattr(self.simulator, "native_camera", self.camera)
        src = load_npy(pointmap0) if isinstance(pointmap0, str | Path) else pointmap0
        if native is not self.camera and np.shape(src)[:2] == (native.height, native.width):
            self.resampled["pointmap0"] = [native.width, native.height]
            warnings.warn(f"pointmap0 is {native.width}x{native.height} (the camera's size): resampled to the "
                          f"model's {self.W}x{self.H}", stacklevel=3)
            return resize_pointmap(load_pointmap0(src, native), self.H, self.W)
        return load_pointmap0(src, self.camera)

    def _load_image(self, image) -> np.ndarray:
        """``kinema4d.interactive.media.load_image``, then brought to the model's size (H, W): resampled from the
        native camera's size (K scaled), else stretched with a warning if the aspect ratio differs."""
        img = load_image(image, "initial image")
        native = getattr(self.simulator, "native_camera", self.camera)
        if img.shape[:2] != (self.H, self.W) and img.shape[:2] == (native.height, native.width):
            from kinema4d.simulator import resize_image

            self.resampled["image"] = [native.width, native.height]
            warnings.warn(f"image is {native.width}x{native.height} (the camera's size): resampled to the model's "
                          f"{self.W}x{self.H}, K scaled", stacklevel=3)
            img = resize_image(img, self.H, self.W)
        if img.shape[:2] != (self.H, self.W):
            from PIL import Image

            h, w = img.shape[:2]
            if abs(w / h - self.W / self.H) > 0.01 * self.W / self.H:
                warnings.warn(f"initial image is {w}x{h} but the model runs at {self.W}x{self.H} (another aspect "
                              "ratio); stretching it", stacklevel=3)
            img = np.asarray(Image.fromarray(img).resize((self.W, self.H), Image.BILINEAR))
        return np.ascontiguousarray(img, dtype=np.uint8)

    def _check_q0(self, q0) -> np.ndarray:
        q = self.robot.check_q(q0, "q0")
        if q.shape[0] != 1:
            raise ValueError(f"q0 must be one joint vector ({self.robot.dof},), got shape {np.shape(q0)}")
        q = q[0]
        lo, hi = self.robot.joint_limits[:, 0], self.robot.joint_limits[:, 1]
        out = (q < lo - 1e-6) | (q > hi + 1e-6)
        if out.any():
            j = int(np.flatnonzero(out)[0])
            raise ValueError(f"q0 joint {self.robot.joint_names[j]!r} = {q[j]:.4f} is outside its limits "
                             f"[{lo[j]:.4f}, {hi[j]:.4f}]")
        return self.robot.clip_to_limits(q)

    def ee_pose(self, q=None) -> np.ndarray:
        """End-effector action vector (D,) float64 of joint state ``q`` (default: the current one)."""
        q = self._q if q is None else q
        return joints_to_ee_actions(self.robot, np.asarray(q, np.float64)[None])[0]

    def check_action(self, action) -> np.ndarray:
        """Validate a (chunk, D) action chunk -> float64 copy with unit quaternions; ValueError otherwise."""
        a = np.array(action, dtype=np.float64)
        if a.ndim == 1 and self.chunk == 1:
            a = a[None]
        if a.shape != (self.chunk, self.action_dim):
            raise ValueError(f"action must have shape (chunk={self.chunk}, {self.action_dim}) "
                             f"({', '.join(_COLUMNS[:self.action_dim])}), got {a.shape}")
        bad = ~np.isfinite(a)
        if bad.any():
            t, j = np.argwhere(bad)[0]
            raise ValueError(f"action frame {t}: {_COLUMNS[j]} is {a[t, j]} (NaN / inf)")
        lo, hi = self.workspace
        for j in range(3):
            out = (a[:, j] < lo[j] - 1e-6) | (a[:, j] > hi[j] + 1e-6)
            if out.any():
                t = int(np.flatnonzero(out)[0])
                raise ValueError(f"action frame {t}: {_COLUMNS[j]} = {a[t, j]:.4f} m is outside the workspace "
                                 f"[{lo[j]:.3f}, {hi[j]:.3f}] m")
        norms = np.linalg.norm(a[:, 3:7], axis=1)
        if np.any(norms < 1e-6):
            t = int(np.flatnonzero(norms < 1e-6)[0])
            raise ValueError(f"action frame {t}: quaternion (qx, qy, qz, qw) has zero norm")
        a[:, 3:7] /= norms[:, None]
        if self.action_dim == 8:
            out = (a[:, 7] < -1e-6) | (a[:, 7] > 1 + 1e-6)
            if out.any():
                t = int(np.flatnonzero(out)[0])
                raise ValueError(f"action frame {t}: gripper = {a[t, 7]:.4f} is outside [0, 1] (0 closed, 1 open)")
            a[:, 7] = np.clip(a[:, 7], 0.0, 1.0)
        return a

    def _obs(self) -> dict[str, np.ndarray]:
        sp = self.observation_space["ee_pose"]
        ee = np.clip(self.ee_pose().astype(np.float32), sp.low, sp.high)
        return {"rgb": self._frame.copy(), "q": self._q.astype(np.float32), "ee_pose": ee}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode from ``options["image"]`` / ``options["q0"]`` (default: the constructor's)."""
        if seed is None and self._np_random is None:
            seed = self._default_seed
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"image", "q0", "pointmap0"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; known: 'image', 'q0', 'pointmap0'")
        self._frame = self._load_image(options["image"]) if options.get("image") is not None else self._image0.copy()
        self._pointmap = self._load_pointmap0(options["pointmap0"]) if options.get("pointmap0") is not None \
            else self._pointmap0
        self._q = self._check_q0(options["q0"]) if options.get("q0") is not None else self._q_init.copy()
        self._chunk_index = 0
        self._needs_reset = False
        self.history = []
        return self._obs(), {"resampled": dict(self.resampled)}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("call reset() first (the episode has not started or was truncated)")
        a = self.check_action(action)
        actions = np.concatenate([self.ee_pose()[None], a])
        seed = int(self.np_random.integers(0, 2**31 - 1))
        kw = {} if self._pointmap is None else {"pointmap0": self._pointmap}
        ro = self.simulator.rollout(self._frame, actions, q0=self._q.copy(), seed=seed, **kw)
        T = self.chunk + 1
        if ro.rgb.shape != (T, self.H, self.W, 3):
            raise RuntimeError(f"simulator returned rgb of shape {ro.rgb.shape}, expected {(T, self.H, self.W, 3)}")
        adh = robot_adherence(ro.world_pointmap, ro.robot_pointmap, ro.robot_mask) \
            if ro.world_pointmap is not None else None
        info = {
            "rgb": ro.rgb,
            "world_pointmap": ro.world_pointmap,
            "robot_pointmap": ro.robot_pointmap,
            "robot_mask": ro.robot_mask,
            "q": np.asarray(ro.q),
            "actions": actions,
            "adherence_mm": None if adh is None else float(adh["mean_mm"]),
            "adherence_per_frame_mm": None if adh is None else np.asarray(adh["per_frame_mm"], np.float64),
            "chunk_index": self._chunk_index,
            "seed": seed,
        }
        self._frame = np.array(ro.rgb[-1], dtype=np.uint8)
        if self._pointmap is not None and ro.world_pointmap is not None:
            self._pointmap = np.array(ro.world_pointmap[-1], dtype=np.float32)
        self._q = self.robot.clip_to_limits(np.asarray(ro.q[-1], np.float64))
        if self.keep_history:
            self.history.append(ro)
        self._chunk_index += 1
        truncated = self.max_chunks is not None and self._chunk_index >= self.max_chunks
        self._needs_reset = truncated
        reward = 0.0 if self.reward_fn is None else float(self.reward_fn(self, ro, info))
        return self._obs(), reward, False, truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return None if self._frame is None else self._frame.copy()
        return None

    # ------------------------------------------------------------------ episode export
    def episode_sequence(self) -> Sequence4D:
        """The episode so far (``env.history``) as one :class:`kinema4d.interactive.viewer.Sequence4D`: chunk 0's
        frames, then frames 1.. of every later chunk (its frame 0 repeats the previous chunk's last frame)."""
        from kinema4d.interactive.viewer import Sequence4D

        if not self.history:
            raise ValueError("no chunks generated yet (or keep_history=False)")

        def cat(name):
            parts = [getattr(r, name) for r in self.history]
            if any(p is None for p in parts):
                return None
            return np.concatenate([parts[0]] + [p[1:] for p in parts[1:]])

        r0 = self.history[0]
        return Sequence4D(camera=self.camera, rgb=cat("rgb"), world_pointmap=cat("world_pointmap"),
                          robot_pointmap=cat("robot_pointmap"), robot_mask=cat("robot_mask"), q=cat("q"),
                          robot_name=getattr(r0, "robot_name", None), fps=getattr(r0, "fps", 10.0) or 10.0,
                          T_world_base=self.robot.T_world_base)


# ---------------------------------------------------------------------- module helpers
_WORKSPACE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # robot -> (2, 3)


def _default_workspace(robot: Robot) -> np.ndarray:
    """(2, 3) world box around the base holding every end-effector position (1024 random configurations' max
    distance from the base, + 10 %)."""
    key = robot
    if key not in _WORKSPACE_CACHE:
        q = robot.random_q(1024, np.random.default_rng(0), margin=0.0)
        p = robot.fk(q, [robot.ee_link])[robot.ee_link][:, :3, 3]
        base = robot.T_world_base[:3, 3]
        r = 1.1 * float(np.linalg.norm(p - base, axis=1).max())
        _WORKSPACE_CACHE[key] = np.stack([base - r, base + r])
    return _WORKSPACE_CACHE[key].copy()


def _demo_q0(robot: Robot) -> np.ndarray:
    """Joint state of the demo image: ``DEMO_DIR/demo.json`` "q0", else IK of the first demo action from home."""
    import json

    from kinema4d import simulator as simmod
    from kinema4d.kinematics.robot import actions_to_joints

    d = Path(simmod.DEMO_DIR)
    meta = json.loads((d / "demo.json").read_text()) if (d / "demo.json").is_file() else {}
    if meta.get("q0") is not None and len(meta["q0"]) == robot.dof:
        return np.asarray(meta["q0"], np.float64)
    if (d / "actions.npy").is_file():
        a = np.load(d / "actions.npy")
        if a.ndim == 2 and a.shape[1] == action_dim(robot, "ee_pose"):
            return actions_to_joints(robot, a[:1], "ee_pose").q[0]
    return robot.home.copy()


def arc_chunk(ee_pose, chunk: int, radius: float = 0.04, angle: float = np.pi / 4) -> np.ndarray:
    """A scripted policy step: (chunk, D) targets moving the end effector from ``ee_pose`` (D,) along a horizontal
    arc of ``angle`` radians on a circle of ``radius`` metres (centre ``radius`` behind it along world -x),
    orientation and gripper held. Successive calls continue the motion from each new pose."""
    ee = np.asarray(ee_pose, np.float64)
    theta = angle * np.arange(1, chunk + 1) / chunk
    out = np.tile(ee, (chunk, 1))
    out[:, 0] += radius * (np.cos(theta) - 1.0)
    out[:, 1] += radius * np.sin(theta)
    return out


def register() -> None:
    """Register ``"kinema4d/Kinema4D-v0"`` with gymnasium (idempotent; done at import of this module)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="kinema4d.interactive.envs:Kinema4DEnv")


register()
