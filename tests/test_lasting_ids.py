"""Ids named by signed links (lists, subscribers, campaigns) are never given out again after a delete: the links in
a deleted list's old mail open nothing and change nothing on the list made after it (the real CLI, the capture
server, `mailer serve` on 127.0.0.1, a real SQLite file)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.store import Store
from mailer.web import create_app
from tests.conftest import LiveWeb, send_issue, web_config, write_issue


@pytest.fixture
def live(config: Config, store: Store, smtp_server: CaptureServer) -> Iterator[str]:
    with LiveWeb(lambda url: create_app(web_config(config, smtp_server, url))) as web:
        yield web.url


def _links(smtp: CaptureServer, email: str) -> tuple[str, str, str]:
    [captured] = [c for c in smtp.received if email in c.rcpt_tos]
    text = BytesParser(policy=policy.default).parsebytes(captured.data).get_body(("plain",)).get_content()
    found = [re.search(pattern, text) for pattern in (r"/u/[a-z0-9]+", r"/p/[a-z0-9]+", r"/a/[^\s]+\?k=[a-z0-9]+")]
    assert all(found), text
    return tuple(m.group(0) for m in found if m)  # type: ignore[return-value]


def test_a_deleted_lists_links_act_on_nothing_made_after_it(
    live: str, store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    assert run_cli("lists", "create", "old", "--from", "O <o@example.org>", "--lang", "en").returncode == 0
    assert run_cli("subs", "add", "former@example.org", "--list", "old").returncode == 0
    send_issue(run_cli, write_issue(tmp_path, "first-issue", "hello", "x"), "old", smtp_server, live)
    unsubscribe, preferences, archived = _links(smtp_server, "former@example.org")
    old_list, old_campaign = store.lists.get("old").id, _last_campaign(store)

    deleted = run_cli("lists", "delete", "old", "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert run_cli("lists", "create", "board", "--from", "B <b@example.org>", "--lang", "en").returncode == 0
    assert run_cli("subs", "add", "victim@example.org", "--list", "board").returncode == 0
    send_issue(
        run_cli, write_issue(tmp_path, "first-issue", "board minutes", "Confidential."), "board", smtp_server, live
    )
    board = store.lists.get("board")

    with httpx.Client(base_url=live, follow_redirects=False, timeout=10) as http:
        opened = http.get(preferences)
        posted = http.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        page = http.get(archived.replace("/a/old/", "/a/board/"))
    assert opened.status_code in (400, 404) and "vi***" not in opened.text
    assert posted.status_code in (400, 404)
    assert page.status_code in (400, 404) and "Confidential" not in page.text
    [victim] = store.subscribers.of_list(board.id)
    assert victim.status.value == "active"
    assert board.id != old_list and _last_campaign(store) != old_campaign


def _last_campaign(store: Store) -> int:
    (found,) = store.conn.execute("SELECT MAX(id) FROM campaigns").fetchone()
    return int(found)
