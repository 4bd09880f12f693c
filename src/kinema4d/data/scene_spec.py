"""What a data-engine scene is and how it is randomized (paper Sec. 3.3, Supp. B.2): the split ranges, the
object / pad / camera description (:class:`SceneSpec`) and its sampling (:func:`sample_scene`). The physics that
runs a scene is :mod:`kinema4d.data.scene`, the scripted expert that acts in it :mod:`kinema4d.data.expert`.

Randomization ranges per split (:func:`split_ranges`): train / val / test share the ranges (disjoint seeds);
``ood`` uses unseen shapes (capsule, hexagonal prism), unseen colours and a camera outside the training range;
``ood_embodiment`` uses the test ranges with a robot the default model was not trained on (xarm6 by default).
Main camera (oblique top-down, medial-frontal, looking from the far side of the table back at the robot):
look-at target ``(-0.16, 0, 0.70)`` +- 3 cm; azimuth about world z (0 = straight in front of the robot),
elevation above the horizontal, distance to the target and vertical FOV are sampled uniformly from the ranges.
The framing is tight (vertical FOV 36-40 deg at 0.95-1.05 m): the workspace fills the image, so a 4-5 cm object
covers ~4 pixels at 64x96 (with the earlier 50-58 deg framing it covered ~2.5 and the sky filled the top third).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kinema4d.kinematics.camera import Camera

SPLITS = ("train", "val", "test", "ood", "ood_embodiment")
TABLE_TOP = 0.625
BASE_XYZ = (-0.6, 0.0, TABLE_TOP)
CAM_TARGET = (-0.16, 0.0, 0.70)  # the workspace centre region, so the workspace fills the image

PALETTE = {  # name -> rgb in [0, 1]
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.15), "blue": (0.1, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1),
    "orange": (1.0, 0.5, 0.0), "purple": (0.55, 0.15, 0.7),
    # ood only
    "cyan": (0.0, 0.85, 0.85), "magenta": (0.95, 0.1, 0.75), "white": (0.95, 0.95, 0.95),
    "brown": (0.5, 0.3, 0.1), "pink": (1.0, 0.6, 0.7),
}
SHAPE_NAMES = {"box": "cube", "cylinder": "cylinder", "capsule": "capsule", "hexprism": "hexagonal prism"}


@dataclass(frozen=True)
class Ranges:
    """Randomization ranges of one split. Angles in degrees, lengths in metres."""

    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    cam_azimuth_deg: tuple[tuple[float, float], ...]  # one or more intervals, one is picked uniformly
    cam_elevation_deg: tuple[float, float]
    cam_distance: tuple[float, float]
    cam_fov_deg: tuple[float, float] = (36.0, 40.0)
    object_size: tuple[float, float] = (0.04, 0.05)  # cube side / cylinder diameter
    object_height: tuple[float, float] = (0.04, 0.06)
    n_distractors: tuple[int, int] = (0, 2)
    workspace_x: tuple[float, float] = (0.38, 0.62)  # robot base frame (metres in front of the base)
    workspace_y: tuple[float, float] = (-0.25, 0.25)


TRAIN_RANGES = Ranges(shapes=("box", "cylinder"), colours=("red", "green", "blue", "yellow", "orange", "purple"),
                      cam_azimuth_deg=((-25.0, 25.0),), cam_elevation_deg=(45.0, 60.0), cam_distance=(0.95, 1.05))
OOD_RANGES = Ranges(shapes=("capsule", "hexprism"), colours=("cyan", "magenta", "white", "brown", "pink"),
                    cam_azimuth_deg=((-45.0, -30.0), (30.0, 45.0)), cam_elevation_deg=(63.0, 72.0),
                    cam_distance=(1.1, 1.2), cam_fov_deg=(33.0, 35.0))


def split_ranges(split: str) -> Ranges:
    """Randomization ranges of ``split`` (train/val/test share them; ood is disjoint in shape, colour, camera;
    ood_embodiment has the test ranges: only the robot differs, see ``kinema4d.data.datagen``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return OOD_RANGES if split == "ood" else TRAIN_RANGES


@dataclass(frozen=True)
class ObjectSpec:
    """One object: ``shape`` in box|cylinder|capsule|hexprism, ``size`` (x, y, z) extents metres, pose on the table."""

    shape: str
    colour: str
    size: tuple[float, float, float]
    xy: tuple[float, float]  # world metres
    yaw: float  # radians

    @property
    def rgba(self) -> tuple[float, float, float, float]:
        return (*PALETTE[self.colour], 1.0)

    @property
    def name(self) -> str:
        return f"{self.colour} {SHAPE_NAMES[self.shape]}"

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "rgba": list(self.rgba), "size": list(self.size),
                "xy": list(self.xy), "yaw": self.yaw, "name": self.name}


