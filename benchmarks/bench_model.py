"""Benchmark the world model of a checkpoint: rollout time and peak memory, and training throughput.

Every case runs in its own subprocess (this script with ``--case``), so each peak RSS (``ru_maxrss``) is that
case's own. Cases, all at the checkpoint's training size with the demo Panda trajectory and camera:

- ``load``          import + load the Simulator (memory baseline, no rollout)
- ``kinematic@T``   the kinematic stage alone (seeded IK + robot pointmap render) for T frames -- the peer: the
                    rollout's cost is reported as a ratio to it
- ``episode``       a full ``Simulator.rollout`` of a 49-action episode (one action per recorded frame, the
                    default ``action_rate``): the kinematic stage on all 49 actions, the model generates its
                    trained frames over the whole episode (9 at stride 6 for the bundled model)
- ``rollout@T``     a full ``Simulator.rollout`` (kinematic stage + ``--steps`` sampling steps + de-normalization)
                    of T generated frames (``action_rate="model"``: one action per generated frame) at the
                    training T and at T = 49
- ``train``         training steps of the checkpoint's TrainConfig (model, batch size, size, frames) on synthetic
                    data of the same size -> samples / s

Timed rollouts exclude the first (warm-up: renderer set-up, mesh loading) call; the median of ``--repeats`` runs is
reported.

    .venv/bin/python benchmarks/bench_model.py                                # the bundled checkpoint
    .venv/bin/python benchmarks/bench_model.py --checkpoint runs/default --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _inputs(sim, T: int):
    from kinema4d.kinematics.control import demo_actions

    idx = np.round(np.linspace(0, 48, T)).astype(int)
    actions = demo_actions(sim.robot, 49)[idx]
    H, W = sim.camera.height, sim.camera.width
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    kw = {"pointmap0": sim.camera.depth_to_pointmap(np.full((H, W), 1.2))} if sim.needs_pointmap0 else {}
    return image, actions, kw


def run_case(case: str, checkpoint: str, T: int, steps: int, repeats: int, train_steps: int) -> dict:
    """One case in this process -> {"seconds": median, "all": [...], "peak_rss_mb": ..., (+ case extras)}."""
    import torch

    from kinema4d.simulator import Simulator

    sim = Simulator(checkpoint, steps=steps, action_rate="episode" if case == "episode" else "model")
    if case == "load":
        return {"seconds": 0.0, "all": [], "peak_rss_mb": _peak_rss_mb()}
    if case in ("kinematic", "rollout", "episode"):
        image, actions, kw = _inputs(sim, T)
        fn = (lambda: sim.kinematic_stage(actions)) if case == "kinematic" else (
            lambda: sim.rollout(image, actions, **kw))
        fn()  # warm-up: renderer set-up (mesh loading / simplification), first-call allocations
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return {"seconds": float(np.median(times)), "all": times, "peak_rss_mb": _peak_rss_mb()}
    if case == "train":
        from kinema4d.model.codec import make_codec
        from kinema4d.model.datasets import SyntheticEpisodes
        from kinema4d.model.network import WorldModel
        from kinema4d.model.sampling import flow_matching_loss, sample_timesteps
        from kinema4d.model.train import _collate, prepare_batch
        from kinema4d.model.train_config import TrainConfig

        tc = TrainConfig.from_dict(sim.ckpt.train_config) if sim.ckpt.train_config else TrainConfig()
        ds = SyntheticEpisodes(max(tc.batch_size, 8), tc.frames, tuple(tc.size), seed=0)
        model, codec = WorldModel(tc.model), make_codec(tc.model)
        codec.requires_grad_(False)
        params = model.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        g = torch.Generator().manual_seed(0)
        batch = _collate([ds[i % len(ds)] for i in range(tc.batch_size)])
        times = []
        model.train()
        for s in range(train_steps + 1):  # step 0 is warm-up
            t0 = time.perf_counter()
            prep = prepare_batch(model, codec, batch, g)  # the codec encode counts (no latent cache)
            B = prep["x0"].shape[0]
            loss = flow_matching_loss(model, model, prep, sample_timesteps(B, tc.t_sampling, g),
                                      torch.randn(prep["x0"].shape, generator=g), torch.rand(B, generator=g) < 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            if s:
                times.append(time.perf_counter() - t0)
        sec = float(np.median(times))
        return {"seconds": sec, "all": times, "peak_rss_mb": _peak_rss_mb(), "batch_size": tc.batch_size,
                "samples_per_s": tc.batch_size / sec, "size": list(tc.size), "frames": tc.frames}
    raise ValueError(f"unknown case {case!r}")


def _subprocess(case: str, args, T: int) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--checkpoint", str(args.checkpoint), "--T", str(T),
           "--steps", str(args.steps), "--repeats", str(args.repeats), "--train-steps", str(args.train_steps)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"case {case}@T={T} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    from kinema4d.simulator import DEFAULT_CHECKPOINT, resolve_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps per rollout (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median reported)")
    ap.add_argument("--train-steps", type=int, default=5, help="timed training steps (after 1 warm-up)")
    ap.add_argument("--frames", type=int, nargs="*", default=None, help="rollout T values (default: training T, 49)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    ap.add_argument("--T", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        import torch

        torch.manual_seed(0)
        print(json.dumps(run_case(args.case, str(args.checkpoint), args.T, args.steps, args.repeats,
                                  args.train_steps)))
        return

    ck = resolve_checkpoint(args.checkpoint)
    tc = ck.train_config or {}
    train_T = int(tc.get("frames", 9))
    frames = args.frames or sorted({train_T, 49})
    import torch

    print(f"checkpoint {ck.dir} ({ck.weights}), size {tc.get('size')}, train T {train_T}, {args.steps} sampling "
          f"steps, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    if tc.get("size"):  # the model's size: parameters and backbone tokens of one training-size clip
        from kinema4d.model.checkpoint import load_model
        from kinema4d.model.config import latent_shapes

        model, _ = load_model(ck.dir, weights=ck.weights)
        lat = latent_shapes(model.cfg, train_T, *tc["size"])["latent"]  # (B, C, t, h, 2w)
        pt, ph, pw = model.cfg.patch_size
        tokens = (lat[2] // pt) * (lat[3] // ph) * (lat[4] // pw)
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {params / 1e6:.2f} M parameters, {tokens} tokens per {train_T}-frame clip (RGB and XYZ halves)")
        del model
    rows = [("load", 0, _subprocess("load", args, train_T)), ("episode", 49, _subprocess("episode", args, 49))]
    for T in frames:
        rows.append(("kinematic", T, _subprocess("kinematic", args, T)))
        rows.append(("rollout", T, _subprocess("rollout", args, T)))
    rows.append(("train", train_T, _subprocess("train", args, train_T)))

    kin = {T: r["seconds"] for name, T, r in rows if name == "kinematic"}
    print(f"\n{'case':<14} {'T':>4} {'seconds':>10} {'peak RSS MB':>12}  notes")
    for name, T, r in rows:
        note = ""
        if name == "episode":
            note = f"49 actions -> {train_T} generated frames at the trained spacing"
            if 49 in kin:
                note += f"; {r['seconds'] / max(kin[49], 1e-9):.1f}x the kinematic stage on 49 frames"
        elif name == "rollout":
            gen = r["seconds"] - kin[T]
            note = (f"{r['seconds'] / max(kin[T], 1e-9):.1f}x the kinematic stage; ~{gen / args.steps * 1000:.0f} ms "
                    f"per sampling step, {r['seconds'] / T * 1000:.0f} ms per frame")
        elif name == "train":
            note = f"{r['samples_per_s']:.2f} samples/s (batch {r['batch_size']}, {r['seconds']:.3f} s/step)"
        elif name == "load":
            note = "baseline: import + load"
        print(f"{name:<14} {T or '':>4} {r['seconds']:>10.3f} {r['peak_rss_mb']:>12.0f}  {note}")
    roll = {T: r["seconds"] for name, T, r in rows if name == "rollout"}
    if len(roll) > 1:
        lo, hi = min(roll), max(roll)
        print(f"\nrollout T={hi} / T={lo}: {roll[hi] / roll[lo]:.2f}x time for {hi / lo:.2f}x frames")


if __name__ == "__main__":
    main()
