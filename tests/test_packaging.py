"""The wheel: what `pip install` puts on a machine carries the layouts, the web pages and the demo's samples.

(.ci/run installs that wheel into a fresh venv and runs the main job from an empty folder.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

# What a wheel is built from (a clone's other folders, tests and docs, are not part of the package).
SOURCES = ("pyproject.toml", "README.md", "mailer", "templates", "issues", "subscribers")


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            # symlinks=True: mailer/templates -> ../templates must stay a link inside the copy, as in a clone
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("mailer-*.whl")
    return wheel


def test_the_wheel_carries_layouts_pages_and_samples(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {
            "mailer/templates/issue.html.j2": REPO / "templates" / "issue.html.j2",
            "mailer/templates/issue.txt.j2": REPO / "templates" / "issue.txt.j2",
            **{
                f"mailer/templates/web/{name}": REPO / "templates" / "web" / name
                for name in ("page.html.j2", "page.css.j2", "preferences.html.j2", "archive.html.j2")
            },
            "mailer/samples/sample.md": REPO / "issues" / "sample.md",
            "mailer/samples/sample.csv": REPO / "subscribers" / "sample.csv",
            **{f"mailer/starter/{path.name}": path for path in (REPO / "mailer" / "starter").iterdir()},
            "mailer/web/static/ops.js": REPO / "mailer" / "web" / "static" / "ops.js",
            **{f"mailer/web/layouts/{p.name}": p for p in (REPO / "mailer" / "web" / "layouts").glob("*.j2")},
        }
        assert len(shipped) == 20  # the 8 above, the 6 starter files of mailer new, the console's script and 5 layouts
        for name, original in shipped.items():
            assert name in names, sorted(names)
            assert archive.read(name) == original.read_bytes(), name  # a copy of the file, not a dangling link
        # every module, in subpackages too (setuptools ships only the packages pyproject.toml lists)
        modules = {
            path.relative_to(REPO).as_posix()
            for path in (REPO / "mailer").rglob("*.py")
            if "__pycache__" not in path.parts
        }
        assert modules <= names, modules - names
    data = {name for name in names if not name.endswith(".py") and ".dist-info/" not in name}
    assert data == set(shipped), data - set(shipped)  # nothing from the checkout comes along by accident
    assert not [name for name in names if not name.startswith(("mailer/", "mailer-"))]
