"""GPU check (issue 13): 20 bf16 training steps of a wan_small-class model at 128x192 on CUDA, then a 49-frame
rollout; checks that every output is finite and prints seconds and peak GPU memory of each. Run through
``bash benchmarks/gpu_check.sh`` (prints "no CUDA" and exits 0 on a machine without CUDA).

    python benchmarks/gpu_check.py [--device cuda:0] [--steps 20] [--out runs/gpu_check]

``--device cpu`` with small ``--size`` / ``--frames`` / ``--rollout-frames`` runs the same code on the CPU (a smoke
test; no memory figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--size", type=int, nargs=2, default=(128, 192), metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=17, help="training frames (1 + 4k)")
    ap.add_argument("--rollout-frames", type=int, default=49, help="rollout frames (1 + 4k)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sample-steps", type=int, default=20)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available() and a.device != "cpu":
        print("no CUDA: torch", torch.__version__, "sees no CUDA device; nothing to check")
        return 0
    from kinema4d.model.checkpoint import load_model
    from kinema4d.model.datasets import SyntheticEpisodes
    from kinema4d.model.device import peak_memory_gb, reset_peak_memory, resolve_device
    from kinema4d.model.sampling import sample
    from kinema4d.model.train import train_main
    from kinema4d.model.train_config import PRESETS

    dev = resolve_device(a.device)
    cuda = dev.type == "cuda"
    base = PRESETS["wan_small"][1]
    cfg = dataclasses.replace(base, size=tuple(a.size), frames=a.frames, steps=a.steps, batch_size=a.batch_size,
                              codec_steps=0, stats_samples=0, precision="bf16", device=str(dev), out_dir=a.out,
                              progress=False, ckpt_every=0, val_every=0, val_steps=2, synthetic_episodes=16, warmup=0)
    report = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__}

    reset_peak_memory(dev)
    t0 = time.perf_counter()
    s = train_main(cfg)
    report["train"] = {"steps": s["step"], "size": list(a.size), "frames": a.frames, "peak_gb": peak_memory_gb(dev),
                       "seconds": time.perf_counter() - t0, "params": s["num_params"], "losses": s["losses"]}
    ok = all(math.isfinite(v) for v in s["losses"])

    model, codec = load_model(f"{a.out}/ckpt/step_{s['step']:07d}", weights="ema.safetensors", device=dev,
                              dtype="bf16")
    ep = SyntheticEpisodes(1, a.rollout_frames, tuple(a.size), seed=7)[0]
    reset_peak_memory(dev)
    t0 = time.perf_counter()
    rgb, wpm = sample(model, codec, ep["rgb"][0], ep["robot_pointmap"], ep["robot_mask"], steps=a.sample_steps)
    report["rollout"] = {"frames": int(rgb.shape[0]), "peak_gb": peak_memory_gb(dev),
                         "seconds": time.perf_counter() - t0,
                         "finite": bool(torch.isfinite(rgb).all() and torch.isfinite(wpm).all())}
    ok = ok and report["rollout"]["finite"] and rgb.shape[0] == a.rollout_frames
    print(json.dumps(report, indent=2))
    gb = lambda v: "n/a" if v is None else f"{v:.2f} GB"  # noqa: E731
    print(f"train: {s['step']} bf16 steps at {a.size[0]}x{a.size[1]} x {a.frames} on {dev} in "
          f"{report['train']['seconds']:.1f} s, peak {gb(report['train']['peak_gb'])}; rollout: {rgb.shape[0]} frames "
          f"in {report['rollout']['seconds']:.1f} s, peak {gb(report['rollout']['peak_gb'])}; "
          f"{'OK' if ok else 'FAILED: non-finite output'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
