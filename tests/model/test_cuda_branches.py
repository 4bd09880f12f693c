"""The branches only a CUDA device reaches, run on the CPU (issue 13): torch.cuda's answers are replaced by the
values a machine with GPUs gives, and the code under test must pick the GPU, the backend and the numbers from them.
What cannot be reached this way (moving tensors onto a GPU, nccl itself) is listed in the README as not run."""

import pytest
import torch

from kinema4d.model import device as kdev
from kinema4d.model import train as ktrain


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with 2 GPUs (no CUDA call reaches the driver)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_resolve_device_with_gpus(two_gpus, monkeypatch):
    assert kdev.resolve_device("auto") == torch.device("cuda", 0)
    assert kdev.resolve_device(None) == torch.device("cuda", 0)
    assert kdev.resolve_device(" CUDA:1 ") == torch.device("cuda", 1)
    assert kdev.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert kdev.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun a bare cuda / auto is this rank's GPU
    assert kdev.resolve_device("cuda") == kdev.resolve_device("auto") == torch.device("cuda", 1)
    assert kdev.resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    with pytest.raises(ValueError, match=r"'cuda:2'.*does not exist \(2 visible\)"):
        kdev.resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "3")  # more ranks on the node than GPUs
    with pytest.raises(ValueError, match="CUDA device 3 does not exist"):
        kdev.resolve_device("auto")


@pytest.mark.parametrize("bf16", [True, False])
def test_autocast_on_cuda_follows_bf16_support(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    cuda = torch.device("cuda", 0)
    assert kdev.bf16_supported(cuda) is bf16
    ctx = kdev.autocast(cuda, "bf16")
    if bf16:  # a real torch.autocast on the CUDA device type (disabled by torch itself on this CPU-only build)
        assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    else:  # e.g. a V100: no bf16, fp32 instead of a silent fp16
        assert not isinstance(ctx, torch.autocast)
    assert not isinstance(kdev.autocast(cuda, "fp32"), torch.autocast)
    with pytest.raises(ValueError, match="precision"):
        kdev.autocast(cuda, "fp16")


def test_peak_memory_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: calls.append(("max", d)) or 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d: calls.append(("sync", d)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(("reset", d)))
    cuda = torch.device("cuda", 1)
    kdev.reset_peak_memory(cuda)
    assert kdev.peak_memory_gb(cuda) == 3.0
    assert calls == [("sync", cuda), ("reset", cuda), ("max", cuda)]
    calls.clear()
    kdev.reset_peak_memory(torch.device("cpu"))
    assert kdev.peak_memory_gb(torch.device("cpu")) is None and calls == []


@pytest.mark.parametrize("dev, backend, device_id", [
    (torch.device("cuda", 1), "nccl", torch.device("cuda", 1)),  # CUDA tensors: nccl, bound to this rank's GPU
    (torch.device("cpu"), "gloo", None),
])
def test_process_group_backend_follows_the_tensors(monkeypatch, dev, backend, device_id):
    seen = []
    monkeypatch.setattr(ktrain.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ktrain.dist, "init_process_group", lambda b, **kw: seen.append((b, kw)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert ktrain._dist_env(dev) == (1, 2)
    assert seen == [(backend, {"rank": 1, "world_size": 2, "device_id": device_id})]
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: no process group at all
    monkeypatch.setenv("RANK", "0")
    assert ktrain._dist_env(dev) == (0, 1) and len(seen) == 1
