"""Synthetic 4D dataset generation (``kinema4d datagen``), ``dataset info`` and ``dataset preview``.

Episodes come in blocks of ``1 + failures_per_success``: block b = one sampled scene with its scripted
pick-and-place (the clean demonstration, id ``b * (1 + F)``) followed by F perturbed re-simulations of it (ids
``b * (1 + F) + v``, v = 1..F; variant v perturbs temporal segment ``(v - 1) // 3 % 3`` at
sigma ``FAILURE_SIGMAS[(v - 1) % 3]``, see :func:`kinema4d.data.scene.perturb_actions`). A scene whose clean run fails
is resampled (up to ``max_attempts`` times, the attempt is recorded). If the last attempt fails too, the block is
still written (its perturbed variants keep their ids, so a resumed run stays a pure function of the block), but its
first episode gets the variant kind ``"clean_failed"``, never ``"clean"``: no failed run is labelled a clean
demonstration. ``dataset info`` counts them (``clean_failed``) and ``datagen`` warns when any exist.
Everything is a pure function of (seed, split, block, attempt, variant), so a rerun regenerates exactly the missing
episodes: the run is resumable and the episode set does not depend on the number of workers or the backend. Splits
use disjoint seed streams (the split's index enters the seed) and select the randomization ranges
(``kinema4d.data.scene.split_ranges``).

``episodes`` counts all written episodes (clean + perturbed); the last block may be cut short.

The robot (``robot``): the Panda by default (the robot of the training data), xarm6 for the ``ood_embodiment``
split (test ranges, a robot the default model was not trained on), or any URDF with a gripper (``ee_link``,
``gripper_joints``, see :func:`kinema4d.data.scene.make_robot`). It is part of the split's content: a resumed run
must name the same robot. Episodes record it in their attrs (``robot``; URDF robots also ``robot_urdf``).

Policy episodes (``policy`` = a name of :data:`kinema4d.data.expert.POLICIES`, with ``failures_per_success=0``):
block b = the same scene as above (resampled until the clean expert succeeds, checked by physics alone) executed
by that member of the scripted policy family (:func:`kinema4d.data.scene.policy_actions`, its generator seeded by
(seed, split, block, attempt, 2000) for every member), one episode per block. So runs with the same seed and
different policies hold the same scenes, and the members share their random numbers (ranking policies, see
:mod:`kinema4d.eval.policy`). The episode attrs record ``policy`` and the variant ``{"kind": "policy", ...}``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tyro.conf import UseAppendAction

from kinema4d.data import episodes as kdata
from kinema4d.data import scene as sim
from kinema4d.geometry import save_atomic_text

DEFAULT_RESOLUTION = "64x96"


@dataclass(frozen=True)
class DatagenConfig:
    """Generate a synthetic pick-and-place 4D dataset split into ``OUT/<split>/`` (resumable)."""

    out: Path = Path("data/synth64")
    """Root directory; the split is written to OUT/<split>/."""
    episodes: int = 100
    """Total episodes to have in the split (clean + perturbed)."""
    split: str = "train"
    """train | val | test | ood | ood_embodiment (ood: unseen shapes/colours, camera outside the training range;
    ood_embodiment: the test ranges with a robot the default model was not trained on, xarm6 unless --robot)."""
    robot: str | None = None
    """panda | xarm6 | kuka_iiwa_wsg50 | PATH.urdf (the plain kuka_iiwa has no gripper). Default: panda (the
    default model's robot), xarm6 for the ood_embodiment split."""
    ee_link: str | None = None
    """URDF robots: the end-effector link the ee_pose actions drive (the grasp point between the fingers)."""
    gripper_joints: tuple[str, ...] | None = None
    """URDF robots: the gripper joints; the first is driven, the others follow it 1:1 (URDF mimic joints of the
    first follow it anyway)."""
    gripper_open: float | None = None
    """URDF robots: first gripper joint's value when open (default: its upper limit)."""
    gripper_closed: float | None = None
    """URDF robots: first gripper joint's value when closed (default: its lower limit)."""
    package_dir: UseAppendAction[tuple[Path, ...]] = ()
    """URDF robots: a directory searched for package:// mesh paths (repeatable: --package-dir A --package-dir B)."""
    base_pose: tuple[float, float, float, float, float, float, float] | None = None
    """Robot base pose in the world, x y z qx qy qz qw, instead of the default stand on the table (the scene, its
    object ranges and cameras stay where they are: a base far from the default leaves the objects out of reach)."""
    seed: int = 0
    """Base seed; the split and block index are mixed in (disjoint streams per split)."""
    resolution: str = DEFAULT_RESOLUTION
    """Image size HxW, e.g. 64x96, 128x192, 480x720."""
    frames: int = 49
    """Recorded frames per episode (uniform temporal downsampling of the control steps)."""
    failures_per_success: int = 9
    """Perturbed variants per clean demonstration (Supp. B.2: 3 segments x 3 sigmas)."""
    workers: int = 1
    """Parallel worker processes (local) or Ray CPUs."""
    backend: str = "local"
    """local (multiprocessing, spawn) | ray (local Ray instance)."""
    control_hz: float = 20.0
    """Control rate of the scripted policy / IK."""
    physics_hz: float = 240.0
    """Simulation rate."""
    max_attempts: int = 5
    """Scene resamples when the clean scripted run fails."""
    distractors: tuple[int, int] | None = None
    """(min, max) distractor objects, overriding the split's range (policy-evaluation setups)."""
    robot_backend: str = "auto"
    """Robot pointmap renderer: auto | gl | embree."""
    policy: str | None = None
    """Execute this member of the scripted policy family (kinema4d.data.expert.POLICIES: expert, p1..p4) instead of
    the clean demo + perturbed variants; needs failures_per_success=0."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def size(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)


# fields that define the content of an episode: a rerun into the same directory must match them
CONTENT_FIELDS = ("split", "seed", "resolution", "frames", "failures_per_success", "control_hz", "physics_hz",
                  "max_attempts", "distractors", "policy", "robot", "ee_link", "gripper_joints", "gripper_open",
                  "gripper_closed", "package_dir", "base_pose")
TRAINED_ROBOT = "panda"  # the robot of the training data and of the bundled default model
OOD_EMBODIMENT_ROBOT = "xarm6"


def resolve_robot(cfg: DatagenConfig) -> str:
    """The robot of ``cfg`` (``cfg.robot``, or the split's default: panda, xarm6 for ood_embodiment)."""
    if cfg.robot is None:
        return OOD_EMBODIMENT_ROBOT if cfg.split == "ood_embodiment" else TRAINED_ROBOT
    if cfg.split == "ood_embodiment" and cfg.robot == TRAINED_ROBOT:
        raise ValueError(f"the ood_embodiment split holds a robot the default model was not trained on; "
                         f"{TRAINED_ROBOT!r} is its training robot (use --robot xarm6 or a URDF)")
    return cfg.robot


def robot_options(cfg: DatagenConfig) -> dict:
    """The URDF options of ``cfg`` for :func:`kinema4d.data.scene.make_robot` (only those given)."""
    opts = {"ee_link": cfg.ee_link, "gripper_joints": cfg.gripper_joints, "gripper_open": cfg.gripper_open,
            "gripper_closed": cfg.gripper_closed, "package_dirs": tuple(cfg.package_dir) or None,
            "base_pose": cfg.base_pose}
    return {k: v for k, v in opts.items() if v is not None}


def parse_resolution(s: str) -> tuple[int, int]:
    """"HxW" -> (H, W)."""
    try:
        h, w = (int(v) for v in str(s).lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution must look like HxW (e.g. 64x96), got {s!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"resolution {s!r} is too small (min 8x8)")
    return h, w


def _check(cfg: DatagenConfig) -> None:
    if cfg.split not in sim.SPLITS:
        raise ValueError(f"split must be one of {sim.SPLITS}, got {cfg.split!r}")
    if cfg.backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {cfg.backend!r}")
    if cfg.episodes < 0 or cfg.workers < 1 or cfg.frames < 2 or cfg.failures_per_success < 0:
        raise ValueError(f"need episodes >= 0, workers >= 1, frames >= 2, failures_per_success >= 0; got {cfg}")
    parse_resolution(cfg.resolution)
    d = cfg.distractors
    if d is not None and not (len(d) == 2 and 0 <= d[0] <= d[1] <= 8):
        raise ValueError(f"distractors must be (min, max) with 0 <= min <= max <= 8, got {cfg.distractors}")
    if cfg.policy is not None:
        if cfg.policy not in sim.POLICIES:
            raise ValueError(f"unknown policy {cfg.policy!r}; choose from {list(sim.POLICIES)}")
        if cfg.failures_per_success != 0:
            raise ValueError("policy episodes have no failure variants: pass failures_per_success=0 "
                             f"(--failures-per-success 0), got {cfg.failures_per_success}")


def variant_of(v: int) -> tuple[int, float]:
    """Variant v >= 1 -> (segment, sigma)."""
    return (v - 1) // 3 % sim.N_SEGMENTS, sim.FAILURE_SIGMAS[(v - 1) % 3]


# ---------------------------------------------------------------------- one block (runs in a worker)
_ROBOT = {}


def _robot(cfg: DatagenConfig):
    """The robot of ``cfg`` on the table (cached per process)."""
    key = (resolve_robot(cfg), cfg.ee_link, cfg.gripper_joints, cfg.gripper_open, cfg.gripper_closed,
           cfg.package_dir, cfg.base_pose)
    if key not in _ROBOT:
        _ROBOT[key] = sim.make_robot(key[0], **robot_options(cfg))
    return _ROBOT[key]


def _episode_arrays(ep: sim.Episode) -> dict:
    return {"rgb": ep.rgb, "world_pointmap": ep.world_pointmap, "robot_pointmap": ep.robot_pointmap,
            "robot_mask": ep.robot_mask, "robot_render_mask": ep.robot_render_mask,
            "robot_rgb": ep.robot_rgb, "q": ep.q, "actions": ep.actions,
            "object_poses": ep.object_poses}


def _episode_attrs(robot, ep: sim.Episode, cfg: DatagenConfig, block: int, attempt: int, variant: dict) -> dict:
    scene = ep.meta["scene"]
    return {
        "format": kdata.FORMAT, "version": kdata.VERSION, "split": cfg.split, "success": bool(ep.success),
        "instruction": ep.meta["instruction"], "camera": ep.camera.to_dict(), "robot": robot.name,
        "joint_names": list(robot.joint_names), "ee_link": robot.ee_link, "T_world_base": robot.T_world_base.tolist(),
        "action_layout": "ee_pose: x y z qx qy qz qw (ee_link in world) + gripper opening [0, 1], 1 = open",
        "objects": scene["objects"], "goal_xy": scene["goal_xy"], "pad_colour": scene["pad_colour"],
        "table_top_z": sim.TABLE_TOP, "outcome": ep.meta["outcome"], "variant": variant, "block": block,
        "attempt": attempt, "seed": [cfg.seed, sim.SPLITS.index(cfg.split), block, attempt],
        "frames": ep.meta["frames"], "control_hz": ep.meta["control_hz"], "physics_hz": ep.meta["physics_hz"],
        "n_control_steps": ep.meta["n_control_steps"], "record_steps": ep.meta["record_steps"],
    } | ({"policy": cfg.policy} if cfg.policy is not None else {}) | _urdf_attrs(robot, cfg)


def _urdf_attrs(robot, cfg: DatagenConfig) -> dict:
    """Extra attrs of a robot given by URDF path (builtins are rebuilt from their name alone)."""
    from kinema4d.kinematics.robot import BUILTIN_ROBOTS

    if resolve_robot(cfg) in BUILTIN_ROBOTS:
        return {}
    return {"robot_urdf": str(Path(robot.urdf_path).resolve()), "gripper_joint": robot.gripper_joint,
            "gripper_open": robot.gripper_open, "gripper_closed": robot.gripper_closed}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_block(cfg: DatagenConfig, block: int, todo: list[int]) -> list[dict]:
    """Simulate block ``block`` and write its episodes listed in ``todo`` (ids). Returns one record per episode
    written: {"entry": index entry, "timing": {physics, render_sim, render_robot, write} s, "bytes": int}."""
    robot = _robot(cfg)
    H, W = cfg.size()
    root = Path(cfg.out) / cfg.split
    F = cfg.failures_per_success
    first = block * (1 + F)
    split_i = sim.SPLITS.index(cfg.split)
    results = []

    def write(ep_id, ep, attempt, variant):
        t0 = time.perf_counter()
        entry = kdata.write_episode(root, ep_id, _episode_arrays(ep),
                                    _episode_attrs(robot, ep, cfg, block, attempt, variant))
        timing = dict(ep.timing, write=time.perf_counter() - t0)
        results.append({"entry": entry, "timing": timing,
                        "bytes": kdata.disk_bytes(kdata.episode_path(root, ep_id))})

    if cfg.policy is not None:
        _run_policy_block(cfg, block, write)
        return results
    attempt0 = None
    if first not in todo and kdata.is_complete(root, first):
        attempt0 = int(kdata.read_attrs(root, first).get("attempt", 0))
    attempts = [attempt0] if attempt0 is not None else range(cfg.max_attempts)
    for attempt in attempts:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, split_i, block, attempt]))
        spec = sim.sample_scene(rng, cfg.split, W, H, seed=[cfg.seed, split_i, block, attempt],
                                n_distractors=cfg.distractors)
        actions, _ = sim.scripted_pick_place(robot, spec, cfg.control_hz)
        scene = sim.Scene(robot, spec, physics_hz=cfg.physics_hz, control_hz=cfg.control_hz)
        try:
            if attempt0 is None:
                clean = sim.run_episode(robot, spec, actions, frames=cfg.frames, control_hz=cfg.control_hz,
                                        physics_hz=cfg.physics_hz, robot_backend=cfg.robot_backend, scene=scene)
                if not clean.success and attempt < cfg.max_attempts - 1:
                    continue
                if first in todo:
                    write(first, clean, attempt, {"kind": "clean" if clean.success else "clean_failed"})
            for v in range(1, F + 1):
                if first + v not in todo:
                    continue
                segment, sigma = variant_of(v)
                vrng = np.random.default_rng(np.random.SeedSequence([cfg.seed, split_i, block, attempt, 1000 + v]))
                pert = sim.perturb_actions(actions, segment, sigma, vrng)
                ep = sim.run_episode(robot, spec, pert, frames=cfg.frames, control_hz=cfg.control_hz,
                                     physics_hz=cfg.physics_hz, robot_backend=cfg.robot_backend, scene=scene)
                write(first + v, ep, attempt, {"kind": "perturbed", "segment": segment, "sigma": sigma,
                                               "parent": first})
        finally:
            scene.close()
        break
    return results


