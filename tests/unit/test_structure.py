"""The tree's shape: imports run one way (api.cli -> api.web -> api.service -> projections ->
ledger), nothing imports in a circle, no function-level import of a project module (the
usual way to dodge a cycle), and no private name is imported from another module.

The import contracts live in pyproject.toml ([tool.importlinter]); the tests below run them
on this tree, and on a copy with an upward import and a circle added, to show they catch both.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "ledger", "projections")
PROJECT_ROOTS = (*PACKAGES, "tests", "bench")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so the copy under test wins over the editable install.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_of_the_tree(destination: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, destination / package, ignore=shutil.ignore_patterns("*.pyc")
        )
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def python_files(*roots: str) -> list[Path]:
    return sorted(path for root in roots for path in (ROOT / root).rglob("*.py"))


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added_import", "broken"),
    [
        # ledger is the bottom layer: importing the web layer from it is upward.
        ("ledger/events.py", "import api.web.app", "Layers"),
        # the service layer must not reach up into the web layer.
        ("api/service/commands.py", "import api.web.problems", "Layers"),
        # ledger.chain imports ledger.canonical; the reverse closes a circle.
        ("ledger/canonical.py", "import ledger.chain", "No import cycles"),
    ],
)
def test_the_contracts_catch_upward_imports_and_circles(
    tmp_path: Path, module: str, added_import: str, broken: str
) -> None:
    tree = copy_of_the_tree(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + f"\n{added_import}  # added by the test\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    broken_lines = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(broken) for line in broken_lines), result.stdout


def _project_module(name: str | None) -> bool:
    return name is not None and name.split(".")[0] in PROJECT_ROOTS


def test_no_function_level_imports_of_project_modules() -> None:
    found = []
    for path in python_files(*PROJECT_ROOTS):
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and _project_module(node.module):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
                if isinstance(node, ast.Import):
                    found += [
                        f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}"
                        for alias in node.names
                        if _project_module(alias.name)
                    ]
    assert found == []


def test_no_private_names_are_imported_from_other_modules() -> None:
    found = []
    for path in python_files(*PROJECT_ROOTS):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _project_module(node.module):
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert found == []