@dataclass(frozen=True)
class SceneSpec:
    """Everything that defines an episode's initial state. ``objects[0]`` is the object to pick."""

    objects: tuple[ObjectSpec, ...]
    goal_xy: tuple[float, float]  # pad centre, world metres
    pad_colour: str
    camera: Camera
    grasp_yaw: float  # gripper yaw about world z (radians) for the grasp
    split: str
    seed: list = field(default_factory=list)  # entropy used to sample it (for the record)

    @property
    def instruction(self) -> str:
        return f"pick up the {self.objects[0].name} and place it on the {self.pad_colour} pad"

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "goal_xy": list(self.goal_xy),
                "pad_colour": self.pad_colour, "camera": self.camera.to_dict(), "grasp_yaw": self.grasp_yaw,
                "split": self.split, "seed": list(self.seed), "instruction": self.instruction}


def sample_camera(rng: np.random.Generator, ranges: Ranges, width: int, height: int) -> Camera:
    """Main camera: oblique top-down, medial-frontal, pose sampled from ``ranges`` (see module docstring)."""
    lo, hi = ranges.cam_azimuth_deg[rng.integers(len(ranges.cam_azimuth_deg))]
    az = np.deg2rad(rng.uniform(lo, hi))
    el = np.deg2rad(rng.uniform(*ranges.cam_elevation_deg))
    dist = rng.uniform(*ranges.cam_distance)
    target = np.array(CAM_TARGET) + rng.uniform(-0.03, 0.03, 3)
    eye = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    return Camera.look_at(eye, target, width=width, height=height, fov_y_deg=rng.uniform(*ranges.cam_fov_deg))


def sample_scene(rng: np.random.Generator, split: str, width: int, height: int, seed=(),
                 n_distractors: tuple[int, int] | None = None) -> SceneSpec:
    """Random scene of ``split``: target object, goal pad >= 15 cm away, distractors >= 10 cm from both.

    ``n_distractors`` (min, max) overrides the split's range (policy-evaluation setups: cluttered, dense). Then the
    target and pad colours come from the split's palette and the distractors' from the rest of :data:`PALETTE`
    (repeats allowed, never the target's colour, so a colour judge stays unambiguous); with more than 3
    distractors they keep 7 cm instead of 10 cm apart so that dense scenes fit the workspace.
    """
    r = split_ranges(split)
    override = n_distractors is not None
    if override:
        lo, hi = n_distractors
        if not 0 <= lo <= hi <= 8:
            raise ValueError(f"n_distractors must be (min, max) with 0 <= min <= max <= 8, got {n_distractors}")
    n_range = n_distractors if override else r.n_distractors
    n_obj = 1 + int(rng.integers(n_range[0], n_range[1] + 1))
    if override:
        tc, pc = rng.choice(len(r.colours), size=2, replace=False)
        others = [c for c in PALETTE if c not in (r.colours[tc], r.colours[pc])]
        names = [r.colours[tc], *[others[k] for k in rng.integers(len(others), size=n_obj - 1)], r.colours[pc]]
    else:
        names = [r.colours[k] for k in rng.choice(len(r.colours), size=n_obj + 1, replace=False)]
    pad_colour = names[-1]
    gap = 0.07 if override and n_obj - 1 > 3 else 0.10
    bx, by = BASE_XYZ[0], BASE_XYZ[1]

    def rand_xy():
        return np.array([bx + rng.uniform(*r.workspace_x), by + rng.uniform(*r.workspace_y)])

    taken: list[tuple[np.ndarray, float]] = []
    objects = []
    goal = None
    for i in range(n_obj + 1):  # objects[0], then the goal, then distractors
        need = 0.15 if i == 1 else gap
        for _ in range(200):
            xy = rand_xy()
            if all(np.linalg.norm(xy - t) >= max(need, d) for t, d in taken):
                break
        else:
            raise RuntimeError(f"could not place object {i} of the {split} scene without overlap")
        taken.append((xy, need))
        if i == 1:
            goal = xy
            continue
        shape = r.shapes[rng.integers(len(r.shapes))]
        w = rng.uniform(*r.object_size)
        h = rng.uniform(*r.object_height)
        colour = names[0 if i == 0 else i - 1]
        objects.append(ObjectSpec(shape=shape, colour=colour, size=(float(w), float(w), float(h)),
                                  xy=(float(xy[0]), float(xy[1])), yaw=float(rng.uniform(-np.pi, np.pi))))
    target = objects[0]
    if target.shape in ("box", "hexprism"):  # grasp across parallel faces; |yaw| <= pi/4 keeps joint 7 in range
        period = np.pi / 2 if target.shape == "box" else np.pi / 3
        grasp_yaw = (target.yaw + period / 2) % period - period / 2
    else:
        grasp_yaw = rng.uniform(-0.5, 0.5)
    return SceneSpec(objects=tuple(objects), goal_xy=(float(goal[0]), float(goal[1])), pad_colour=pad_colour,
                     camera=sample_camera(rng, r, width, height), grasp_yaw=float(grasp_yaw), split=split,
                     seed=list(seed))