def _run_policy_block(cfg: DatagenConfig, block: int, write) -> None:
    """Block ``block`` of a policy run (module docstring): the expert-solvable scene, executed by ``cfg.policy``."""
    robot = _robot(cfg)
    H, W = cfg.size()
    split_i = sim.SPLITS.index(cfg.split)
    for attempt in range(cfg.max_attempts):
        seed = [cfg.seed, split_i, block, attempt]
        spec = sim.sample_scene(np.random.default_rng(np.random.SeedSequence(seed)), cfg.split, W, H, seed=seed,
                                n_distractors=cfg.distractors)
        actions, _ = sim.scripted_pick_place(robot, spec, cfg.control_hz)
        scene = sim.Scene(robot, spec, physics_hz=cfg.physics_hz, control_hz=cfg.control_hz)
        try:
            last = attempt == cfg.max_attempts - 1
            expert = sim.POLICIES[cfg.policy] == sim.PolicySpec(0.0, 0.0)  # its own run is the check
            if not expert and not last and not sim.execute(scene, actions)["success"]:
                continue
            prng = np.random.default_rng(np.random.SeedSequence([*seed, 2000]))
            acts, info = sim.policy_actions(robot, spec, cfg.policy, prng, cfg.control_hz)
            ep = sim.run_episode(robot, spec, acts, frames=cfg.frames, control_hz=cfg.control_hz,
                                 physics_hz=cfg.physics_hz, robot_backend=cfg.robot_backend, scene=scene)
            if expert and not last and not ep.success:
                continue
            write(block, ep, attempt, {"kind": "policy", "policy": cfg.policy, **info})
        finally:
            scene.close()
        break


