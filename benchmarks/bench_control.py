"""Benchmark the kinematic control stage's rendering (FK + robot pointmap) against pybullet's TinyRenderer.

For a smooth Panda trajectory, times ``RobotRenderer.render`` (FK + render + read-back into the output arrays)
per backend and mesh simplification level, and pybullet's ``getCameraImage`` (TinyRenderer, depth + segmentation,
robot-only scene; joint resets included) for the same robot, camera and configurations, in the same run.
One-time costs (mesh loading, simplification, GPU upload / BVH build, first-frame shader compilation) are
reported separately. Accuracy columns compare each variant's mask and depth with pybullet's.

First call in a fresh process: what a user's ``kinema4d control`` or ``simulate`` pays. For the default renderer
(gl, default face limit) at ``--first-size`` (720x480), each of ``--fresh-runs`` rounds starts two new Python
processes, one per renderer; each loads the robot, sets its renderer up (timed apart: ours = mesh loading,
simplification, upload and shader compilation; pybullet = connect + loadURDF) and times its first call on the
whole trajectory (ours: one ``RobotRenderer.render`` of all frames into new output arrays; pybullet: joint resets
+ ``getCameraImage`` per frame). The ratio is pybullet's first call / ours, per round; the median is reported.

    .venv/bin/python benchmarks/bench_control.py                      # 49 frames at 720x480 and 192x128
    .venv/bin/python benchmarks/bench_control.py --frames 8 --sizes 192x128 --backends gl
    .venv/bin/python benchmarks/bench_control.py --first-call-only   # only the fresh-process first call
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pybullet as p

from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.meshes import DEFAULT_MAX_FACES_PER_LINK
from kinema4d.kinematics.render import RobotRenderer
from kinema4d.kinematics.robot import Robot

NEAR, FAR = 0.01, 20.0


def smooth_trajectory(robot: Robot, frames: int) -> np.ndarray:
    """(frames, dof) smooth joint trajectory around ``robot.home``: sinusoids per joint, gripper opening/closing."""
    t = np.linspace(0.0, 1.0, frames)[:, None]
    amp = np.array([0.6, 0.4, 0.5, 0.5, 0.6, 0.5, 0.8, 0.0])[: robot.dof]
    phase = np.arange(robot.dof)[None] * 0.7
    q = robot.home + amp * np.sin(2 * np.pi * t + phase)
    if robot.gripper_joint:
        g = robot.joint_names.index(robot.gripper_joint)
        q[:, g] = robot.gripper_to_joint(0.5 + 0.5 * np.cos(2 * np.pi * t[:, 0]))
    return robot.clip_to_limits(q)


class PybulletRenderer:
    """The robot alone in a DIRECT pybullet client; renders depth z (metres) and a robot mask per configuration."""

    def __init__(self, robot: Robot):
        self.robot = robot
        self.cid = p.connect(p.DIRECT)
        self.body = p.loadURDF(str(robot.urdf_path), useFixedBase=True, physicsClientId=self.cid)
        self.joint_index = {p.getJointInfo(self.body, j, physicsClientId=self.cid)[1].decode(): j
                            for j in range(p.getNumJoints(self.body, physicsClientId=self.cid))}
        self.mimic = {}
        for j in ET.parse(robot.urdf_path).getroot().iter("joint"):
            m = j.find("mimic")
            if m is not None:
                self.mimic[j.get("name")] = (m.get("joint"), float(m.get("multiplier", 1)), float(m.get("offset", 0)))

    def set_q(self, q: np.ndarray) -> None:
        values = dict(zip(self.robot.joint_names, q, strict=True))
        for name, (master, mult, off) in self.mimic.items():
            values[name] = mult * values[master] + off
        for name, v in values.items():
            p.resetJointState(self.body, self.joint_index[name], float(v), physicsClientId=self.cid)

    def render(self, q: np.ndarray, cam: Camera, keep: bool = True):
        """q (T, dof) -> list of (depth z (H, W) metres, mask (H, W) bool) if ``keep`` (the timed loop keeps the
        raw buffers only)."""
        view, proj = cam.pybullet_matrices(NEAR, FAR)
        raw = []
        for qt in q:
            self.set_q(qt)
            img = p.getCameraImage(cam.width, cam.height, view, proj, renderer=p.ER_TINY_RENDERER,
                                   flags=p.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX, physicsClientId=self.cid)
            raw.append((img[3], img[4]))
        if not keep:
            return None
        out = []
        for d, seg in raw:
            d = np.asarray(d, np.float64).reshape(cam.height, cam.width)
            out.append((Camera.opengl_depth_to_z(d, NEAR, FAR), np.asarray(seg).reshape(cam.height, cam.width) >= 0))
        return out

    def close(self) -> None:
        p.disconnect(self.cid)


def accuracy(render, ref) -> tuple[float, float]:
    """(min IoU over frames, median over frames of the median |dz| in mm on pixels both call robot)."""
    ious, dzs = [], []
    for t, (z, mask) in enumerate(ref):
        both = mask & render.mask[t]
        ious.append(both.sum() / max((mask | render.mask[t]).sum(), 1))
        dzs.append(np.median(np.abs(z[both] - render.depth[t][both])) * 1000 if both.any() else np.nan)
    return float(np.min(ious)), float(np.nanmedian(dzs))


def demo_camera(width: int, height: int) -> Camera:
    return Camera.look_at(eye=[1.35, 0.35, 0.95], target=[0.35, 0.0, 0.3], width=width, height=height,
                          fov_y_deg=50.0)


def first_call_child(which: str, frames: int, width: int, height: int) -> dict:
    """Run in a fresh process: set up one renderer, time its first call on the trajectory -> {setup_s, ms}."""
    t0 = time.perf_counter()
    robot = Robot.builtin("panda")
    q = smooth_trajectory(robot, frames)
    cam = demo_camera(width, height)
    if which == "ours":
        renderer = RobotRenderer(robot, backend="gl", max_faces_per_link=DEFAULT_MAX_FACES_PER_LINK)
        call = lambda: renderer.render(q, cam)  # noqa: E731
    else:
        renderer = PybulletRenderer(robot)
        call = lambda: renderer.render(q, cam, keep=False)  # noqa: E731
    setup_s = time.perf_counter() - t0
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0, c0 = time.perf_counter(), time.process_time()
    out = call()
    ms, cpu_ms = (time.perf_counter() - t0) / frames * 1000, (time.process_time() - c0) / frames * 1000
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / frames
    del out
    return {"setup_s": setup_s, "ms": ms, "cpu_ms": cpu_ms, "faults": faults}


def first_call(frames: int, width: int, height: int, runs: int) -> list[dict]:
    """``runs`` rounds of {"ours": child result, "pybullet": child result}, each child a fresh interpreter."""
    rounds = []
    for _ in range(runs):
        res = {}
        for which in ("ours", "pybullet"):
            cmd = [sys.executable, __file__, "--child", which, "--frames", str(frames),
                   "--first-size", f"{width}x{height}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res[which] = json.loads(proc.stdout.strip().splitlines()[-1])
        rounds.append(res)
    return rounds


def print_first_call(rounds: list[dict], frames: int, size: str, pb_best_ms: float | None) -> None:
    ratios = [r["pybullet"]["ms"] / r["ours"]["ms"] for r in rounds]
    cpu_ratios = [r["pybullet"]["cpu_ms"] / r["ours"]["cpu_ms"] for r in rounds]
    print(f"\nFirst call in a fresh process, {size}, {frames} frames (each row: two new processes):")
    print(f"{'round':>5s} {'ours setup s':>12s} {'ours ms/frame':>13s} {'(CPU)':>6s} {'pybullet setup s':>16s} "
          f"{'pybullet ms/frame':>17s} {'(CPU)':>6s} {'x pybullet':>10s} {'(CPU)':>6s}")
    for i, r in enumerate(rounds):
        o, b = r["ours"], r["pybullet"]
        print(f"{i:5d} {o['setup_s']:12.2f} {o['ms']:13.2f} {o['cpu_ms']:6.2f} {b['setup_s']:16.2f} {b['ms']:17.2f} "
              f"{b['cpu_ms']:6.2f} {ratios[i]:10.1f} {cpu_ratios[i]:6.1f}")
    ours = float(np.median([r["ours"]["ms"] for r in rounds]))
    print(f"page faults per frame (median): ours {np.median([r['ours']['faults'] for r in rounds]):.0f}, pybullet "
          f"{np.median([r['pybullet']['faults'] for r in rounds]):.0f}; median CPU ms/frame: ours "
          f"{np.median([r['ours']['cpu_ms'] for r in rounds]):.2f}, pybullet "
          f"{np.median([r['pybullet']['cpu_ms'] for r in rounds]):.2f}; pybullet median ms/frame "
          f"{np.median([r['pybullet']['ms'] for r in rounds]):.2f}")
    line = (f"median: ours {ours:.2f} ms/frame on the first call; x pybullet first call {np.median(ratios):.1f} "
            f"(CPU time: {np.median(cpu_ratios):.1f})")
    if pb_best_ms is not None:
        line += f"; x pybullet best warm ({pb_best_ms:.1f} ms/frame, this run) {pb_best_ms / ours:.1f}"
    print(line)
    print("ms/frame: wall clock. CPU: process time of all threads (llvmpipe rasterizes on several), a check on a\n"
          "loaded machine where wall clock also measures the other processes.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--sizes", default="720x480,192x128", help="comma-separated WxH")
    ap.add_argument("--backends", default="gl,embree", help="comma-separated: gl, embree")
    ap.add_argument("--max-faces", default=f"{DEFAULT_MAX_FACES_PER_LINK},2000,none",
                    help="comma-separated max_faces_per_link values ('none' = full meshes)")
    ap.add_argument("--embree-full-only", action="store_true", help="run embree on full meshes only")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per variant; the best is reported")
    ap.add_argument("--first-size", default="720x480", help="WxH of the fresh-process first-call measurement")
    ap.add_argument("--fresh-runs", type=int, default=3, help="fresh-process rounds (0: skip the measurement)")
    ap.add_argument("--first-call-only", action="store_true", help="only the fresh-process first-call measurement")
    ap.add_argument("--child", choices=("ours", "pybullet"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    fw, fh = (int(v) for v in args.first_size.split("x"))
    if args.child:
        print(json.dumps(first_call_child(args.child, args.frames, fw, fh)))
        return
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on "
              f"{os.cpu_count()} CPUs")
    if args.first_call_only:
        print_first_call(first_call(args.frames, fw, fh, max(args.fresh_runs, 1)), args.frames, args.first_size,
                         None)
        return

    t0 = time.perf_counter()
    robot = Robot.builtin("panda")
    robot.link_meshes  # noqa: B018  (load the meshes now)
    t_load = time.perf_counter() - t0
    q = smooth_trajectory(robot, args.frames)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    max_faces = [None if v.strip().lower() == "none" else int(v) for v in args.max_faces.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    print(f"Panda, {args.frames} frames; one-time mesh loading {t_load:.2f} s; best of {args.repeats} runs\n")

    t0 = time.perf_counter()
    pb = PybulletRenderer(robot)
    t_pb_setup = time.perf_counter() - t0
    rows = []
    renderers = {}
    pb_best = {}
    for backend in backends:
        for mf in max_faces:
            if backend == "embree" and args.embree_full_only and mf is not None:
                continue
            t0 = time.perf_counter()
            renderers[(backend, mf)] = RobotRenderer(robot, backend=backend, max_faces_per_link=mf)
            renderers[(backend, mf)].setup_s = time.perf_counter() - t0

    for W, H in sizes:
        cam = demo_camera(W, H)
        ref = pb.render(q[:1], cam)  # warm-up
        best = np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pb.render(q, cam, keep=False)
            best = min(best, time.perf_counter() - t0)
        pb_ms = best / len(q) * 1000
        pb_best[(W, H)] = pb_ms
        ref = pb.render(q, cam)
        rows.append((f"{W}x{H}", "pybullet TinyRenderer", "-", t_pb_setup, pb_ms, np.nan, np.nan, 1.0, 1.0, 0.0))
        for (backend, mf), r in renderers.items():
            t0 = time.perf_counter()
            r.render(q[:1], cam)  # first frame at this size: framebuffer creation, shader JIT
            warm = time.perf_counter() - t0
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = r.render(q, cam)
                runs.append(time.perf_counter() - t0)
                del out
            out = r.render(q, cam)
            ms, first_ms = min(runs) / len(q) * 1000, runs[0] / len(q) * 1000
            iou, dz = accuracy(out, ref)
            best_out = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                r.render(q, cam, out=out)  # into the caller's arrays: no allocation at all
                best_out = min(best_out, time.perf_counter() - t0)
            del out
            rows.append((f"{W}x{H}", f"ours {backend}", f"{mf or 'full'} ({r.n_faces // 1000}k)",
                         r.setup_s + warm, ms, first_ms, best_out / len(q) * 1000, pb_ms / ms, iou, dz))
    pb.close()

    head = f"{'size':8s} {'stage (FK + render)':22s} {'faces/link (total)':19s} {'setup s':>8s} {'ms/frame':>9s} " \
           f"{'frames/s':>9s} {'1st run ms':>10s} {'out= ms':>8s} {'x pybullet':>10s} {'min IoU':>8s} " \
           f"{'med|dz| mm':>10s}"
    print(head)
    print("-" * len(head))
    for size, stage, faces, setup, ms, first_ms, out_ms, ratio, iou, dz in rows:
        print(f"{size:8s} {stage:22s} {faces:19s} {setup:8.2f} {ms:9.1f} {1000 / ms:9.1f} {first_ms:10.1f} "
              f"{out_ms:8.1f} {ratio:10.1f} {iou:8.4f} {dz:10.3f}")
    print("\nms/frame: best of the timed runs (ours: FK + render + read-back into new output arrays; pybullet: joint"
          "\nresets + getCameraImage). 1st run ms: our first timed run in this process (after a one-frame warm-up at"
          "\nthat size). out= ms: best of the runs rendering into the arrays of an earlier result (render(out=...)).\n"
          "setup s: ours = simplification + upload/BVH + first frame at that size; pybullet = connect + loadURDF.\n"
          "x pybullet = pybullet ms / ours ms (higher is faster). Accuracy vs pybullet.")
    if args.fresh_runs > 0:
        print_first_call(first_call(args.frames, fw, fh, args.fresh_runs), args.frames, args.first_size,
                         pb_best.get((fw, fh)))


if __name__ == "__main__":
    main()
