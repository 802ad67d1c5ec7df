"""What an SMTP reply means for a recipient and for the campaign: when a deferral is tried again (exponential
backoff with jitter) and when it expires or has been in doubt too often, which refusals say the mailbox does not
exist (suppress it), and when refusal after refusal with the same words is the relay refusing the campaign (pause
it).

Decides only: no clock of its own (times are passed in), no I/O, no sending; engine.py acts on the answers."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mailer.config import Config
from mailer.errors import SMTPUnavailable
from mailer.metrics import reply_group
from mailer.models import DeliveryStatus
from mailer.smtp import Reply, Stage


class CampaignPaused(SMTPUnavailable):
    """Recipient after recipient refused with the same reply: the relay refusing the campaign, not them."""


class RelayTakesNoAnswer(SMTPUnavailable):
    """Messages in a row were cut off after DATA: the relay may have each, and confirms none."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for 4xx replies, and when to give up (Postfix-like defaults)."""

    base: float = 60.0
    maximum: float = 4 * 3600.0
    expiry: float = 3 * 86400.0
    jitter: float = 0.2

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls(config.retry_base, config.retry_max, config.retry_expiry)

    def delay(self, attempt: int) -> float:
        raw = min(self.base * 2.0 ** max(0, attempt - 1), self.maximum)
        return raw * random.uniform(1 - self.jitter, 1 + self.jitter)

    def expired(self, first_attempt: datetime, now: datetime) -> bool:
        """A recipient deferred since `first_attempt` is given up on at `now`."""
        return (now - first_attempt).total_seconds() >= self.expiry

    def next_attempt(self, attempt: int, now: datetime) -> datetime:
        return now + timedelta(seconds=self.delay(attempt))

    def settle(
        self, reply: Reply, attempts: int, first_attempt: datetime | None, now: datetime, doubts: int = 0
    ) -> tuple[DeliveryStatus, str, datetime | None]:
        """What a deferral (attempt number `attempts`; `doubts` earlier attempts in doubt) ends as: deferred with
        its retry time, or failed, when it has been deferred past the expiry or cut off after DATA once too often
        (a relay that takes the message and then hangs or drops would get a copy on every retry)."""
        if in_doubt(reply) and doubts + 1 >= IN_DOUBT_CAP:
            return (
                DeliveryStatus.FAILED,
                f"in doubt: may have been delivered; not sent again after {IN_DOUBT_CAP} attempts cut off after "
                f"DATA; last: {reply.text}",
                None,
            )
        if first_attempt and self.expired(first_attempt, now):
            return DeliveryStatus.FAILED, f"expired after {attempts} attempts; last reply: {reply.text}", None
        return DeliveryStatus.DEFERRED, reply.text, self.next_attempt(attempts, now)


IN_DOUBT_CAP = 2  # attempts cut off after DATA (the relay may have each copy) before a recipient is failed


def in_doubt(reply: Reply) -> bool:
    """The connection was lost (or timed out) after DATA began: the relay may have the message."""
    return reply.connection_lost and reply.stage == Stage.DATA


def mailbox_unknown(reply: Reply) -> bool:
    """A refusal at RCPT saying the mailbox does not exist (5.1.1 bad mailbox, 5.1.2 bad domain, 5.1.3 bad address
    syntax, 5.1.6 moved, 5.1.10 null MX, 5.2.1 disabled): the address is suppressed, as the same status in a DSN
    does. Policy refusals (5.7.x: spam, relaying denied, DMARC) say nothing about the mailbox and never do."""
    return (
        reply.stage == Stage.RCPT
        and reply.code is not None
        and 500 <= reply.code < 600
        and bool(_MAILBOX_UNKNOWN.match(reply.text))
    )


_MAILBOX_UNKNOWN = re.compile(r"\s*5\.(?:1\.(?:1|2|3|6|10)|2\.1)(?!\.?\d)")


@dataclass
class RefusalRun:
    """The permanent refusals in a row with the same reply; `limit` of them pause the campaign: a relay that refuses
    the sender's domain, or blocks the campaign as spam, says so to every recipient alike, and marking them all
    failed would burn the list. Once paused, further equal refusals join the run (the sessions in flight finish),
    and the whole run goes back to the queue.

    Replies are compared as metrics.reply_group words them (addresses, IPs and per-message ids aside, as ops see
    them grouped). Only a first refusal in the campaign counts: a recipient that an earlier pause queued again is
    refused again if its mailbox really is gone, and counting it again would pause every resume on the same dead
    mailboxes. It is held instead: should the run pause, it goes back to the queue with the rest (its suppression
    taken back); once anything else (a message accepted, another reply) ends the run of refusals, its refusal
    stands. Only a message that left after the run began ends it: with several sessions, one accepted message that
    was in flight when the relay began refusing would otherwise let the first refusals stand (and suppress)."""

    limit: int  # 0: never pause
    key: str | None = None
    delivery_ids: list[int] = field(default_factory=list)  # the refusals counted in this run
    held: list[int] = field(default_factory=list)  # refused again after a pause: requeued only if this run pauses
    paused: CampaignPaused | None = None
    began: int = 0  # the order (Engine: its count of `sending` marks) of the message that began this run
    doubts: int = 0  # messages in a row cut off after DATA: `limit` of them stop the campaign (RelayTakesNoAnswer)

    @property
    def requeue(self) -> list[int]:
        """Who goes back to the queue when the campaign paused."""
        return [*self.held, *self.delivery_ids]

    def add(
        self, delivery_id: int, reply: Reply, again: bool = False, order: int | None = None
    ) -> SMTPUnavailable | None:
        """Count one reply (`again`: the recipient was queued again by a pause before; `order`: when its message
        left, in sending order); the CampaignPaused to stop with when this reply made the run long enough.

        A relay that takes every message and then hangs or drops the connection leaves each recipient in doubt
        (the relay may have it; it is sent again, with the same Message-ID, up to IN_DOUBT_CAP times): `limit` such
        messages in a row stop the campaign, so a broken relay gets at most that many copies more per run."""
        self.doubts = self.doubts + 1 if in_doubt(reply) else 0
        if self.limit and self.doubts == self.limit:
            return RelayTakesNoAnswer(
                f"{self.doubts} messages in a row were cut off after DATA without an answer (the last: "
                f"{reply.text}): the relay takes messages without confirming them, so the campaign stopped "
                f"(MAILER_PAUSE_AFTER={self.limit}); they are retried with the same Message-ID"
            )
        ends_run = self.paused is None and (order is None or order > self.began)
        if reply.status == DeliveryStatus.FAILED and reply.code is not None:
            this = reply_group(reply.code, reply.text)
            if this != self.key and ends_run:
                self.key, self.delivery_ids, self.held, self.began = this, [], [], order or 0
            if this == self.key:
                (self.held if again else self.delivery_ids).append(delivery_id)
        elif ends_run:
            self.key, self.delivery_ids, self.held = None, [], []
        if self.limit and len(self.delivery_ids) >= self.limit and self.key and self.paused is None:
            self.paused = CampaignPaused(
                f"{len(self.delivery_ids)} recipients in a row were refused with the same reply (the last: "
                f"{reply.code} {reply.text}): that is the relay refusing this campaign rather than them "
                f"(MAILER_PAUSE_AFTER={self.limit}), so it is paused and they are queued again"
            )
            return self.paused
        return None