def _run_block_star(args):
    return run_block(*args)


# ---------------------------------------------------------------------- driver
def plan(cfg: DatagenConfig, done: set[int]) -> list[tuple[int, list[int]]]:
    """[(block, [episode ids still to write])] for the episodes < cfg.episodes not in ``done``."""
    per = 1 + cfg.failures_per_success
    out = []
    for block in range((cfg.episodes + per - 1) // per):
        ids = [i for i in range(block * per, min((block + 1) * per, cfg.episodes)) if i not in done]
        if ids:
            out.append((block, ids))
    return out


def _save_config(cfg: DatagenConfig, root: Path) -> None:
    path = root / "datagen_config.json"
    d = json.loads(json.dumps(asdict(cfg), default=str))  # Paths (also in tuples) as strings
    if path.is_file():
        old = json.loads(path.read_text())
        old.setdefault("robot", TRAINED_ROBOT)  # written before robots were selectable: the Panda
        old.setdefault("package_dir", [])  # written before these options existed: none given
        old.setdefault("base_pose", None)
        diff = {k: (old.get(k), d[k]) for k in CONTENT_FIELDS if old.get(k) != d[k]}
        if diff:
            raise ValueError(f"{root} was generated with a different config {diff} (old, new); use another --out")
    save_atomic_text(path, json.dumps(d, indent=2))


def datagen_main(cfg: DatagenConfig) -> dict:
    """Generate (or complete) ``cfg.out/<split>``; returns :func:`dataset_info` of it."""
    _check(cfg)
    cfg = replace(cfg, robot=resolve_robot(cfg))
    _robot(cfg)  # a bad robot / --ee-link / --gripper-joints fails here, before any worker starts
    root = kdata.init_dataset(Path(cfg.out) / cfg.split, cfg.split)
    _save_config(cfg, root)
    kdata.clean_stale(root)
    done = set(kdata.complete_episodes(root))
    entries = kdata.write_index(root, cfg.split)
    jobs = plan(cfg, done)
    total = min(cfg.episodes, len(done) + sum(len(ids) for _, ids in jobs))
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=total - sum(len(ids) for _, ids in jobs), unit="ep",
                   desc=f"datagen {cfg.split}")

    def collect(results):
        for r in results:
            entries[r["entry"]["episode"]] = r["entry"]
        kdata.write_index(root, cfg.split, entries)
        if bar is not None:
            bar.update(len(results))

    try:
        if not jobs:
            pass
        elif cfg.backend == "ray":
            _run_ray(cfg, jobs, collect)
        elif cfg.workers == 1:
            for block, ids in jobs:
                collect(run_block(cfg, block, ids))
        else:
            with mp.get_context("spawn").Pool(cfg.workers) as pool:
                for res in pool.imap_unordered(_run_block_star, [(cfg, b, ids) for b, ids in jobs]):
                    collect(res)
    finally:
        if bar is not None:
            bar.close()
    kdata.write_index(root, cfg.split, entries)
    info = dataset_info(root)
    if info["clean_failed"]:
        warnings.warn(f"{root}: {info['clean_failed']} block(s) found no scene whose clean scripted run succeeds in "
                      f"max_attempts={cfg.max_attempts} attempts; their first episode is labelled variant kind "
                      "'clean_failed' (not a clean demonstration)", stacklevel=2)
    return info


