"""scripts/memory_plan.py: its arithmetic, and docs/MEMORY.md carries its output verbatim.

The parameter counts are those the script prints with ``--json`` (from the model definitions on the meta device;
building the 14B definition takes minutes on a loaded 2-core machine, so the test uses the recorded counts and
checks the ones that are plain arithmetic)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "scripts" / "memory_plan.py")
memory_plan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory_plan)

COUNTS = {"transformer": 16347682624, "block": 403838464, "blocks": 40, "lora": 209715200,
          "release_modules": 1287312, "clip": 630766080, "vae": 126892531, "umt5": 5680910336, "tokens": 35100,
          "latent": [13, 60, 180], "context": 312, "clip_tokens": 257, "width": 5120, "heads": 40, "ffn": 13824}


def test_counts_that_are_arithmetic():
    assert COUNTS["lora"] == 40 * 8 * 64 * (5120 + 5120)  # rank 64 on 8 square 5120 projections per block
    assert COUNTS["tokens"] == 13 * (60 // 2) * (180 // 2)  # patch (1, 2, 2)
    assert COUNTS["context"] == 13 * 4 * 6  # the release's robot-token grid


def test_plan_figures():
    t = memory_plan.plan(COUNTS)
    assert round(t["weights_bf16"] / 1e9, 1) == 32.7
    assert round(t["act_block"] / 1e9, 1) == 6.3  # N x (12 x 5120 + 2 x 13824) x 2 B
    fsdp8 = next(r for r in t["training"] if r["gpus"] == 8 and r["ckpt"])
    assert 30e9 < fsdp8["total"] < 40e9
    assert all(r["total"] > 80e9 for r in t["training"] if r["gpus"] == 1)


def test_memory_doc_carries_the_output():
    doc = (ROOT / "docs" / "MEMORY.md").read_text()
    missing = [line for line in memory_plan.tables(COUNTS) if line.strip() and line not in doc]
    assert not missing, "docs/MEMORY.md lacks these lines of scripts/memory_plan.py:\n" + "\n".join(missing)
