"""LeRobot import / export (kinema4d.data.lerobot) against datasets written and read by a real LeRobot
implementation (``lerobot-dataset``'s LeRobotDataset, run in its own environment by ``lerobot_writer.py``), and the
plain npz / HDF5 importer (kinema4d.data.recordings)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kinema4d.data import episodes as kdata
from kinema4d.data.lerobot import ImportLeRobotConfig, LeRobotFormatError, LeRobotReader, import_lerobot
from kinema4d.data.lerobot_export import ExportLeRobotConfig, export_lerobot
from kinema4d.data.recordings import ImportPlainConfig, import_plain
from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.control import demo_actions
from kinema4d.kinematics.render import render_robot
from kinema4d.kinematics.robot import actions_to_joints, load_robot

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(os.environ.get("KINEMA4D_LEROBOT_WRITER", REPO / ".venv" / "lerobot-writer"))
H, W, T, EPISODES, FPS = 24, 32, 5, 2, 10


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _run_writer(*args):
    if not (WRITER / "ledataset").is_dir():
        pytest.fail(f"the LeRobot writer environment is missing ({WRITER}): `bash scripts/setup.sh` installs it "
                    "(pip install --target .venv/lerobot-writer lerobot-dataset==0.4.4 ...)")
    env = dict(os.environ, PYTHONPATH=str(WRITER), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("lerobot_writer.py")), *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"lerobot_writer {args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _scene():
    """A Panda seen by a small camera over a floor (z = 0): per episode rgb, metric depth and q."""
    robot = load_robot("panda")
    cam = Camera.look_at(eye=[1.45, 0.4, 1.05], target=[0.3, 0.0, 0.4], width=W, height=H, fov_y_deg=50.0)
    # floor depth: rays through every pixel hit z = 0
    rays = cam.unproject(cam.pixel_grid(), np.ones((H, W)))  # camera frame, z = 1
    R, t = cam.T_world_cam[:3, :3], cam.T_world_cam[:3, 3]
    d_world = rays @ R.T
    floor = -t[2] / d_world[..., 2]  # the z-depth (rays have z = 1 in the camera frame)
    eps = []
    acts = demo_actions(robot, 49)
    q_all = actions_to_joints(robot, acts, "ee_pose").q
    for e in range(EPISODES):
        q = q_all[e * 20: e * 20 + T * 4: 4]
        r = render_robot(robot, q, cam, rgb=True)
        depth = np.where(r.mask, r.depth, floor).astype(np.float32)
        rgb = np.where(r.mask[..., None], r.rgb, np.array([90, 120, 150], np.uint8)).astype(np.uint8)
        eps.append({"rgb": rgb, "depth": depth, "q": q})
    return robot, cam, eps


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(robot, camera, episodes, dir of a LeRobot dataset that LeRobotDataset.create / add_frame / save_episode
    wrote from them, camera json)."""
    tmp = tmp_path_factory.mktemp("lerobot")
    robot, cam, eps = _scene()
    arrays = {"fps": FPS, "H": H, "W": W, "names": np.array(robot.joint_names), "episodes": len(eps),
              "task": "pick the cube", "vcodec": "h264"}
    for i, e in enumerate(eps):
        arrays |= {f"rgb_{i}": e["rgb"], f"depth_{i}": e["depth"], f"q_{i}": e["q"]}
    np.savez(tmp / "in.npz", **arrays)
    _run_writer("write", str(tmp / "in.npz"), str(tmp / "lerobot"))
    cam.save(tmp / "cam.json")
    return robot, cam, eps, tmp / "lerobot", tmp / "cam.json"


