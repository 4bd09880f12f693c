"""benchmarks/gpu_check.sh: says "no CUDA" and exits 0 without a GPU; its Python runs the same code on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA path")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable}, timeout=1200)
    assert res.returncode == 0 and "no CUDA" in res.stdout


def test_gpu_check_code_path_on_cpu(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--steps", "1", "--size",
           "32", "48", "--frames", "5", "--rollout-frames", "9", "--sample-steps", "1", "--batch-size", "2",
           "--out", str(tmp_path / "gc")]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "rollout: 9 frames" in res.stdout and res.stdout.rstrip().endswith("OK")
