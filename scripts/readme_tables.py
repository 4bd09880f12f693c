"""Print README's tables (markdown) from ``kinema4d eval`` / ``kinema4d eval policy`` report directories.

    # the three model tables (video, geometry, object): one row per (report, method)
    .venv/bin/python scripts/readme_tables.py test=out/eval_test ood=out/eval_ood \
        "test, pipeline=out/eval_test_pipeline"
    # one table of chosen columns, one row per LABEL=REPORT_DIR:METHOD (rows may come from different reports)
    .venv/bin/python scripts/readme_tables.py --columns psnr ssim chamfer_l1 \
        --rows "held_input=out/eval_hi/test:kinema4d" "static=out/eval_hi/test:static"
    # policy evaluation: SR (|SR - GT SR|, agreement) per setup, one row per LABEL=POLICY_DIR:METHOD
    .venv/bin/python scripts/readme_tables.py --policy --rows "held_input=out/policy_hi:kinema4d"
    # policy ranking: SR per policy, Pearson r, MMRV, agreement, one row per LABEL=RANKING_DIR:METHOD
    .venv/bin/python scripts/readme_tables.py --ranking --rows "held_input=out/ranking_hi:kinema4d"

Column keys are the ``summary`` keys of ``report.json`` (listed in VIDEO, GEOMETRY and OBJECT below); the method
``GT frames`` is the object locator run on the ground truth (``object_gt``). Nothing is computed here: every
value is read from the reports and only rounded.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

VIDEO = [("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3), ("latent_l2", "latent L2 ↓", 4), ("lpips", "LPIPS ↓", 3),
         ("fid", "FID ↓", 1), ("fvd", "FVD ↓", 1)]
GEOMETRY = [("chamfer_l1", "CD-L1 ↓", 4), ("chamfer_l2", "CD-L2 ↓", 5), ("fscore", "F@0.01 ↑", 3),
            ("chamfer_l1_temp", "CD-L1 (temp) ↓", 4), ("fscore_temp", "F (temp) ↑", 3),
            ("adherence_mm", "adherence mm ↓", 1), ("penetration_pct", "penetration % ↓", 2)]
OBJECT = [("object_found_pct", "found %", 0), ("object_endpoint_mm", "endpoint mm ↓", 1),
          ("object_motion_recall", "motion recall ↑", 2), ("object_motion_precision", "motion precision ↑", 2),
          ("object_moving", "moved (rollout)", 0), ("object_gt_moving", "moved (GT)", 0)]
COLUMNS = {key: (title, nd) for key, title, nd in VIDEO + GEOMETRY + OBJECT}
GT_FRAMES = "GT frames"


def _fmt(v, nd: int) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _load(path: str | Path, name: str) -> dict:
    f = Path(path) / name
    if not f.is_file():
        raise SystemExit(f"readme_tables: {f} does not exist (is {path} a report directory of the right command?)")
    return json.loads(f.read_text())


def _parse_row(spec: str) -> tuple[str, str, str]:
    """'LABEL=DIR:METHOD' -> (label, dir, method); the label may contain '=' only before the last one."""
    label, sep, rest = spec.rpartition("=")
    path, sep2, method = rest.rpartition(":")
    if not sep or not sep2 or not label or not method:
        raise SystemExit(f"readme_tables: row {spec!r} is not LABEL=DIR:METHOD")
    return label, path, method


def _method(summary: dict, spec: str, method: str) -> dict:
    if method not in summary:
        raise SystemExit(f"readme_tables: row {spec!r}: no method {method!r} (the report has {sorted(summary)})")
    return summary[method]


def model_tables(args: list[str]) -> list[str]:
    """README's video, geometry and object tables: one row per (NAME=REPORT_DIR, method), in report order."""
    reports = []
    for a in args:
        name, _, path = a.rpartition("=")
        reports.append((name or Path(path).name, _load(path, "report.json")))
    lines = []
    for cols in (VIDEO, GEOMETRY, OBJECT):
        lines += [f"| split | method | {' | '.join(c[1] for c in cols)} |", "|---|---|" + "---|" * len(cols)]
        for name, r in reports:
            rows = dict(r["summary"])
            if cols is OBJECT and r.get("object_gt"):
                rows[f"{GT_FRAMES} (locator ceiling)"] = r["object_gt"]["summary"]
            for method, s in rows.items():
                lines.append(f"| {name} | {method} | {' | '.join(_fmt(s.get(k), nd) for k, _, nd in cols)} |")
        lines.append("")
    return lines


