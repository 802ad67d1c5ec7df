"""What one campaign is, for `mailer campaigns show` (and, later, the console): its issue, audience (lists, segment),
state and times, counts per status and the approvals of its content for each list of the audience.

A service over the store that builds one value; must not print (the CLI renders it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailer.campaign import stored_audience
from mailer.store import Store


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
    for list_id, name in zip(audience.list_ids, audience.list_names, strict=True):
        needed[name] = store.lists.by_id(list_id).require_approval
        approvals += [
            ApprovalLine(a.list_name, a.by, a.at, a.note)
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