def _run_ray(cfg: DatagenConfig, jobs, collect) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(run_block)
        pending = [task.remote(cfg, b, ids) for b, ids in jobs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            collect(ray.get(ready[0]))
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------- dataset info / preview
def dataset_info(path) -> dict:
    """Counts, success ratios, resolution and size on disk of a dataset dir (or of each split under a root)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        subs = sorted(d for d in path.iterdir() if (d / "zarr.json").is_file()) if path.is_dir() else []
        if not subs:
            raise FileNotFoundError(f"no kinema4d dataset at {path} (no zarr.json here or in a subdirectory)")
        return {"path": str(path), "splits": {d.name: dataset_info(d) for d in subs}}
    ds = kdata.Dataset4D(path)
    metas = [ds.meta(i) for i in range(len(ds))]
    clean = [m for m in metas if m.get("variant", {}).get("kind") == "clean"]
    pert = [m for m in metas if m.get("variant", {}).get("kind") == "perturbed"]
    clean_failed = sum(m.get("variant", {}).get("kind") == "clean_failed" for m in metas)

    def ratio(ms):
        return round(sum(bool(m.get("success")) for m in ms) / len(ms), 4) if ms else None

    # every clean attempt is a fresh scene and a block stops at its first success, so the scripted expert's
    # success per scene = clean demos / clean attempts (attempt = seed[3]; a clean_failed block used them all)
    firsts = [m for m in metas if m.get("variant", {}).get("kind") in ("clean", "clean_failed")]
    attempts = sum(int(m["seed"][3]) + 1 for m in firsts if len(m.get("seed") or []) >= 4)

    size = _dir_bytes(path)
    tmp = [d.name for d in (path / "episodes").iterdir() if d.name.startswith(".tmp-")] \
        if (path / "episodes").is_dir() else []
    return {
        "path": str(path), "split": ds.split, "robot": ds.attrs(0).get("robot") if len(ds) else None,
        "episodes": len(ds), "clean": len(clean), "perturbed": len(pert), "clean_failed": clean_failed,
        "clean_attempts": attempts, "expert_success_per_scene": round(len(clean) / attempts, 4) if attempts else None,
        "success": sum(bool(m.get("success")) for m in metas), "success_ratio": ratio(metas),
        "success_ratio_clean": ratio(clean), "success_ratio_perturbed": ratio(pert),
        "resolution": f"{metas[0]['height']}x{metas[0]['width']}" if metas else None,
        "frames": metas[0].get("frames") if metas else None, "bytes": size,
        "bytes_per_episode": size // len(ds) if len(ds) else None, "temp_dirs": len(tmp),
    }


def dataset_preview(path, episode: int, out_mp4, fps: float = 8.0) -> Path:
    """Write an mp4 of episode position ``episode``: RGB | world pointmap | robot pointmap (pseudo-colour)."""
    from kinema4d.interactive.media import hstack_videos, pointmap_to_rgb, write_video

    e = kdata.Dataset4D(path).read_episode(episode)
    frames = hstack_videos(e["rgb"], pointmap_to_rgb(e["world_pointmap"], e["world_pointmap"][..., 2] > 0),
                           pointmap_to_rgb(e["robot_pointmap"], e["robot_render_mask"]))
    return write_video(out_mp4, frames, fps=fps)


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(DatagenConfig, args=argv, prog="python -m kinema4d.data.datagen")
    info = datagen_main(cfg)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
