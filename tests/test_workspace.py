"""`mailer new DIR`: an editor's workspace that works at once, whose layouts and theme an editor can change, and
that never overwrites a file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.config import _TOML, THEME_KEYS, load_config
from mailer.render import ListContext, builtin_layouts, render_issue
from mailer.workspace import create_workspace


def test_a_workspace_has_every_part(tmp_path: Path) -> None:
    made = create_workspace(tmp_path / "ws", "zh")
    names = sorted(str(p.relative_to(tmp_path / "ws")) for p in made.created)
    assert names == [
        ".gitignore",
        "issues/first-issue.md",
        "mailer.toml",
        "subscribers/example.csv",
        "templates/issue.html.j2",
        "templates/issue.txt.j2",
        "templates/web/archive.html.j2",
        "templates/web/page.css.j2",
        "templates/web/page.html.j2",
        "templates/web/preferences.html.j2",
    ]
    for name, data in builtin_layouts():
        assert (tmp_path / "ws" / "templates" / name).read_bytes() == data
    ignored = (tmp_path / "ws" / ".gitignore").read_text(encoding="utf-8").split()
    assert {"*.db", "*.secret", "keys/", "outbox/", "*.pem"} <= set(ignored)


def test_mailer_toml_shows_every_setting_commented_out(tmp_path: Path) -> None:
    create_workspace(tmp_path, "en")
    text = (tmp_path / "mailer.toml").read_text(encoding="utf-8")
    assert load_config(environ={}, cwd=tmp_path).warnings == ()  # all commented: nothing set, nothing unknown
    shown = set(re.findall(r"^# ?(\w+) = ", text, flags=re.M))
    assert set(_TOML) <= shown, set(_TOML) - shown
    assert set(THEME_KEYS) <= shown
    assert "[theme]" in text and "[lists.bulletin.theme]" in text
    uncommented = "\n".join(
        re.sub(r"^# (\[|\w+ = )", r"\1", line)
        for line in text.splitlines()
        if not re.match(r"^# (logo|dkim_key|smtp_ca) = ", line)
    )
    (tmp_path / "mailer.toml").write_text(uncommented, encoding="utf-8")
    config = load_config(environ={}, cwd=tmp_path)  # every value shown is valid as written
    assert config.warnings == () and config.smtp_port == 25 and config.theme.accent == "#163e6c"


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_starter_issue_shows_every_field_and_renders_cleanly(tmp_path: Path, lang: str) -> None:
    create_workspace(tmp_path, lang)
    source = (tmp_path / "issues" / "first-issue.md").read_text(encoding="utf-8")
    for field in (
        "subject",
        "preheader",
        "issue",
        "date",
        "lang",
        "images",
        "attachments",
        "slug",
        "from",
        "editor",
        "reviewer",
        "phone",
        "contact_email",
    ):
        assert re.search(rf"^#? ?{field}: ", source, flags=re.M), field
    issue = render_issue(
        source,
        "issues/first-issue.md",
        ListContext(name="news", title="News", lang=lang),
        templates_dir=tmp_path / "templates",
    )
    assert issue.warnings == ()
    assert issue.lang == lang and len(issue.sections) == 2
    assert "{#" not in issue.text and "subscriber.name" not in issue.html  # the editor's notes stay out


def test_it_never_overwrites_a_file(tmp_path: Path, run_cli) -> None:
    (tmp_path / "ws" / "templates").mkdir(parents=True)
    mine = tmp_path / "ws" / "templates" / "issue.html.j2"
    mine.write_text("my layout", encoding="utf-8")
    first = run_cli("new", "ws")
    assert first.returncode == 0, first.stderr
    assert mine.read_text(encoding="utf-8") == "my layout"
    assert "kept ws/templates/issue.html.j2 (already there; not overwritten)" in first.stdout
    toml = tmp_path / "ws" / "mailer.toml"
    toml.write_text("# changed\n", encoding="utf-8")
    again = run_cli("new", "ws", "--lang", "en")
    assert again.returncode == 0
    assert "created" not in again.stdout and again.stdout.count("kept ") == 10
    assert toml.read_text(encoding="utf-8") == "# changed\n"


def test_bad_input_is_one_error_line(tmp_path: Path, run_cli) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    result = run_cli("new", "afile")
    assert result.returncode == 1 and result.stderr.strip() == "error: afile exists and is not a folder"
    result = run_cli("new", "ws", "--lang", "fr")
    assert result.returncode == 2 and result.stderr.strip() == "error: --lang must be one of zh, en, not 'fr'"
    assert not (tmp_path / "ws").exists()


def test_a_file_where_a_folder_goes_is_refused_before_anything_is_written(tmp_path: Path, run_cli) -> None:
    # It wrote mailer.toml, .gitignore, issues/ and subscribers/, then stopped at templates/: half a workspace
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "templates").write_text("not a folder", encoding="utf-8")
    result = run_cli("new", "ws")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: cannot write ws/templates/issue.html.j2: ws/templates is not a folder"
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["templates"] and result.stdout == ""


def test_from_new_to_a_changed_layout_and_accent(tmp_path: Path, run_cli) -> None:
    assert run_cli("new", "ws").returncode == 0
    ws = tmp_path / "ws"

    def mailer(*args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        result = subprocess.run(
            [sys.executable, "-m", "mailer", *args],
            cwd=ws,
            env={**env, "NO_COLOR": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr, result.stderr
        return result.stdout

    mailer("init")
    mailer("lists", "create", "news", "--title", "简报", "--from", "简报 <news@example.org>", "--lang", "zh")
    assert "3 added" in mailer("subs", "import", "subscribers/example.csv", "--list", "news")
    layout = ws / "templates" / "issue.html.j2"
    layout.write_text(
        layout.read_text(encoding="utf-8").replace('"电子简报" if zh', '"本单位内刊" if zh'), encoding="utf-8"
    )
    toml = ws / "mailer.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8").replace('# [theme]\n# accent = "#163e6c"', '[theme]\naccent = "#7a1f5c"'),
        encoding="utf-8",
    )
    mailer("render", "issues/first-issue.md", "--list", "news", "-o", "out")
    html = (ws / "out" / "first-issue.html").read_text(encoding="utf-8")
    assert "本单位内刊" in html and 'bgcolor="#7a1f5c"' in html and "#163e6c" not in html
    assert "王小明，您好：" in (ws / "out" / "first-issue.txt").read_text(encoding="utf-8")
