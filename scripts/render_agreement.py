"""Print how the stored kinematic robot render agrees with pybullet's own view of the robot, per split.

Every episode stores pybullet's segmentation of the robot (``robot_mask``) and its depth buffer (the z of
``world_pointmap``) next to kinema4d's kinematic render of the recorded joints (``robot_render_mask``,
``robot_pointmap``). Per frame: IoU of the two masks and the median |dz| on pixels both call robot; printed as a
markdown row per split (min / median IoU over frames, median of the per-frame median |dz|).

    .venv/bin/python scripts/render_agreement.py data/synth64/test data/synth64/ood [--episodes 25]
"""

from __future__ import annotations

import argparse

import numpy as np

from kinema4d.data.episodes import Dataset4D


def agreement(split_dir: str, episodes: int | None = None) -> dict:
    ds = Dataset4D(split_dir)
    n = len(ds) if episodes is None else min(episodes, len(ds))
    ious, dzs = [], []
    for i in range(n):
        e = ds.read_episode(i, keys=("robot_mask", "robot_render_mask", "world_pointmap", "robot_pointmap"))
        for seg, ren, wz, rz in zip(e["robot_mask"], e["robot_render_mask"], e["world_pointmap"][..., 2],
                                    e["robot_pointmap"][..., 2], strict=True):
            both = seg & ren
            union = (seg | ren).sum()
            if union:
                ious.append(both.sum() / union)
            if both.any():
                dzs.append(np.median(np.abs(wz[both].astype(np.float64) - rz[both])))
    return {"split": split_dir, "robot": ds.attrs(0).get("robot", "panda") if n else None, "episodes": n,
            "frames": len(ious), "iou_min": float(np.min(ious)), "iou_median": float(np.median(ious)),
            "dz_median_mm": float(np.median(dzs)) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("splits", nargs="+", help="split directories (DATA/test, ...)")
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes of each split (default: all)")
    args = ap.parse_args()
    print("| split | robot | episodes | frames | IoU min | IoU median | median abs dz mm |")
    print("|---|---|---|---|---|---|---|")
    for s in args.splits:
        a = agreement(s, args.episodes)
        print(f"| {a['split']} | {a['robot']} | {a['episodes']} | {a['frames']} | {a['iou_min']:.3f} | "
              f"{a['iou_median']:.3f} | {a['dz_median_mm']:.3f} |")


if __name__ == "__main__":
    main()
