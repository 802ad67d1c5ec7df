"""What the engine reads and writes of one campaign, as an interface (DeliveryLog) and as it is on the store
(CampaignLog): the queue, the `sending` mark and the outcome of each message, the lease, whether a recipient is
still wanted, the retry times.

Must not decide anything: the engine does; the SQL is the store's (deliveries.py, leases.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from mailer.models import CampaignState, DeliveryStatus, Recipient
from mailer.store import Outcome, Partition, Store
from mailer.store.leases import LeaseLost


class DeliveryLog(Protocol):
    """The rows of one campaign the engine reads and writes (CampaignLog: the store's)."""

    def transaction(self) -> AbstractContextManager[Any]: ...

    def queued(self, part: Partition) -> Iterator[Recipient]: ...

    def is_mailable(self, subscriber_id: int) -> bool: ...

    def mark_sending(self, delivery_id: int, message_id: str) -> int | None: ...

    def record(self, outcome: Outcome, next_attempt: str | None = None) -> None: ...

    def attempt_info(self, delivery_id: int) -> tuple[int, str | None]: ...

    def standing(self) -> tuple[str | None, CampaignState]: ...

    def state(self) -> CampaignState: ...

    def lost(self) -> LeaseLost: ...

    def next_retry(self, part: Partition) -> str | None: ...

    def deferred(self) -> int: ...

    def requeue_due(self, now: str, part: Partition) -> int: ...

    def requeue_refused(self, delivery_ids: list[int], reason: str) -> int: ...


class CampaignLog:
    """A DeliveryLog on the store: the campaign's deliveries, its lease, its subscribers' status."""

    def __init__(self, store: Store, campaign_id: int) -> None:
        self.campaign_id = campaign_id
        self.store = store
        self.transaction = store.transaction
        # Per message: bound once, called directly.
        self.mark_sending = store.deliveries.mark_sending
        self.record = store.deliveries.record
        self.is_mailable = store.subscribers.is_mailable
        self.attempt_info = store.deliveries.attempt_info
        self.requeue_refused = store.deliveries.requeue_refused

    def queued(self, part: Partition) -> Iterator[Recipient]:
        return self.store.deliveries.queued(self.campaign_id, part)

    def standing(self) -> tuple[str | None, CampaignState]:
        return self.store.leases.standing(self.campaign_id)

    def state(self) -> CampaignState:
        return self.store.campaigns.state(self.campaign_id)

    def lost(self) -> LeaseLost:
        return self.store.leases.lost(self.campaign_id)

    def next_retry(self, part: Partition) -> str | None:
        return self.store.deliveries.next_retry(self.campaign_id, part)

    def deferred(self) -> int:
        return self.store.deliveries.counts(self.campaign_id).get(DeliveryStatus.DEFERRED, 0)

    def requeue_due(self, now: str, part: Partition) -> int:
        return self.store.deliveries.requeue_due(self.campaign_id, now, part)
