"""Who an audience reaches, inside SQLite: the active, unsuppressed subscribers of its lists who match its segment,
each address once (on the first list given), counted, sampled, snapshotted into a campaign in one streaming
`INSERT ... SELECT`, and topped up with who joined or started matching since; and the saved segments.

A segment expression never becomes SQL: it is a bound parameter that the registered function `mailer_segment`
parses (mailer.segments) and evaluates per row. Must not decide what is sent or when (campaigns.py, the services)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mailer.audience import Audience
from mailer.errors import MailerError, NotFoundError
from mailer.models import Subscriber
from mailer.segments import Expr, parse, record_of
from mailer.store.connection import Repository


@dataclass(frozen=True)
class Segment:
    """A saved segment: a name for an expression over one list's subscribers."""

    name: str
    list_name: str
    expr: str
    created: str


@lru_cache(maxsize=64)
def _parsed(expr: str) -> Expr:
    return parse(expr)


def _segment_matches(expr: str, email: str, name: str, attrs: str, subscribed: str) -> int:
    """The SQL function: 1 when the subscriber's fields match the expression (parsed once per statement, cached)."""
    try:
        fields = json.loads(attrs) if attrs else {}
    except ValueError:
        fields = {}
    record = record_of(email, name or "", fields if isinstance(fields, dict) else {}, subscribed or "")
    return int(_parsed(expr).matches(record))


def register_functions(conn: sqlite3.Connection) -> None:
    conn.create_function("mailer_segment", 5, _segment_matches, deterministic=True)


def _eligible(audience: Audience, campaign_id: int | None = None) -> tuple[str, list[Any]]:
    """The SELECT of everyone the audience reaches now: one row per address (the list given first wins), with the
    columns a delivery snapshots. With `campaign_id`, only addresses that campaign does not have yet (a top-up)."""
    ranks = ", ".join("(?, ?)" for _ in audience.list_ids)
    args: list[Any] = [v for rank, list_id in enumerate(audience.list_ids) for v in (list_id, rank)]
    condition = ""
    if audience.where:
        condition += " AND mailer_segment(?, s.email, s.name, s.attrs, substr(COALESCE(s.confirmed, s.created), 1, 10))"
        args.append(audience.where)
    if campaign_id is not None:
        condition += " AND s.email NOT IN (SELECT email FROM deliveries WHERE campaign_id = ?)"
        args.append(campaign_id)
    sql = (
        f"WITH audience_lists(list_id, rank) AS (VALUES {ranks}) "
        "SELECT id, list_id, email, name, attrs FROM ("
        "SELECT s.id, s.list_id, s.email, s.name, s.attrs, "
        "ROW_NUMBER() OVER (PARTITION BY s.email ORDER BY a.rank) AS nth "
        "FROM subscribers s JOIN audience_lists a ON a.list_id = s.list_id "
        "WHERE s.status = 'active' AND s.email NOT IN (SELECT email FROM suppressions)"
        f"{condition}) WHERE nth = 1"
    )
    return sql, args


class Audiences(Repository):
    def count(self, audience: Audience, campaign_id: int | None = None) -> int:
        """How many the audience reaches now (with `campaign_id`: how many of them that campaign lacks)."""
        sql, args = _eligible(audience, campaign_id)
        (n,) = self.conn.execute(f"SELECT COUNT(*) FROM ({sql})", args).fetchone()
        return int(n)

    def sample(self, audience: Audience, limit: int = 5) -> list[Subscriber]:
        """The first few it reaches (in subscriber order): the dry run's examples and the sample reader."""
        sql, args = _eligible(audience)
        rows = self.conn.execute(f"{sql} ORDER BY id LIMIT ?", [*args, limit]).fetchall()
        return [
            Subscriber(id=sid, list_id=lid, email=email, name=name, attrs=json.loads(attrs))
            for sid, lid, email, name, attrs in rows
        ]

    def snapshot(self, campaign_id: int, audience: Audience, *, top_up: bool = False) -> int:
        """Queue everyone the audience reaches now for the campaign (with `top_up`, only the addresses it does not
        have yet), in one statement that streams; returns how many were queued. The caller holds the transaction."""
        now = self.store.now()
        sql, args = _eligible(audience, campaign_id if top_up else None)
        cur = self.conn.execute(
            "INSERT INTO deliveries (campaign_id, subscriber_id, list_id, email, name, attrs, status, queued, updated) "
            f"SELECT ?, id, list_id, email, name, attrs, 'queued', ?, ? FROM ({sql}) ORDER BY id",
            [campaign_id, now, now, *args],
        )
        return int(cur.rowcount)

    def attribute_names(self, list_ids: tuple[int, ...]) -> list[str]:
        """Every attribute some subscriber of these lists has (what a segment may name)."""
        marks = ", ".join("?" for _ in list_ids)
        rows = self.conn.execute(
            f"SELECT DISTINCT j.key FROM subscribers s, json_each(s.attrs) j WHERE s.list_id IN ({marks})",
            list(list_ids),
        )
        return sorted(key for (key,) in rows)

    # ---- saved segments --------------------------------------------------------------------------------------

    def create_segment(self, name: str, list_id: int, expr: str) -> None:
        with self.store.transaction():
            if self.conn.execute("SELECT 1 FROM segments WHERE name = ?", (name,)).fetchone():
                raise MailerError(f"segment {name!r} already exists (see: mailer segments ls)")
            self.conn.execute(
                "INSERT INTO segments (name, list_id, expr, created) VALUES (?, ?, ?, ?)",
                (name, list_id, expr, self.store.now()),
            )

    def segments(self) -> list[Segment]:
        rows = self.conn.execute(
            "SELECT g.name, l.name, g.expr, g.created FROM segments g JOIN lists l ON l.id = g.list_id ORDER BY g.name"
        )
        return [Segment(*row) for row in rows]

    def segment(self, name: str) -> Segment:
        for found in self.segments():
            if found.name == name:
                return found
        known = ", ".join(s.name for s in self.segments())
        hint = (
            f" (segments: {known})" if known else " (create one with: mailer segments create NAME --list L --where ...)"
        )
        raise NotFoundError(f"no segment named {name!r}{hint}")
