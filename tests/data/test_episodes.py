"""Episode storage: atomic writes, lazy reader, corruption detection, the torch Dataset contract."""

import json
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kinema4d.data import episodes as kdata
from kinema4d.kinematics.camera import Camera
from kinema4d.pointmap import anchored_to_metres, generated_valid

T, H, W = 5, 24, 32


def _fake_episode(rng, success=True):
    cam = Camera.look_at([1.0, 0.2, 1.0], [0.0, 0.0, 0.6], width=W, height=H)
    z = rng.uniform(0.8, 1.5, (T, H, W)).astype(np.float32)
    z[:, :4] = 0  # empty band (background)
    wpm = cam.depth_to_pointmap(z)
    rmask = np.zeros((T, H, W), bool)
    rmask[:, 8:16, 10:20] = True
    rpm = np.where(rmask[..., None], wpm, 0).astype(np.float32)
    arrays = {"rgb": rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8), "world_pointmap": wpm,
              "robot_pointmap": rpm, "robot_mask": rmask, "robot_render_mask": rmask,
              "q": rng.normal(size=(T, 8)), "actions": rng.normal(size=(T, 8)),
              "object_poses": rng.normal(size=(T, 2, 7))}
    attrs = {"success": success, "instruction": "pick up the red cube and place it on the blue pad", "split": "train",
             "camera": cam.to_dict(), "variant": {"kind": "clean"}, "frames": T}
    return arrays, attrs


def _write_dataset(root, version=kdata.VERSION, n=4):
    root = kdata.init_dataset(root, "train", version=version)
    rng = np.random.default_rng(0)
    entries = {}
    for ep in range(n):
        arrays, attrs = _fake_episode(rng, success=ep % 2 == 0)
        if ep == 1:
            arrays["robot_rgb"] = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
        entries[ep] = kdata.write_episode(root, ep, arrays, attrs)
    kdata.write_index(root, "train", entries)
    return root


@pytest.fixture()
def dataset(tmp_path):
    return _write_dataset(tmp_path / "train")


@pytest.fixture()
def old_dataset(tmp_path):
    """The version-1 layout (one directory per episode, one chunk file per frame)."""
    return _write_dataset(tmp_path / "old" / "train", version=1)


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]


def test_roundtrip_and_layout(dataset):
    ds = kdata.Dataset4D(dataset)
    assert len(ds) == 4 and ds.split == "train" and ds.version == kdata.VERSION == 2
    e = ds.read_episode(2)
    assert e["rgb"].shape == (T, H, W, 3) and e["rgb"].dtype == np.uint8
    assert e["world_pointmap"].dtype == np.float32 and e["robot_render_mask"].dtype == bool
    assert e["attrs"]["episode"] == 2 and ds.meta(1)["success"] is False
    ref = _fake_episode(np.random.default_rng(0))[0]  # episode 0 of the fixture, written from these arrays
    got = ds.read_episode(0)
    for k, a in ref.items():
        want = np.asarray(a).astype(kdata.DTYPES[k])
        np.testing.assert_array_equal(got[k], want.astype(np.float32) if want.dtype == np.float16 else want, k)
    assert "robot_rgb" in ds.read_episode(1) and "robot_rgb" not in got
    assert sorted(os.listdir(dataset / "episodes")) == [f"00000{i}.zarr.zip" for i in range(4)]
    for i in range(4):  # one file per episode (the budget is 10)
        assert len(_files(ds.episode_path(i))) == 1
    index = json.loads((dataset / "index.json").read_text())
    assert [x["episode"] for x in index["episodes"]] == [0, 1, 2, 3] and index["version"] == 2
    with pytest.raises(FileExistsError):
        kdata.write_episode(dataset, 2, *_fake_episode(np.random.default_rng(1)))


def test_old_layout_still_read(old_dataset, dataset):
    old, new = kdata.Dataset4D(old_dataset), kdata.Dataset4D(dataset)
    assert old.version == 1 and len(old) == 4
    assert len(_files(old.episode_path(2))) > 10  # why version 2 exists
    for k in ("rgb", "world_pointmap", "q", "object_poses"):
        np.testing.assert_array_equal(old.read_episode(3)[k], new.read_episode(3)[k])
    item = kdata.TorchEpisodes(old_dataset, "train", frames=3)[1]
    torch.testing.assert_close(item, kdata.TorchEpisodes(dataset, "train", frames=3)[1])