def test_import_lerobot_written_by_lerobot(recorded, tmp_path):
    robot, cam, eps, src, cam_json = recorded
    assert json.loads((src / "meta/info.json").read_text())["codebase_version"] == "v3.0"
    out = import_lerobot(ImportLeRobotConfig(src=src, out=tmp_path / "k4d", robot="panda",
                                             camera_key="observation.images.front", depth_key="observation.depth",
                                             camera_json=cam_json, progress=False))
    assert out["episodes"] == EPISODES and out["written"] == EPISODES and out["state_columns"] == "by name"
    ds = kdata.Dataset4D(tmp_path / "k4d")
    assert ds.split == "train" and len(ds) == EPISODES
    for i, e in enumerate(eps):
        got = ds.read_episode(i)
        assert got["attrs"]["instruction"] == "pick the cube" and got["attrs"]["variant"] == {"kind": "imported"}
        assert got["attrs"]["source"]["format"] == "lerobot"
        np.testing.assert_allclose(got["q"], e["q"], atol=1e-6)
        assert _psnr(got["rgb"], e["rgb"]) > 30  # h264 yuv420p (LeRobot's writer) on a 32x24 image
        np.testing.assert_allclose(got["world_pointmap"][..., 2], e["depth"], rtol=1e-3)  # float16
        np.testing.assert_allclose(got["world_pointmap"], cam.depth_to_pointmap(e["depth"]), rtol=1e-3, atol=1e-4)
        r = render_robot(robot, e["q"], cam, rgb=True)
        assert (got["robot_render_mask"] == r.mask).all() and (got["robot_mask"] == r.mask).all()
        np.testing.assert_allclose(got["robot_pointmap"], r.pointmap, rtol=1e-3, atol=1e-4)
        assert got["actions"].shape == (T, 8)
    # resumable: a rerun writes nothing
    again = import_lerobot(ImportLeRobotConfig(src=src, out=tmp_path / "k4d", robot="panda",
                                               camera_key="observation.images.front", depth_key="observation.depth",
                                               camera_json=cam_json, progress=False))
    assert again["written"] == 0 and again["skipped_existing"] == EPISODES


