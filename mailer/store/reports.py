"""What ops read at scale: a campaign's aggregates (per status, per minute, per reply, per domain and attempts),
keyset pages of its deliveries (filtered by status and domain, newest first), the whole log in one index-ordered
pass, one person's history across lists and campaigns, and the totals /ops/metrics exposes.

Read-only. Every query walks an index of schema 10 (named with INDEXED BY where the planner could pick a worse one),
so the ops console and `mailer log` answer in well under a second at 1,000,000 deliveries: no query here sorts or
groups rows it reads from the table itself, and none reads more rows than it returns but the aggregates."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailer.models import DeliveryStatus
from mailer.store.connection import Repository
from mailer.store.deliveries import LOG_COLUMNS, LogEntry, log_entry

_TOP_ADDRESS = "\U0010ffff"  # above every character: `prefix <= email < prefix + this` is a prefix search


@dataclass(frozen=True)
class PersonDelivery:
    """One delivery of one person, with the campaign it belongs to and every event it went through."""

    entry: LogEntry
    campaign_id: int
    subject: str
    list_name: str
    events: list[dict[str, Any]]


class Reports(Repository):
    # ---- one campaign's aggregates ------------------------------------------------------------------------------

    def minute_counts(self, campaign_id: int) -> list[tuple[str, str, int]]:
        """(minute, status, deliveries last changed in it), from deliveries_minute in its order."""
        return [
            (minute, status, n)
            for minute, status, n in self.conn.execute(
                "SELECT substr(updated, 1, 16), status, COUNT(*) FROM deliveries INDEXED BY deliveries_minute "
                "WHERE campaign_id = ? GROUP BY substr(updated, 1, 16), status",
                (campaign_id,),
            )
        ]

    def reply_counts(
        self, campaign_id: int, statuses: Sequence[DeliveryStatus], limit: int = 5000
    ) -> list[tuple[int | None, str, str, int]]:
        """(code, reply, status, n) of the deliveries in `statuses`, the most common first (at most `limit` distinct
        replies: past that the rest are variants ops will not read one by one)."""
        marks = ",".join("?" for _ in statuses)
        return self.conn.execute(
            "SELECT smtp_code, smtp_reply, status, COUNT(*) AS n FROM deliveries INDEXED BY deliveries_status "
            f"WHERE campaign_id = ? AND status IN ({marks}) GROUP BY smtp_code, smtp_reply, status "
            "ORDER BY n DESC LIMIT ?",
            (campaign_id, *map(str, statuses), limit),
        ).fetchall()

    def domain_counts(self, campaign_id: int) -> list[tuple[str, str, int, int]]:
        """(domain, status, attempts, n): the per-domain table and its median attempts, from deliveries_domain."""
        return self.conn.execute(
            "SELECT domain, status, attempts, COUNT(*) FROM deliveries INDEXED BY deliveries_domain "
            "WHERE campaign_id = ? GROUP BY domain, status, attempts",
            (campaign_id,),
        ).fetchall()

    def total(self, campaign_id: int) -> int:
        (n,) = self.conn.execute(
            "SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_campaign WHERE campaign_id = ?", (campaign_id,)
        ).fetchone()
        return int(n)

    # ---- deliveries, a page at a time or all of them ------------------------------------------------------------

    def page(
        self,
        campaign_id: int,
        *,
        status: DeliveryStatus | None = None,
        domain: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[LogEntry]:
        """Up to `limit` deliveries, newest (highest id) first, with ids below `before` (the keyset: the last id of
        the previous page), filtered by status and domain. Each index run is read in id order and only `limit` rows
        of it: a domain filter merges the runs of deliveries_domain (one per status and attempts) by id."""
        below = before if before is not None else 2**63 - 1
        if domain is None:
            args: list[Any] = [campaign_id]
            index, extra = "deliveries_campaign", ""
            if status is not None:
                index, extra = "deliveries_status", " AND status = ?"
                args.append(str(status))
            rows = self.conn.execute(
                f"SELECT {LOG_COLUMNS} FROM deliveries INDEXED BY {index} WHERE campaign_id = ?{extra} AND id < ? "
                "ORDER BY id DESC LIMIT ?",
                (*args, below, limit),
            ).fetchall()
            return [log_entry(row) for row in rows]
        runs = [
            self.conn.execute(
                f"SELECT {LOG_COLUMNS} FROM deliveries INDEXED BY deliveries_domain WHERE campaign_id = ? "
                "AND domain = ? AND status = ? AND attempts = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (campaign_id, domain, run_status, attempts, below, limit),
            ).fetchall()
            for run_status, attempts in self._domain_runs(campaign_id, domain, status)
        ]
        merged = heapq.merge(*runs, key=lambda row: -row[0])
        return [log_entry(row) for _, row in zip(range(limit), merged, strict=False)]

    def _domain_runs(self, campaign_id: int, domain: str, status: DeliveryStatus | None) -> list[tuple[str, int]]:
        """The (status, attempts) pairs present for a domain, found by skipping through the index: one probe per
        pair, however many deliveries each holds."""
        runs: list[tuple[str, int]] = []
        after: tuple[str, int] = (str(status) if status else "", -1)
        while True:
            row = self.conn.execute(
                "SELECT status, attempts FROM deliveries INDEXED BY deliveries_domain WHERE campaign_id = ? "
                "AND domain = ? AND (status, attempts) > (?, ?) ORDER BY status, attempts LIMIT 1",
                (campaign_id, domain, *after),
            ).fetchone()
            if row is None or (status is not None and row[0] != str(status)):
                return runs
            runs.append((row[0], row[1]))
            after = (row[0], row[1])

    # ---- one person ---------------------------------------------------------------------------------------------

    def addresses(self, query: str, limit: int = 20) -> list[str]:
        """The address itself when anyone knows it, else those starting with `query` (lists and suppressions)."""
        query = query.strip().lower()
        if not query:
            return []
        args = (query, query + _TOP_ADDRESS, limit)
        rows = self.conn.execute(
            "SELECT email FROM (SELECT email FROM subscribers WHERE email >= ? AND email < ? "
            "UNION SELECT email FROM suppressions WHERE email >= ?1 AND email < ?2) ORDER BY email LIMIT ?3",
            args,
        ).fetchall()
        found = [email for (email,) in rows]
        return [query] if query in found else found

    def memberships(self, email: str) -> list[dict[str, Any]]:
        return list(
            self.store.db.query(
                "SELECT s.id, l.name AS list, l.lang, s.name, s.status, s.source, s.created, s.confirmed, s.updated "
                "FROM subscribers s JOIN lists l ON l.id = s.list_id WHERE s.email = ? ORDER BY l.name",
                (email,),
            )
        )

    def unsubscribes(self, email: str) -> list[dict[str, Any]]:
        return list(
            self.store.db.query(
                "SELECT l.name AS list, u.source, u.at FROM unsubscribes u "
                "JOIN subscribers s ON s.id = u.subscriber_id "
                "JOIN lists l ON l.id = s.list_id WHERE s.email = ? ORDER BY u.at",
                (email,),
            )
        )

    def signups(self, email: str) -> list[dict[str, Any]]:
        return list(
            self.store.db.query(
                "SELECT l.name AS list, r.at, r.mailed FROM signup_requests r JOIN lists l ON l.id = r.list_id "
                "WHERE r.email = ? ORDER BY r.at",
                (email,),
            )
        )

    def returned(self, email: str) -> list[dict[str, Any]]:
        return list(
            self.store.db.query(
                "SELECT kind, campaign_id, status, diagnostic, origin, at FROM returned_mail WHERE email = ? "
                "ORDER BY at",
                (email,),
            )
        )

    def deliveries_of(self, email: str, limit: int = 200) -> list[PersonDelivery]:
        """Every delivery to the address across campaigns (newest first), each with its events."""
        rows = self.conn.execute(
            f"SELECT {', '.join('d.' + c for c in LOG_COLUMNS.split(', '))}, c.id, c.subject, l.name "
            "FROM deliveries d INDEXED BY deliveries_email JOIN campaigns c ON c.id = d.campaign_id "
            "JOIN lists l ON l.id = c.list_id WHERE d.email = ? ORDER BY d.id DESC LIMIT ?",
            (email, limit),
        ).fetchall()
        found = []
        for row in rows:
            events = list(
                self.store.db.query(
                    "SELECT status, attempt, smtp_code, smtp_reply, at FROM delivery_events WHERE delivery_id = ? "
                    "ORDER BY id",
                    (row[0],),
                )
            )
            found.append(PersonDelivery(log_entry(row[:11]), row[11], row[12], row[13], events))
        return found

    # ---- totals for /ops/metrics ----------------------------------------------------------------------------

    def status_counts(self) -> list[tuple[int, str, int]]:
        """(campaign, status, n) of every campaign that is not a test, from deliveries_status in its order."""
        return self.conn.execute(
            "SELECT d.campaign_id, d.status, COUNT(*) FROM deliveries d INDEXED BY deliveries_status "
            "WHERE d.campaign_id IN (SELECT id FROM campaigns WHERE is_test = 0) GROUP BY d.campaign_id, d.status"
        ).fetchall()

    def reply_classes(self, campaign_id: int) -> list[tuple[int, int]]:
        """(SMTP class 2/4/5, n) of the last reply of each delivery of one campaign."""
        return self.conn.execute(
            "SELECT smtp_code / 100, COUNT(*) FROM deliveries INDEXED BY deliveries_campaign WHERE campaign_id = ? "
            "AND smtp_code IS NOT NULL GROUP BY smtp_code / 100",
            (campaign_id,),
        ).fetchall()

    def kind_counts(self, table: str, column: str) -> list[tuple[str, int]]:
        """(value, n) of one column of returned_mail, suppressions or subscribers: bounces, complaints, sign-ups."""
        assert (table, column) in {("returned_mail", "kind"), ("suppressions", "reason"), ("subscribers", "status")}
        return self.conn.execute(f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}").fetchall()

    def signup_total(self) -> int:
        (n,) = self.conn.execute("SELECT COUNT(*) FROM signup_requests").fetchone()
        return int(n)

    def count(self, campaign_id: int, *, status: DeliveryStatus | None = None, domain: str | None = None) -> int:
        """How many deliveries a page's filters match (a range of one index)."""
        if domain is None:
            if status is None:
                return self.total(campaign_id)
            return self.store.deliveries.counts(campaign_id).get(status, 0)
        extra, args = (
            ("", (campaign_id, domain)) if status is None else (" AND status = ?", (campaign_id, domain, str(status)))
        )
        (n,) = self.conn.execute(
            f"SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_domain WHERE campaign_id = ? AND domain = ?{extra}",
            args,
        ).fetchone()
        return int(n)
