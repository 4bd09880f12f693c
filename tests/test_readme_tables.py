"""scripts/readme_tables.py: README's tables are the reports' values, rounded, in the order asked; bad rows are
errors that name the row and what is missing. Fixtures are tiny hand-written reports."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)


def _write(d: Path, name: str, obj: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))
    return d


@pytest.fixture
def eval_report(tmp_path):
    summary = {"kinema4d": {"psnr": 25.604, "ssim": 0.87849, "chamfer_l1": 0.00344, "object_motion_precision": None},
               "static": {"psnr": 22.9549, "ssim": 0.8531, "chamfer_l1": 0.01281,
                          "object_motion_precision": float("nan")}}
    return _write(tmp_path / "eval", "report.json",
                  {"summary": summary, "object_gt": {"summary": {"object_endpoint_mm": 4.64}}})


def test_column_table_rows_from_reports(eval_report, capsys):
    readme_tables.main(["--columns", "psnr", "chamfer_l1", "object_motion_precision", "--rows",
                        f"ours (a=b)={eval_report}:kinema4d", f"static={eval_report}:static"])
    out = capsys.readouterr().out.splitlines()
    assert out == ["| model | PSNR ↑ | CD-L1 ↓ | motion precision ↑ |", "|---|---|---|---|",
                   "| ours (a=b) | 25.60 | 0.0034 | n/a |", "| static | 22.95 | 0.0128 | n/a |"]


def test_gt_frames_row_and_model_tables(eval_report, capsys):
    readme_tables.main(["--columns", "object_endpoint_mm", "--rows", f"GT={eval_report}:GT frames"])
    assert capsys.readouterr().out.splitlines()[-1] == "| GT | 4.6 |"
    readme_tables.main([f"test={eval_report}"])
    out = capsys.readouterr().out
    assert "| test | kinema4d | 25.60 | 0.878 | n/a |" in out
    assert "| test | GT frames (locator ceiling) | n/a | 4.6 |" in out


def test_policy_and_ranking_tables(tmp_path, capsys):
    setups = {s: {"gt_sr": gt, "methods": {"kinema4d": {"sim_sr": sr, "abs_diff": abs(sr - gt), "agreement": ag}}}
              for s, gt, sr, ag in (("canonical", 0.52, 0.54, 0.94), ("dense", 0.58, 0.62, 0.92))}
    pol = _write(tmp_path / "pol", "policy.json", {"setups": setups})
    readme_tables.main(["--policy", "--rows", f"m={pol}:kinema4d"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| model | SR (abs diff, agreement): canonical / dense (GT SR 0.52 / 0.58) |"
    assert out[2] == "| m | 0.54 (0.02, 0.94) / 0.62 (0.04, 0.92) |"
    ranking = {"policy_order": ["expert", "p1"], "setups": {"canonical": {"gt_srs": [1.0, 0.84], "ranking": {
        "kinema4d": {"pearson_r": 0.99219, "mmrv": 0.0, "agreement": 0.792, "sim_srs": [1.0, 0.78]},
        "static": {"pearson_r": None, "mmrv": 0.46, "agreement": 0.46, "sim_srs": [0.0, 0.0]}}}}}
    rk = _write(tmp_path / "rk", "policy_ranking.json", ranking)
    readme_tables.main(["--ranking", "--rows", f"m={rk}:kinema4d", f"s={rk}:static"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model | SR expert / p1 (GT 1.00 / 0.84) |")
    assert out[2:] == ["| m | 1.00 / 0.78 | 0.992 | 0.000 | 0.792 |", "| s | 0.00 / 0.00 | n/a | 0.460 | 0.460 |"]


def test_errors_name_the_problem(eval_report, tmp_path):
    with pytest.raises(SystemExit, match="no method 'nope'.*'kinema4d', 'static'"):
        readme_tables.main(["--columns", "psnr", "--rows", f"x={eval_report}:nope"])
    with pytest.raises(SystemExit, match="unknown column"):
        readme_tables.main(["--columns", "psnrr", "--rows", f"x={eval_report}:kinema4d"])
    with pytest.raises(SystemExit, match="is not LABEL=DIR:METHOD"):
        readme_tables.main(["--columns", "psnr", "--rows", str(eval_report)])
    with pytest.raises(SystemExit, match="report.json does not exist"):
        readme_tables.main(["--columns", "psnr", "--rows", f"x={tmp_path / 'missing'}:kinema4d"])
