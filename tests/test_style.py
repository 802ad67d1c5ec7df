"""What STYLE.md asks of the code's shape, checked: no module of mailer/ over ~450 lines and no class over ~250,
a docstring at the top of every module, and no helpers/utils module. (ruff, mypy and import-linter check the rest
in .ci/run; see pyproject.toml.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

MODULES = sorted(p for p in (REPO / "mailer").rglob("*.py") if "__pycache__" not in p.parts)
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_a_module_fits_on_a_few_screens_and_says_what_it_owns(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{_name(path)}: split it along what its parts own"
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{_name(path)}: no module docstring (what it owns, what it must not do)"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{_name(path)}: class {node.name} is {size} lines"


def test_no_module_is_a_bag_of_helpers() -> None:
    assert not [p for p in MODULES if p.stem in ("utils", "helpers", "util", "misc", "common_utils")]


def test_every_module_is_under_the_import_contracts() -> None:
    """A module the contracts of pyproject.toml do not name could import any library: each top-level module and
    package of mailer is in the contract that names them all (or is the shell)."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    [everyone] = [c for c in contracts["contracts"] if c["name"].startswith("No service or adapter imports the CLI")]
    named = {*everyone["source_modules"], "mailer.cli", "mailer.__init__", "mailer.__main__"}
    top = {f"mailer.{p.relative_to(REPO / 'mailer').parts[0].removesuffix('.py')}" for p in MODULES}
    assert top - named == set(), "add these to the contracts in pyproject.toml"