def test_import_errors_name_the_problem(recorded, tmp_path):
    _, _, _, src, cam_json = recorded
    base = dict(src=src, out=tmp_path / "x", camera_json=cam_json, progress=False)
    with pytest.raises(LeRobotFormatError, match="name the robot with --robot.*robot_type 'panda'"):
        import_lerobot(ImportLeRobotConfig(**base, depth_key="observation.depth"))
    base["robot"] = "panda"
    with pytest.raises(LeRobotFormatError, match="no depth.*--depth-key.*observation.depth"):
        import_lerobot(ImportLeRobotConfig(**base))
    with pytest.raises(LeRobotFormatError, match="--camera-key 'observation.images.top'.*observation.images.front"):
        import_lerobot(ImportLeRobotConfig(**base, camera_key="observation.images.top",
                                           depth_key="observation.depth"))
    with pytest.raises(LeRobotFormatError, match="carry no camera calibration.*--camera-json"):
        import_lerobot(ImportLeRobotConfig(**(base | {"camera_json": None}), depth_key="observation.depth"))
    with pytest.raises(LeRobotFormatError, match="do not name kuka_iiwa's 7 joints"):
        import_lerobot(ImportLeRobotConfig(**(base | {"robot": "kuka_iiwa"}), depth_key="observation.depth"))
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset"):
        LeRobotReader(tmp_path)
    (tmp_path / "old/meta").mkdir(parents=True)
    (tmp_path / "old/meta/info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 30}))
    with pytest.raises(LeRobotFormatError, match="codebase_version 'v2.1'.*convert_dataset_v21_to_v30"):
        LeRobotReader(tmp_path / "old")


def test_export_then_import_round_trip_read_by_lerobot(recorded, tmp_path):
    """kinema4d episodes -> export -> LeRobotDataset (the real library) reads it -> import -> the same arrays."""
    robot, cam, eps, src, cam_json = recorded
    k1 = tmp_path / "k4d"
    import_lerobot(ImportLeRobotConfig(src=src, out=k1, robot="panda", depth_key="observation.depth",
                                       camera_json=cam_json, progress=False))
    # file_mb below one episode: one data parquet + mp4 pair per episode (LeRobot's multi-file layout)
    summary = export_lerobot(ExportLeRobotConfig(src=(k1,), out=tmp_path / "exported", file_mb=0.001,
                                                 progress=False))
    assert summary["episodes"] == EPISODES and summary["frames"] == EPISODES * T and summary["fps"] == FPS
    assert summary["files"] == EPISODES and (tmp_path / "exported/data/chunk-000/file-001.parquet").is_file()
    # the real LeRobot library loads it
    _run_writer("read", str(tmp_path / "exported"), str(tmp_path / "read.npz"))
    z = np.load(tmp_path / "read.npz")
    assert int(z["num_episodes"]) == EPISODES and int(z["fps"]) == FPS
    assert list(z["tasks"]) == ["pick the cube"]
    ds1 = kdata.Dataset4D(k1)
    q = np.concatenate([ds1.read_episode(i)["q"] for i in range(EPISODES)])
    np.testing.assert_array_equal(z["col_observation.state"], q)
    depth = np.concatenate([ds1.read_episode(i)["world_pointmap"][..., 2] for i in range(EPISODES)])
    np.testing.assert_array_equal(z["col_observation.depth"], depth)
    np.testing.assert_array_equal(z["col_episode_index"].reshape(-1), np.repeat(np.arange(EPISODES), T))
    for e in range(EPISODES):
        assert Path(str(z[f"video_path_{e}_observation.images.main"])).is_file()
    print("LeRobotDataset item:", str(z["item_error"]) if "item_error" in z.files else "decoded")
    if "item_last_observation.images.main" in z.files:  # LeRobot's own video decoding, where it has a decoder
        last = ds1.read_episode(EPISODES - 1)["rgb"][-1]
        img = np.round(z["item_last_observation.images.main"].transpose(1, 2, 0) * 255).astype(np.uint8)
        assert _psnr(img, last) > 35
    # ... and importing it back (camera from meta/kinema4d.json) gives the same arrays
    k2 = tmp_path / "k4d_again"
    back = import_lerobot(ImportLeRobotConfig(src=tmp_path / "exported", out=k2, progress=False))
    assert back["camera_source"] == "meta/kinema4d.json" and back["episodes"] == EPISODES
    ds2 = kdata.Dataset4D(k2)
    for i in range(EPISODES):
        a, b = ds1.read_episode(i), ds2.read_episode(i)
        for k in ("q", "robot_pointmap", "robot_render_mask", "actions", "robot_rgb"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_array_equal(a["world_pointmap"][..., 2], b["world_pointmap"][..., 2])  # z: lossless
        # x, y are unprojected again from the float16-stored z: one float16 step at most
        np.testing.assert_allclose(a["world_pointmap"], b["world_pointmap"], rtol=2**-10, atol=0)
        assert _psnr(a["rgb"], b["rgb"]) > 40  # H.264 yuv444p crf 10
        assert a["camera"].to_dict() == b["camera"].to_dict()
        assert a["attrs"]["instruction"] == b["attrs"]["instruction"]


def test_export_rollout_npz_and_resize(recorded, tmp_path):
    """A rollout.npz (robot base moved) -> export -> import at half size: the base pose travels in
    meta/kinema4d.json, so the re-rendered robot is where the rollout's was."""
    from kinema4d.interactive.viewer import Sequence4D, save_rollout_npz
    from kinema4d.kinematics.robot import base_pose_matrix

    robot, cam, eps, _, _ = recorded
    e = eps[0]
    base = base_pose_matrix([0.05, -0.1, 0.02, 0, 0, 0.0871557, 0.9961947])
    seq = Sequence4D(camera=cam, rgb=e["rgb"], world_pointmap=cam.depth_to_pointmap(e["depth"]), q=e["q"],
                     robot_name="panda", fps=FPS, T_world_base=base)
    save_rollout_npz(tmp_path / "rollout.npz", seq)
    export_lerobot(ExportLeRobotConfig(src=(tmp_path,), out=tmp_path / "lr", progress=False))
    out = import_lerobot(ImportLeRobotConfig(src=tmp_path / "lr", out=tmp_path / "k", resolution="12x16",
                                             progress=False))
    assert out["episodes"] == 1
    got = kdata.Dataset4D(tmp_path / "k").read_episode(0)
    assert got["rgb"].shape == (T, 12, 16, 3) and got["camera"].width == 16
    np.testing.assert_allclose(got["camera"].K[0, 0], cam.K[0, 0] / 2)
    assert got["q"].shape == (T, robot.dof) and got["robot_render_mask"].any()
    np.testing.assert_allclose(got["attrs"]["T_world_base"], base, atol=1e-12)
    moved = load_robot("panda", base_pose=[0.05, -0.1, 0.02, 0, 0, 0.0871557, 0.9961947])
    r = render_robot(moved, e["q"], got["camera"])
    assert (got["robot_render_mask"] == r.mask).all()
    with pytest.raises(ValueError, match="exists"):
        export_lerobot(ExportLeRobotConfig(src=(tmp_path,), out=tmp_path / "lr", progress=False))


def test_import_plain_npz_and_hdf5(recorded, tmp_path):
    robot, cam, eps, _, _ = recorded
    d = tmp_path / "npz"
    d.mkdir()
    for i, e in enumerate(eps):
        np.savez(d / f"ep{i}.npz", rgb=e["rgb"], depth=e["depth"], q=e["q"], K=cam.K, T_cam_world=cam.T_cam_world,
                 instruction="stack", success=True)
    out = import_plain(ImportPlainConfig(src=d, out=tmp_path / "k", progress=False))
    assert out["episodes"] == EPISODES
    got = kdata.Dataset4D(tmp_path / "k").read_episode(1)
    np.testing.assert_array_equal(got["rgb"], eps[1]["rgb"])
    np.testing.assert_allclose(got["world_pointmap"][..., 2], eps[1]["depth"], rtol=1e-3)
    assert got["attrs"]["success"] is True and got["attrs"]["instruction"] == "stack"
    np.savez(d / "bad.npz", rgb=eps[0]["rgb"], q=eps[0]["q"])
    with pytest.raises(ValueError, match="bad.npz: missing keys \\['depth', 'K', 'T_cam_world'\\]"):
        import_plain(ImportPlainConfig(src=d / "bad.npz", out=tmp_path / "k2", progress=False))
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "eps.h5", "w") as f:
        for i, e in enumerate(eps):
            g = f.create_group(f"episode_{i}")
            for k, v in (("rgb", e["rgb"]), ("depth", e["depth"]), ("q", e["q"])):
                g[k] = v
    cam.save(tmp_path / "cam.json")
    out = import_plain(ImportPlainConfig(src=tmp_path / "eps.h5", out=tmp_path / "k3", camera_json=tmp_path /
                                         "cam.json", progress=False))
    assert out["episodes"] == EPISODES
    np.testing.assert_array_equal(kdata.Dataset4D(tmp_path / "k3").read_episode(0)["q"],
                                  eps[0]["q"].astype(np.float32))


def test_depth_as_16bit_png_image_feature(recorded, tmp_path):
    """Depth stored as a LeRobot ``image`` feature of 16-bit PNGs (millimetres) imports with --depth-scale 0.001."""
    import io
    import shutil

    import imageio.v3 as iio
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, cam, eps, src, cam_json = recorded
    lr = tmp_path / "lr"
    shutil.copytree(src, lr)
    data = lr / "data/chunk-000/file-000.parquet"
    t = pq.read_table(data)
    depth = np.concatenate([e["depth"] for e in eps])
    mm = np.round(depth * 1000).astype(np.uint16)
    png = [{"bytes": iio.imwrite("<bytes>", d, extension=".png"), "path": None} for d in mm]
    assert iio.imread(io.BytesIO(png[0]["bytes"])).dtype == np.uint16
    col = pa.array(png, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    t = t.set_column(t.column_names.index("observation.depth"), "observation.depth", col)
    pq.write_table(t.replace_schema_metadata(None), data)
    info = json.loads((lr / "meta/info.json").read_text())
    info["features"]["observation.depth"] |= {"dtype": "image", "shape": [H, W, 1]}
    (lr / "meta/info.json").write_text(json.dumps(info))
    import_lerobot(ImportLeRobotConfig(src=lr, out=tmp_path / "k", robot="panda", depth_key="observation.depth",
                                       depth_scale=0.001, camera_json=cam_json, progress=False))
    got = kdata.Dataset4D(tmp_path / "k").read_episode(1)
    np.testing.assert_allclose(got["world_pointmap"][..., 2], mm[T:2 * T] / 1000.0, rtol=1e-3)


def test_stride_and_clips(recorded, tmp_path):
    """--stride keeps every k-th frame, --clip-frames cuts episodes of one length (ids episode * 1000 + clip)."""
    _, _, eps, src, cam_json = recorded
    base = dict(src=src, robot="panda", depth_key="observation.depth", camera_json=cam_json, progress=False)
    out = import_lerobot(ImportLeRobotConfig(**base, out=tmp_path / "k", stride=2, clip_frames=2))
    assert out["episodes"] == EPISODES and out["too_short"] == 0  # frames 0, 2 (4 is a shorter tail)
    ds = kdata.Dataset4D(tmp_path / "k")
    assert ds.episode_ids == [0, 1000]
    e = ds.read_episode(1)
    np.testing.assert_allclose(e["q"], eps[1]["q"][[0, 2]], atol=1e-6)
    assert e["attrs"]["control_hz"] == FPS / 2 and e["attrs"]["source"]["clip"] == 0
    again = import_lerobot(ImportLeRobotConfig(**base, out=tmp_path / "k", stride=2, clip_frames=2))
    assert again["written"] == 0
    with pytest.raises(ValueError, match="different settings"):
        import_lerobot(ImportLeRobotConfig(**base, out=tmp_path / "k", stride=1, clip_frames=2))
    short = import_lerobot(ImportLeRobotConfig(**base, out=tmp_path / "s", clip_frames=10))
    assert short["episodes"] == 0 and short["too_short"] == EPISODES
