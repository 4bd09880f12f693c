"""The ``kinema4d eval`` report: its tables (columns, formats), notes, per-frame plot, markdown / HTML pages, and
``kinema4d eval compare`` of two reports. Reads the ``report.json`` dict that :func:`kinema4d.eval.evaluate.evaluate`
builds; computes no metric.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from kinema4d.eval.metrics import OBJECT_MOTION_M

VIDEO_COLUMNS = (("psnr", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"), ("latent_l2", "latent L2 ↓", "{:.4f}"),
                 ("lpips", "LPIPS ↓", "{:.3f}"), ("fid", "FID ↓", "{:.2f}"), ("fvd", "FVD ↓", "{:.2f}"))
GEOMETRY_COLUMNS = (("chamfer_l1", "CD-L1 ↓", "{:.4f}"), ("chamfer_l2", "CD-L2 ↓", "{:.5f}"),
                    ("fscore", "F@0.01 ↑", "{:.3f}"), ("chamfer_l1_temp", "CD-L1 (temp) ↓", "{:.4f}"),
                    ("fscore_temp", "F (temp) ↑", "{:.3f}"), ("adherence_mm", "adherence mm ↓", "{:.1f}"),
                    ("penetration_pct", "penetration % ↓", "{:.2f}"))
COLUMNS = VIDEO_COLUMNS + GEOMETRY_COLUMNS
OBJECT_COLUMNS = (("object_found_pct", "found %", "{:.0f}"),
                  ("object_endpoint_mm", "endpoint mm ↓ (found episodes)", "{:.1f}"),
                  ("object_motion_recall", "motion recall ↑", "{:.2f}"),
                  ("object_motion_precision", "motion precision ↑", "{:.2f}"),
                  ("object_moving", "moved (rollout)", "{:.0f}"), ("object_gt_moving", "moved (GT)", "{:.0f}"))
FEATURE_METRICS = ("lpips", "fid", "fvd")  # need local feature-network weights: None in the report without them


def write_plots(report: dict, out: Path) -> None:
    """``per_frame.png``: per-frame PSNR and Chamfer L1 of every method in ``report``, into directory ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for m, pf in report["per_frame"].items():
        ax[0].plot(range(len(pf["psnr"]))[1:], pf["psnr"][1:], marker="o", label=m)
        ax[1].plot(range(1, len(pf["chamfer_l1"]) + 1), pf["chamfer_l1"], marker="o", label=m)
    ax[0].set(xlabel="frame", ylabel="PSNR (dB)", title="per-frame PSNR")
    ax[1].set(xlabel="frame", ylabel="Chamfer L1 (normalized)", title="per-frame Chamfer L1")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(out / "per_frame.png", dpi=110)
    plt.close(fig)


def _fmt(v, f: str) -> str:
    """None (no feature weights) and NaN (the metric does not apply, e.g. geometry of an RGB-only model) -> n/a."""
    return "n/a" if v is None or np.isnan(v) else f.format(v)


def _table(summary: dict, columns=COLUMNS) -> list[list[str]]:
    rows = [["method", *[h for _, h, _ in columns]]]
    for m, s in summary.items():
        rows.append([m, *[_fmt(s.get(k), f) for k, _, f in columns]])
    return rows


def _tables(report: dict) -> list[tuple[str, list[list[str]]]]:
    """(title, rows) of the report's three tables: video, geometry, object (+ the locator on the GT frames)."""
    out = [(title, _table(report["summary"], cols)) for title, cols in
           (("Video quality (Tab. 1)", VIDEO_COLUMNS), ("Geometry (Tab. 2)", GEOMETRY_COLUMNS))]
    if "object_gt" in report:  # reports written before the object metrics lack it
        obj = dict(report["summary"]) | {"GT frames (locator ceiling)": report["object_gt"]["summary"]}
        out.append(("Object (target object, last frame)", _table(obj, OBJECT_COLUMNS)))
    return out


