"""Device placement, mixed precision and the multi-process backend, in one place.

    dev = resolve_device("auto")            # cuda:LOCAL_RANK (or cuda:0) if CUDA is available, else cpu
    with autocast(dev, "bf16"): ...         # bf16 autocast on the device the tensors live on (no-op if unsupported)
    dist_backend(dev)                       # "nccl" for CUDA tensors, "gloo" for CPU tensors
"""

from __future__ import annotations

import contextlib
import os

import torch

DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto = CUDA if available, else CPU)"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` / ``None`` -> ``cuda`` if available else ``cpu``; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``.

    A bare ``cuda`` / ``auto`` under torchrun picks ``cuda:LOCAL_RANK``. Asking for CUDA without a usable CUDA
    device raises ``ValueError`` naming what is missing (never a silent fall back to the CPU).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = "auto" if spec is None else str(spec).strip().lower()
    if s == "auto":
        s = "cuda" if torch.cuda.is_available() else "cpu"
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no visible GPU"
            raise ValueError(f"device {spec!r} asked for CUDA, but torch {torch.__version__} ({build}) has no CUDA "
                             "device: use --device cpu (or auto), or install the CUDA build (KINEMA4D_TORCH=cuda "
                             "bash scripts/setup.sh)")
        idx = int(s.split(":", 1)[1]) if ":" in s else int(os.environ.get("LOCAL_RANK", "0"))
        if not 0 <= idx < torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: CUDA device {idx} does not exist ({torch.cuda.device_count()} visible)")
        return torch.device("cuda", idx)
    raise ValueError(f"unknown device {spec!r}: expected {DEVICE_HELP}")


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 autocast runs: every CPU, CUDA devices with bf16 support."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def autocast(device: torch.device, precision: str = "fp32"):
    """``torch.autocast`` on ``device.type`` in bf16 for ``precision="bf16"`` where supported; else a no-op."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dist_backend(device: torch.device) -> str:
    """The process-group backend for tensors on ``device``: nccl for CUDA, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak memory allocated by torch on a CUDA ``device`` since the start (or the last
    :func:`reset_peak_memory`), in GiB; None on the CPU (use the process's peak RSS there)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak_memory(device: torch.device) -> None:
    """Start a new :func:`peak_memory_gb` window on a CUDA ``device`` (after its queued work); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"fp32" | "bf16" | "fp16"`` (or a torch dtype, or None) -> torch dtype or None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}: expected one of {sorted(table)}")
    return table[name]


__all__ = ["DEVICE_HELP", "resolve_device", "bf16_supported", "autocast", "dist_backend", "peak_memory_gb",
           "reset_peak_memory", "parse_dtype"]