def column_table(columns: list[str], rows: list[str]) -> list[str]:
    """One table of the given summary keys, one row per LABEL=REPORT_DIR:METHOD."""
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise SystemExit(f"readme_tables: unknown column(s) {unknown}; known: {sorted(COLUMNS)}")
    lines = [f"| model | {' | '.join(COLUMNS[c][0] for c in columns)} |", "|---|" + "---|" * len(columns)]
    for spec in rows:
        label, path, method = _parse_row(spec)
        r = _load(path, "report.json")
        summary = dict(r["summary"])
        if r.get("object_gt"):
            summary[GT_FRAMES] = r["object_gt"]["summary"]
        s = _method(summary, spec, method)
        lines.append(f"| {label} | {' | '.join(_fmt(s.get(c), COLUMNS[c][1]) for c in columns)} |")
    return lines


def policy_table(rows: list[str]) -> list[str]:
    """Simulated SR (|SR - GT SR|, per-episode agreement) per setup, one row per LABEL=POLICY_DIR:METHOD."""
    lines, setups = [], None
    for spec in rows:
        label, path, method = _parse_row(spec)
        r = _load(path, "policy.json")
        if setups is None:
            setups = list(r["setups"])
            gt = " / ".join(f"{r['setups'][s]['gt_sr']:.2f}" for s in setups)
            lines += [f"| model | SR (abs diff, agreement): {' / '.join(setups)} (GT SR {gt}) |", "|---|---|"]
        cells = []
        for s in setups:
            if s not in r["setups"]:
                raise SystemExit(f"readme_tables: row {spec!r}: no setup {s!r} in {path}")
            m = _method(r["setups"][s]["methods"], spec, method)
            cells.append(f"{m['sim_sr']:.2f} ({m['abs_diff']:.2f}, {m['agreement']:.2f})")
        lines.append(f"| {label} | {' / '.join(cells)} |")
    return lines


def ranking_table(rows: list[str], setup: str = "canonical") -> list[str]:
    """SR per policy, Pearson r, MMRV and agreement across policies, one row per LABEL=RANKING_DIR:METHOD."""
    lines = []
    for spec in rows:
        label, path, method = _parse_row(spec)
        r = _load(path, "policy_ranking.json")
        if setup not in r["setups"]:
            raise SystemExit(f"readme_tables: row {spec!r}: no setup {setup!r} in {path}")
        s = r["setups"][setup]
        if not lines:
            gt = " / ".join(f"{v:.2f}" for v in s["gt_srs"])
            lines += [f"| model | SR {' / '.join(r['policy_order'])} (GT {gt}) | Pearson r ↑ | MMRV ↓ | agreement ↑ |",
                      "|---|---|---|---|---|"]
        m = _method(s["ranking"], spec, method)
        srs = " / ".join(f"{v:.2f}" for v in m["sim_srs"])
        lines.append(f"| {label} | {srs} | {_fmt(m['pearson_r'], 3)} | {_fmt(m['mmrv'], 3)} | {m['agreement']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="*", help="NAME=REPORT_DIR: the three model tables")
    ap.add_argument("--rows", nargs="+", default=[], help="LABEL=DIR:METHOD rows of one table")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--columns", nargs="+", help="summary keys of report.json (with --rows)")
    mode.add_argument("--policy", action="store_true", help="--rows are kinema4d eval policy directories")
    mode.add_argument("--ranking", action="store_true", help="--rows are kinema4d eval policy --ranking directories")
    a = ap.parse_args(argv)
    if bool(a.rows) == bool(a.reports) or bool(a.rows) != bool(a.columns or a.policy or a.ranking):
        ap.error("give either NAME=REPORT_DIR reports, or --rows with one of --columns / --policy / --ranking")
    if a.columns:
        lines = column_table(a.columns, a.rows)
    elif a.policy:
        lines = policy_table(a.rows)
    elif a.ranking:
        lines = ranking_table(a.rows)
    else:
        lines = model_tables(a.reports)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
