"""The end-to-end simulator: initial image + action sequence -> 4D rollout (RGB video + world pointmap video).

    from kinema4d import Simulator
    sim = Simulator()                                    # the bundled checkpoint, Panda, its demo camera
    ro = sim.rollout("init.png", actions, pointmap0="depth0.npy")  # actions (T, 8) ee_pose: xyz, quat xyzw,
                                                         # gripper; pointmap0: frame-0 depth / pointmap (metres)
    ro.save("out/run")                                   # rgb.mp4, pointmap.mp4, rollout.npz (+ ply/ on request)

Stages (paper Sec. 3): the kinematic stage (``robot.actions_to_joints`` with a seeded IK, ``render.render_robot``)
turns the actions into a robot pointmap sequence seen by the camera, which conditions the generative model
(``model.sample``). Normalization: ``world_anchor`` models (the bundled one) also take the frame-0 world pointmap
and normalize every pointmap with stats known at inference (``pointmap.anchor_stats``), so their output converts to
metres exactly; paper-style models take the robot pointmap min-max normalized over the sequence
(``pointmap.normalize_pointmap``) and their normalized world pointmap is brought back to metres by fitting it to the
known robot pointmap on robot pixels (``pointmap.denormalize_world_pointmap``).

``kinema4d simulate`` (:class:`SimulateConfig`, :func:`simulate_main`) is the command-line entry.

Why ~690 lines in one file: it is the one user-facing entry of the whole pipeline, read top to bottom by someone
who wants to know what ``Simulator.rollout`` does with their inputs: where the weights come from
(:func:`resolve_checkpoint`), what comes back (:class:`Rollout`), how an image / depth of the user's camera is
brought to the model's size (:func:`load_pointmap0`, :func:`resize_image`), the stages themselves
(:class:`Simulator`, ~310 lines) and the command line that calls them. Each part is used by the next one only;
the stages it chains live in their own modules (kinematics, model, pointmap).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import kinema4d
from kinema4d.geometry import matrix_to_pose
from kinema4d.interactive.exports import export_ply
from kinema4d.interactive.media import load_image, video_to_uint8
from kinema4d.interactive.viewer import ROLLOUT_FILE, Sequence4D, save_rollout_npz
from kinema4d.kinematics.camera import Camera, demo_camera
from kinema4d.kinematics.control import RobotArgs, resolve_robot_args
from kinema4d.kinematics.robot import ACTION_MODES, BUILTIN_ROBOTS, Robot, action_dim, load_robot

_log = logging.getLogger("kinema4d.simulator")
ASSETS = Path(kinema4d.__file__).parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default_model"
"""Bundled model: model_config.json, train_config.json, model.safetensors (EMA weights)."""
DEMO_DIR = ASSETS / "demo"
"""Bundled demo inputs: init.png, camera.json (Camera JSON), actions.npy (T, 8) ee_pose, demo.json."""
DEMO_FILES = ("init.png", "camera.json", "actions.npy", "demo.json")

_TRAIN_HINT = ("train one with `kinema4d train default --out-dir runs/default` (the `default` preset, after "
               "`kinema4d datagen` wrote its data) and pass `--checkpoint runs/default`, or copy a checkpoint "
               "directory (model_config.json, train_config.json, model.safetensors) there")


# ---------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where the weights of a checkpoint live: ``dir`` holds ``model_config.json`` and ``weights`` (a file name in
    ``dir``: ema.safetensors preferred, else model.safetensors); ``train_config`` is the parsed train_config.json
    (dict) of the checkpoint or its run directory, or None."""

    dir: Path
    weights: str
    train_config: dict | None


