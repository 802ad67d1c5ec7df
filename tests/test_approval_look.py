"""An approval covers what readers receive: the issue's content and its look (the layouts and the [theme] that
render it). A layout or footer changed after the approval stops the send in one line naming what changed; a new
look alone still resumes the campaign already made (the real CLI, the capture server, a real SQLite file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailer.capture import CaptureServer
from mailer.models import Subscriber
from mailer.render.layouts import builtin_layouts
from mailer.store import Store
from tests.test_send import assert_one_error_line, write_issue


@pytest.fixture
def approved(store: Store, tmp_path: Path, run_cli: Any) -> Path:
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email=f"u{i}@example.org") for i in (1, 2)], "test")
    assert run_cli("lists", "update", "bulletin", "--require-approval", "1").returncode == 0
    issue = write_issue(tmp_path / "issue.md", "第1期")
    assert run_cli("approve", str(issue), "--list", "bulletin", "--by", "李四").returncode == 0
    return issue


def _send(run_cli: Any, smtp: CaptureServer, issue: Path) -> Any:
    return run_cli("send", str(issue), "--list", "bulletin", "--yes", env={"MAILER_SMTP_PORT": str(smtp.port)})


def test_a_layout_changed_after_the_approval_stops_the_send(
    approved: Path, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    layout = dict(builtin_layouts())["issue.html.j2"].decode()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "issue.html.j2").write_text(layout.replace("</body>", "UNAPPROVED</body>"), "utf-8")

    refused = _send(run_cli, smtp_server, approved)

    assert refused.returncode == 1 and not smtp_server.received
    assert_one_error_line(refused.stderr)
    assert "it has 0; 李四 approved it as it looked before, changed since: the layout;" in refused.stderr
    assert run_cli("approve", str(approved), "--list", "bulletin", "--by", "李四").returncode == 0
    sent = _send(run_cli, smtp_server, approved)
    assert sent.returncode == 0, sent.stderr
    assert len(smtp_server.received) == 2 and all(b"UNAPPROVED" in c.data for c in smtp_server.received)


def test_a_footer_changed_after_the_approval_stops_the_send_and_shows_in_campaigns_show(
    approved: Path, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    (tmp_path / "mailer.toml").write_text('[theme]\nfooter = ["未经审核的页脚"]\n', "utf-8")

    refused = _send(run_cli, smtp_server, approved)

    assert refused.returncode == 1 and not smtp_server.received
    assert_one_error_line(refused.stderr)
    assert "changed since: the footer;" in refused.stderr
    assert run_cli("approve", str(approved), "--list", "bulletin", "--by", "王五").returncode == 0
    assert _send(run_cli, smtp_server, approved).returncode == 0
    (tmp_path / "mailer.toml").write_text('[theme]\nfooter = ["又改了"]\n', "utf-8")
    shown = run_cli("campaigns", "show", "1")
    assert "王五 at" in shown.stdout and "李四 at" in shown.stdout
    assert shown.stdout.count("not counted") == 1  # 李四's approval is of the look before


def test_a_new_look_alone_still_resumes_the_campaign_already_made(
    approved: Path, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    first = _send(run_cli, smtp_server, approved)
    assert first.returncode == 0, first.stderr
    (tmp_path / "mailer.toml").write_text('[theme]\nfooter = ["新的页脚"]\n', "utf-8")

    resumed = _send(run_cli, smtp_server, approved)

    assert resumed.returncode == 0, resumed.stderr  # the campaign's own snapshot is what it sends: approved
    assert len(smtp_server.received) == 2
    shown = run_cli("campaigns", "show", "1")
    assert "李四 at" in shown.stdout and "not counted" not in shown.stdout
