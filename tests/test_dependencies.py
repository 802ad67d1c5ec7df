"""What `pip install` brings is what mailer imports: every library imported directly is declared, nothing declared
goes unused, Playwright is the `preview` extra, and `mailer preview` says in one line what it lacks."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from mailer.errors import MailerError
from mailer.preview import INSTALL_HINT, check_fonts, screenshot
from tests.conftest import REPO, SAMPLE_ISSUE

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Needed at run time though never imported by name (each says why in pyproject.toml).
NOT_IMPORTED = {"linkify-it-py", "python-multipart"}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def imported_distributions() -> dict[str, set[str]]:
    """Distribution name -> the mailer modules that import it directly."""
    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for module in sorted((REPO / "mailer").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and not node.level
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top == "mailer" or top in sys.stdlib_module_names:
                    continue
                for dist in owners.get(top, [f"<no distribution for {top}>"]):
                    found.setdefault(_name(dist), set()).add(module.relative_to(REPO / "mailer").as_posix())
    return found


def test_every_imported_library_is_declared_and_every_declared_one_used() -> None:
    declared = {_name(r) for r in PROJECT["dependencies"]}
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in PROJECT["optional-dependencies"].items()}
    imported = imported_distributions()
    assert set(imported) - declared - extras["preview"] == set(), {
        k: imported[k] for k in set(imported) - declared - extras["preview"]
    }
    assert declared - set(imported) == NOT_IMPORTED
    assert imported["playwright"] == {"preview.py"} and "playwright" not in declared
    assert {"pyyaml", "markupsafe"} <= declared
    assert "click" not in declared  # typer vendors its own: the CLI catches typer's exception classes only
    assert "mdit-py-plugins" not in declared


def test_constraints_pin_every_lower_bound_exactly() -> None:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version.strip()
    extras = [r for reqs in PROJECT["optional-dependencies"].values() for r in reqs]
    for requirement in [*PROJECT["dependencies"], *extras]:
        bound = re.search(r">=([\w.]+)", requirement)
        assert bound, f"{requirement}: no lower bound"
        assert pins[_name(requirement)] == bound.group(1), f"{requirement}: CI tests {pins[_name(requirement)]}"


def test_preview_without_playwright_says_how_to_get_it(tmp_path: Path, run_cli) -> None:
    fake = tmp_path / "no-playwright" / "playwright"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n", encoding="utf-8")
    result = run_cli("preview", str(SAMPLE_ISSUE), env={"PYTHONPATH": str(fake.parent)})
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: mailer preview needs Playwright and Chromium: {INSTALL_HINT}"
    assert "mailer[preview]" in INSTALL_HINT and "apt-get install chromium fonts-noto-cjk" in INSTALL_HINT


def test_preview_without_chromium_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(MailerError, match=r"^mailer preview needs Chromium at /nonexistent/chromium: pip install"):
        screenshot("<p>hi</p>", tmp_path, "x", chromium="/nonexistent/chromium")


def test_preview_warns_when_no_cjk_font_is_installed(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    no_fonts = tmp_path / "fonts.conf"
    no_fonts.write_text('<?xml version="1.0"?>\n<fontconfig></fontconfig>\n', encoding="utf-8")
    monkeypatch.setenv("FONTCONFIG_FILE", str(no_fonts))
    [warning] = check_fonts("<p>知识产权</p>")
    assert warning.startswith("no Chinese font is installed: the screenshots show empty boxes")
    assert check_fonts("<p>English only</p>") == []
    monkeypatch.delenv("FONTCONFIG_FILE")
    assert check_fonts("<p>知识产权</p>") == []  # this machine has fonts-noto-cjk

    result = run_cli("preview", str(SAMPLE_ISSUE), "-o", "shots", "--offline", env={"FONTCONFIG_FILE": str(no_fonts)})
    assert result.returncode == 0, result.stderr
    assert "warning: no Chinese font is installed" in result.stderr
