"""Closed-loop world-model rollout: a scripted policy drives the Kinema4D gymnasium environment chunk by chunk.

Each step sends the next ``chunk`` end-effector targets (a small horizontal arc from the current pose, computed
from the observation), the world model generates the next frames from the last generated frame, and the episode
continues from there (``kinema4d.interactive.envs.Kinema4DEnv``).

    python examples/closed_loop.py                                   # bundled model + demo image / camera
    python examples/closed_loop.py --checkpoint runs/default --chunks 4 --out out/closed_loop
    cp out/closed_loop/frames.gif docs/images/closed_loop.gif        # README's GIF (first command)

Writes ``<out>/frames.gif`` (generated RGB | world pointmap pseudo-colour, per frame) and ``<out>/rollout.npz``
(the rollout format of ``kinema4d.interactive.viewer``: ``kinema4d view <out>/rollout.npz`` opens it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kinema4d.interactive.envs import Kinema4DEnv, arc_chunk
from kinema4d.interactive.viewer import Sequence4D, export_gif, save_rollout_npz


def main(argv: list[str] | None = None) -> dict:
    from kinema4d.simulator import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="checkpoint dir (trainer ckpt/step_XXXXXXX, run dir, or the bundled model; default)")
    p.add_argument("--out", type=Path, default=Path("out/closed_loop"), help="output directory")
    p.add_argument("--chunks", type=int, default=3, help="closed-loop steps (chunks of generated frames)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps per chunk")
    p.add_argument("--radius", type=float, default=0.04, help="arc radius (m) of the scripted end-effector motion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gif-upscale", type=int, default=4, help="nearest-neighbour enlargement of the GIF frames")
    args = p.parse_args(argv)
    if args.chunks < 1:
        p.error("--chunks must be >= 1")
    if args.gif_upscale < 1:
        p.error("--gif-upscale must be >= 1")

    t0 = time.perf_counter()
    # demo image + demo camera (resized to the checkpoint's training size), joints of the demo's first action
    env = Kinema4DEnv(checkpoint=args.checkpoint, steps=args.steps, max_chunks=args.chunks, seed=args.seed)
    obs, _ = env.reset(seed=args.seed)
    log = []
    for k in range(args.chunks):
        targets = arc_chunk(obs["ee_pose"], env.chunk, radius=args.radius)
        t = time.perf_counter()
        obs, _, _, truncated, info = env.step(targets)
        log.append({"chunk": k, "seconds": round(time.perf_counter() - t, 3), "adherence_mm": info["adherence_mm"],
                    "ee_xyz": [round(float(v), 4) for v in obs["ee_pose"][:3]]})
        print(f"chunk {k}: {env.chunk} frames in {log[-1]['seconds']:.2f} s, adherence "
              f"{info['adherence_mm'] if info['adherence_mm'] is None else round(info['adherence_mm'], 1)} mm, "
              f"ee at {log[-1]['ee_xyz']}")

    seq = env.episode_sequence()
    args.out.mkdir(parents=True, exist_ok=True)
    gif_seq = Sequence4D(camera=seq.camera, rgb=seq.rgb, world_pointmap=seq.world_pointmap, fps=seq.fps)
    written = {"gif": export_gif(gif_seq, args.out / "frames.gif", upscale=args.gif_upscale),
               "rollout": save_rollout_npz(args.out / "rollout.npz", seq)}
    summary = {"checkpoint": str(env.simulator.checkpoint), "chunks": args.chunks, "chunk": env.chunk,
               "frames": seq.T, "size_hw": list(env.simulator.size), "seconds": round(time.perf_counter() - t0, 2),
               "mean_adherence_mm": None if any(c["adherence_mm"] is None for c in log)
               else float(np.mean([c["adherence_mm"] for c in log])),
               "log": log, "outputs": {k: str(v) for k, v in written.items()}}
    (args.out / "closed_loop.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {written['gif']} and {written['rollout']} ({seq.T} frames, {summary['seconds']} s)")
    return summary


if __name__ == "__main__":
    main()
