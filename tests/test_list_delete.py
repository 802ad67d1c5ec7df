"""`mailer lists delete NAME --force` keeps what other lists' people depend on: a campaign that also went to another
list stays whole (so the same send to the lists left does not mail them again), and nothing is deleted while a
campaign of the list is scheduled or being sent by a live process (the real CLI, the capture server, a real
SQLite file)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailer.capture import CaptureServer
from mailer.models import Subscriber
from mailer.store import Store
from mailer.store.leases import lease_owner
from tests.conftest import write_issue


@pytest.fixture
def two_lists(store: Store, run_cli: Any) -> Store:
    assert run_cli("lists", "create", "b", "--from", "B <b@example.org>", "--lang", "en").returncode == 0
    for name, people in (("bulletin", ("u1", "u2", "u3")), ("b", ("u1", "u4"))):
        rows = [Subscriber(email=f"{who}@example.org", name=who) for who in people]
        store.subscribers.upsert(store.lists.get(name).id, rows, "test")
    return store


def _send(run_cli: Any, smtp: CaptureServer, issue: Path, *lists: str, extra: tuple[str, ...] = ()) -> Any:
    args = [a for name in lists for a in ("--list", name)]
    return run_cli("send", str(issue), *args, "--yes", *extra, env={"MAILER_SMTP_PORT": str(smtp.port)})


def test_a_campaign_that_also_went_to_another_list_is_kept(
    two_lists: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    issue = write_issue(tmp_path, "first-issue", "第1期", "x")
    assert _send(run_cli, smtp_server, issue, "bulletin", "b").returncode == 0
    assert len(smtp_server.received) == 4
    deleted = run_cli("lists", "delete", "b", "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert "0 campaign(s); kept campaign(s) 1: also sent to other lists" in deleted.stdout
    assert two_lists.deliveries.counts(1) == {"sent": 4}  # the history of list b's people too
    again = _send(run_cli, smtp_server, issue, "bulletin")  # the same send to the list left: that campaign
    assert again.returncode == 0, again.stderr
    assert len(smtp_server.received) == 4  # list bulletin's people are not mailed again
    shown = run_cli("campaigns", "show", "1")
    assert shown.returncode == 0 and "bulletin" in shown.stdout


def test_a_scheduled_campaign_of_the_list_refuses_the_delete(
    two_lists: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    issue = write_issue(tmp_path, "first-issue", "第1期", "x")
    assert _send(run_cli, smtp_server, issue, "bulletin", "b", extra=("--at", "2099-01-01T09:00+08:00")).returncode == 0
    refused = run_cli("lists", "delete", "b", "--force")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: list 'b' has campaign 1 scheduled: cancel it first (mailer campaigns cancel 1), then delete the list"
    ]
    assert two_lists.lists.get("b") and two_lists.campaigns.get(1)


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def test_a_campaign_a_live_sender_holds_refuses_the_delete(
    two_lists: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any, live_process: Any
) -> None:
    issue = write_issue(tmp_path, "first-issue", "第1期", "x")
    assert _send(run_cli, smtp_server, issue, "b").returncode == 0
    # The campaign as a sender holds it in the middle of its run: state sending, the lease a live process's.
    with two_lists.transaction():
        two_lists.conn.execute(
            "UPDATE campaigns SET state = 'sending', finished = NULL, lease_owner = ?, lease_until = '2000-01-01' "
            "WHERE id = 1",
            (lease_owner(live_process.pid),),
        )
    refused = run_cli("lists", "delete", "b", "--force")
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: list 'b' cannot be deleted now: campaign 1 is being sent by process")
    assert two_lists.lists.get("b") and two_lists.deliveries.counts(1) == {"sent": 2}