def _notes(report: dict) -> list[str]:
    notes = []
    na = report.get("feature_metrics_na", {})
    notes += [f"{na[k]}." for k in FEATURE_METRICS if k in na]
    missing = [k.upper() for k in FEATURE_METRICS if report["summary"]["static"].get(k) is None and k not in na]
    if missing:
        notes.append(f"{' / '.join(missing)}: n/a = not available, no local feature-network weights were given "
                     f"(--{missing[0].lower()}-weights PATH; they cannot be downloaded here and are never made up).")
    if report.get("gt_penetration_pct") is not None:
        notes.append(f"Penetration of the ground-truth pointmap itself (the floor set by mask edges and convex-hull "
                     f"link volumes): {report['gt_penetration_pct']:.2f} %.")
    notes.append("Chamfer / F-Score: fractions of the GT scene extent per axis (metres, then the GT sequence's "
                 "min-max); adherence in mm.")
    if "object_gt" in report:
        ref = report["object_gt"]["per_episode"]["reference_found"]
        notes.append(
            "Object: the target object is located in each method's last frame by colour (reference read from I0 at "
            "its known initial position), robot pixels excluded, lifted to 3D with that method's pointmap; position = "
            "median xy. Endpoint error = planar (xy) distance to the recorded object centre in mm, mean over the "
            "episodes where it was found (surface points vs centre: at most half the object's size of bias). Motion: "
            f"> {100 * OBJECT_MOTION_M:.0f} cm from the initial xy (not found = not moved); recall over GT-moving "
            "episodes, precision over rollout-moving episodes, n/a when there are none. The reference colour "
            f"identified the object in I0 in {sum(bool(x) for x in ref)}/{len(ref)} "
            "episodes (else not found for every method); 'GT frames' is the same locator on the ground truth.")
    robot_input = report.get("robot_input", "stored")
    if robot_input == "pipeline":
        ik = report.get("pipeline_ik_max_pos_err_mm") or []
        far = sum(e > 1.0 for e in ik)
        notes.append("Robot input: pipeline = the commanded ee-pose actions through seeded IK and the kinematic "
                     "render at the model's size (adherence, penetration and the object locator use this robot). "
                     f"The IK missed a commanded position by > 1 mm in {far}/{len(ik)} episodes"
                     + (f" (worst {max(ik):.1f} mm)." if ik else "."))
    else:
        notes.append("Robot input: stored = the dataset's robot pointmaps, rendered from the executed joints.")
    wins = [f"{m}: {w}" for m in report.get("per_episode", {}) if m != "static" and (w := _wins_vs_static(report, m))]
    if wins:
        notes.append("Episodes where a method beats static (paired, same episodes): " + "; ".join(wins) + ".")
    return notes


def _wins_vs_static(report: dict, method: str) -> str:
    """'PSNR higher in a/n, CD-L1 lower in b/m' from report['per_episode'] (episodes where both are finite)."""
    pe, parts = report["per_episode"], []
    for k, label, better in (("psnr", "PSNR higher", np.greater), ("chamfer_l1", "CD-L1 lower", np.less)):
        a, b = (np.asarray([np.nan if v is None else v for v in pe[m][k]], np.float64) for m in (method, "static"))
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.any():
            parts.append(f"{label} in {int(better(a[ok], b[ok]).sum())}/{int(ok.sum())}")
    return ", ".join(parts)


def render_markdown(report: dict) -> str:
    lines = [f"# kinema4d eval: split {report['config']['split']!r}, {report['episodes']} episodes", "",
             f"checkpoint `{report['checkpoint']}`, {report['frames']} frames of {report['size'][0]}x"
             f"{report['size'][1]}, {report['config']['steps']} sampling steps, robot input "
             f"{report.get('robot_input', 'stored')!r}; frame 0 (the given image) excluded."]
    if report.get("skipped_corrupt"):
        lines += ["", f"**{report['skipped_corrupt']} corrupt episodes were skipped** (`--skip-corrupt`): the next "
                  "readable episode was scored in each one's place."]
    for title, t in _tables(report):
        lines += ["", f"## {title}", "", "| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])]
        lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
    lines += ["", *_notes(report)]
    lines += ["", "![per-frame PSNR and Chamfer](per_frame.png)", "",
              f"Videos (GT RGB | {' | '.join(report['checkpoints'])} RGB | GT pointmap | "
              f"{' | '.join(report['checkpoints'])} pointmap): `videos/`.", ""]
    return "\n".join(lines)


def render_html(report: dict) -> str:
    tables = ""
    for title, t in _tables(report):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in t[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t[1:])
        tables += f"<h2>{title}</h2><table border=1 cellpadding=4><tr>{head}</tr>{body}</table>"
    notes = "".join(f"<p>{html.escape(x)}</p>" for x in _notes(report))
    vids = sorted((Path(report["config"]["out"]) / "videos").glob("*.mp4"))
    vhtml = "".join(f'<video src="videos/{v.name}" controls loop width="480"></video>' for v in vids)
    return (f"<!doctype html><meta charset=utf-8><title>kinema4d eval</title><h1>kinema4d eval: "
            f"{html.escape(report['config']['split'])}, {report['episodes']} episodes, robot input "
            f"{html.escape(report.get('robot_input', 'stored'))}</h1>"
            f"{tables}{notes}<img src=per_frame.png><h2>GT | prediction"
            f"</h2>{vhtml}")


def compare(report_a: str | Path, report_b: str | Path) -> str:
    """Markdown table of two reports' summaries side by side (B - A per metric)."""
    ra, rb = (json.loads((Path(p) / "report.json").read_text()) for p in (report_a, report_b))
    lines = ["| method | metric | A | B | B - A |", "|---|---|---|---|---|"]
    for m in ra["summary"]:
        if m not in rb["summary"]:
            continue
        for k, h, f in COLUMNS + OBJECT_COLUMNS:
            a, b = ra["summary"][m].get(k), rb["summary"][m].get(k)
            d = None if a is None or b is None else b - a
            lines.append(f"| {m} | {h} | {_fmt(a, f)} | {_fmt(b, f)} | {_fmt(d, f)} |")
    return "\n".join(lines)


__all__ = ["VIDEO_COLUMNS", "GEOMETRY_COLUMNS", "COLUMNS", "OBJECT_COLUMNS", "FEATURE_METRICS", "write_plots",
           "render_markdown", "render_html", "compare"]
