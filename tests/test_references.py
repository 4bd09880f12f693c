"""What README, docs/ and the code's own docstrings name exists: every dotted ``kinema4d.x.y`` name resolves (module,
then attributes), every repository path they cite (scripts/, benchmarks/, tests/, docs/, examples/) is a file, and the
public API README imports is importable from ``kinema4d``. A renamed module or function fails here instead of leaving
a dead pointer for the next reader."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"(?<![/\w.])kinema4d(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![/\w.])((?:scripts|benchmarks|tests|docs|examples)/[\w/.-]*\w\.(?:py|sh|md|png|gif))")


def _texts() -> dict[str, str]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "src" / "kinema4d").rglob("*.py")), *sorted((ROOT / "scripts").glob("*")),
             *sorted((ROOT / "benchmarks").glob("*"))]
    return {str(f.relative_to(ROOT)): f.read_text() for f in files if f.is_file()}


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_dotted_names_resolve():
    bad = sorted({f"{where}: {name}" for where, text in _texts().items() for name in DOTTED.findall(text)
                  if not _resolves(name.rstrip("."))})
    assert not bad, "names that do not exist:\n" + "\n".join(bad)


def test_cited_paths_exist():
    bad = sorted({f"{where}: {p}" for where, text in _texts().items() for p in PATH.findall(text)
                  if "*" not in p and not (ROOT / p).exists()})
    assert not bad, "cited files that do not exist:\n" + "\n".join(bad)


def test_readme_imports():
    """Every ``from kinema4d... import ...`` / ``import kinema4d...`` line of README's Python blocks runs."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines()
             if re.match(r"\s*(from kinema4d[\w.]* import|import kinema4d)", ln)]
    assert len(lines) >= 3
    for ln in lines:
        exec(compile(ln, "README.md", "exec"), {})  # an import statement from our own README, nothing else
    import kinema4d

    assert kinema4d.Simulator.__name__ == "Simulator" and kinema4d.Rollout.__name__ == "Rollout"
