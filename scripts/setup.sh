#!/usr/bin/env bash
# Create .venv at the repo root, install torch 2.13.0 and then kinema4d, and (unless --no-demo) run the kinematic
# control demo and a 4D rollout of the bundled default model. torch goes first, pinned, because a bare `torch`
# requirement on Linux pulls PyPI's multi-GB CUDA build.
#
# Which torch build: set KINEMA4D_TORCH (or KINEMA4D_TORCH_INDEX) before running.
#   KINEMA4D_TORCH=cpu      (default) the CPU-only build. On Linux `torch==2.13.0+cpu`: taken from the sources your
#                           pip configuration already has (a local wheel cache / find-links / mirror) if one carries
#                           it, else from https://download.pytorch.org/whl/cpu (~200 MB). On macOS PyPI's wheel is
#                           already the CPU build. torch runs on the CPU whether or not the machine has a GPU.
#   KINEMA4D_TORCH=cuda     PyPI's `torch===2.13.0` (that exact version string, so a local +cpu wheel is not
#                           taken): on Linux x86_64 the CUDA build (multi-GB with its nvidia-* libraries). Without an
#                           NVIDIA GPU it runs on the CPU like the cpu build. With a GPU, `--device auto` (the
#                           default of train / simulate / eval / eval policy) runs on it, and torchrun training
#                           uses nccl (README "GPUs and many GPUs"; not run on a GPU here yet).
#   KINEMA4D_TORCH=default  `pip install torch==2.13.0` with your pip configuration as it is (the behaviour before
#                           this option existed): the CPU build only where a local wheel cache carries it.
#   KINEMA4D_TORCH_INDEX=URL  install `torch==2.13.0` from this index (PyPI stays available for its dependencies),
#                           e.g. https://download.pytorch.org/whl/cu126 for one CUDA version; overrides KINEMA4D_TORCH.
# Python: 3.11 (PYTHON=... to pick the interpreter); pyproject.toml says why.
#
#   bash scripts/setup.sh                          # CPU torch, then the demos
#   KINEMA4D_TORCH=cuda bash scripts/setup.sh --no-demo
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_BUILD=${KINEMA4D_TORCH:-cpu}
case "$TORCH_BUILD" in
  cpu|cuda|default) ;;
  *) echo "setup.sh: KINEMA4D_TORCH must be cpu, cuda or default, got '$TORCH_BUILD'" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q)
"${PIP[@]}" --upgrade pip
if [ -n "${KINEMA4D_TORCH_INDEX:-}" ]; then
  echo "setup.sh: torch==$TORCH_VERSION from $KINEMA4D_TORCH_INDEX"
  "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$KINEMA4D_TORCH_INDEX" --extra-index-url https://pypi.org/simple
elif [ "$TORCH_BUILD" = cpu ] && [ "$(uname -s)" = Linux ]; then
  # the +cpu local version pins the build: pip fails rather than falling back to the CUDA wheel
  if "${PIP[@]}" "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
    echo "setup.sh: torch==$TORCH_VERSION+cpu from the configured pip sources"
  else
    echo "setup.sh: torch==$TORCH_VERSION+cpu from $CPU_INDEX"
    "${PIP[@]}" "torch==$TORCH_VERSION+cpu" --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
  fi
elif [ "$TORCH_BUILD" = cuda ]; then
  echo "setup.sh: torch===$TORCH_VERSION (PyPI's build; CUDA on Linux x86_64)"
  "${PIP[@]}" "torch===$TORCH_VERSION"
else  # default, or cpu on macOS (PyPI's wheel is the CPU build there)
  echo "setup.sh: torch==$TORCH_VERSION from the configured pip sources (KINEMA4D_TORCH=$TORCH_BUILD)"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi
.venv/bin/python -c "import torch; print('setup.sh: torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
"${PIP[@]}" -e ".[dev]"
# A real LeRobot implementation for tests/data/test_lerobot.py: lerobot-dataset (LeRobotDataset) in its own --target
# dir, run by the tests in a subprocess. It cannot go into .venv itself: it pins huggingface-hub < 0.36, which
# diffusers 0.42 excludes. It requires no torch (the subprocess uses .venv's); torchvision (imported by it) without
# its dependencies, so torch is never touched. KINEMA4D_SKIP_LEROBOT_WRITER=1 skips it (the LeRobot tests then fail
# saying so). pip prints "ERROR: ... diffusers requires huggingface-hub>=1.32, but you have 0.35.3": that is its
# check of the target dir against .venv, exit status 0, .venv unchanged.
if [ "${KINEMA4D_SKIP_LEROBOT_WRITER:-0}" != 1 ] && [ ! -d .venv/lerobot-writer/ledataset ]; then
  rm -rf .venv/lerobot-writer.tmp
  "${PIP[@]}" --target .venv/lerobot-writer.tmp "lerobot-dataset==0.4.4"
  "${PIP[@]}" --target .venv/lerobot-writer.tmp --no-deps "torchvision==0.28.0"
  rm -rf .venv/lerobot-writer && mv .venv/lerobot-writer.tmp .venv/lerobot-writer
  echo "setup.sh: lerobot-dataset 0.4.4 (test writer) in .venv/lerobot-writer"
fi
if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/kinema4d control --demo --out out/control_demo
  .venv/bin/kinema4d simulate --demo --out out/simulate_demo
fi
