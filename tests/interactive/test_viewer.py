"""4D viewer: Sequence4D validation, loaders, rerun recording and mp4 / gif / PLY exports."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kinema4d.cli import main
from kinema4d.geometry import save_atomic_npz
from kinema4d.interactive.exports import export_gif, export_mp4, export_ply
from kinema4d.interactive.viewer import (
    Sequence4D,
    ViewConfig,
    load_sequence,
    save_rollout_npz,
    view_main,
    write_rerun,
)
from kinema4d.kinematics.camera import demo_camera
from kinema4d.kinematics.robot import Robot

T, H, W = 3, 48, 64


@pytest.fixture(scope="module")
def seq():
    """A plane 1.5 m in front of a small camera, a robot blob 0.2 m in front of it, Panda joints near home."""
    cam = demo_camera(W, H)
    robot = Robot.builtin("panda")
    q = robot.home + np.linspace(0.0, 0.1, T)[:, None]
    world = cam.depth_to_pointmap(np.full((T, H, W), 1.5))
    mask = np.zeros((T, H, W), bool)
    mask[:, 20:28, 30:40] = True
    robot_pm = np.where(mask[..., None], world * (1.3 / 1.5), 0).astype(np.float32)
    world[mask] = robot_pm[mask]  # the scene includes the robot
    world[:, :4] = 0  # a few empty rows
    rgb = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    return Sequence4D(camera=cam, rgb=rgb, world_pointmap=world, robot_pointmap=robot_pm, robot_mask=mask, q=q,
                      robot_name="panda", fps=5.0)


def rerun_cli(*args):
    return subprocess.run([sys.executable, "-m", "rerun", *args], capture_output=True, text=True, timeout=60)


def test_sequence_validation(seq):
    with pytest.raises(ValueError, match=r"robot_pointmap has \(T, H, W\) = \(3, 48, 60\) but rgb has \(3, 48, 64\)"):
        Sequence4D(camera=seq.camera, rgb=seq.rgb, robot_pointmap=seq.robot_pointmap[:, :, :60])
    with pytest.raises(ValueError, match=r"robot_mask has \(T, H, W\) = \(2, 48, 64\)"):
        Sequence4D(camera=seq.camera, rgb=seq.rgb, robot_mask=seq.robot_mask[:2])
    with pytest.raises(ValueError, match=r"camera is 96x64 .* rgb frames are 64x48"):
        Sequence4D(camera=demo_camera(96, 64), rgb=seq.rgb)
    with pytest.raises(ValueError, match=r"q must have shape \(T=3, dof\), got \(2, 8\)"):
        Sequence4D(camera=seq.camera, rgb=seq.rgb, q=seq.q[:2])
    with pytest.raises(ValueError, match="rgb must be uint8"):
        Sequence4D(camera=seq.camera, rgb=seq.rgb.astype(np.float32))
    with pytest.raises(ValueError, match="at least one of"):
        Sequence4D(camera=seq.camera, q=seq.q)


def test_rollout_roundtrip(tmp_path, seq):
    save_rollout_npz(tmp_path / "rollout.npz", seq)
    for p in (tmp_path / "rollout.npz", tmp_path):  # the file, or a directory holding it
        s = load_sequence(p)
        for name in ("rgb", "world_pointmap", "robot_pointmap", "robot_mask"):
            np.testing.assert_array_equal(getattr(s, name), getattr(seq, name))
        np.testing.assert_allclose(s.q, seq.q, atol=1e-6)
        assert s.robot_name == "panda" and s.fps == 5.0
        np.testing.assert_allclose(s.camera.K, seq.camera.K)
    # optional fields stay absent
    save_rollout_npz(tmp_path / "rgb_only.npz", Sequence4D(camera=seq.camera, rgb=seq.rgb))
    s = load_sequence(tmp_path / "rgb_only.npz")
    assert s.world_pointmap is None and s.q is None and s.robot_name is None


def test_rerun_recording(tmp_path, seq, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = write_rerun(seq, tmp_path / "r" / "seq.rrd", spawn=True)
    assert "no display" in capsys.readouterr().err
    assert [p.name for p in out.parent.iterdir()] == ["seq.rrd"]  # no temp file left behind
    res = rerun_cli("rrd", "verify", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    res = rerun_cli("rrd", "print", str(out))
    assert res.returncode == 0, res.stderr
    chunks = [line for line in res.stdout.splitlines() if line.startswith("Chunk(")]
    entities = {line.split(" - ")[1] for line in chunks}
    links = {e for e in entities if e.startswith("/world/robot/links/")}
    assert {"/world/scene/points", "/world/robot/points", "/world/camera", "/world/camera/image"} <= entities
    assert "/world/robot/links/panda_link0" in links and "/world/robot/links/panda_hand" in links
    text = "\n".join(chunks)
    for comp in ("Points3D:positions", "Points3D:colors", "Pinhole:image_from_camera", "Image:buffer",
                 "Mesh3D:vertex_colors", "Transform3D:translation"):
        assert comp in text, comp
    # per-frame data has T rows on the "frame" timeline
    scene = next(line for line in chunks if " - /world/scene/points - " in line)
    assert f"with {T} rows" in scene


def test_exports(tmp_path, seq):
    import imageio.v2 as imageio
    import trimesh

    mp4 = export_mp4(seq, tmp_path / "v.mp4")
    n = 0
    with imageio.get_reader(mp4) as r:
        for frame in r:
            assert frame.shape == (H, 3 * W + 2 * 4, 3)  # RGB | world | robot with 4-px separators
            n += 1
    assert n == T
    gif = export_gif(seq, tmp_path / "v.gif", max_width=100)
    with imageio.get_reader(gif) as r:
        frames = [f for f in r]
    assert len(frames) == T and frames[0].shape[1] == (3 * W + 8) // 2
    with imageio.get_reader(export_gif(seq, tmp_path / "v3.gif", upscale=3)) as r:
        big = np.asarray(r.get_data(0))[..., :3]
    assert big.shape[:2] == (3 * H, 3 * (3 * W + 8))
    np.testing.assert_array_equal(big[::3, ::3], big[2::3, 2::3])  # 3x3 blocks of one colour
    with pytest.raises(ValueError, match="upscale"):
        export_gif(seq, tmp_path / "v0.gif", upscale=0)
    paths = export_ply(seq, tmp_path / "ply", frames=[0, 2])
    assert [p.name for p in paths] == ["frame_000000.ply", "frame_000002.ply"]
    pc = trimesh.load(paths[1])
    assert len(pc.vertices) == int(seq.world_valid[2].sum())
    # world coordinates: the camera-space points mapped by T_world_cam
    T_world_cam = seq.camera.T_world_cam
    expect = seq.world_pointmap[2][seq.world_valid[2]] @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    np.testing.assert_allclose(pc.vertices, expect, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(pc.colors)[:, :3], seq.rgb[2][seq.world_valid[2]])
    with pytest.raises(ValueError, match=r"PLY frames \[5\] are out of range"):
        export_ply(seq, tmp_path / "ply", frames=[5])


def test_control_output(tmp_path):
    """`kinema4d view DIR` on a control-stage output directory."""
    if Path(__file__).resolve().parents[2].joinpath("src/kinema4d/kinematics/render.py").is_file():
        from kinema4d.kinematics.control import ControlConfig, run_control

        cam = tmp_path / "cam.json"
        demo_camera(W, H).save(cam)
        run_control(ControlConfig(demo=True, out=tmp_path / "ctl", camera=cam, fps=4.0))
    else:  # fabricate the control layout
        cam = demo_camera(W, H)
        pm = cam.depth_to_pointmap(np.full((T, H, W), 1.0))
        mask = np.zeros((T, H, W), bool)
        mask[:, 10:20, 10:20] = True
        pm[~mask] = 0
        robot = Robot.builtin("panda")
        save_atomic_npz(tmp_path / "ctl" / "robot_pointmap.npz", pointmap=pm, mask=mask, depth=pm[..., 2],
                        link_id=np.where(mask, 1, -1).astype(np.int16), q=np.tile(robot.home, (T, 1)),
                        actions=np.zeros((T, 8)), camera=np.array(json.dumps(cam.to_dict())),
                        link_names=np.array(robot.link_names))
        (tmp_path / "ctl" / "control.json").write_text(json.dumps({"robot": "panda", "config": {"fps": 4.0}}))
    s = load_sequence(tmp_path / "ctl")
    assert s.robot_name == "panda" and s.fps == 4.0 and s.rgb is None and s.world_pointmap is None
    assert s.robot_pointmap.shape[1:] == (H, W, 3) and s.robot_valid.any()
    assert main(["view", str(tmp_path / "ctl"), "--mp4", "--ply", "--ply-frames", "0"]) == 0
    names = {p.name for p in (tmp_path / "ctl").iterdir()}
    assert {"robot_pointmap_view.rrd", "robot_pointmap_view.mp4", "robot_pointmap_ply"} <= names
    assert rerun_cli("rrd", "verify", str(tmp_path / "ctl" / "robot_pointmap_view.rrd")).returncode == 0


def test_errors(tmp_path, seq, capsys):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_sequence(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds neither rollout.npz nor robot_pointmap.npz"):
        load_sequence(tmp_path / "empty")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match=r"neither a rollout file .* it has keys \['a'\]"):
        load_sequence(tmp_path / "other.npz")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="cannot view"):
        load_sequence(tmp_path / "notes.txt")
    # a rollout whose arrays disagree: the error names the file and the field
    np.savez(tmp_path / "bad.npz", camera=np.array(json.dumps(seq.camera.to_dict())), fps=np.array(5.0),
             rgb=seq.rgb, world_pointmap=seq.world_pointmap[:2])
    with pytest.raises(ValueError, match=r"bad.npz: Sequence4D.world_pointmap has \(T, H, W\) = \(2, 48, 64\)"):
        load_sequence(tmp_path / "bad.npz")
    # q that does not fit the robot
    bad_q = Sequence4D(camera=seq.camera, rgb=seq.rgb, q=np.zeros((T, 5)), robot_name="panda")
    with pytest.raises(ValueError, match=r"Sequence4D.q must have shape \(T, 8\)"):
        write_rerun(bad_q, tmp_path / "x.rrd")
    assert not (tmp_path / "x.rrd").exists()
    with pytest.raises(FileNotFoundError):
        view_main(ViewConfig(path=tmp_path / "missing"))
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_view_help_usage_names_path(capsys):
    """`kinema4d view --help`: the usage line shows the PATH positional (and the help describes it)."""
    with pytest.raises(SystemExit) as e:
        main(["view", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    usage = next(line for line in out.splitlines() if line.startswith("usage:"))
    assert usage.split() == ["usage:", "kinema4d", "view", "[-h]", "[OPTIONS]", "PATH"], usage
    assert "rollout.npz, robot_pointmap.npz" in out


def test_view_dataset_episode(tmp_path):
    """A data-engine episode views through the same path; the robot meshes sit at the episode's base pose."""
    from kinema4d.data.datagen import DatagenConfig, datagen_main
    from kinema4d.interactive.viewer import load_sequence

    datagen_main(DatagenConfig(out=tmp_path, episodes=1, resolution="32x48", frames=3, progress=False))
    seq = load_sequence(tmp_path / "train", episode=0)
    assert seq.T == 3 and seq.rgb.shape == (3, 32, 48, 3) and seq.robot_name == "panda"
    np.testing.assert_allclose(seq.T_world_base[:3, 3], [-0.6, 0.0, 0.625])
    assert main(["view", str(tmp_path / "train"), "--episode", "0", "--mp4"]) == 0
    assert (tmp_path / "train" / "views" / "episode_000000_view.rrd").is_file()
    assert (tmp_path / "train" / "views" / "episode_000000_view.mp4").is_file()
