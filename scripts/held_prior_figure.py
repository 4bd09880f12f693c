"""Figure of the held-object prior on dataset episodes: I0 | the prior at the last frame drawn over I0 (vacated
pixels in magenta) | the ground-truth last frame, one row per episode, pixels enlarged.

    .venv/bin/python scripts/held_prior_figure.py --data data/synth64/test --episodes 37 38 31 \
        --out docs/images/held_prior.png
    .venv/bin/python scripts/held_prior_figure.py --stats [--gate 0.02 0.03] --data data/synth64/test \
        data/policy/canonical/test ...   # how often the prior alone says "moved", against physics
"""

from __future__ import annotations

import argparse

import imageio.v3 as iio
import numpy as np

from kinema4d.data.episodes import Dataset4D
from kinema4d.model.held_prior import held_object_prior


def row(ds: Dataset4D, i: int) -> np.ndarray:
    e = ds.read_episode(i, keys=("rgb", "world_pointmap", "robot_render_mask", "actions"))
    cam = e["camera"]
    prior = held_object_prior(e["rgb"][0] / 255.0, e["world_pointmap"][0], e["robot_render_mask"][0], e["actions"],
                              cam.T_cam_world, cam.K, frames=np.array([len(e["actions"]) - 1]))
    over = e["rgb"][0].copy()
    over[prior.vacated[0]] = (255, 0, 255)
    m = prior.mask[0]
    over[m] = (prior.rgb[0].transpose(1, 2, 0)[m] * 255).astype(np.uint8)
    sep = np.full((e["rgb"].shape[1], 2, 3), 255, np.uint8)
    return np.concatenate([e["rgb"][0], sep, over, sep, e["rgb"][-1]], axis=1)


def stats(ds: Dataset4D, moved_m: float = 0.03, gate: tuple[float, float] | None = None) -> tuple[str, float, float]:
    """Per episode: does the prior carry the points' centroid more than ``moved_m`` by the last frame, and does
    physics move the target object more than that? Returns a table row: episodes, physics success (the episode's
    label), physics moved, prior moved, agreement of the two 'moved', agreement of 'prior moved' with physics
    success; then the physics success rate and the prior's 'moved' rate. ``gate``: the prior's grasp gate
    (``ModelConfig.held_gate``)."""
    prior_moved, gt_moved, success = [], [], []
    for i in range(len(ds)):
        e = ds.read_episode(i, keys=("rgb", "world_pointmap", "robot_render_mask", "actions", "object_poses"))
        cam = e["camera"]
        pr = held_object_prior(e["rgb"][0] / 255.0, e["world_pointmap"][0], e["robot_render_mask"][0],
                               e["actions"], cam.T_cam_world, cam.K, gate=gate)
        obj0, obj1 = e["object_poses"][0, 0, :3], e["object_poses"][-1, 0, :3]
        gt_moved.append(np.linalg.norm(obj1 - obj0) > moved_m)
        success.append(bool(e["attrs"]["success"]))
        m = pr.mask[-1]
        if m.any():
            T_world_cam = np.linalg.inv(cam.T_cam_world)
            c = pr.xyz[-1][:, m].T.mean(0) @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
            prior_moved.append(np.linalg.norm(c - obj0) > moved_m)
        else:
            prior_moved.append(False)
    p, g = np.array(prior_moved), np.array(gt_moved)
    row = (f"| {len(ds)} | {np.mean(success):.2f} | {g.mean():.2f} | {p.mean():.2f} | {(p == g).mean():.2f} | "
           f"{(p == np.array(success)).mean():.2f} |")
    return row, float(np.mean(success)), float(p.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, nargs="+", help="split directories (--stats: one table row each)")
    ap.add_argument("--episodes", type=int, nargs="+", default=[])
    ap.add_argument("--stats", action="store_true", help="print how often the prior alone says 'moved > 3 cm' vs "
                    "physics (object_poses) over the whole split, instead of drawing")
    ap.add_argument("--gate", type=float, nargs=2, metavar=("ACROSS", "ALONG"),
                    help="--stats with the grasp gate (metres), e.g. 0.02 0.03 = held_prior.GRASP_GATE")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.stats:
        print(f"grasp gate: {a.gate}")
        print("| data | episodes | physics success | physics moved > 3 cm | prior moved > 3 cm | agreement (moved) | "
              "agreement (prior moved vs physics success) |")
        print("|---|---|---|---|---|---|---|")
        rates = []
        for d in a.data:
            row, sr, moved = stats(Dataset4D(d), gate=None if a.gate is None else tuple(a.gate))
            print(f"| {d} " + row)
            rates.append((sr, moved))
        if len(rates) >= 3:  # across splits (e.g. the ranking policies): does the prior order them as physics?
            from kinema4d.eval.policy import pearson_r

            sr, moved = np.array(rates).T
            r = pearson_r(moved, sr)
            print(f"Pearson r (prior moved rate vs physics success rate, {len(rates)} splits): "
                  f"{'n/a' if r is None else f'{r:.3f}'}")
        return
    if len(a.data) != 1:
        ap.error("drawing takes one --data")
    ds = Dataset4D(a.data[0])
    if not a.episodes or not a.out:
        ap.error("--episodes and --out are needed to draw (or pass --stats)")
    rows = [row(ds, i) for i in a.episodes]
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    img = np.concatenate(sum(([r, gap] for r in rows), [])[:-1], axis=0)
    img = img.repeat(a.scale, 0).repeat(a.scale, 1)
    iio.imwrite(a.out, img)
    print(f"wrote {a.out} ({img.shape[1]}x{img.shape[0]})")


if __name__ == "__main__":
    main()
