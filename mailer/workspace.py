"""`mailer new DIR`: an editor's workspace: mailer.toml with every setting commented, a starter issue, copies of the
built-in layouts to change, an example subscriber CSV and a .gitignore. It writes only files that do not exist yet:
an existing file is never overwritten, so running it again (or in a folder already in use) is safe."""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path

from mailer.errors import MailerError, UsageError
from mailer.models import Lang
from mailer.render import builtin_layouts

# The starter files travel inside the package, like the layouts.
STARTER = importlib.resources.files("mailer") / "starter"
STARTER_ISSUE = "issues/first-issue.md"
EXAMPLE_CSV = "subscribers/example.csv"


@dataclass
class Workspace:
    folder: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already there: left exactly as they were


def workspace_files(lang: str) -> list[tuple[str, bytes]]:
    """(path inside the workspace, content) of every file `mailer new` writes for a list in `lang`."""
    files = [
        ("mailer.toml", (STARTER / "mailer.toml").read_bytes()),
        (".gitignore", (STARTER / "gitignore").read_bytes()),
        (STARTER_ISSUE, (STARTER / f"issue-{lang}.md").read_bytes()),
        (EXAMPLE_CSV, (STARTER / f"example-{lang}.csv").read_bytes()),
    ]
    return files + [(f"templates/{name}", data) for name, data in builtin_layouts()]


def create_workspace(folder: Path, lang: str = "zh") -> Workspace:
    """Write the workspace's files into `folder` (made if needed), keeping every file that is already there."""
    if lang not in tuple(Lang):
        raise UsageError(f"--lang must be one of {', '.join(Lang)}, not {lang!r}")
    if folder.exists() and not folder.is_dir():
        raise MailerError(f"{folder} exists and is not a folder")
    files = workspace_files(lang)
    for name, _ in files:  # every problem found before the first file is written: never half a workspace
        _check_writable(folder / name)
    result = Workspace(folder)
    for name, data in files:
        path = folder / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("xb") as fh:  # "x": fails if the file exists, even one made a moment ago
                fh.write(data)
        except FileExistsError:
            result.kept.append(path)
            continue
        except OSError as exc:
            raise MailerError(f"cannot write {path}: {exc.strerror or exc}") from None
        result.created.append(path)
    return result


def _check_writable(path: Path) -> None:
    """A file that is not there yet must be creatable: its nearest existing folder is a folder we may write in
    (a file named like one of the folders, `templates`, stopped `mailer new` after it had written half)."""
    if os.path.lexists(path):
        return  # kept as it is
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MailerError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MailerError(f"cannot write {path}: {parent} is not writable")
