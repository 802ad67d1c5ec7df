"""A typo in mailer.toml or in an issue's front matter is a warning naming the key and the nearest known one,
instead of a setting or a field silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.capture import CaptureServer
from mailer.config import load_config
from mailer.render import ListContext, render_issue
from mailer.store import Store
from mailer.subscriptions import add_subscriber
from tests.conftest import SAMPLE_ISSUE


@pytest.mark.parametrize(
    ("toml", "warning"),
    [
        ("smtp_prot = 2525\n", "unknown setting 'smtp_prot' is ignored; did you mean 'smtp_port'?"),
        ("[smtp]\nprot = 2525\n", "unknown setting 'smtp.prot' is ignored; did you mean 'port'?"),
        ('[theme]\naccnet = "#111111"\n', "unknown setting 'theme.accnet' is ignored; did you mean 'accent'?"),
        (
            '[lists.bulletin.theme]\nfooters = ["x"]\n',
            "unknown setting 'lists.bulletin.theme.footers' is ignored; did you mean 'footer'?",
        ),
        ('template = "layouts"\n', "unknown setting 'template' is ignored; did you mean 'templates'?"),
        ("colour = 1\n", "unknown setting 'colour' is ignored (known here: "),
    ],
)
def test_unknown_mailer_toml_keys_are_named_with_the_nearest_known_one(tmp_path: Path, toml: str, warning: str) -> None:
    (tmp_path / "mailer.toml").write_text(toml, encoding="utf-8")
    [found] = load_config(environ={}, cwd=tmp_path).warnings
    assert found.startswith(f"{tmp_path / 'mailer.toml'}: {warning}"), found


def test_known_keys_warn_nothing(tmp_path: Path) -> None:
    (tmp_path / "layouts").mkdir()
    (tmp_path / "mailer.toml").write_text(
        'smtp_host = "127.0.0.1"\nbase_url = "https://news.example.org"\ntemplates = "layouts"\n'
        '[smtp]\nport = 2525\ntls = "none"\n[theme]\naccent = "#111111"\nfooter = ["a"]\n'
        '[lists.bulletin.theme]\nhighlight = "#222222"\n',
        encoding="utf-8",
    )
    config = load_config(environ={}, cwd=tmp_path)
    assert config.warnings == ()
    assert config.smtp_port == 2525


def test_every_command_says_it_on_stderr(tmp_path: Path, run_cli) -> None:
    (tmp_path / "mailer.toml").write_text("smtp_prot = 2525\n", encoding="utf-8")
    result = run_cli("lists", "ls")
    assert "warning: " in result.stderr and "did you mean 'smtp_port'?" in result.stderr


ISSUE = "---\nsubject: Hi\neditor: 林\n{extra}---\n\nBody {{{{ meta.get('extra_note', '') }}}}.\n\n## One\n\nText.\n"


@pytest.mark.parametrize(
    ("extra", "warning"),
    [
        (
            "contact: editor@example.org\n",
            "front matter field 'contact' is not used by mailer or the layout, so it "
            "appears nowhere; did you mean 'contact_email'?",
        ),
        ("subjet: typo\n", "did you mean 'subject'?"),
        ("extra_notes: x\n", "did you mean 'extra_note'?"),  # the body asked for extra_note
        ("attachment: [a.pdf]\n", "did you mean 'attachments'?"),  # read since issue 13; its misspelling is not
    ],
)
def test_front_matter_nobody_reads_is_named_with_the_nearest_field(extra: str, warning: str) -> None:
    issue = render_issue(ISSUE.format(extra=extra), "issues/x.md", ListContext())
    [found] = issue.warnings
    assert found.startswith("issues/x.md: front matter field ") and warning in found, found


def test_fields_the_layout_or_the_body_reads_warn_nothing() -> None:
    extra = (
        "preheader: p\nissue: 第1期\ndate: 11月\nreviewer: 何\nphone: '010'\ncontact_email: a@example.org\n"
        "extra_note: read by the body\nimages: url\nslug: x\nlang: zh\n"
    )
    assert render_issue(ISSUE.format(extra=extra), "issues/x.md", ListContext()).warnings == ()


def test_render_and_send_print_the_warning(tmp_path: Path, store: Store, smtp_server: CaptureServer, run_cli) -> None:
    issue = tmp_path / "typo.md"
    issue.write_text(
        SAMPLE_ISSUE.read_text(encoding="utf-8").replace("contact_email:", "contact:", 1), encoding="utf-8"
    )
    rendered = run_cli("render", str(issue), "-o", "out")
    assert rendered.returncode == 0
    assert "warning: " in rendered.stderr and "did you mean 'contact_email'?" in rendered.stderr
    add_subscriber(store, "bulletin", "wang@example.org")
    sent = run_cli("send", str(issue), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))
    assert sent.returncode == 0 and "did you mean 'contact_email'?" in sent.stderr
