"""Episode storage: atomic writes, lazy reader, corruption detection, the torch Dataset contract."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kinema4d.data import episodes as kdata
from kinema4d.kinematics.camera import Camera

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


@pytest.fixture()
def dataset(tmp_path):
    root = kdata.init_dataset(tmp_path / "train", "train")
    rng = np.random.default_rng(0)
    entries = {}
    for ep in range(4):
        arrays, attrs = _fake_episode(rng, success=ep % 2 == 0)
        entries[ep] = kdata.write_episode(root, ep, arrays, attrs)
    kdata.write_index(root, "train", entries)
    return root


def test_roundtrip_and_layout(dataset):
    ds = kdata.Dataset4D(dataset)
    assert len(ds) == 4 and ds.split == "train"
    e = ds.read_episode(2)
    assert e["rgb"].shape == (T, H, W, 3) and e["rgb"].dtype == np.uint8
    assert e["world_pointmap"].dtype == np.float32 and e["robot_render_mask"].dtype == bool
    assert e["attrs"]["episode"] == 2 and ds.meta(1)["success"] is False
    ep_dir = dataset / "episodes" / "000002"
    assert (ep_dir / kdata.COMPLETE).is_file()
    assert len(list((ep_dir / "rgb" / "c").iterdir())) == T  # one chunk per frame
    index = json.loads((dataset / "index.json").read_text())
    assert [x["episode"] for x in index["episodes"]] == [0, 1, 2, 3]
    with pytest.raises(FileExistsError):
        kdata.write_episode(dataset, 2, *_fake_episode(np.random.default_rng(1)))


def test_temp_and_incomplete_dirs_do_not_count(dataset):
    ep_dir = dataset / "episodes"
    (ep_dir / ".tmp-000007-999999999").mkdir()  # a dead writer's temp dir
    (ep_dir / "000008").mkdir()  # a final name without the marker
    assert kdata.complete_episodes(dataset) == [0, 1, 2, 3]
    removed = kdata.clean_stale(dataset)
    assert sorted(removed) == [".tmp-000007-999999999", "000008"]
    assert sorted(os.listdir(ep_dir)) == ["000000", "000001", "000002", "000003", "zarr.json"]


def _chunk(root: Path, ep: int, array: str, frame: int) -> Path:
    return root / "episodes" / kdata.episode_name(ep) / array / "c" / str(frame) / "0" / "0" / "0"


def test_missing_chunk_raises_naming_episode(dataset):
    _chunk(dataset, 1, "world_pointmap", 3).unlink()
    with pytest.raises(kdata.CorruptEpisodeError, match=r"episode 000001 .*world_pointmap.*frame 3") as ei:
        kdata.Dataset4D(dataset).read_episode(1)
    assert ei.value.episode == 1


def test_truncated_chunk_raises(dataset):
    c = _chunk(dataset, 2, "rgb", 0)
    c.write_bytes(c.read_bytes()[:10])
    with pytest.raises(kdata.CorruptEpisodeError, match=r"episode 000002 .*'rgb'"):
        kdata.Dataset4D(dataset).read_episode(2)


def test_broken_metadata_raises(dataset):
    (dataset / "episodes" / "000003" / "zarr.json").write_text("{not json")
    with pytest.raises(kdata.CorruptEpisodeError, match="episode 000003"):
        kdata.Dataset4D(dataset).read_episode(3)


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


def test_torch_dataset_skips_and_counts_corrupt(dataset):
    _chunk(dataset, 1, "robot_pointmap", 0).unlink()
    ds = kdata.TorchEpisodes(dataset, "train")
    items = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 1
    assert [it["index"] for it in items] == [0, 2, 2, 3]  # episode 1 replaced by the next readable one
    strict = kdata.TorchEpisodes(dataset, "train", skip_corrupt=False)
    with pytest.raises(kdata.CorruptEpisodeError, match="000001"):
        strict[1]


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
    # every anchored point has all channels above EMPTY_LEVEL (min rule); an empty pixel with noise on one
    # channel is not a point under the min rule, but would be under the max rule
    pm = an["world_pointmap"].permute(0, 2, 3, 1).numpy()
    v0 = it["world_valid"].numpy() > 0.5
    assert np.array_equal(kdata.generated_valid(pm, anchored=True)[0], v0[0])
    noisy = np.zeros((1, 3))
    noisy[0, 1] = 0.05
    assert not kdata.generated_valid(noisy, anchored=True)[0] and kdata.generated_valid(noisy, anchored=False)[0]
    at_min = np.array([[0.0, 0.4, 0.7]])  # sequence min-max: a point may sit at 0 on one channel
    assert kdata.generated_valid(at_min, anchored=False)[0]
    st = an["world_stats"].numpy()  # metres: the renormalization inverted on points, 0 on empty pixels
    m = kdata.anchored_to_metres(pm, st)
    np.testing.assert_allclose(m[v0], pm[v0] * (st[1] - st[0]) + st[0], rtol=0, atol=1e-6)
    assert np.all(m[~v0] == 0) and np.all(kdata.anchored_to_metres(noisy, st) == 0)
    batch = kdata.anchor_normalize(torch.utils.data.default_collate([ds[0], ds[1]]))
    torch.testing.assert_close(batch["world_pointmap"][1], kdata.anchor_normalize(ds[1])["world_pointmap"])
