"""The code base passes ruff (config in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[dev]'"
    res = subprocess.run([ruff, "check", "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_cross_module_private_names():
    """No module imports (or reaches through a module alias into) another kinema4d module's private ``_names``."""
    import ast
    import importlib.util

    bad = []
    for path in sorted((ROOT / "src" / "kinema4d").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        aliases = set()  # local names bound to kinema4d modules
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name.startswith("kinema4d") and a.asname}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kinema4d"):
                for a in node.names:
                    if _private(a.name):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {a.name}")
                    elif importlib.util.find_spec(f"{node.module}.{a.name}") if a.name.islower() and \
                            (ROOT / "src" / node.module.replace(".", "/")).is_dir() else False:
                        aliases.add(a.asname or a.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and _private(node.attr):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not bad, "cross-module private names:\n" + "\n".join(bad)
