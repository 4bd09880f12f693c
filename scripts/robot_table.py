"""Print README's per-robot data-engine table: the scripted expert's clean-demo success and the failure synthesis.

    .venv/bin/python scripts/robot_table.py --out /tmp/k4d_robots --scenes 20 --blocks 3 --workers 1

For each robot and split, ``kinema4d datagen`` with ``--failures-per-success 0 --max-attempts 1`` gives one clean
scripted episode per freshly sampled scene, never resampled: its success ratio is the expert's clean-demo success.
Then ``--blocks`` blocks of the default engine (1 clean demo + 9 perturbed variants, scenes resampled until the
clean run succeeds) on the test-range split give the perturbed (failure-synthesis) success. 64x96, 49 frames.
After the table, one line per failed clean run: the target object and why the outcome check failed (its stored
``outcome``: distance from the pad centre, height error, contact with the robot).
Re-running into the same --out reuses the episodes already there (datagen is resumable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kinema4d.data.datagen import DatagenConfig, datagen_main
from kinema4d.data.episodes import Dataset4D
from kinema4d.data.scene import SUCCESS_XY_TOL, SUCCESS_Z_TOL

ROWS = (("panda", "test"), ("panda", "ood"), ("xarm6", "ood_embodiment"), ("xarm6", "ood"), ("kuka_iiwa_wsg50", "test"),
        ("kuka_iiwa_wsg50", "ood"))


def clean_failures(split_dir: str | Path) -> list[str]:
    """One line per clean scripted episode of ``split_dir`` that failed: episode, target object, its outcome."""
    ds = Dataset4D(split_dir)
    lines = []
    for i in range(len(ds)):
        a = ds.attrs(i)
        if a.get("success") or a.get("variant", {}).get("kind") not in ("clean", "clean_failed"):
            continue
        o = a.get("outcome", {})
        lines.append(f"episode {a.get('episode', i)}: {a['objects'][0]['name']} {100 * o['xy_err']:.1f} cm from the "
                     f"pad centre, {100 * o['z_err']:.1f} cm off its resting height, "
                     f"{'touching' if o['touching_robot'] else 'not touching'} the robot")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/k4d_robots"))
    ap.add_argument("--scenes", type=int, default=20, help="clean scenes per robot and split")
    ap.add_argument("--blocks", type=int, default=3, help="clean + 9 perturbed blocks per robot (failure synthesis)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resolution", default="64x96")
    args = ap.parse_args()
    common = {"resolution": args.resolution, "workers": args.workers, "progress": False}
    rows = []
    for robot, split in ROWS:
        clean = datagen_main(DatagenConfig(out=args.out / robot / "clean", split=split, robot=robot,
                                           episodes=args.scenes, failures_per_success=0, max_attempts=1, **common))
        pert = None
        if split in ("test", "ood_embodiment"):
            pert = datagen_main(DatagenConfig(out=args.out / robot / "failures", split=split, robot=robot,
                                              episodes=10 * args.blocks, **common))
        rows.append((robot, split, clean, pert))
    print("| robot | split | expert clean-demo success (fresh scenes) | perturbed episodes | perturbed success |")
    print("|---|---|---|---|---|")
    for robot, split, clean, pert in rows:
        p = "- | -" if pert is None else f"{pert['perturbed']} | {pert['success_ratio_perturbed']:.2f}"
        print(f"| {robot} | {split} | {clean['success_ratio']:.2f} ({clean['success']}/{clean['episodes']}) | {p} |")
    print(f"\nFailed clean runs (success: within {100 * SUCCESS_XY_TOL:g} cm of the pad centre, within "
          f"{100 * SUCCESS_Z_TOL:g} cm of the resting height, not touching the robot):")
    for robot, split, _, _ in rows:
        for line in clean_failures(args.out / robot / "clean" / split):
            print(f"  {robot} {split} {line}")


if __name__ == "__main__":
    main()
