"""Template code in data (issue 11, item 5): titles and names are data, never Jinja or YAML source; issues and
layouts render in Jinja's sandbox, and whatever it refuses is one error line before any message leaves."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from html import unescape
from pathlib import Path

import pytest

from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.errors import TemplateError
from mailer.models import Subscriber
from mailer.render import ListContext, builtin_layouts, render_issue
from mailer.store import Store
from mailer.subscriptions import build_confirmation, create_list
from tests.test_web import Site, confirm_link, sign_up, site  # noqa: F401  (site is a fixture)

PASSWORD = "hunter2-not-for-mail"
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def issue_with(body: str) -> str:
    return f"---\nsubject: Hi\n---\n\nFirst line.\n\n{body}\n\n## One\n\nText.\n"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{{ cycler.__init__.__globals__.os.environ.get("MAILER_SMTP_PASSWORD") }}', "cycler"),
        ("{{ subscriber.__class__.__init__.__globals__ }}", "unsafe"),
        ("{{ meta.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ('{{ lipsum.__globals__["os"].environ }}', "lipsum"),
        ('{% include "issue.html.j2" %}', "include"),
        ('{% import "issue.html.j2" as layout %}', "include"),
        ("{{ 1/0 }}", "division by zero"),
        ('{{ "x" * 10**9 }}', "too large"),
    ],
)
def test_code_in_an_issue_is_one_error_naming_file_and_line(
    body: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    with pytest.raises(TemplateError) as err:
        render_issue(issue_with(body), "issues/evil.md", ListContext(name="bulletin", title="简报"))
    message = str(err.value)
    assert message.startswith("issues/evil.md line 7: "), message
    assert says in message
    assert "\n" not in message and PASSWORD not in message


def test_code_in_a_layout_is_refused_naming_the_layout_and_line(tmp_path: Path) -> None:
    for name, data in builtin_layouts():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    layout = tmp_path / "issue.html.j2"
    original = layout.read_text(encoding="utf-8")
    marker = tmp_path / "ran"
    payload = f'{{{{ cycler.__init__.__globals__.os.popen("touch {marker}").read() }}}}'
    layout.write_text(original.replace("<body>", "<body>" + payload, 1), encoding="utf-8")
    line = original[: original.index("<body>")].count("\n") + 1
    with pytest.raises(TemplateError) as err:
        render_issue(issue_with("Hello."), "issue.md", ListContext(), templates_dir=tmp_path)
    assert f"issue.html.j2 line {line}: " in str(err.value)
    assert not marker.exists()


def test_send_of_an_issue_reading_the_password_stops_before_any_message(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    store.subscribers.upsert(store.lists.get("bulletin").id, [Subscriber(email="wang@example.org")], "test")
    issue = tmp_path / "evil.md"
    issue.write_text(
        issue_with('{{ cycler.__init__.__globals__.os.environ.get("MAILER_SMTP_PASSWORD") }}'), encoding="utf-8"
    )

    result = run_cli(
        "send",
        str(issue),
        "--list",
        "bulletin",
        "--yes",
        "--smtp-port",
        str(smtp_server.port),
        env={"MAILER_SMTP_PASSWORD": PASSWORD},
    )

    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {issue} line 7: "), line
    assert PASSWORD not in result.stdout + result.stderr
    assert smtp_server.received == [] and smtp_server.connections == 0


HOSTILE_TITLE = '{{ cycler.__init__.__globals__.os.popen("touch ran-from-a-title").read() }}'


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_list_title_is_never_run_as_template_code(
    store: Store, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lang: str
) -> None:
    monkeypatch.chdir(tmp_path)
    hostile = create_list(store, f"hostile-{lang}", HOSTILE_TITLE, "News <news@example.org>", "", lang)
    sub = Subscriber(email="someone@example.org", id=7, list_id=hostile.id)
    message = build_confirmation(hostile, sub, config.secret, "https://news.example.org", NOW)
    assert not (tmp_path / "ran-from-a-title").exists()
    assert not list(tmp_path.glob("ran*"))
    parsed = BytesParser(policy=policy.default).parsebytes(message.data)
    assert HOSTILE_TITLE in str(parsed["Subject"])
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert HOSTILE_TITLE in text


@pytest.mark.parametrize(
    ("lang", "title"),
    [
        ("en", "R\\D News"),
        ("zh", "News: weekly #1"),
        ("zh", "Team {% news"),
        ("en", "Team {% news"),
        ("en", 'Say "hi" \\o/ {{ x }}'),
    ],
)
def test_ordinary_titles_sign_up_and_get_their_confirmation(site: Site, lang: str, title: str) -> None:  # noqa: F811
    create_list(site.store, "odd", title, "Odd <odd@example.org>", "", lang)
    with site.client() as http:
        answer = sign_up(http, "odd", "reader@example.org")
    assert answer.status_code == 200, answer.text
    [mail] = site.smtp.received
    parsed = BytesParser(policy=policy.default).parsebytes(mail.data)
    assert title in str(parsed["Subject"])
    html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert title in unescape(re.sub(r"<[^>]+>", "", html))
    assert confirm_link(mail.data).startswith(site.url + "/c/")


def test_environment_is_not_a_template_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    for body in (
        "{{ range }}",
        "{{ dict(a=1) }}",
        "{{ namespace }}",
        "{{ joiner }}",
        "{{ os }}",
        "{{ config }}",
        "{{ self.__init__ }}",
    ):
        with pytest.raises(TemplateError):
            render_issue(issue_with(body), "issues/x.md", ListContext())
    assert os.environ["MAILER_SMTP_PASSWORD"] == PASSWORD


def layouts_ending_with(folder: Path, last_line: str) -> tuple[Path, int]:
    """Copies of the built-in layouts in `folder`, the text layout ending with `last_line`: (it, that line's number)."""
    for name, data in builtin_layouts():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    layout = folder / "issue.txt.j2"
    layout.write_text(layout.read_text(encoding="utf-8") + last_line + "\n", encoding="utf-8")
    return layout, layout.read_text(encoding="utf-8").count("\n")


def test_a_layout_cannot_read_files_outside_its_folder_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A layouts folder (a git repository can carry symlinks) linking to /proc/self/environ put the SMTP password in
    # every message; to ../mailer.db.secret, the signing secret
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    folder = tmp_path / "templates"
    text_layout, line = layouts_ending_with(folder, '{% include "extra.j2" %}')
    (tmp_path / "mailer.db.secret").write_text("the-signing-secret", encoding="utf-8")
    for target in (Path("/proc/self/environ"), tmp_path / "mailer.db.secret", Path("/dev/zero"), tmp_path):
        (folder / "extra.j2").unlink(missing_ok=True)
        (folder / "extra.j2").symlink_to(target)
        with pytest.raises(TemplateError) as err:
            render_issue(issue_with("Hello."), "issue.md", ListContext(), templates_dir=folder)
        message = str(err.value)
        assert message.startswith(f"{text_layout} line {line}: layout 'extra.j2' "), message
        assert PASSWORD not in message and "the-signing-secret" not in message

    (tmp_path / "house").mkdir()
    (tmp_path / "house" / "extra.j2").write_text("HOUSE FOOTER\n", encoding="utf-8")
    (folder / "extra.j2").unlink()
    (folder / "extra.j2").symlink_to(tmp_path / "house" / "extra.j2")  # a layout shared from another folder: fine
    assert "HOUSE FOOTER" in render_issue(issue_with("Hello."), "issue.md", ListContext(), templates_dir=folder).text


def test_a_layout_that_includes_itself_is_named_with_its_line(tmp_path: Path) -> None:
    layout, line = layouts_ending_with(tmp_path, '{% include "issue.txt.j2" %}')
    with pytest.raises(TemplateError) as err:  # was "<frozen abc> line 119: maximum recursion depth exceeded ..."
        render_issue(issue_with("Hello."), "issue.md", ListContext(), templates_dir=tmp_path)
    assert str(err.value) == (
        f"{layout} line {line}: it includes, imports or calls itself without end (maximum recursion depth exceeded)"
    )


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="the ceiling is Linux's RLIMIT_AS")
@pytest.mark.parametrize(
    "body",
    [
        '{% for i in "x" * 99999 %}{{ "y" * 99999 }}{% endfor %}',  # 10 GB of output, each `*` within its cap
        '{{ "x".ljust(10**10) }}',
        '{{ "x"|center(10**10) }}',
        '{{ "{:>9999999999}".format("x") }}',
        '{{ (["y" * 99999] * 99999)|join }}',
        '{% set a = "x" * 99999 %}' + "{% set a = a ~ a %}" * 14 + "{{ a|length }}",  # 1.6 GB in 14 doublings
    ],
)
def test_a_body_that_builds_gigabytes_is_one_error_and_the_process_keeps_its_memory(body: str) -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(TemplateError) as err:
        render_issue(issue_with(body), "issues/huge.md", ListContext(name="bulletin", title="简报"))
    assert str(err.value).startswith("issues/huge.md line 7: it needs more than 512 MB of memory to render")
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # the ceiling is only there while templates render
    assert "Text." in render_issue(issue_with("Hello."), "ok.md").text
