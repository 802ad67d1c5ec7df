"""A synthetic campaign for the console's tests and bench/ops.py: N recipients on a mix of domains, with the
statuses, attempts, replies and times a real large send ends with, written straight into a real SQLite file
(executemany: a million rows in about a minute, where sending them would take hours)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mailer.clock import stamp
from mailer.store import Store

DOMAINS = ["qq.com", "163.com", "gmail.com", "126.com", "outlook.com", "sina.com", "example.org", "yahoo.com"]
# (status, share, attempts, code, reply template); the first matching share wins.
OUTCOMES = [
    ("sent", 0.90, 1, 250, "2.0.0 Ok: queued as {qid}"),
    ("deferred", 0.04, 2, 451, "4.7.1 Try again later from {ip}"),
    ("failed", 0.03, 1, 550, "5.1.1 <{email}>: Recipient address rejected: User unknown"),
    ("bounced", 0.01, 1, 250, "2.0.0 Ok: queued as {qid}"),
    ("queued", 0.02, 0, None, ""),
]


def fill_campaign(
    store: Store,
    list_name: str,
    n: int,
    *,
    seed: int = 1,
    start: datetime | None = None,
    pace: Callable[[int], float] = lambda i: 60.0,
) -> int:
    """A list `list_name` (created if missing) with n subscribers and one campaign to all of them, its deliveries
    already ended as OUTCOMES says, the i-th `pace(i)` milliseconds after the one before it (1000 a minute unless
    told otherwise) from `start`. Returns the campaign id."""
    rng = random.Random(seed)
    start = start or datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    now = stamp(start)
    conn = store.conn
    with store.transaction():
        row = conn.execute("SELECT id FROM lists WHERE name = ?", (list_name,)).fetchone()
        list_id = (
            row[0]
            if row
            else conn.execute(
                "INSERT INTO lists (name, title, from_addr, lang, created) VALUES (?, ?, 'News <news@example.org>', "
                "'en', ?)",
                (list_name, list_name, now),
            ).lastrowid
        )
        base = conn.execute("SELECT COALESCE(MAX(id), 0) FROM subscribers").fetchone()[0]
        conn.executemany(
            "INSERT INTO subscribers (list_id, email, name, status, source, created, updated) "
            "VALUES (?, ?, ?, 'active', 'import', ?, ?)",
            ((list_id, f"user{base + i}@{DOMAINS[i % len(DOMAINS)]}", f"User {i}", now, now) for i in range(n)),
        )
        campaign_id = conn.execute(
            "INSERT INTO campaigns (list_id, slug, subject, issue_path, content_hash, rendered, salt, created, state) "
            "VALUES (?, ?, ?, 'issue.md', ?, '{}', 'salt', ?, 'sending')",
            (list_id, f"issue-{seed}", f"Synthetic issue {seed}", f"hash-{seed}-{list_id}", now),
        ).lastrowid

        def rows():  # type: ignore[no-untyped-def]
            at_ms = 0.0
            for i in range(n):
                at_ms += pace(i)
                email = f"user{base + i}@{DOMAINS[i % len(DOMAINS)]}"
                status, attempts, code, reply = _outcome(rng.random())
                at = stamp(start + timedelta(milliseconds=at_ms))
                text = reply.format(qid=f"{rng.getrandbits(40):010X}", ip=f"10.0.{i % 250}.{i % 200}", email=email)
                yield (campaign_id, base + i + 1, email, f"User {i}", status, attempts, code, text, f"<{i}@x>", now, at)

        conn.executemany(
            "INSERT INTO deliveries (campaign_id, subscriber_id, email, name, status, attempts, smtp_code, "
            "smtp_reply, message_id, queued, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
    return int(campaign_id or 0)


def _outcome(pick: float) -> tuple[str, int, int | None, str]:
    acc = 0.0
    for status, share, attempts, code, reply in OUTCOMES:
        acc += share
        if pick < acc:
            return status, attempts, code, reply
    return OUTCOMES[-1][0], OUTCOMES[-1][2], OUTCOMES[-1][3], OUTCOMES[-1][4]
