"""What an operator does from the ops console, and what /ops/metrics tells an alerting system.

Each action is done and written to the audit (who, when, what) in one transaction, and returns the sentence the
console shows; a refused one (a campaign not in a state that allows it) raises MailerError and records nothing.
The metrics are Prometheus families built from the store's totals. Talks to the store only: no HTTP here."""

from __future__ import annotations

import getpass
import os
import socket
from collections import defaultdict
from collections.abc import Callable
from enum import StrEnum

from mailer.addresses import normalise_address
from mailer.campaign_report import progress
from mailer.errors import MailerError, UsageError
from mailer.metrics import Family
from mailer.models import CampaignState, DeliveryStatus, ReturnedKind
from mailer.store import Store
from mailer.subscriptions import unsubscribe_by_hand


class Action(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    RETRY_DEFERRED = "retry-deferred"
    REQUEUE_FAILED = "requeue-failed"
    LIFT_SUPPRESSION = "lift-suppression"
    UNSUBSCRIBE = "unsubscribe"


CAMPAIGN_ACTIONS = (Action.PAUSE, Action.RESUME, Action.CANCEL, Action.RETRY_DEFERRED, Action.REQUEUE_FAILED)
ADDRESS_ACTIONS = (Action.LIFT_SUPPRESSION, Action.UNSUBSCRIBE)


def cli_actor() -> str:
    """Who an action from the command line is audited as: the system user at this host ("cli (ann@mail1)")."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no name (a container): its number still says who
        user = str(os.getuid())
    return f"cli ({user}@{socket.gethostname()})"


def act_on_campaign(store: Store, actor: str, action: Action, campaign_id: int) -> str:
    """Pause, resume, cancel, retry the deferred now, or requeue the failed; audited with what it did."""
    campaign = store.campaigns.get(campaign_id)
    handlers: dict[Action, Callable[[], str]] = {
        Action.PAUSE: lambda: _pause(store, campaign.id),
        Action.RESUME: lambda: _resume(store, campaign.id),
        Action.CANCEL: lambda: _cancel(store, campaign.id),
        Action.RETRY_DEFERRED: lambda: _retry_deferred(store, campaign.id),
        Action.REQUEUE_FAILED: lambda: _requeue_failed(store, campaign.id),
    }
    if action not in handlers:
        raise UsageError(f"{action} is not an action on a campaign")
    with store.transaction():
        said = handlers[action]()
        store.audit.record(actor, str(action), campaign_id=campaign.id, detail=said)
    return said


def _pause(store: Store, campaign_id: int) -> str:
    store.campaigns.pause(campaign_id)
    return f"campaign {campaign_id} paused: its sender stops taking recipients within a second and waits"


def _resume(store: Store, campaign_id: int) -> str:
    store.campaigns.resume(campaign_id)
    return (
        f"campaign {campaign_id} resumed: a waiting sender goes on where it stopped (with none running: "
        f"mailer retry {campaign_id})"
    )


def _cancel(store: Store, campaign_id: int) -> str:
    skipped = store.campaigns.cancel(campaign_id, under_sender=True)
    if skipped is None:
        return f"campaign {campaign_id} cancelled: its sender stops and skips whoever it has not reached"
    return f"campaign {campaign_id} cancelled: {skipped} recipient(s) not reached are skipped"


def _retry_deferred(store: Store, campaign_id: int) -> str:
    if store.campaigns.state(campaign_id) is CampaignState.CANCELLED:
        raise MailerError(f"campaign {campaign_id} was cancelled: nothing to retry")
    n = store.deliveries.requeue_due(campaign_id, None)
    return (
        f"{n} deferred deliver(ies) of campaign {campaign_id} queued now (a running sender takes them; else: "
        f"mailer retry {campaign_id})"
    )


def _requeue_failed(store: Store, campaign_id: int) -> str:
    if store.campaigns.state(campaign_id) is CampaignState.CANCELLED:
        raise MailerError(f"campaign {campaign_id} was cancelled: nothing to requeue")
    requeued, left = store.deliveries.requeue_failed(campaign_id)
    return (
        f"{requeued} failed deliver(ies) of campaign {campaign_id} queued again, {left} left failed (unsubscribed "
        f"or suppressed); send them with: mailer retry {campaign_id}"
    )


def act_on_address(store: Store, actor: str, action: Action, email: str, list_name: str = "") -> str:
    """Lift an address's suppression, or unsubscribe it from one list (recorded as ops'); audited."""
    address = normalise_address(email)
    with store.transaction():
        if action is Action.LIFT_SUPPRESSION:
            store.suppressions.remove(address)
            said = f"suppression of {address} lifted: its bounced subscriptions are active again"
        elif action is Action.UNSUBSCRIBE:
            changed = unsubscribe_by_hand(store, list_name, address)
            said = (
                f"{address} unsubscribed from {list_name}"
                if changed
                else f"{address} was not subscribed to {list_name}"
            )
        else:
            raise UsageError(f"{action} is not an action on an address")
        store.audit.record(actor, str(action), email=address, detail=said)
    return said


# ---- /ops/metrics -------------------------------------------------------------------------------------------------

_REPLY_CLASSES = {2: "2xx", 4: "4xx", 5: "5xx"}


def metric_families(store: Store) -> list[Family]:
    """Deliveries by status (all and per campaign), each campaign's state and progress, its bounce ratio, the
    last SMTP reply of deliveries by class, returned mail by kind, suppressions by reason, subscribers and sign-ups."""
    campaigns = {c.id: c for c in store.campaigns.with_counts()}
    per_status: dict[str, int] = defaultdict(int)
    per_campaign: list[tuple[dict[str, str], float]] = []
    for campaign_id, status, n in store.reports.status_counts():
        per_status[status] += n
        per_campaign.append(({"campaign": str(campaign_id), "status": status}, n))
    Samples = list[tuple[dict[str, str], float]]
    progressed: Samples = []
    states: Samples = []
    bounce_ratio: Samples = []
    replies: dict[str, int] = defaultdict(int)
    for c in campaigns.values():
        label = {"campaign": str(c.id), "list": c.list, "issue": c.issue}
        progressed.append((label, progress(c.counts)))
        states.extend(({"campaign": str(c.id), "state": str(s)}, float(c.state == s)) for s in CampaignState)
        delivered = c.counts.get(DeliveryStatus.SENT, 0) + c.counts.get(DeliveryStatus.BOUNCED, 0)
        bounce_ratio.append((label, c.counts.get(DeliveryStatus.BOUNCED, 0) / delivered if delivered else 0.0))
        if c.state in (CampaignState.SENDING, CampaignState.PAUSED):  # the live ones; a finished one does not move
            for smtp_class, n in store.reports.reply_classes(c.id):
                replies[_REPLY_CLASSES.get(smtp_class, "other")] += n
    returned = dict(store.reports.kind_counts("returned_mail", "kind"))
    return [
        Family(
            "mailer_deliveries",
            "gauge",
            "Deliveries of all campaigns by status.",
            [({"status": s}, float(n)) for s, n in sorted(per_status.items())],
        ),
        Family("mailer_campaign_deliveries", "gauge", "Deliveries of each campaign by status.", per_campaign),
        Family(
            "mailer_campaign_progress_ratio",
            "gauge",
            "Share of a campaign's recipients whose delivery ended.",
            progressed,
        ),
        Family("mailer_campaign_state", "gauge", "1 for the state each campaign is in.", states),
        Family(
            "mailer_campaign_bounce_ratio",
            "gauge",
            "Bounced among delivered (sent or bounced) per campaign.",
            bounce_ratio,
        ),
        Family(
            "mailer_smtp_last_replies",
            "gauge",
            "Last SMTP reply of each delivery of campaigns being sent or paused, by class.",
            [({"class": k}, float(n)) for k, n in sorted(replies.items())],
        ),
        Family(
            "mailer_bounces_total",
            "counter",
            "Bounce reports read, hard and soft.",
            [({"kind": k}, float(returned.get(k, 0))) for k in (ReturnedKind.HARD, ReturnedKind.SOFT)],
        ),
        Family(
            "mailer_complaints_total",
            "counter",
            "Complaint reports read.",
            [({}, float(returned.get(ReturnedKind.COMPLAINT, 0)))],
        ),
        Family(
            "mailer_suppressions",
            "gauge",
            "Addresses never mailed again, by reason.",
            [({"reason": r}, float(n)) for r, n in store.reports.kind_counts("suppressions", "reason")],
        ),
        Family(
            "mailer_subscribers",
            "gauge",
            "Subscriptions by status (pending: signed up, not confirmed).",
            [({"status": s}, float(n)) for s, n in store.reports.subscriber_counts()],
        ),
        Family(
            "mailer_signup_requests_total",
            "counter",
            "Sign-up form requests accepted.",
            [({}, float(store.reports.signup_total()))],
        ),
    ]
