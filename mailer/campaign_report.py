"""One campaign summed up for ops, the same in the console (/ops/campaigns/ID) and the terminal (`mailer campaigns
show ID`): counts per status, deliveries per time bucket, the SMTP replies grouped as `reply_group` reads them, the
receiving domains with their outcomes and median attempts, and what operators did to it.

Reads the store (its reports repository, which walks indexes only) and returns values; renders nothing. A new part
of the summary (issue 13's approvals and audience) is a new field of CampaignReport and a new key of as_json()."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailer.clock import parse_stamp
from mailer.metrics import reply_group
from mailer.models import CampaignState, DeliveryStatus
from mailer.store import AuditEntry, Store

DONE = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.SKIPPED)
CHART_STATUSES = ("sent", "deferred", "failed")


@dataclass(frozen=True)
class ReplyGroup:
    """Every variant of one receiver's answer: `451 4.7.1 try again later`, how many, in which statuses."""

    reply: str
    count: int
    statuses: dict[str, int]


@dataclass(frozen=True)
class DomainRow:
    domain: str
    total: int
    counts: dict[str, int]
    median_attempts: float


@dataclass(frozen=True)
class CampaignReport:
    id: int
    issue: str
    subject: str
    lists: list[str]
    state: CampaignState
    created: str
    finished: str | None
    cancelled: str | None
    test: bool
    total: int
    counts: dict[str, int]
    bucket_minutes: int  # the width of each time bucket: 1 unless the send spans more buckets than a chart shows
    timeline: list[tuple[str, dict[str, int]]]  # (bucket start, YYYY-MM-DDTHH:MM in UTC; counts per status)
    replies: list[ReplyGroup]
    domains: list[DomainRow]
    other_domains: int  # domains beyond the top ones shown
    audit: list[AuditEntry] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.counts.get(status, 0) for status in DONE)

    @property
    def progress(self) -> float:
        return progress(self.counts)

    @property
    def send_rate(self) -> list[int]:
        """Messages sent per bucket, oldest first (the terminal's sparkline)."""
        return [counts.get(DeliveryStatus.SENT, 0) for _, counts in self.timeline]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "issue": self.issue,
            "subject": self.subject,
            "lists": self.lists,
            "state": str(self.state),
            "created": self.created,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "test": self.test,
            "total": self.total,
            "counts": self.counts,
            "progress": round(self.progress, 4),
            "bucket_minutes": self.bucket_minutes,
            "timeline": [{"at": at, **counts} for at, counts in self.timeline],
            "replies": [{"reply": g.reply, "count": g.count, "statuses": g.statuses} for g in self.replies],
            "domains": [
                {"domain": d.domain, "total": d.total, **d.counts, "median_attempts": d.median_attempts}
                for d in self.domains
            ],
            "other_domains": self.other_domains,
            "audit": [
                {"at": a.at, "actor": a.actor, "action": a.action, "email": a.email, "detail": a.detail}
                for a in self.audit
            ],
        }


def progress(counts: dict[str, int]) -> float:
    """Share of recipients whose delivery has ended (sent, failed, bounced or skipped); 1 for none at all."""
    total = sum(counts.values())
    return sum(counts.get(status, 0) for status in DONE) / total if total else 1.0


def campaign_report(store: Store, ref: str | int, *, top: int = 10, buckets: int = 60) -> CampaignReport:
    """The summary of campaign `ref` (an id, or a slug naming one campaign): `top` replies and domains, at most
    `buckets` time buckets."""
    campaign = store.campaigns.get(ref)
    counts = store.deliveries.counts(campaign.id)
    width, timeline = _timeline(store.reports.minute_counts(campaign.id), buckets)
    domains = _domains(store.reports.domain_counts(campaign.id))
    return CampaignReport(
        id=campaign.id,
        issue=campaign.slug,
        subject=campaign.subject,
        lists=[store.lists.by_id(campaign.list_id).name],
        state=campaign.state,
        created=campaign.created,
        finished=campaign.finished,
        cancelled=campaign.cancelled,
        test=campaign.is_test,
        total=sum(counts.values()),
        counts=counts,
        bucket_minutes=width,
        timeline=timeline,
        replies=_replies(store.reports.reply_counts(campaign.id))[:top],
        domains=domains[:top],
        other_domains=max(0, len(domains) - top),
        audit=store.audit.of_campaign(campaign.id),
    )


def _timeline(rows: list[tuple[str, str, int]], buckets: int) -> tuple[int, list[tuple[str, dict[str, int]]]]:
    """Minute counts as `buckets` at most, from the first minute to the last, empty ones included (a pause shows
    as a gap)."""
    if not rows:
        return 1, []
    per_minute: dict[datetime, dict[str, int]] = defaultdict(dict)
    for minute, status, n in rows:
        at = parse_stamp(minute + ":00.000Z")
        per_minute[at][status] = per_minute[at].get(status, 0) + n
    first, last = min(per_minute), max(per_minute)
    span = int((last - first).total_seconds() // 60) + 1
    width = max(1, math.ceil(span / buckets))
    series: list[tuple[str, dict[str, int]]] = []
    for i in range(math.ceil(span / width)):
        start = first + timedelta(minutes=i * width)
        counts: dict[str, int] = {}
        for m in range(width):
            for status, n in per_minute.get(start + timedelta(minutes=m), {}).items():
                counts[status] = counts.get(status, 0) + n
        series.append((start.strftime("%Y-%m-%dT%H:%M"), counts))
    return width, series


def _replies(rows: list[tuple[int | None, str, str, int]]) -> list[ReplyGroup]:
    groups: dict[str, dict[str, int]] = defaultdict(dict)
    for code, reply, status, n in rows:
        statuses = groups[reply_group(code, reply)]
        statuses[status] = statuses.get(status, 0) + n
    found = [ReplyGroup(reply, sum(s.values()), dict(s)) for reply, s in groups.items()]
    return sorted(found, key=lambda g: (-g.count, g.reply))


def _domains(rows: list[tuple[str, str, int, int]]) -> list[DomainRow]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    attempts: dict[str, dict[int, int]] = defaultdict(dict)
    for domain, status, tries, n in rows:
        counts[domain][status] = counts[domain].get(status, 0) + n
        if status != DeliveryStatus.QUEUED:  # not tried yet: its 0 says nothing of how the domain answers
            attempts[domain][tries] = attempts[domain].get(tries, 0) + n
    found = [
        DomainRow(domain, sum(c.values()), dict(c), _median(attempts.get(domain, {}))) for domain, c in counts.items()
    ]
    return sorted(found, key=lambda d: (-d.total, d.domain))


def _median(histogram: dict[int, int]) -> float:
    """The median of values given as {value: how many}."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    ordered = sorted(histogram.items())

    def nth(k: int) -> int:
        seen = 0
        for value, n in ordered:
            seen += n
            if k < seen:
                return value
        return ordered[-1][0]

    return (nth((total - 1) // 2) + nth(total // 2)) / 2