def test_temp_and_incomplete_files_do_not_count(dataset, old_dataset):
    ep_dir = dataset / "episodes"
    (ep_dir / ".tmp-000007-999999999.zarr.zip").write_bytes(b"PK")  # a dead writer's temp file
    (ep_dir / f".tmp-000009-{os.getppid()}.zarr.zip").write_bytes(b"PK")  # a live writer's
    assert kdata.complete_episodes(dataset) == [0, 1, 2, 3]
    assert kdata.clean_stale(dataset) == [".tmp-000007-999999999.zarr.zip"]
    ep_dir = old_dataset / "episodes"
    (ep_dir / ".tmp-000007-999999999").mkdir()
    (ep_dir / "000008").mkdir()  # version 1: a final name without the marker
    assert kdata.complete_episodes(old_dataset) == [0, 1, 2, 3]
    assert sorted(kdata.clean_stale(old_dataset)) == [".tmp-000007-999999999", "000008"]


def test_version_check_names_file_and_versions(dataset, tmp_path):
    zj = dataset / "zarr.json"
    doc = json.loads(zj.read_text())
    doc["attributes"]["version"] = 7
    zj.write_text(json.dumps(doc))
    for make in (kdata.Dataset4D, lambda p: kdata.TorchEpisodes(p, "train"), lambda p: kdata.init_dataset(p, "train")):
        with pytest.raises(kdata.FormatVersionError, match=r"zarr.json: kinema4d-episodes format version 7; this "
                                                           r"kinema4d reads versions 1, 2 and writes 2") as ei:
            make(dataset)
        assert ei.value.path == zj and ei.value.version == 7


def _chunk(root: Path, ep: int, array: str, frame: int) -> Path:
    return root / "episodes" / kdata.episode_name(ep) / array / "c" / str(frame) / "0" / "0" / "0"


def test_missing_chunk_raises_naming_episode(old_dataset):
    _chunk(old_dataset, 1, "world_pointmap", 3).unlink()
    with pytest.raises(kdata.CorruptEpisodeError, match=r"episode 000001 .*world_pointmap.*frame 3") as ei:
        kdata.Dataset4D(old_dataset).read_episode(1)
    assert ei.value.episode == 1


def test_truncated_or_damaged_file_raises(dataset):
    ds = kdata.Dataset4D(dataset)
    p = ds.episode_path(2)
    p.write_bytes(p.read_bytes()[:-300])  # truncated: the zip directory is gone
    with pytest.raises(kdata.CorruptEpisodeError, match=r"episode 000002 \(.*000002.zarr.zip\) is corrupt"):
        ds.read_episode(2)
    p = ds.episode_path(1)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:  # flip a byte inside the rgb chunk
        info = z.getinfo("rgb/c/0/0/0/0")
    off = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    raw[off] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(kdata.CorruptEpisodeError, match=r"episode 000001 .*'rgb'"):
        ds.read_episode(1)
    p.unlink()  # listed when the reader was made, gone since
    with pytest.raises(kdata.CorruptEpisodeError, match=r"episode 000001 .*no such file"):
        ds.read_episode(1)


def test_broken_metadata_raises(old_dataset):
    (old_dataset / "episodes" / "000003" / "zarr.json").write_text("{not json")
    with pytest.raises(kdata.CorruptEpisodeError, match="episode 000003"):
        kdata.Dataset4D(old_dataset).read_episode(3)


def test_torch_dataset_contract(dataset):
    ds = kdata.TorchEpisodes(dataset.parent, "train", size=(12, 16), frames=3)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 4
    it = ds[0]
    shapes = {"rgb": (3, 3, 12, 16), "world_pointmap": (3, 3, 12, 16), "robot_pointmap": (3, 3, 12, 16),
              "robot_mask": (3, 12, 16), "world_valid": (3, 12, 16), "world_stats": (2, 3), "robot_stats": (2, 3),
              "K": (3, 3)}
    for k, s in shapes.items():
        assert it[k].shape == s and it[k].dtype == torch.float32, k
    assert it["success"].dtype == torch.bool and bool(it["success"]) and it["index"] == 0
    for k in ("rgb", "world_pointmap", "robot_pointmap"):
        assert 0.0 <= float(it[k].min()) and float(it[k].max()) <= 1.0
    assert float(it["world_pointmap"].amax(dim=(0, 2, 3)).min()) == pytest.approx(1.0)
    assert torch.all(it["world_pointmap"].permute(0, 2, 3, 1)[it["world_valid"] == 0] == 0)
    assert torch.all(it["robot_pointmap"].permute(0, 2, 3, 1)[it["robot_mask"] == 0] == 0)
    # the stats denormalize back to metres: robot points are world points (same pixels, same geometry)
    r = it["robot_pointmap"].permute(0, 2, 3, 1)[it["robot_mask"] > 0]
    rs = it["robot_stats"]
    metres = r * (rs[1] - rs[0]) + rs[0]
    assert torch.all(metres[:, 2] > 0.7)
    # K matches the resized camera
    cam = kdata.Dataset4D(dataset).read_episode(0)["camera"].resized(16, 12)
    np.testing.assert_allclose(it["K"].numpy(), cam.K, rtol=1e-6)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["rgb"].shape == (2, 3, 3, 12, 16)


