"""Addresses never mailed again, on any list (a failing mailbox, a complaint), and returned mail: each report
about an address remembered once, so the same DSN read twice counts once; the delivery a report is about (by VERP
id or Message-ID), and a delivery that bounced.

Must not parse reports (bounces.py does) or decide what a report means (inbox.py does)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mailer.errors import NotFoundError
from mailer.models import DeliveryStatus, ReturnedKind, SubscriberStatus, SuppressionReason
from mailer.store.connection import Repository


@dataclass(frozen=True)
class Suppression:
    email: str
    reason: SuppressionReason
    detail: str
    created: str


@dataclass(frozen=True)
class DeliveryRef:
    """Which delivery a returned report is about (no id: a sign-up confirmation, mailed outside campaigns)."""

    id: int | None
    campaign_id: int
    subscriber_id: int
    email: str
    status: DeliveryStatus | None = None
    message_id: str = ""


def suppressed_status(reason: SuppressionReason | str) -> SubscriberStatus:
    """How a subscription of a suppressed address shows: unsubscribed after a complaint (the person said no),
    bounced otherwise (the mailbox fails)."""
    return SubscriberStatus.UNSUBSCRIBED if reason == SuppressionReason.COMPLAINED else SubscriberStatus.BOUNCED


class Suppressions(Repository):
    def add(self, email: str, reason: SuppressionReason, detail: str = "") -> None:
        """The suppression alone (the first reason stays); see suppress_address for the subscriptions."""
        with self.store.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO suppressions (email, reason, detail, created) VALUES (?, ?, ?, ?)",
                (email, str(reason), detail, self.store.now()),
            )

    def suppress_address(self, email: str, reason: SuppressionReason, detail: str = "") -> None:
        """Never mail this address again, on any list: suppressed, and its subscriptions marked so `subs ls` shows
        why (bounced for a failing mailbox, unsubscribed for a complaint: the person said no)."""
        with self.store.transaction():
            self.add(email, reason, detail)
            self.store.subscribers.mark_suppressed(email, suppressed_status(reason), self.store.now())

    def is_suppressed(self, email: str) -> bool:
        return self.conn.execute("SELECT 1 FROM suppressions WHERE email = ?", (email,)).fetchone() is not None

    def get(self, email: str) -> Suppression | None:
        for row in self.store.db.query(
            "SELECT email, reason, detail, created FROM suppressions WHERE email = ?", (email,)
        ):
            return _suppression(row)
        return None

    def all(self) -> list[Suppression]:
        return [
            _suppression(row)
            for row in self.store.db.query(
                "SELECT email, reason, detail, created FROM suppressions ORDER BY created, email"
            )
        ]

    def remove(self, email: str) -> None:
        """Lift a suppression (ops judged the address good again): its bounced subscriptions become active."""
        with self.store.transaction():
            if not self.conn.execute("DELETE FROM suppressions WHERE email = ?", (email,)).rowcount:
                raise NotFoundError(f"{email} is not suppressed (see: mailer suppressions ls)")
            self.store.subscribers.reactivate_bounced(email, self.store.now())

    def take_back(self, email: str, detail: str) -> None:
        """Undo the suppression one refusal made (a paused campaign's: the relay refused, not the mailbox)."""
        if self.conn.execute(
            "DELETE FROM suppressions WHERE email = ? AND reason = 'bounced' AND detail = ?", (email, detail)
        ).rowcount:
            self.store.subscribers.reactivate_bounced(email, self.store.now())


def _suppression(row: dict[str, str]) -> Suppression:
    return Suppression(row["email"], SuppressionReason(row["reason"]), row["detail"], row["created"])


_REF_COLUMNS = "id, campaign_id, subscriber_id, email, status, message_id"


class ReturnedMail(Repository):
    def record(
        self,
        report_key: str,
        email: str,
        kind: ReturnedKind,
        campaign_id: int | None,
        delivery_id: int | None,
        status: str,
        diagnostic: str,
        origin: str,
    ) -> bool:
        """Remember one report about one address; False when this report was read before (it counts once)."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO returned_mail (report_key, email, kind, campaign_id, delivery_id, status, "
            "diagnostic, origin, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (report_key, email, str(kind), campaign_id, delivery_id, status, diagnostic, origin, self.store.now()),
        )
        return cur.rowcount > 0

    def soft_bounce_count(self, email: str) -> int:
        """Distinct deliveries (or reports, when unmatched to one) that soft-bounced for this address."""
        (count,) = self.conn.execute(
            "SELECT COUNT(DISTINCT COALESCE(delivery_id, report_key)) FROM returned_mail "
            "WHERE email = ? AND kind = 'soft'",
            (email,),
        ).fetchone()
        return int(count)

    def delivery(self, delivery_id: int) -> DeliveryRef | None:
        return self._ref("id = ?", (delivery_id,))

    def by_message_id(self, message_id: str) -> DeliveryRef | None:
        """The delivery whose message went out with this Message-ID. Only an attempted delivery qualifies:
        mark_sending sets the Message-ID and counts the attempt in one transaction, so `attempts > 0` is what says a
        message with that ID was handed to the relay (sent, bounced, deferred or in doubt). A delivery still queued
        for its first attempt has no mail anywhere to bounce, and a blank ID names nothing."""
        if not message_id.strip():
            return None
        return self._ref("message_id = ? AND attempts > 0 ORDER BY id DESC LIMIT 1", (message_id,))

    def _ref(self, condition: str, args: tuple[Any, ...]) -> DeliveryRef | None:
        for row in self.store.db.query(f"SELECT {_REF_COLUMNS} FROM deliveries WHERE {condition}", args):
            return DeliveryRef(**{**row, "status": DeliveryStatus(row["status"])})
        return None

    def mark_bounced(self, delivery_id: int, code: str, text: str) -> None:
        """The delivery ends `bounced`, with the DSN's status and diagnostic recorded as an event."""
        now = self.store.now()
        # The log shows the receiver's reply from the DSN (e.g. 550), not the 250 our relay gave at send time.
        reply_code = re.search(r"\b([45]\d\d)\b", text)
        smtp_code = int(reply_code.group(1)) if reply_code else None
        reply = f"{code} {text}".strip()
        with self.store.transaction():
            self.conn.execute(
                "UPDATE deliveries SET status = 'bounced', smtp_code = ?, smtp_reply = ?, updated = ?, "
                "next_attempt = NULL WHERE id = ?",
                (smtp_code, reply, now, delivery_id),
            )
            self.conn.execute(
                "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_code, smtp_reply, at) "
                "SELECT id, 'bounced', attempts, ?, ?, ? FROM deliveries WHERE id = ?",
                (smtp_code, reply, now, delivery_id),
            )
