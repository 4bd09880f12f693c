"""Print a training run's step time from its log (``training_log.csv`` beside bundled weights, ``metrics.csv`` in
a run directory): steps, total step time, and the fastest / median / slowest seconds per step.

    .venv/bin/python scripts/training_time.py src/kinema4d/assets/default_model
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np


def main(run: str) -> None:
    d = Path(run)
    log = next((d / n for n in ("training_log.csv", "metrics.csv") if (d / n).is_file()), None)
    if log is None:
        raise SystemExit(f"{run}: no training_log.csv or metrics.csv")
    rows = list(csv.DictReader(log.open()))
    step = np.array([int(r["step"]) for r in rows])
    sec = np.array([float(r["sec_per_step"]) for r in rows])
    total = float((sec * np.diff(np.concatenate([[0], step]))).sum())  # each row's rate over the steps since the last
    print(f"{log}: {step[-1]} steps, {total / 60:.1f} min of step time; s/step fastest {sec.min():.2f}, median "
          f"{np.median(sec):.2f}, slowest {sec.max():.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "src/kinema4d/assets/default_model")
