"""Dataset generation: kill-and-resume, Ray backend, info/preview, config checks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kinema4d.data import episodes as kdata
from kinema4d.data.datagen import DatagenConfig, datagen_main, dataset_info, dataset_preview, parse_resolution, plan

TINY = {"resolution": "32x48", "frames": 4, "failures_per_success": 2, "progress": False}


def _cmd(out: Path, episodes: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "kinema4d.data.datagen", "--out", str(out), "--episodes", str(episodes),
            "--workers", str(workers), "--resolution", "32x48", "--frames", "4", "--failures-per-success", "2",
            "--no-progress"]


def test_sigkill_midway_then_resume(tmp_path):
    out, n = tmp_path / "ds", 9
    root = out / "train"
    proc = subprocess.Popen(_cmd(out, n, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            if len(kdata.complete_episodes(root)) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"datagen ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        done_at_kill = kdata.complete_episodes(root)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert 1 <= len(done_at_kill) < n
    res = subprocess.run(_cmd(out, n, 2), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ds = kdata.Dataset4D(root)
    assert ds.episode_ids == list(range(n))
    for i in range(n):
        e = ds.read_episode(i)
        assert e["rgb"].shape == (4, 32, 48, 3)
    index = json.loads((root / "index.json").read_text())
    assert [e["episode"] for e in index["episodes"]] == list(range(n))
    assert not [d for d in os.listdir(root / "episodes") if d.startswith(".tmp-")]
    info = dataset_info(out)["splits"]["train"]
    assert info["episodes"] == n and info["clean"] == 3 and info["perturbed"] == 6 and info["temp_dirs"] == 0
    cfg = json.loads((root / "datagen_config.json").read_text())
    assert cfg["episodes"] == n and cfg["split"] == "train"


@pytest.fixture(scope="module")
def local_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    info = datagen_main(DatagenConfig(out=out, episodes=3, **TINY))
    return out, info


def test_local_run_info_and_preview(local_ds, tmp_path):
    out, info = local_ds
    assert info["episodes"] == 3 and info["clean"] == 1 and info["success_ratio_clean"] == 1.0
    assert info["resolution"] == "32x48" and info["bytes_per_episode"] > 0
    mp4 = dataset_preview(out / "train", 0, tmp_path / "prev.mp4")
    import imageio.v2 as imageio

    reader = imageio.get_reader(mp4)
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 4 and frames[0].shape == (32, 3 * 48 + 2 * 4, 3)  # 3 panels, 4-px gaps
    # rerun with the same config: nothing to do; a different content config is refused
    assert datagen_main(DatagenConfig(out=out, episodes=3, **TINY))["episodes"] == 3
    with pytest.raises(ValueError, match="different config"):
        datagen_main(DatagenConfig(out=out, episodes=3, **(TINY | {"frames": 5})))


def test_all_clean_attempts_failed_is_not_labelled_clean(tmp_path, monkeypatch):
    """When every clean scripted attempt fails, the block's first episode is "clean_failed", counted and warned."""
    from kinema4d.data import scene as sim

    evaluate = sim.Scene.evaluate
    monkeypatch.setattr(sim.Scene, "evaluate", lambda self, *a, **k: evaluate(self, *a, **k) | {"success": False})
    with pytest.warns(UserWarning, match="1 block.*clean_failed"):
        info = datagen_main(DatagenConfig(out=tmp_path, episodes=2, max_attempts=2, **TINY))
    ds = kdata.Dataset4D(tmp_path / "train")
    first = ds.read_episode(0)["attrs"]
    assert first["variant"] == {"kind": "clean_failed"} and first["success"] is False and first["attempt"] == 1
    assert ds.read_episode(1)["attrs"]["variant"]["kind"] == "perturbed"
    assert info["clean"] == 0 and info["clean_failed"] == 1 and info["episodes"] == 2


def test_ray_backend_matches_local(local_ds, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'kinema4d[ray]')")
    out, _ = local_ds
    info = datagen_main(DatagenConfig(out=tmp_path / "ray", episodes=2, backend="ray", workers=1, **TINY))
    assert info["episodes"] == 2
    a = kdata.Dataset4D(tmp_path / "ray" / "train").read_episode(1)
    b = kdata.Dataset4D(out / "train").read_episode(1)
    # same seed -> same episode whatever the backend
    np.testing.assert_array_equal(a["q"], b["q"])
    np.testing.assert_array_equal(a["object_poses"], b["object_poses"])
    assert a["attrs"]["variant"] == b["attrs"]["variant"]


def test_plan_and_config_checks():
    cfg = DatagenConfig(episodes=7, failures_per_success=2)
    assert plan(cfg, set()) == [(0, [0, 1, 2]), (1, [3, 4, 5]), (2, [6])]
    assert plan(cfg, {0, 1, 2, 4}) == [(1, [3, 5]), (2, [6])]
    assert parse_resolution("64x96") == (64, 96)
    with pytest.raises(ValueError, match="HxW"):
        parse_resolution("64-96")
    with pytest.raises(ValueError, match="split"):
        datagen_main(DatagenConfig(split="nope"))
