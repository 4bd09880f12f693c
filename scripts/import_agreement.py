"""Print how an imported dataset's robot masks agree with the data engine's own renders of the same episodes.

For the sample chain of README "Your robot, your data" (data engine -> ``dataset export lerobot`` -> ``dataset
import lerobot``): per split, the IoU of each imported episode's ``robot_render_mask`` with the source episode's
(same index), over all frames of the episode; printed as a markdown row per split (episodes, min / mean IoU).

    .venv/bin/python scripts/import_agreement.py data/mine data/xarm_sim [--splits train test]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kinema4d.data.episodes import Dataset4D


def agreement(imported: str | Path, source: str | Path) -> dict:
    a, b = Dataset4D(imported), Dataset4D(source)
    if len(a) != len(b):
        raise SystemExit(f"{imported}: {len(a)} episodes, {source}: {len(b)}")
    ious = []
    for i in range(len(a)):
        m = a.read_episode(i, keys=("robot_render_mask",))["robot_render_mask"]
        n = b.read_episode(i, keys=("robot_render_mask",))["robot_render_mask"]
        if m.shape != n.shape:
            raise SystemExit(f"episode {i}: imported {m.shape} vs source {n.shape}")
        union = (m | n).sum()
        ious.append(float((m & n).sum() / union) if union else 1.0)
    return {"episodes": len(ious), "iou_min": min(ious), "iou_mean": float(np.mean(ious))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("imported", type=Path)
    ap.add_argument("source", type=Path)
    ap.add_argument("--splits", nargs="+", default=["train", "test"])
    args = ap.parse_args()
    print("| split | episodes | robot-mask IoU min | IoU mean |")
    print("|---|---|---|---|")
    for s in args.splits:
        r = agreement(args.imported / s, args.source / s)
        print(f"| {s} | {r['episodes']} | {r['iou_min']:.4f} | {r['iou_mean']:.4f} |")


if __name__ == "__main__":
    main()