def resolve_checkpoint(path: str | os.PathLike) -> ResolvedCheckpoint:
    """A trainer checkpoint dir (``ckpt/step_XXXXXXX``), a run dir (uses ``ckpt/latest.json``) or a bundled model
    dir -> :class:`ResolvedCheckpoint`. Raises FileNotFoundError saying what is expected."""
    p = Path(path)
    bundled = p.resolve() == DEFAULT_CHECKPOINT.resolve()
    if not p.is_dir():
        if bundled:
            raise FileNotFoundError(f"the bundled model is missing ({p} does not exist); {_TRAIN_HINT}")
        raise FileNotFoundError(f"checkpoint directory not found: {p}")
    run_dir = None
    if not (p / "model_config.json").is_file() and (p / "ckpt" / "latest.json").is_file():
        from kinema4d.model.checkpoint import latest_checkpoint

        run_dir, p = p, latest_checkpoint(p)
        if not p.is_dir():
            raise FileNotFoundError(f"{run_dir / 'ckpt' / 'latest.json'} names {p}, which does not exist")
    if not (p / "model_config.json").is_file():
        hint = f"; {_TRAIN_HINT}" if bundled else ""
        raise FileNotFoundError(f"no checkpoint at {p}: expected model_config.json + ema.safetensors or "
                                f"model.safetensors (a trainer ckpt/step_XXXXXXX dir or a run dir with "
                                f"ckpt/latest.json){hint}")
    weights = next((w for w in ("ema.safetensors", "model.safetensors") if (p / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"checkpoint {p} has model_config.json but no ema.safetensors / model.safetensors")
    tc = None
    for d in (p, run_dir):
        if d is not None and (d / "train_config.json").is_file():
            try:
                tc = json.loads((d / "train_config.json").read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"checkpoint {p}: {d / 'train_config.json'} is not valid JSON: {e}") from None
            break
    return ResolvedCheckpoint(dir=p, weights=weights, train_config=tc)


# ---------------------------------------------------------------------- the rollout
@dataclass(frozen=True)
class Rollout(Sequence4D):
    """One generated 4D rollout of T frames of H x W pixels (camera space, OpenCV frame, docs/CONVENTIONS.md).

    A :class:`~kinema4d.interactive.viewer.Sequence4D` (the viewer and the exporters take it as it is) whose
    ``rgb``, ``robot_pointmap``, ``robot_mask``, ``q`` and ``robot_name`` are always set, plus what generation adds:

    - ``rgb``: (T, H, W, 3) uint8 generated frames (frame 0 re-generates the initial image).
    - ``world_pointmap``: (T, H, W, 3) float32 camera-space metres of the whole scene. ``world_anchor`` models:
      de-normalized exactly with the stats they were fed (``pointmap.anchor_stats``), 0 where the model generated
      'empty' (``pointmap.generated_valid``); other models: by fitting the generated values to
      ``robot_pointmap`` on ``robot_mask`` pixels (``pointmap.denormalize_world_pointmap``), dense (points with
      z <= 0 are not physical; viewers skip them). None for a model with ``output='rgb_only'``.
    - ``world_pointmap01``: (T, H, W, 3) float32 in [0, 1], the normalized world pointmap as generated (None for
      ``rgb_only``).
    - ``robot_pointmap``: (T, H, W, 3) float32 camera-space metres of the robot (kinematic render), 0 where empty.
    - ``robot_mask``: (T, H, W) bool robot pixels.
    - ``q``: (T, dof) float64 joints in ``robot.joint_names`` order.
    - ``camera``: the :class:`Camera` (W x H) everything is expressed in.
    - ``robot_name``: builtin robot name or URDF path.
    - ``fps``: frames per second of the videos.
    - ``robot_stats``: (2, 3) float64 [min; max] metres of the robot pointmap's normalization (the anchor stats
      for ``world_anchor`` models).
    - ``world_fit``: (2, 3) float64 [scale; offset] per channel, metres = scale * world01 + offset (or None).
    - ``info``: timings (seconds) and sampling settings; ``info["resampled"]``: what was resampled to the model's
      size (None: the inputs had it).
    - ``T_world_base``: (4, 4) the robot's base pose in the world (None: identity).
    """

    world_pointmap01: np.ndarray | None = None
    robot_stats: np.ndarray | None = None
    world_fit: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        missing = [k for k in ("rgb", "robot_pointmap", "robot_mask", "q", "robot_name") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"Rollout needs {', '.join(missing)} (every generated rollout has them)")
        super().__post_init__()
        if self.world_pointmap01 is not None and np.shape(self.world_pointmap01) != self.rgb.shape:
            raise ValueError(f"Rollout.world_pointmap01 must have the shape of rgb {self.rgb.shape}, got "
                             f"{np.shape(self.world_pointmap01)}")

    def to_sequence(self) -> Sequence4D:
        """The rollout for the viewer and the exporters: itself (a Rollout is a Sequence4D; kept for older code)."""
        return self

    def pointmap_video(self) -> np.ndarray:
        """uint8 (T, H, W', 3): pseudo-coloured world pointmap | robot pointmap, one colour scale (the world's)."""
        from kinema4d.interactive.media import hstack_videos, pointmap_to_rgb

        if self.world_pointmap is None:
            return pointmap_to_rgb(self.robot_pointmap, self.robot_mask)
        valid = self.world_pointmap[..., 2] > 0
        pts = self.world_pointmap[valid] if valid.any() else self.robot_pointmap[self.robot_mask]
        lo, hi = (pts.min(0), pts.max(0)) if len(pts) else (None, None)
        return hstack_videos(pointmap_to_rgb(self.world_pointmap, valid, lo, hi),
                             pointmap_to_rgb(self.robot_pointmap, self.robot_mask, lo, hi))

    def save(self, out_dir: str | os.PathLike, ply: bool = False) -> dict[str, Path]:
        """Write ``rgb.mp4``, ``pointmap.mp4`` (world | robot pointmap), ``rollout.npz`` (the rollout format of
        :mod:`kinema4d.interactive.viewer`, readable by ``kinema4d view``) and, with ``ply``, ``ply/frame_<t>.ply``
        (world points coloured by rgb; robot points without a world pointmap). All writes are atomic.
        Returns {kind: path}."""
        from kinema4d.interactive.media import write_video

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = {
            "rgb": write_video(out / "rgb.mp4", self.rgb, fps=self.fps),
            "pointmap": write_video(out / "pointmap.mp4", self.pointmap_video(), fps=self.fps),
            "rollout": save_rollout_npz(out / ROLLOUT_FILE, self),
        }
        if ply:
            export_ply(self, out / "ply", source="world" if self.world_pointmap is not None else "robot")
            written["ply"] = out / "ply"
        return written


# ---------------------------------------------------------------------- the simulator
def load_pointmap0(pointmap0, camera: Camera) -> np.ndarray:
    """Frame-0 scene geometry -> (H, W, 3) float32 camera-space metres, 0 where unmeasured.

    ``pointmap0``: a .npy path or array, either (H, W, 3) camera-space metres (OpenCV frame) or (H, W) z-depth
    metres (unprojected with ``camera.K``); NaN / inf / z <= 0 count as unmeasured."""
    src = "pointmap0"
    if isinstance(pointmap0, (str, os.PathLike)):
        src = str(pointmap0)
        if not Path(pointmap0).is_file():
            raise FileNotFoundError(f"pointmap0 file {src} does not exist")
        try:
            pointmap0 = np.load(pointmap0, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{src} is not a plain .npy array: {e}") from None
    a = np.asarray(pointmap0, dtype=np.float64)
    H, W = camera.height, camera.width
    if a.shape == (H, W):
        a = camera.depth_to_pointmap(a).astype(np.float64)
    elif a.shape != (H, W, 3):
        raise ValueError(f"{src} has shape {a.shape}: expected a pointmap ({H}, {W}, 3) or a depth map ({H}, {W}) "
                         f"in metres for the {W}x{H} camera")
    ok = np.isfinite(a).all(-1) & (a[..., 2] > 0)
    if not ok.any():
        raise ValueError(f"{src} has no valid point (every pixel is NaN/inf or has z <= 0)")
    return np.where(ok[..., None], a, 0.0).astype(np.float32)


def load_npy(path) -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"pointmap0 file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path} is not a plain .npy array: {e}") from None


def resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w, 3) -> (height, width, 3): area average when shrinking, bilinear when enlarging (as
    ``TorchEpisodes`` resizes training data)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    down = height <= img.shape[0] and width <= img.shape[1]
    x = F.interpolate(x, size=(height, width), mode="area") if down else \
        F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_pointmap(pm: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) camera-frame metres (0 = empty) -> (height, width, 3), nearest (centre-aligned), as
    ``TorchEpisodes`` resizes pointmaps: no point is blended across a depth edge."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(pm, dtype=np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(height, width), mode="nearest-exact")[0].permute(1, 2, 0).numpy()


class Simulator:
    """Action-conditioned 4D simulator around one trained checkpoint.

    - ``checkpoint``: a trainer checkpoint dir (``<run>/ckpt/step_XXXXXXX``), a run dir (its ``ckpt/latest.json``)
      or the bundled :data:`DEFAULT_CHECKPOINT`; ``ema.safetensors`` is preferred over ``model.safetensors``.
    - ``robot``: builtin name (panda, kuka_iiwa, xarm6), a URDF path, or a :class:`Robot`.
    - ``camera``: a :class:`Camera`, a Camera JSON path, or None = ``camera.demo_camera`` at the training size.
    - ``mode``: action mode (joint_pos | joint_vel | ee_pose), see ``robot.actions_to_joints``.
    - ``steps`` / ``cfg_scale`` / ``seed``: sampling (Euler flow-matching steps, classifier-free guidance scale,
      default noise seed); ``dt`` seconds per action step (joint_vel); ``fps`` of the saved videos.
    - ``device``: where the model runs (``auto | cpu | cuda[:N]``, ``kinema4d.model.device.resolve_device``);
      ``dtype``: cast the model's weights (``"bf16"``; None = float32). Rollouts come back as CPU numpy arrays.
    - ``backbone``: for a RELEASED Kinema4D checkpoint (a dir with ``pytorch_lora_weights.safetensors`` +
      ``added_weights.safetensors``, ``kinema4d.model.release``), the local diffusers Wan2.1-I2V directory.

    ``size`` (H, W) and ``train_frames`` come from the checkpoint's train_config.json (None without it).

    Frame spacing: the model was trained on ``train_frames`` frames uniformly subsampled from episodes of
    ``episode_frames`` recorded frames (49 for the data engine), i.e. one generated frame every ``frame_stride``
    recorded frames. ``action_rate="episode"`` (default): actions come one per recorded frame (as the data engine
    records them) and ``rollout`` runs the kinematic stage on all of them but generates the frames at the trained
    spacing: T actions with (T - 1) % frame_stride == 0 give 1 + (T - 1) / frame_stride frames (49 -> 9); any
    other T is an error. ``action_rate="model"``: actions come one per generated frame, already at the trained
    spacing (the closed-loop env's chunks). No other spacing is ever fed to the model.
    """

    def __init__(self, checkpoint: str | os.PathLike = DEFAULT_CHECKPOINT, robot: str | Robot = "panda",
                 camera: Camera | str | os.PathLike | None = None, mode: str = "ee_pose", steps: int = 20,
                 cfg_scale: float = 1.0, seed: int = 0, dt: float = 0.1, fps: float = 10.0,
                 action_rate: str = "episode", device: str = "auto", dtype: str | None = None,
                 backbone: str | os.PathLike | None = None, ee_link: str | None = None, gripper_joints=None,
                 package_dirs=None, base_pose=None, gripper_open: float | None = None,
                 gripper_closed: float | None = None):
        from kinema4d.model.checkpoint import load_model
        from kinema4d.model.device import resolve_device
        from kinema4d.model.release import is_release_checkpoint, load_release

        if mode not in ACTION_MODES:
            raise ValueError(f"mode {mode!r} is not one of {ACTION_MODES}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if action_rate not in ("episode", "model"):
            raise ValueError(f"action_rate must be 'episode' (one action per recorded frame) or 'model' (one per "
                             f"generated frame), got {action_rate!r}")
        self.device = resolve_device(device)
        if is_release_checkpoint(checkpoint):  # the released Kinema4D files on a local Wan2.1-I2V backbone
            if backbone is None:
                raise ValueError(f"{checkpoint} holds released Kinema4D weights: pass backbone, the LOCAL diffusers "
                                 "Wan2.1-I2V directory (transformer/, vae/, image_encoder/)")
            self.model, self.codec, info = load_release(checkpoint, backbone, self.device, dtype)
            tc = {"size": list(info["size"]), "frames": info["frames"], "episode_frames": info["frames"]}
            self.ckpt = ResolvedCheckpoint(dir=Path(checkpoint), weights="added_weights.safetensors", train_config=tc)
        else:
            self.ckpt = resolve_checkpoint(checkpoint)
            try:
                self.model, self.codec = load_model(self.ckpt.dir, weights=self.ckpt.weights, device=self.device,
                                                    dtype=dtype)
            except FileNotFoundError:
                raise
            except Exception as e:  # config / weights mismatch, unreadable JSON or safetensors
                raise ValueError(f"checkpoint {self.ckpt.dir} cannot be loaded ({self.ckpt.weights}): "
                                 f"{type(e).__name__}: {e}") from None
        self.checkpoint = self.ckpt.dir
        tc = self.ckpt.train_config or {}
        self.size: tuple[int, int] | None = tuple(int(v) for v in tc["size"]) if "size" in tc else None
        self.train_frames: int | None = int(tc["frames"]) if "frames" in tc else None
        # checkpoints from before train_config recorded it were trained on 49-frame data-engine episodes (the only
        # length datagen wrote) or on synthetic episodes of exactly `frames` frames (data = None)
        ep = tc.get("episode_frames") or (49 if tc.get("data") else self.train_frames)
        self.episode_frames: int | None = None if ep is None else int(ep)
        self.frame_stride = 1
        if self.train_frames is not None and self.train_frames > 1 and self.episode_frames != self.train_frames:
            stride = (self.episode_frames - 1) / (self.train_frames - 1)
            if stride != int(stride):
                raise ValueError(f"checkpoint {self.ckpt.dir} was trained on {self.train_frames} of "
                                 f"{self.episode_frames} frames, not a whole frame stride: no action spacing matches")
            self.frame_stride = int(stride)
        self.action_rate = action_rate
        if isinstance(robot, Robot):
            self.robot = robot
            self.robot_name = robot.name if robot.name in BUILTIN_ROBOTS else str(robot.urdf_path)
        else:
            opts = {"ee_link": ee_link, "gripper_joints": gripper_joints, "package_dirs": package_dirs,
                    "base_pose": base_pose, "gripper_open": gripper_open, "gripper_closed": gripper_closed}
            self.robot = load_robot(str(robot), **{k: v for k, v in opts.items() if v is not None})
            self.robot_name = str(robot)
        if camera is None:
            if self.size is None:
                raise ValueError(f"checkpoint {self.ckpt.dir} has no train_config.json to take the image size "
                                 "from: pass a camera")
            camera = demo_camera(width=self.size[1], height=self.size[0])
        elif not isinstance(camera, Camera):
            camera = Camera.load(camera)
        self.native_camera = camera  # the camera of the user's images (any size)
        self.camera = camera  # the camera at the model's size: what the model sees and the rollout is in
        self.resampled: dict | None = None
        if self.size is not None and (camera.height, camera.width) != self.size:
            self.camera = camera.resized(width=self.size[1], height=self.size[0])
            w, h, W, H = camera.width, camera.height, self.size[1], self.size[0]
            self.resampled = {"from_wh": [w, h], "to_wh": [W, H], "aspect_changed": abs(w / h - W / H) > 0.01 * W / H}
            _log.info("the camera is %dx%d (W x H); the model runs at %dx%d: images, depth and K are resampled to it%s",
                      w, h, W, H, " (another aspect ratio: the image is stretched)" if self.resampled[
                          "aspect_changed"] else "")
        self.mode, self.steps, self.cfg_scale, self.seed, self.dt, self.fps = mode, steps, cfg_scale, seed, dt, fps

    def __repr__(self) -> str:
        return (f"Simulator(checkpoint={str(self.ckpt.dir)!r}, weights={self.ckpt.weights!r}, robot="
                f"{self.robot_name!r}, size={self.size}, train_frames={self.train_frames}, mode={self.mode!r})")

    @property
    def action_dim(self) -> int:
        return action_dim(self.robot, self.mode)

    def describe(self) -> dict:
        """JSON-able summary of the simulator (checkpoint, weights, sizes, sampling settings)."""
        return {"checkpoint": str(self.ckpt.dir), "weights": self.ckpt.weights, "robot": self.robot_name,
                "mode": self.mode, "size_hw": None if self.size is None else list(self.size),
                "train_frames": self.train_frames, "episode_frames": self.episode_frames,
                "frame_stride": self.frame_stride, "action_rate": self.action_rate, "steps": self.steps,
                "cfg_scale": self.cfg_scale, "device": str(self.device), "camera": self.camera.to_dict(),
                "model": dataclasses.asdict(self.model.cfg)}

    def frame_indices(self, T: int) -> np.ndarray:
        """Indices (T',) int of the actions whose times the model generates (see the class docstring: frame
        spacing). Raises ValueError when T actions do not fit the trained spacing."""
        if self.action_rate == "model" or self.frame_stride == 1:
            return np.arange(T)
        k = self.frame_stride
        if (T - 1) % k:
            raise ValueError(f"{T} actions do not fit the model's frame spacing: it was trained on one frame every "
                             f"{k} recorded frames ({self.train_frames} of {self.episode_frames}), so it needs T = 1 + "
                             f"{k}n actions at the recording rate (e.g. {self.episode_frames}); or pass "
                             "action_rate='model' if the actions are already one per generated frame at that spacing")
        return np.arange(0, T, k)

    def kinematic_stage(self, actions, q0=None, frames=None):
        """actions (T, action_dim) -> (JointTrajectory over all T, RobotRender of the ``frames`` indices (default
        all)) in this simulator's camera; the render has RGB for robot-RGB models."""
        from kinema4d.kinematics.render import render_robot
        from kinema4d.kinematics.robot import actions_to_joints

        a = np.asarray(actions, dtype=np.float64)
        D = self.action_dim
        if a.ndim != 2 or a.shape[1] != D or a.shape[0] < 1:
            raise ValueError(f"actions must have shape (T, {D}) for mode {self.mode!r} on {self.robot.name}, got "
                             f"{a.shape}")
        traj = actions_to_joints(self.robot, a, self.mode, q0=q0, dt=self.dt)
        q = traj.q if frames is None else traj.q[frames]
        return traj, render_robot(self.robot, q, self.camera, rgb=bool(self.model.cfg.robot_rgb))

    @property
    def needs_pointmap0(self) -> bool:
        """True for ``world_anchor`` checkpoints: ``rollout`` then needs the frame-0 world pointmap (or depth)."""
        return bool(self.model.cfg.world_anchor)

    def held_prior(self, image: np.ndarray, pointmap0: np.ndarray, robot_mask0: np.ndarray, q: np.ndarray,
                   frames: np.ndarray, anchor) -> dict:
        """The held-object prior of a rollout (``kinema4d.model.held_prior``) as ``sample``'s ``held`` dict: from
        I0 (H, W, 3) uint8, its pointmap (H, W, 3) metres, the frame-0 robot mask (H, W), the joint trajectory q
        (N, dof) at the action rate (the end effector's world pose by FK and the gripper opening, as the recorded
        ee_pose actions give them at training time) and the generated frames' indices into it (T,). Also returns
        ``grasp_frame`` / ``release_frame`` (action indices, -1 = the gripper never closes)."""
        from kinema4d.data.episodes import held_tensors
        from kinema4d.model.held_prior import held_object_prior

        rob = self.robot
        T_world_ee = rob.fk(q, [rob.ee_link])[rob.ee_link]  # (N, 4, 4)
        pos, quat = matrix_to_pose(T_world_ee)
        if rob.gripper_joint is not None:
            opening = rob.joint_to_gripper(q[:, rob.joint_names.index(rob.gripper_joint)])
        else:  # no gripper: nothing is ever held
            opening = np.ones(len(q))
        ee_actions = np.concatenate([pos, quat, opening[:, None]], axis=1)
        prior = held_object_prior(image.astype(np.float32) / 255.0, pointmap0, robot_mask0, ee_actions,
                                  self.camera.T_cam_world, self.camera.K, frames, gate=self.model.cfg.held_gate)
        return held_tensors(prior, anchor) | {"grasp_frame": prior.grasp_frame, "release_frame": prior.release_frame}

    def model_inputs(self, image, pointmap0=None) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
        """The initial image and frame-0 geometry at the model's size: (image (H, W, 3) uint8, pointmap0 (H, W, 3)
        metres or None, what was resampled or None).

        ``image`` may be at the size of :attr:`native_camera` (the camera the user gave, any size) or of
        :attr:`camera` (the model's size). A native image is resampled as the training data was (area average when
        shrinking, bilinear when enlarging); a native ``pointmap0`` (depth (h, w) or pointmap (h, w, 3)) is
        unprojected with the native K and resampled nearest (camera-frame points do not depend on K); K is scaled
        by ``Camera.resized``. The returned dict says so (``Rollout.info["resampled"]``)."""
        img = load_image(image)
        h, w = img.shape[:2]
        native, cam = self.native_camera, self.camera
        sizes = {(cam.height, cam.width), (native.height, native.width)}
        if (h, w) not in sizes:
            raise ValueError(f"image is {w}x{h} (W x H) but the camera is {native.width}x{native.height}" + (
                f" and the model runs at {cam.width}x{cam.height}" if native is not cam else "") +
                ": give an image of the camera's size (pass the camera of your image: K and size)")
        done = None
        if (h, w) != (cam.height, cam.width):
            img = resize_image(img, cam.height, cam.width)
            done = {"image": [w, h]}
        pm = None
        if pointmap0 is not None:
            src = pointmap0
            if isinstance(src, (str, os.PathLike)):
                src = load_npy(src)
            shape = np.shape(src)[:2]
            if shape == (native.height, native.width) and native is not cam:
                pm = resize_pointmap(load_pointmap0(src, native), cam.height, cam.width)
                done = (done or {}) | {"pointmap0": [native.width, native.height]}
            else:
                pm = load_pointmap0(src, cam)
        if done is not None:
            done |= {"to_wh": [cam.width, cam.height], "K_scaled": native is not cam}
            _log.info("resampled %s to the model's %dx%d", ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in done.items()
                                                                  if k in ("image", "pointmap0")),
                      cam.width, cam.height)
        return img, pm, done

    def rollout(self, image, actions, q0=None, seed: int | None = None, pointmap0=None) -> Rollout:
        """Generate a rollout from the initial image and an action sequence.

        ``image``: path or (H, W, 3) uint8, of the camera's size (any: a camera and image at another size than
        the model's are resampled to it, see :meth:`model_inputs`; ``info["resampled"]`` says so). ``actions``:
        (T, action_dim) in ``self.mode``, at ``self.action_rate`` (see the class docstring: frame spacing; the
        rollout has ``len(self.frame_indices(T))`` frames, ``info["frame_indices"]`` names their actions).
        ``q0``: (dof,) IK / integration seed (default ``robot.home``). ``seed``: sampling noise (default ``self.seed``).
        ``pointmap0``: for ``world_anchor`` checkpoints (``needs_pointmap0``), the frame-0 scene geometry in this
        camera: (H, W, 3) camera-space metres or (H, W) z-depth metres (an RGB-D frame), array or .npy path;
        0 / NaN = no measurement. See :func:`load_pointmap0`.
        """
        import torch

        from kinema4d.model.config import check_video_size
        from kinema4d.model.device import peak_memory_gb
        from kinema4d.model.sampling import sample
        from kinema4d.pointmap import (
            anchor_stats,
            anchored_to_metres,
            denormalize_world_pointmap,
            normalize_pointmap,
            normalize_with_stats,
            scale_offset,
        )

        img, pointmap0, resampled = self.model_inputs(image, pointmap0)
        H, W = img.shape[:2]
        a = np.asarray(actions)
        if a.ndim != 2 or a.shape[1] != self.action_dim:
            raise ValueError(f"actions must have shape (T, {self.action_dim}) for mode {self.mode!r} on "
                             f"{self.robot.name}, got {a.shape}")
        idx = self.frame_indices(a.shape[0])
        check_video_size(self.model.cfg, len(idx), H, W)
        cfg = self.model.cfg
        if cfg.world_anchor and pointmap0 is None:
            raise ValueError(f"checkpoint {self.ckpt.dir} is a world_anchor model: pass pointmap0, the frame-0 "
                             "world pointmap (H, W, 3) or depth (H, W) in metres (e.g. the RGB-D frame of the image)")
        pm0 = pointmap0 if cfg.world_anchor else None
        action_t = None
        if cfg.condition == "action_embedding":
            if a.shape[1] != cfg.action_dim or len(idx) > cfg.max_frames:
                raise ValueError(f"this model embeds actions (T <= {cfg.max_frames}, {cfg.action_dim}); got {a.shape}")
            action_t = torch.from_numpy(a[idx].astype(np.float32))

        t0 = time.perf_counter()
        traj, r = self.kinematic_stage(a, q0, idx)
        t1 = time.perf_counter()
        if not r.mask.any():
            raise ValueError(f"the robot is not visible from the camera in any of the {len(idx)} frames: check the "
                             "camera pose and the actions' frame (world = robot base)")
        mask = torch.from_numpy(r.mask.astype(np.float32))
        image0 = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        s = self.seed if seed is None else int(seed)
        world0 = None
        if cfg.world_anchor:
            robot_m = torch.from_numpy(r.pointmap.astype(np.float32)).permute(0, 3, 1, 2)
            pm0_t = torch.from_numpy(pm0).permute(2, 0, 1)
            valid0 = pm0_t[2] > 0
            st = anchor_stats(pm0_t, valid0, robot_m, mask)
            rpm01 = normalize_with_stats(robot_m, mask, st)
            world0 = normalize_with_stats(pm0_t[None], valid0[None], st)[0]
            stats_np = st.double().numpy()
        else:
            pm01, stats = normalize_pointmap(r.pointmap, r.mask)
            rpm01 = torch.from_numpy(pm01).permute(0, 3, 1, 2).contiguous()
            stats_np = stats.as_array()
        robot_rgb = None if r.rgb is None else torch.from_numpy(r.rgb).permute(0, 3, 1, 2).float() / 255.0
        held = self.held_prior(img, pm0, r.mask[0], traj.q, idx, st) if cfg.held_prior else None
        held_info = None if held is None else {k: held.pop(k) for k in ("grasp_frame", "release_frame")} | {
            "pixels_per_frame": held["mask"].sum((1, 2)).int().tolist()}
        rgb, w01 = sample(self.model, self.codec, image0, rpm01, mask, steps=self.steps, cfg_scale=self.cfg_scale,
                          seed=s, action=action_t, world0=world0, robot_rgb=robot_rgb, held=held)
        t2 = time.perf_counter()
        world = world01 = fit = None
        if w01 is not None:
            world01 = w01.permute(0, 2, 3, 1).numpy().astype(np.float32)
            if cfg.world_anchor:
                fit = scale_offset(stats_np)
                world = anchored_to_metres(world01, stats_np).astype(np.float32)
            else:
                rstats = torch.from_numpy(stats_np.astype(np.float32))
                wm, fit_t = denormalize_world_pointmap(w01, rpm01, mask, rstats)
                world = wm.permute(0, 2, 3, 1).numpy().astype(np.float32)
                fit = fit_t.double().numpy()
        rgb8 = video_to_uint8(rgb.cpu())
        info = {"seed": s, "steps": self.steps, "cfg_scale": self.cfg_scale, "frames": len(idx),
                "actions": int(a.shape[0]), "frame_indices": idx.tolist(),
                "seconds": {"kinematic": t1 - t0, "generate": t2 - t1},
                "ik_max_pos_err_m": None if traj.ik is None else float(traj.ik.pos_err.max()),
                "robot_pixels_per_frame": float(r.mask.reshape(len(r.mask), -1).sum(1).mean()),
                "device": str(self.device), "peak_memory_gb": peak_memory_gb(self.device),
                "held_prior": held_info, "resampled": resampled}
        return Rollout(rgb=np.ascontiguousarray(rgb8), world_pointmap=world, world_pointmap01=world01,
                       robot_pointmap=r.pointmap.astype(np.float32), robot_mask=r.mask.astype(bool),
                       q=traj.q[idx], camera=self.camera, robot_name=self.robot_name, fps=self.fps,
                       robot_stats=stats_np, world_fit=fit, info=info, T_world_base=self.robot.T_world_base.copy())


# ---------------------------------------------------------------------- command line
@dataclass(frozen=True)
class SimulateConfig(RobotArgs):
    """Generate a 4D rollout (rgb.mp4, pointmap.mp4, rollout.npz, simulate.json) from an initial image + actions,
    or run the bundled demo (``--demo``). Images, camera and depth of another size than the model's are resampled
    to it (K scaled), and the output says so."""

    checkpoint: Path | None = None
    """Checkpoint dir (trainer ckpt/step_XXXXXXX or run dir, or a released Kinema4D dir with
    pytorch_lora_weights.safetensors + added_weights.safetensors). Default: the bundled model."""
    backbone: Path | None = None
    """For a released Kinema4D checkpoint: the LOCAL diffusers Wan2.1-I2V dir (transformer/, vae/, image_encoder/)."""
    robot: str | None = None
    """Builtin robot name (panda, kuka_iiwa, xarm6, kuka_iiwa_wsg50) or a path to a URDF file. Default: the camera
    JSON's "robot", else panda."""
    camera: Path | None = None
    """Camera JSON (kinema4d Camera.save format; may also name the robot and its options under "robot"), at the
    image's size (any: resampled to the model's). Default: the demo camera at the model's training size."""
    image: Path | None = None
    """Initial image (png / jpg), of the camera's size."""
    actions: Path | None = None
    """Action array (.npy), shape (T, D); see docs/CONVENTIONS.md for the layout of each mode."""
    mode: str = "ee_pose"
    """joint_pos | joint_vel | ee_pose."""
    pointmap0: Path | None = None
    """Frame-0 scene geometry (.npy): (H, W, 3) camera-space metres or (H, W) depth metres, at the image's size.
    Needed by world_anchor checkpoints (the bundled one)."""
    out: Path | None = None
    """Output directory. Default: out/simulate (out/simulate_demo with --demo)."""
    ply: bool = False
    """Also write ply/frame_<t>.ply (world points coloured by the generated RGB)."""
    steps: int = 20
    """Sampling steps."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale (1 = off)."""
    seed: int = 0
    """Sampling noise seed."""
    fps: float = 10.0
    action_rate: str = "episode"
    """episode: one action per recorded frame (49 for a data-engine episode; the model generates its trained frames
    over them); model: one action per generated frame, already at the trained frame spacing."""
    demo: bool = False
    """Run the bundled model on the bundled demo inputs (init.png, camera.json, actions.npy)."""
    device: str = "auto"
    """Where the model runs: auto | cpu | cuda | cuda:N (auto = CUDA if available, else CPU)."""
    dtype: str | None = None
    """Cast the model's weights, e.g. bf16 (default float32)."""


def demo_inputs(demo_dir: str | os.PathLike | None = None) -> dict:
    """The bundled demo (``demo_dir`` default :data:`DEMO_DIR`): {"image": path, "camera": path, "actions": (T, D)
    array, "robot": str, "mode": str, "q0": (dof,) or None, "pointmap0": path or None}."""
    d = Path(demo_dir) if demo_dir is not None else DEMO_DIR
    missing = [f for f in DEMO_FILES if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the bundled demo inputs are missing in {d} ({missing}); they ship with the bundled "
                                f"model: {_TRAIN_HINT}, or pass --image/--camera/--actions yourself")
    from kinema4d.kinematics.control import load_actions

    meta = json.loads((d / "demo.json").read_text())
    return {"image": d / "init.png", "camera": d / "camera.json", "actions": load_actions(d / "actions.npy"),
            "robot": meta.get("robot", "panda"), "mode": meta.get("mode", "ee_pose"),
            "q0": None if meta.get("q0") is None else np.asarray(meta["q0"], dtype=np.float64),
            "pointmap0": d / "pointmap0.npy" if (d / "pointmap0.npy").is_file() else None}


def simulate_main(cfg: SimulateConfig) -> dict[str, Path]:
    """Run ``kinema4d simulate``; returns {kind: path} of everything written (incl. ``simulate.json``)."""
    from kinema4d.geometry import save_atomic_text
    from kinema4d.kinematics.control import load_actions
    from kinema4d.model.release import is_release_checkpoint

    checkpoint = cfg.checkpoint if cfg.checkpoint is not None else DEFAULT_CHECKPOINT
    if not is_release_checkpoint(checkpoint):
        resolve_checkpoint(checkpoint)  # a missing checkpoint is reported before anything else
    if cfg.demo:
        given = [n for n in ("image", "camera", "actions", "pointmap0") if getattr(cfg, n) is not None]
        if given:
            raise ValueError(f"--demo uses the bundled inputs: drop {', '.join('--' + n for n in given)}")
        demo = demo_inputs()
        robot, mode, image, camera, actions = demo["robot"], demo["mode"], demo["image"], demo["camera"], \
            demo["actions"]
        robot_opts = cfg.robot_options()
        q0 = demo["q0"]  # the recorded start configuration: IK is seeded from it
        pointmap0 = demo["pointmap0"]
    else:
        if cfg.image is None or cfg.actions is None:
            raise ValueError("give --image INIT.png and --actions ACTIONS.npy (or --demo)")
        mode, image, camera, actions = cfg.mode, cfg.image, cfg.camera, load_actions(cfg.actions)
        robot, robot_opts = resolve_robot_args(cfg.robot, camera, cfg)
        q0, pointmap0 = None, cfg.pointmap0
    out = cfg.out if cfg.out is not None else Path("out/simulate_demo" if cfg.demo else "out/simulate")
    t0 = time.perf_counter()
    sim = Simulator(checkpoint, robot=robot,
                    camera=camera, mode=mode, steps=cfg.steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed, fps=cfg.fps,
                    action_rate=cfg.action_rate, device=cfg.device, dtype=cfg.dtype, backbone=cfg.backbone,
                    **robot_opts)
    t1 = time.perf_counter()
    if sim.needs_pointmap0 and pointmap0 is None:
        raise ValueError(f"checkpoint {sim.checkpoint} is a world_anchor model: give --pointmap0 FRAME0.npy "
                         "((H, W, 3) camera-space metres or (H, W) depth metres of the initial image)")
    ro = sim.rollout(image, actions, q0=q0, pointmap0=pointmap0)
    rs = ro.info.get("resampled")
    if rs:
        what = ", ".join(f"the {k} ({v[0]}x{v[1]})" for k, v in rs.items() if k in ("image", "pointmap0"))
        print(f"simulate: resampled {what} to the model's {rs['to_wh'][0]}x{rs['to_wh'][1]}"
              + (" and scaled K" if rs["K_scaled"] else ""))
    written = ro.save(out, ply=cfg.ply)
    summary = {
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),  # Paths (also in tuples) as str
        "inputs": {"image": str(image), "camera": None if camera is None else str(camera), "robot": robot,
                   "robot_options": {k: ([str(d) for d in v] if k == "package_dirs" else v)
                                     for k, v in robot_opts.items()},
                   "pointmap0": None if pointmap0 is None else str(pointmap0),
                   "mode": mode, "actions_shape": list(np.shape(actions))},
        "simulator": {k: v for k, v in sim.describe().items() if k != "model"},
        "rollout": {**ro.info, "seconds": {**ro.info["seconds"], "load": t1 - t0},
                    "robot_stats_m": ro.robot_stats.tolist(),
                    "world_fit_scale_offset": None if ro.world_fit is None else ro.world_fit.tolist()},
        "outputs": {k: str(v) for k, v in written.items()},
    }
    save_atomic_text(Path(out) / "simulate.json", json.dumps(summary, indent=2))
    written["json"] = Path(out) / "simulate.json"
    return written


__all__ = ["DEFAULT_CHECKPOINT", "DEMO_DIR", "Rollout", "Simulator", "SimulateConfig", "ResolvedCheckpoint",
           "resolve_checkpoint", "load_image", "load_pointmap0", "demo_inputs", "simulate_main"]
