"""Print README's model tables (markdown) from ``kinema4d eval`` report directories: one row per (report, method).

    .venv/bin/python scripts/readme_tables.py test=out/eval_test ood=out/eval_ood \
        "test, pipeline=out/eval_test_pipeline"
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

VIDEO = [("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3), ("latent_l2", "latent L2 ↓", 4), ("lpips", "LPIPS ↓", 3),
         ("fid", "FID ↓", 1), ("fvd", "FVD ↓", 1)]
GEOMETRY = [("chamfer_l1", "CD-L1 ↓", 4), ("chamfer_l2", "CD-L2 ↓", 5), ("fscore", "F@0.01 ↑", 3),
            ("chamfer_l1_temp", "CD-L1 (temp) ↓", 4), ("fscore_temp", "F (temp) ↑", 3),
            ("adherence_mm", "adherence mm ↓", 1), ("penetration_pct", "penetration % ↓", 2)]
OBJECT = [("object_found_pct", "found %", 0), ("object_endpoint_mm", "endpoint mm ↓", 1),
          ("object_motion_recall", "motion recall ↑", 2), ("object_motion_precision", "motion precision ↑", 2),
          ("object_moving", "moved (rollout)", 0), ("object_gt_moving", "moved (GT)", 0)]


def _fmt(v, nd: int) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def main(args: list[str]) -> None:
    reports = []
    for a in args:
        name, _, path = a.rpartition("=")
        reports.append((name or Path(path).name, json.loads((Path(path) / "report.json").read_text())))
    for title, cols in (("video", VIDEO), ("geometry", GEOMETRY), ("object", OBJECT)):
        print(f"| split | method | {' | '.join(c[1] for c in cols)} |")
        print("|---|---|" + "---|" * len(cols))
        for name, r in reports:
            rows = dict(r["summary"])
            if title == "object" and r.get("object_gt"):
                rows["GT frames (locator ceiling)"] = r["object_gt"]["summary"]
            for method, s in rows.items():
                print(f"| {name} | {method} | {' | '.join(_fmt(s.get(k), nd) for k, _, nd in cols)} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
