"""Print README's data-engine table (markdown) from ``kinema4d dataset info`` of every split under a root.

    .venv/bin/python scripts/data_table.py data/synth64
"""

from __future__ import annotations

import sys

from kinema4d.data.datagen import dataset_info


def main(root: str) -> None:
    info = dataset_info(root)
    splits = info.get("splits", {info.get("split"): info})
    print("| split | episodes | resolution x frames | MB per episode | success (all) | clean demos | perturbed |")
    print("|---|---|---|---|---|---|---|")
    for name in ("train", "val", "test", "ood", *sorted(set(splits) - {"train", "val", "test", "ood"})):
        if name not in splits:
            continue
        d = splits[name]
        print(f"| {name} | {d['episodes']} | {d['resolution']} x {d['frames']} | {d['bytes_per_episode'] / 1e6:.2f} | "
              f"{d['success_ratio']:.2f} | {d['success_ratio_clean']:.2f} | {d['success_ratio_perturbed']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/synth64")
