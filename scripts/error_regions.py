"""Where a model's RGB error is, next to static's: squared error per pixel (summed over RGB, 0-255 scale) in three
regions of frames 1:, on the first N episodes of a split, plus PSNR / SSIM. Regions: robot = the robot's pixels in
frame t or frame 0; held = the held-object prior's landing / vacated pixels off the robot; rest = everything else.
For ``known_region`` models it also prints the share of pixels of frames 1: that are known (off
``conditioning.changing_region``: pasted from I0), over all episodes and the range per episode.

    .venv/bin/python scripts/error_regions.py [CHECKPOINT|-] [--split test] [--episodes 12] [--data data/synth64]

CHECKPOINT "-" = the bundled default. The held region needs a held_prior model (else it is empty).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="-")
    ap.add_argument("--split", default="test")
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--data", default="data/synth64")
    a = ap.parse_args()

    from kinema4d.data.episodes import TorchEpisodes
    from kinema4d.eval import metrics as M
    from kinema4d.eval.evaluate import load_methods, predict
    from kinema4d.interactive.media import video_to_uint8
    from kinema4d.model.conditioning import changing_region

    loaded, size, frames = load_methods(None if a.checkpoint == "-" else a.checkpoint)
    _, model, codec = loaded["kinema4d"]
    ds = TorchEpisodes(a.data, split=a.split, size=size, frames=frames)
    sse = {m: {r: 0.0 for r in ("robot", "held", "rest")} for m in ("model", "static")}
    count = {r: 0 for r in ("robot", "held", "rest")}
    video = {m: {"psnr": [], "ssim": []} for m in ("model", "static")}
    known_share = []  # per episode: share of pixels of frames 1: off the changing region (known_region models)
    n = min(a.episodes, len(ds))
    for i in range(n):
        raw = ds[i]
        item, pred, _, _ = predict(model, codec, raw, 20, 1.0, i)
        gt = video_to_uint8(raw["rgb"])
        clips = {"model": pred, "static": np.repeat(gt[:1], len(gt), 0)}
        rm = item["robot_mask"].numpy() > 0.5
        robot = rm | rm[:1]
        held = np.zeros_like(robot)
        if "held" in item:
            held = ((item["held"]["mask"].numpy() > 0.5) | (item["held"]["vacated"].numpy() > 0.5)) & ~robot
        regions = {"robot": robot[1:], "held": held[1:], "rest": (~robot & ~held)[1:]}
        if getattr(model.cfg, "known_region", None) == "swept":
            h = {k: item["held"][k][None] for k in ("mask", "vacated")} if "held" in item else None
            region = changing_region(item["robot_mask"][None], h, model.cfg.known_dilate)[0, 1:]  # (T-1, H, W)
            known_share.append(float((~region).float().mean()))
        for m, clip in clips.items():
            err = ((clip[1:].astype(np.float64) - gt[1:]) ** 2).sum(-1)  # (T-1, H, W)
            for r, sel in regions.items():
                sse[m][r] += float(err[sel].sum())
            video[m]["psnr"].append(float(np.mean(M.psnr_per_frame(clip[1:], gt[1:]))))
            video[m]["ssim"].append(M.ssim(clip[1:], gt[1:]))
        for r, sel in regions.items():
            count[r] += int(sel.sum())
    total = sum(count.values())
    print(f"{n} {a.split} episodes, frames 1: ({a.checkpoint})")
    print("| region | share of pixels | model SE / pixel | static SE / pixel |")
    print("|---|---|---|---|")
    for r in count:
        c = max(count[r], 1)
        print(f"| {r} | {count[r] / total:.3f} | {sse['model'][r] / c:.0f} | {sse['static'][r] / c:.0f} |")
    for m in video:
        print(f"{m}: PSNR {np.mean(video[m]['psnr']):.2f}, SSIM {np.mean(video[m]['ssim']):.3f}")
    if known_share:
        print(f"known region (pasted from I0): {np.mean(known_share):.3f} of the pixels of frames 1: "
              f"(per episode {min(known_share):.3f}-{max(known_share):.3f})")


if __name__ == "__main__":
    main()