def test_corrupt_episode_is_an_error_unless_skipped(dataset):
    p = kdata.Dataset4D(dataset).episode_path(1)
    p.write_bytes(p.read_bytes()[:100])
    strict = kdata.TorchEpisodes(dataset, "train")  # the default
    with pytest.raises(kdata.CorruptEpisodeError, match=r"episode 000001 \(.*000001.zarr.zip\) .*--skip-corrupt"):
        strict[1]
    ds = kdata.TorchEpisodes(dataset, "train", skip_corrupt=True)
    with pytest.warns(RuntimeWarning, match="skipping corrupt episode 000001"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 1
    assert [it["index"] for it in items] == [0, 2, 2, 3]  # episode 1 replaced by the next readable one
    # DataLoader worker processes share the count
    ds2 = kdata.TorchEpisodes(dataset, "train", skip_corrupt=True)
    loader = torch.utils.data.DataLoader(ds2, batch_size=None, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [int(it["index"]) for it in loader] == [0, 2, 2, 3]
    assert ds2.num_skipped == 1


def test_convert_old_to_new(old_dataset, tmp_path):
    from kinema4d.cli import main
    from kinema4d.data.convert import convert_dataset

    (old_dataset / "datagen_config.json").write_text("{}")
    new = tmp_path / "new"
    assert main(["dataset", "convert", str(old_dataset.parent), str(new), "--no-progress"]) == 0
    a, b = kdata.Dataset4D(old_dataset), kdata.Dataset4D(new / "train")
    assert b.version == 2 and a.episode_ids == b.episode_ids == [0, 1, 2, 3]
    for i in range(len(a)):
        ea, eb = a.read_episode(i), b.read_episode(i)
        assert ea.keys() == eb.keys() and ea["attrs"] == eb["attrs"]
        for k in ea:
            if isinstance(ea[k], np.ndarray):
                assert ea[k].dtype == eb[k].dtype
                np.testing.assert_array_equal(ea[k], eb[k], k)
        assert len(_files(b.episode_path(i))) <= 10
    assert (new / "train" / "datagen_config.json").is_file() and not list(tmp_path.glob(".new.converting"))
    assert json.loads((new / "train" / "index.json").read_text()) == {
        **json.loads((old_dataset / "index.json").read_text()), "version": 2}
    with pytest.raises(ValueError, match="exists"):
        convert_dataset(old_dataset.parent, new)
    # interrupted: the temp dir is resumed, NEW appears only at the end
    tmp = tmp_path / ".again.converting"
    with pytest.raises(kdata.CorruptEpisodeError, match="episode 000002"):
        (old_dataset / "episodes" / "000002" / "zarr.json").write_text("{")
        convert_dataset(old_dataset, tmp_path / "again", progress=False)
    assert not (tmp_path / "again").exists() and kdata.complete_episodes(tmp) == [0, 1]
    with pytest.warns(RuntimeWarning, match="skipping corrupt episode 000002"):
        rep = convert_dataset(old_dataset, tmp_path / "again", skip_corrupt=True, progress=False)
    assert rep["splits"]["train"] == {"episodes": 3, "converted": 1, "skipped": [2]}
    assert kdata.Dataset4D(tmp_path / "again").episode_ids == [0, 1, 3] and not tmp.exists()


def test_wrong_split_and_missing_dataset(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="split 'val'"):
        kdata.TorchEpisodes(tmp_path, "val")
    with pytest.raises(ValueError, match="holds split 'train'"):
        kdata.init_dataset(dataset, "val")


def test_torch_dataset_actions(dataset):
    ds = kdata.TorchEpisodes(dataset.parent, "train", size=(12, 16), frames=3)
    rec = kdata.Dataset4D(dataset).read_episode(0)["actions"]
    a = ds[0]["action"]
    assert a.shape == (3, 8) and a.dtype == torch.float32
    np.testing.assert_allclose(a.numpy(), rec[[0, (len(rec) - 1) // 2, len(rec) - 1]], rtol=1e-6)


def test_anchor_normalize_keeps_metres(dataset):
    """anchor_normalize changes only the normalization: every valid point maps back to the same metres, the frame-0
    world and all robot points lie inside [0, 1] (margin), and a collated batch equals the per-item result."""
    ds = kdata.TorchEpisodes(dataset.parent, "train", size=(12, 16), frames=3)
    it = ds[0]
    an = kdata.anchor_normalize(it)
    st = an["world_stats"]
    assert torch.equal(st, an["robot_stats"])
    for key, sk, valid in (("world_pointmap", "world_stats", it["world_valid"]),
                           ("robot_pointmap", "robot_stats", it["robot_mask"])):
        v = valid > 0.5
        m_old = it[key].permute(0, 2, 3, 1)[v] * (it[sk][1] - it[sk][0]) + it[sk][0]
        m_new = an[key].permute(0, 2, 3, 1)[v] * (st[1] - st[0]) + st[0]
        torch.testing.assert_close(m_new, m_old, atol=1e-5, rtol=0)
        assert torch.all(an[key].permute(0, 2, 3, 1)[~v] == 0)
    w0 = an["world_pointmap"][0].permute(1, 2, 0)[it["world_valid"][0] > 0.5]
    r = an["robot_pointmap"].permute(0, 2, 3, 1)[it["robot_mask"] > 0.5]
    assert float(torch.cat([w0, r]).min()) > 0.0 and float(torch.cat([w0, r]).max()) < 1.0
    # every anchored frame-0 world point has all channels above EMPTY_LEVEL (the min rule of generated_valid)
    pm = an["world_pointmap"].permute(0, 2, 3, 1).numpy()
    v0 = it["world_valid"].numpy() > 0.5
    assert np.array_equal(generated_valid(pm, anchored=True)[0], v0[0])
    st = an["world_stats"].numpy()  # metres: the renormalization inverted on points, 0 on empty pixels
    m = anchored_to_metres(pm, st)
    np.testing.assert_allclose(m[v0], pm[v0] * (st[1] - st[0]) + st[0], rtol=0, atol=1e-6)
    assert np.all(m[~v0] == 0)
    batch = kdata.anchor_normalize(torch.utils.data.default_collate([ds[0], ds[1]]))
    torch.testing.assert_close(batch["world_pointmap"][1], kdata.anchor_normalize(ds[1])["world_pointmap"])


def test_train_and_eval_stop_at_or_skip_and_count_corrupt(tmp_path, capsys):
    """`kinema4d train` / `kinema4d eval`: a corrupt episode is a one-line error naming it; with --skip-corrupt the
    run goes on and reports how many it skipped."""
    from kinema4d.cli import main
    from kinema4d.data.datagen import DatagenConfig, datagen_main

    data = tmp_path / "data"
    datagen_main(DatagenConfig(out=data, episodes=2, split="train", resolution="32x48", frames=5,
                               failures_per_success=1, progress=False))
    p = kdata.Dataset4D(data / "train").episode_path(1)
    p.write_bytes(p.read_bytes()[:-200])
    train = ["train", "tiny", "--data", str(data), "--size", "16", "16", "--frames", "5", "--steps", "1",
             "--val-split", "None", "--preload", "--preload-workers", "0", "--no-progress",
             "--out-dir", str(tmp_path / "run")]
    assert main(train) == 2
    assert re.search(r"episode 000001 \(.*000001.zarr.zip\) is corrupt: .*--skip-corrupt", capsys.readouterr().err)
    with pytest.warns(RuntimeWarning, match="skipping corrupt episode 000001"):
        assert main(train + ["--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 corrupt episodes" in out and json.loads(out[out.index("{"):])["skipped_corrupt"] == 1
    ev = ["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(data), "--split", "train", "--steps", "1",
          "--videos", "0", "--no-penetration", "--no-progress", "--out", str(tmp_path / "rep")]
    assert main(ev) == 2 and "episode 000001" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="skipping corrupt episode 000001"):
        assert main(ev + ["--skip-corrupt"]) == 0
    assert "skipped 1 corrupt episodes" in capsys.readouterr().out
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["skipped_corrupt"] == 1
    assert "1 corrupt episodes were skipped" in (tmp_path / "rep" / "report.md").read_text()


def test_clean_stale_removes_a_zombie_writers_temp(tmp_path):
    """A writer killed but not yet reaped (a zombie, as SIGKILLed datagen workers are for a while) holds no temp
    episode: the next run removes it (os.kill(pid, 0) alone calls a zombie alive)."""
    import subprocess
    import sys
    import time

    (tmp_path / "episodes").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # exits at once; not waited for -> a zombie
    try:
        for _ in range(200):
            if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        name = f".tmp-000000-{proc.pid}.zarr.zip"
        (tmp_path / "episodes" / name).write_bytes(b"partial")
        assert kdata.clean_stale(tmp_path) == [name]
        assert not (tmp_path / "episodes" / name).exists()
    finally:
        proc.wait()
