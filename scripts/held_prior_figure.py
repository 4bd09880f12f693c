"""Figure of the held-object prior on dataset episodes: I0 | the prior at the last frame drawn over I0 (vacated
pixels in magenta) | the ground-truth last frame, one row per episode, pixels enlarged.

    .venv/bin/python scripts/held_prior_figure.py --data data/synth64/test --episodes 37 38 31 \
        --out docs/images/held_prior.png
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--episodes", type=int, nargs="+", required=True)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ds = Dataset4D(a.data)
    rows = [row(ds, i) for i in a.episodes]
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    img = np.concatenate(sum(([r, gap] for r in rows), [])[:-1], axis=0)
    img = img.repeat(a.scale, 0).repeat(a.scale, 1)
    iio.imwrite(a.out, img)
    print(f"wrote {a.out} ({img.shape[1]}x{img.shape[0]})")


if __name__ == "__main__":
    main()
