"""What ops read at scale: a campaign's aggregates (per status, per minute, per reply, per domain and attempts),
keyset pages of its deliveries (filtered by status and domain, newest first), the whole log in one index-ordered
pass, one person's history across lists and campaigns, and the totals /ops/metrics exposes.

Read-only. The aggregates come from the tallies schema 13's triggers keep (a few rows per domain, minute and reply),
and every page of deliveries walks one index in id order (named with INDEXED BY where the planner could pick a worse
one), so the ops console and `mailer log` answer in well under a second at 1,000,000 deliveries."""

from __future__ import annotations

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
    # ---- one campaign's aggregates, from the tallies the triggers keep -------------------------------------------

    def minute_counts(self, campaign_id: int) -> list[tuple[str, str, int]]:
        """(minute, status, deliveries that became sent, deferred or failed in it)."""
        return self.conn.execute(
            "SELECT minute, status, n FROM delivery_minutes WHERE campaign_id = ? AND n > 0", (campaign_id,)
        ).fetchall()

    def reply_counts(self, campaign_id: int, limit: int = 5000) -> list[tuple[int | None, str, str, int]]:
        """(code, reply, status, n) of the deliveries deferred, failed, bounced or skipped, the most common first
        (at most `limit` distinct replies: past that the rest are variants ops will not read one by one)."""
        rows = self.conn.execute(
            "SELECT smtp_code, smtp_reply, status, n FROM delivery_replies WHERE campaign_id = ? AND n > 0 "
            "ORDER BY n DESC LIMIT ?",
            (campaign_id, limit),
        ).fetchall()
        return [(code or None, reply, status, n) for code, reply, status, n in rows]

    def domain_counts(self, campaign_id: int) -> list[tuple[str, str, int, int]]:
        """(domain, status, attempts, n): the per-domain table and its median attempts."""
        return self.conn.execute(
            "SELECT domain, status, attempts, n FROM delivery_tally WHERE campaign_id = ? AND n > 0", (campaign_id,)
        ).fetchall()

    def total(self, campaign_id: int) -> int:
        (n,) = self.conn.execute("SELECT SUM(n) FROM delivery_tally WHERE campaign_id = ?", (campaign_id,)).fetchone()
        return int(n or 0)

    def count(self, campaign_id: int, *, status: DeliveryStatus | None = None, domain: str | None = None) -> int:
        """How many deliveries a page's filters match."""
        where = "campaign_id = ?"
        args: list[Any] = [campaign_id]
        if status is not None:
            where += " AND status = ?"
            args.append(str(status))
        if domain is not None:
            where += " AND domain = ?"
            args.append(domain)
        (n,) = self.conn.execute(f"SELECT SUM(n) FROM delivery_tally WHERE {where}", args).fetchone()
        return int(n or 0)

    # ---- deliveries, a page at a time ---------------------------------------------------------------------------

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
        the previous page), filtered by status and domain. Each walks one index in id order from `before` and stops
        at `limit` rows: deliveries_domain for a domain (the status then checked on the row: a rare status in a
        large domain reads more rows, never more than the domain has), deliveries_status, or deliveries_campaign."""
        below = before if before is not None else 2**63 - 1
        args: list[Any] = [campaign_id]
        index, extra = "deliveries_campaign", ""
        if domain is not None:
            index, extra = "deliveries_domain", " AND domain = ?"
            args.append(domain)
            if status is not None:
                extra += " AND +status = ?"  # the unary + keeps the planner on deliveries_domain
                args.append(str(status))
        elif status is not None:
            index, extra = "deliveries_status", " AND status = ?"
            args.append(str(status))
        rows = self.conn.execute(
            f"SELECT {LOG_COLUMNS} FROM deliveries INDEXED BY {index} WHERE campaign_id = ?{extra} AND id < ? "
            "ORDER BY id DESC LIMIT ?",
            (*args, below, limit),
        ).fetchall()
        return [log_entry(row) for row in rows]

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
        return self._of(
            "SELECT s.id, l.name AS list, l.lang, s.name, s.status, s.source, s.created, s.confirmed, s.updated "
            "FROM subscribers s JOIN lists l ON l.id = s.list_id WHERE s.email = ? ORDER BY l.name",
            email,
        )

    def unsubscribes(self, email: str) -> list[dict[str, Any]]:
        return self._of(
            "SELECT l.name AS list, u.source, u.at FROM unsubscribes u "
            "JOIN subscribers s ON s.id = u.subscriber_id "
            "JOIN lists l ON l.id = s.list_id WHERE s.email = ? ORDER BY u.at",
            email,
        )

    def signups(self, email: str) -> list[dict[str, Any]]:
        return self._of(
            "SELECT l.name AS list, r.at, r.mailed FROM signup_requests r JOIN lists l ON l.id = r.list_id "
            "WHERE r.email = ? ORDER BY r.at",
            email,
        )

    def returned(self, email: str) -> list[dict[str, Any]]:
        return self._of(
            "SELECT kind, campaign_id, status, diagnostic, origin, at FROM returned_mail WHERE email = ? ORDER BY at",
            email,
        )

    def _of(self, sql: str, email: str) -> list[dict[str, Any]]:
        return list(self.store.db.query(sql, (email,)))

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
        """(campaign, status, n) of every campaign that is not a test."""
        return self.conn.execute(
            "SELECT campaign_id, status, SUM(n) FROM delivery_tally WHERE campaign_id IN "
            "(SELECT id FROM campaigns WHERE is_test = 0) GROUP BY campaign_id, status HAVING SUM(n) > 0"
        ).fetchall()

    def reply_classes(self, campaign_id: int) -> list[tuple[int, int]]:
        """(SMTP class 2/4/5, n) of the last reply of each delivery of one campaign: the replies of those not sent,
        and a 2xx for each one sent (the relay accepted it)."""
        rows = self.conn.execute(
            "SELECT smtp_code / 100, SUM(n) FROM delivery_replies WHERE campaign_id = ? AND n > 0 AND smtp_code > 0 "
            "GROUP BY smtp_code / 100",
            (campaign_id,),
        ).fetchall()
        classes = dict(rows)
        classes[2] = classes.get(2, 0) + self.count(campaign_id, status=DeliveryStatus.SENT)
        return [(k, v) for k, v in sorted(classes.items()) if v]

    def kind_counts(self, table: str, column: str) -> list[tuple[str, int]]:
        """(value, n) of one column of returned_mail or suppressions: bounces, complaints."""
        assert (table, column) in {("returned_mail", "kind"), ("suppressions", "reason")}
        return self.conn.execute(f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}").fetchall()

    def subscriber_counts(self) -> list[tuple[str, int]]:
        """(status, n) of every subscription. Counted per list first, in the order of subscribers_status: a
        million rows grouped by status alone go through a sort (260 ms), in index order they do not (80 ms)."""
        return self.conn.execute(
            "SELECT status, SUM(n) FROM (SELECT list_id, status, COUNT(*) AS n FROM subscribers "
            "GROUP BY list_id, status) GROUP BY status"
        ).fetchall()

    def signup_total(self) -> int:
        (n,) = self.conn.execute("SELECT COUNT(*) FROM signup_requests").fetchone()
        return int(n)
