"""Dependencies point one way: the workflow imports the engines, never the reverse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_engines_import_nothing_from_the_workflow() -> None:
    files = sorted((ROOT / "engines").rglob("*.py"))
    assert len(files) > 10
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _imports(path)
        if module.split(".")[0] == "hillwalker"
        and not module.startswith(("hillwalker.engines", "hillwalker.templates"))
    ]
    assert upward == []


def test_the_engines_import_without_the_workflow_package() -> None:
    """Every engine module imports in a process where the workflow modules cannot be found."""
    modules = sorted(
        "hillwalker.engines." + ".".join(p.relative_to(ROOT / "engines").with_suffix("").parts)
        for p in (ROOT / "engines").rglob("*.py")
        if p.name != "__init__.py"
    )
    code = (
        "import sys, importlib, importlib.abc\n"
        "import hillwalker\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.startswith('hillwalker.') and not name.startswith(\n"
        "                ('hillwalker.engines', 'hillwalker.templates')):\n"
        "            raise ImportError('engines imported the workflow: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(len(sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
