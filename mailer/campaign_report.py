"""One campaign summed up, the same for `mailer campaigns show ID` and the ops console (/ops/campaigns/ID): what it
is (issue, audience: lists and segment, state and times, approvals of its content: CampaignDetails) and how its
sending went (counts per status, deliveries per time bucket, the SMTP replies grouped as `reply_group` reads them,
the receiving domains with their outcomes and median attempts, what operators did: CampaignReport).

A service over the store (its reports repository reads tallies and indexes only) that builds values; renders
nothing. A new part of the summary is a new field here and a new key of CampaignReport.as_json()."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailer.approvals import covers
from mailer.campaign import stored_audience
from mailer.clock import parse_stamp
from mailer.metrics import reply_group
from mailer.models import DeliveryStatus
from mailer.store import AuditEntry, Store


@dataclass(frozen=True)
class ApprovalLine:
    list: str
    by: str
    at: str
    note: str


@dataclass(frozen=True)
class CampaignDetails:
    id: int
    issue: str
    subject: str
    issue_path: str
    state: str
    created: str
    send_at: str | None
    finished: str | None
    cancelled: str | None
    test: bool
    lists: list[str]
    where: str
    segment: str
    audience: str  # as a person reads it
    counts: dict[str, int]
    approvals_needed: dict[str, int] = field(default_factory=dict)  # list -> approvals it requires
    approvals: list[ApprovalLine] = field(default_factory=list)


def campaign_details(store: Store, ref: str) -> CampaignDetails:
    campaign = store.campaigns.get(ref)
    audience = stored_audience(store, campaign)
    needed: dict[str, int] = {}
    approvals: list[ApprovalLine] = []
    look = {"output": campaign.look_hash}  # what the campaign sends; an approval of another look does not cover it
    for list_id, name in zip(audience.list_ids, audience.list_names, strict=True):
        needed[name] = store.lists.by_id(list_id).require_approval
        approvals += [
            ApprovalLine(
                a.list_name,
                a.by,
                a.at,
                a.note if covers(a, look) else f"{a.note} (of another look: not counted)".strip(),
            )
            for a in store.approvals.of_content(list_id, campaign.content_hash)
        ]
    return CampaignDetails(
        id=campaign.id,
        issue=campaign.slug,
        subject=campaign.subject,
        issue_path=campaign.issue_path,
        state=str(campaign.state),
        created=campaign.created,
        send_at=campaign.send_at,
        finished=campaign.finished,
        cancelled=campaign.cancelled,
        test=campaign.is_test,
        lists=list(audience.list_names),
        where=audience.where,
        segment=audience.segment,
        audience=audience.describe(),
        counts=store.deliveries.counts(campaign.id),
        approvals_needed=needed,
        approvals=approvals,
    )


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
    """A campaign's details and how its sending went."""

    details: CampaignDetails
    total: int
    bucket_minutes: int  # the width of each time bucket: 1 unless the send spans more buckets than a chart shows
    timeline: list[tuple[str, dict[str, int]]]  # (bucket start, YYYY-MM-DDTHH:MM in UTC; counts per status)
    replies: list[ReplyGroup]
    domains: list[DomainRow]
    other_domains: int  # domains beyond the top ones shown
    audit: list[AuditEntry] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.details.id

    @property
    def subject(self) -> str:
        return self.details.subject

    @property
    def state(self) -> str:
        return self.details.state

    @property
    def counts(self) -> dict[str, int]:
        return self.details.counts

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
        """`campaigns show --json`'s object: the details' keys, then how the sending went."""
        return {
            **asdict(self.details),
            "total": self.total,
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
    """The summary of campaign `ref` (an id, or a slug naming one campaign): its details, `top` replies and
    domains, at most `buckets` time buckets."""
    details = campaign_details(store, str(ref))
    width, timeline = _timeline(store.reports.minute_counts(details.id), buckets)
    domains = _domains(store.reports.domain_counts(details.id))
    return CampaignReport(
        details=details,
        total=sum(details.counts.values()),
        bucket_minutes=width,
        timeline=timeline,
        replies=_replies(store.reports.reply_counts(details.id))[:top],
        domains=domains[:top],
        other_domains=max(0, len(domains) - top),
        audit=store.audit.of_campaign(details.id),
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
