"""Each recipient of a campaign and its history: queued -> sending -> sent | deferred | failed | skipped, later
bounced, every change an event with its time, attempt, SMTP code and reply; the queue streamed CHUNK at a time.

The engine's hot path lives here and stays hand-written SQL (see the package docstring). Must not decide an
outcome (the engine does) or hold a lease (leases.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mailer.models import DeliveryStatus, Recipient, SuppressionReason
from mailer.store.connection import Repository

CHUNK = 500  # recipients read per query: memory stays flat however long the list
Partition = tuple[int, int]  # (k, n): the deliveries whose id % n == k, one worker process's share
PAUSE_REQUEUE = "queued again: campaign paused"  # the reply of a delivery a pause put back (requeued_by_pause)


@dataclass(frozen=True)
class Outcome:
    """What one SMTP attempt ended as, ready to be recorded."""

    delivery_id: int
    status: DeliveryStatus
    smtp_code: int | None = None
    smtp_reply: str = ""
    message_id: str = ""
    suppress: bool = False  # the reply says the mailbox does not exist: never mail the address again
    attempt: int | None = None  # the attempt this run marked `sending`; None: never marked (the row must be queued)


@dataclass(frozen=True)
class LogEntry:
    """One row of `mailer log`: a recipient of a campaign and where their delivery stands."""

    id: int
    email: str
    name: str
    status: DeliveryStatus
    attempts: int
    smtp_code: int | None
    smtp_reply: str
    message_id: str
    queued: str
    updated: str
    next_attempt: str | None


LOG_COLUMNS = "id, email, name, status, attempts, smtp_code, smtp_reply, message_id, queued, updated, next_attempt"


class DeliveryHistory(Repository):
    """What a delivery's past says (its attempts and events), asked when an outcome is decided and a run sums up."""

    def attempt_info(self, delivery_id: int) -> tuple[int, str | None]:
        """(attempts so far, time of the first attempt) of one delivery."""
        attempts, first = self.conn.execute(
            "SELECT attempts, first_attempt FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        return int(attempts), first

    def requeued_by_pause(self, delivery_id: int) -> bool:
        """Whether a pause of the campaign has queued this delivery again before (asked only of a refusal)."""
        row = self.conn.execute(
            "SELECT 1 FROM delivery_events WHERE delivery_id = ? AND status = 'queued' AND smtp_reply LIKE ? LIMIT 1",
            (delivery_id, PAUSE_REQUEUE + "%"),
        ).fetchone()
        return row is not None

    def in_doubt_attempts(self, delivery_id: int) -> int:
        """How many attempts of a delivery were cut off after DATA began (deferred "in doubt")."""
        (count,) = self.conn.execute(
            "SELECT COUNT(*) FROM delivery_events WHERE delivery_id = ? AND status = 'deferred' "
            "AND smtp_reply LIKE '%(delivery in doubt)%'",
            (delivery_id,),
        ).fetchone()
        return int(count)

    def tried(self, campaign_id: int) -> tuple[int, int, str]:
        """(attempts so far, deferred after a lost connection or a 421, the reply of one of those) of a campaign:
        what tells a run in which the relay took nothing."""
        attempts, dropped, reply = self.conn.execute(
            "SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(status = 'deferred' AND (smtp_code IS NULL OR "
            "smtp_code = 421)), 0), MAX(CASE WHEN status = 'deferred' THEN smtp_reply END) FROM deliveries "
            "WHERE campaign_id = ?",
            (campaign_id,),
        ).fetchone()
        return int(attempts), int(dropped), reply or ""


class Deliveries(DeliveryHistory):
    # ---- the hot path: one session's queue, its `sending` marks and outcomes ------------------------------------

    def queued(self, campaign_id: int, part: Partition = (0, 1)) -> Iterator[Recipient]:
        """Queued recipients in id order, read CHUNK at a time; `part` (k, n) keeps those with id % n == k."""
        last = 0
        while True:
            rows = self.conn.execute(
                "SELECT id, subscriber_id, email, name, attrs, COALESCE(list_id, 0) FROM deliveries "
                f"WHERE campaign_id = ? AND status = 'queued' AND id > ? AND id % ? = ? ORDER BY id LIMIT {CHUNK}",
                (campaign_id, last, part[1], part[0]),
            ).fetchall()
            if not rows:
                return
            for delivery_id, subscriber_id, email, name, attrs, list_id in rows:
                yield Recipient(delivery_id, subscriber_id, email, name, json.loads(attrs), list_id)
                last = delivery_id

    def mark_sending(self, delivery_id: int, message_id: str) -> int | None:
        """queued -> sending, committed before the message leaves; returns the attempt number, or None when the
        delivery is no longer queued (recorded or cancelled since it was read): then it must not be sent."""
        now = self.store.now()
        with self.store.transaction():
            row = self.conn.execute(
                "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, message_id = ?, updated = ?, "
                "first_attempt = COALESCE(first_attempt, ?) WHERE id = ? AND status = 'queued' RETURNING attempts",
                (message_id, now, now, delivery_id),
            ).fetchone()
            if row is None:
                return None
            (attempt,) = row
            self.conn.execute(
                "INSERT INTO delivery_events (delivery_id, status, attempt, at) VALUES (?, 'sending', ?, ?)",
                (delivery_id, attempt, now),
            )
        return int(attempt)

    def record(self, outcome: Outcome, next_attempt: str | None = None) -> bool:
        """Write an outcome, only while the row is as this run left it: in `sending` with this run's attempt (or
        still queued, for an outcome of a row it never marked). False when it changed no row: another run took
        the recipient over meanwhile (requeued it after a takeover, sent or recorded it) and its word stands."""
        now = self.store.now()
        guard, args = "status = 'queued'", []
        if outcome.attempt is not None:
            guard, args = "status = 'sending' AND attempts = ?", [outcome.attempt]
        with self.store.transaction():
            changed = self.conn.execute(
                "UPDATE deliveries SET status = ?, smtp_code = ?, smtp_reply = ?, updated = ?, next_attempt = ?, "
                f"message_id = CASE WHEN ? = '' THEN message_id ELSE ? END WHERE id = ? AND {guard}",
                (
                    str(outcome.status),
                    outcome.smtp_code,
                    outcome.smtp_reply,
                    now,
                    next_attempt,
                    outcome.message_id,
                    outcome.message_id,
                    outcome.delivery_id,
                    *args,
                ),
            ).rowcount
            if not changed:
                return False
            self.conn.execute(
                "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_code, smtp_reply, at) "
                "SELECT id, ?, attempts, ?, ?, ? FROM deliveries WHERE id = ?",
                (str(outcome.status), outcome.smtp_code, outcome.smtp_reply, now, outcome.delivery_id),
            )
            if outcome.suppress:
                email, detail = self._refusal(outcome.delivery_id)
                self.store.suppressions.suppress_address(email, SuppressionReason.BOUNCED, detail)
        return True

    def _refusal(self, delivery_id: int) -> tuple[str, str]:
        """The address of a delivery refused at RCPT and the suppression detail that names the refusal (the same
        text both when suppressing and when a paused campaign takes the suppression back)."""
        email, campaign_id, code, reply = self.conn.execute(
            "SELECT email, campaign_id, smtp_code, smtp_reply FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        return email, f"campaign {campaign_id}: {code} {reply}"

    # ---- a campaign's queue as a whole -------------------------------------------------------------------------

    def counts(self, campaign_id: int) -> dict[str, int]:
        """Deliveries per status, from the tally the triggers keep in step (schema 13): a few rows, not a count of
        a million."""
        return {
            status: n
            for status, n in self.conn.execute(
                "SELECT status, SUM(n) FROM delivery_tally WHERE campaign_id = ? GROUP BY status HAVING SUM(n) > 0",
                (campaign_id,),
            )
        }

    def waiting(self, campaign_id: int) -> int:
        """Recipients of a campaign still to be sent (queued, deferred, or caught in `sending` by a crash)."""
        (count,) = self.conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status IN ('queued', 'sending', 'deferred')",
            (campaign_id,),
        ).fetchone()
        return int(count)

    def count_due(self, campaign_id: int, now: str) -> int:
        """Deliveries a run would send now: queued, left in `sending`, or deferred with their retry time come."""
        (count,) = self.conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND (status IN ('queued', 'sending') OR "
            "(status = 'deferred' AND (next_attempt IS NULL OR next_attempt <= ?)))",
            (campaign_id, now),
        ).fetchone()
        return int(count)

    def next_retry(self, campaign_id: int, part: Partition = (0, 1)) -> str | None:
        """The earliest next_attempt among the campaign's deferred deliveries (of one partition)."""
        earliest: str | None
        (earliest,) = self.conn.execute(
            "SELECT MIN(next_attempt) FROM deliveries WHERE campaign_id = ? AND status = 'deferred' AND id % ? = ?",
            (campaign_id, part[1], part[0]),
        ).fetchone()
        return earliest

    def requeue(self, campaign_id: int, statuses: Iterable[DeliveryStatus]) -> int:
        """Put deliveries in `statuses` back to queued (their Message-ID is derived, so it stays the same)."""
        names = [str(status) for status in statuses]
        marks = ",".join("?" for _ in names)
        with self.store.transaction():
            cur = self.conn.execute(
                f"UPDATE deliveries SET status = 'queued', updated = ? WHERE campaign_id = ? AND status IN ({marks})",
                (self.store.now(), campaign_id, *names),
            )
        return cur.rowcount

    def requeue_due(self, campaign_id: int, now: str | None = None, part: Partition = (0, 1)) -> int:
        """deferred -> queued for the deliveries whose retry time has come (all of them when `now` is None)."""
        sql = (
            "UPDATE deliveries SET status = 'queued', updated = ? WHERE campaign_id = ? AND status = 'deferred' "
            "AND id % ? = ?"
        )
        args: list[Any] = [self.store.now(), campaign_id, part[1], part[0]]
        if now is not None:
            sql += " AND (next_attempt IS NULL OR next_attempt <= ?)"
            args.append(now)
        with self.store.transaction():
            return self.conn.execute(sql, args).rowcount

    def requeue_failed(self, campaign_id: int) -> tuple[int, int]:
        """failed -> queued on purpose (`mailer retry --failed`), for people still active and not suppressed; the
        expiry clock starts again. Returns (requeued, left failed because the person is gone or suppressed)."""
        now = self.store.now()
        still_wanted = (
            " AND subscriber_id IN (SELECT s.id FROM subscribers s WHERE s.status = 'active' "
            "AND s.email NOT IN (SELECT email FROM suppressions))"
        )
        with self.store.transaction():
            self.conn.execute(
                f"UPDATE deliveries SET first_attempt = NULL WHERE campaign_id = ? AND status = 'failed'{still_wanted}",
                (campaign_id,),
            )
            requeued = self.move(
                campaign_id,
                DeliveryStatus.FAILED,
                DeliveryStatus.QUEUED,
                "requeued by mailer retry --failed",
                now,
                still_wanted,
            )
            left = self.counts(campaign_id).get(DeliveryStatus.FAILED, 0)
        return requeued, left

    def requeue_refused(self, delivery_ids: Iterable[int], counted: int) -> int:
        """Failed deliveries back to queued when their refusals turned out to be the relay's, not the recipients'
        (`counted` equal refusals in a row paused the campaign): a suppression their RCPT reply made is taken back
        with them."""
        reason = f"{PAUSE_REQUEUE} after {counted} equal refusals in a row"
        now = self.store.now()
        requeued = 0
        with self.store.transaction():
            for delivery_id in delivery_ids:
                email, detail = self._refusal(delivery_id)
                cur = self.conn.execute(
                    "UPDATE deliveries SET status = 'queued', smtp_reply = ?, updated = ?, next_attempt = NULL "
                    "WHERE id = ? AND status = 'failed'",
                    (reason, now, delivery_id),
                )
                if not cur.rowcount:
                    continue
                requeued += 1
                self.conn.execute(
                    "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_reply, at) "
                    "SELECT id, 'queued', attempts, ?, ? FROM deliveries WHERE id = ?",
                    (reason, now, delivery_id),
                )
                self.store.suppressions.take_back(email, detail)
        return requeued

    def move(
        self, campaign_id: int, old: DeliveryStatus, new: DeliveryStatus, reply: str, now: str, extra: str = ""
    ) -> int:
        """Every delivery of a campaign in status `old` (and matching `extra` SQL) to `new`, each with an event."""
        where = f"campaign_id = ? AND status = ?{extra}"
        self.conn.execute(
            "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_reply, at) "
            f"SELECT id, ?, attempts, ?, ? FROM deliveries WHERE {where}",
            (str(new), reply, now, campaign_id, str(old)),
        )
        return int(
            self.conn.execute(
                f"UPDATE deliveries SET status = ?, smtp_reply = ?, updated = ?, next_attempt = NULL WHERE {where}",
                (str(new), reply, now, campaign_id, str(old)),
            ).rowcount
        )

    # ---- reading the log ------------------------------------------------------------------------------------

    def log(self, campaign_id: int, status: DeliveryStatus | None = None) -> Iterator[LogEntry]:
        """Every recipient of a campaign (with one status) in id order, in one pass over an index that holds them in
        that order (schema 13's deliveries_campaign, or deliveries_status): memory stays flat and nothing is sorted.
        The chunked query this replaces re-sorted the whole campaign through a temporary B-tree for every 500 rows."""
        args: list[Any] = [campaign_id]
        index, extra = "deliveries_campaign", ""
        if status is not None:
            index, extra = "deliveries_status", " AND status = ?"
            args.append(str(status))
        cursor = self.conn.execute(
            f"SELECT {LOG_COLUMNS} FROM deliveries INDEXED BY {index} WHERE campaign_id = ?{extra} ORDER BY id", args
        )
        try:
            for row in cursor:
                yield log_entry(row)
        finally:
            cursor.close()


def log_entry(row: Sequence[Any]) -> LogEntry:
    """A row of LOG_COLUMNS as a LogEntry."""
    return LogEntry(*row[:3], DeliveryStatus(row[3]), *row[4:])  # type: ignore[call-arg]
