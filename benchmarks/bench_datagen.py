"""Data engine throughput: episodes/s per worker, time split (physics / rendering / writing), bytes per episode.

    .venv/bin/python benchmarks/bench_datagen.py                       # 128x192 and 480x720, 3 episodes each
    .venv/bin/python benchmarks/bench_datagen.py --quick               # 1 episode each, 9 frames
    .venv/bin/python benchmarks/bench_datagen.py --project 2000 --resolutions 64x96 --workers 2 --episodes 10

Per-resolution rows run one block (clean + perturbed variants) in this process, i.e. one worker; the first episode
(renderer and mesh set-up) is excluded. ``--project N`` also times a real ``datagen_main`` run with ``--workers``
processes over ``--episodes`` episodes and extrapolates the wall time of N episodes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from kinema4d.data.datagen import DatagenConfig, datagen_main, run_block


def bench_resolution(res: str, episodes: int, frames: int, tmp: Path) -> dict:
    cfg = DatagenConfig(out=tmp / res, episodes=episodes + 1, resolution=res, frames=frames,
                        failures_per_success=episodes, progress=False)
    from kinema4d.data import episodes as kdata

    kdata.init_dataset(tmp / res / "train", "train")
    t0 = time.perf_counter()
    recs = run_block(cfg, 0, list(range(episodes + 1)))
    wall = time.perf_counter() - t0
    recs = recs[1:]  # first episode pays the one-off set-up (GL context, mesh simplification)
    n = len(recs)
    tot = {k: sum(r["timing"][k] for r in recs) / n for k in ("physics", "render_sim", "render_robot", "write")}
    per_ep = sum(tot.values())
    return {"res": res, "frames": frames, "n": n, "s_per_ep": per_ep, "eps_per_s": 1.0 / per_ep, **tot,
            "bytes": sum(r["bytes"] for r in recs) / n, "wall_incl_setup": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", nargs="+", default=["128x192", "480x720"])
    ap.add_argument("--episodes", type=int, default=3, help="timed episodes per resolution / projection run")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--quick", action="store_true", help="1 episode, 9 frames")
    ap.add_argument("--project", type=int, default=0, help="extrapolate the wall time of this many episodes")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.frames = 1, 9
    tmp = Path(tempfile.mkdtemp(prefix="bench_datagen_"))
    try:
        rows = [bench_resolution(r, args.episodes, args.frames, tmp) for r in args.resolutions]
        print(f"\none worker, {args.frames} frames/episode, mean over {args.episodes} episodes (after set-up)")
        print(f"{'res':>8} {'ep/s':>6} {'s/ep':>6} {'physics':>8} {'render':>8} {'robot_pm':>8} {'write':>6} "
              f"{'MB/ep':>7}")
        for r in rows:
            print(f"{r['res']:>8} {r['eps_per_s']:6.3f} {r['s_per_ep']:6.2f} {r['physics']:8.2f} "
                  f"{r['render_sim']:8.2f} {r['render_robot']:8.2f} {r['write']:6.2f} {r['bytes'] / 1e6:7.2f}")
        if args.project:
            res = args.resolutions[0]
            cfg = DatagenConfig(out=tmp / "project", episodes=args.episodes, resolution=res, frames=args.frames,
                                workers=args.workers, progress=False)
            t0 = time.perf_counter()
            info = datagen_main(cfg)
            wall = time.perf_counter() - t0
            per = wall / args.episodes
            print(f"\ndatagen_main {res}, {args.workers} workers: {args.episodes} episodes in {wall:.1f} s "
                  f"({per:.2f} s/episode incl. start-up); {info['bytes_per_episode'] / 1e6:.2f} MB/episode; "
                  f"clean success {info['success_ratio_clean']}, perturbed {info['success_ratio_perturbed']}")
            print(f"projected {args.project} episodes: {per * args.project / 60:.1f} min, "
                  f"{info['bytes_per_episode'] * args.project / 1e9:.2f} GB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
