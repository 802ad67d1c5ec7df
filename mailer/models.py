"""The nouns of the domain as plain dataclasses and enums: lists, subscribers, campaigns, deliveries and the
statuses and reasons they move through.

No I/O and no behaviour beyond small derived properties; the store package maps them to and from SQLite."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class SubscriberStatus(StrEnum):
    ACTIVE = "active"
    PENDING = "pending"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SKIPPED = "skipped"
    BOUNCED = "bounced"


class CampaignState(StrEnum):
    """Where a campaign stands as a whole (its deliveries each have a DeliveryStatus).

    SENDING also covers a campaign whose sender was interrupted: it is resumed by running the send again. PAUSED is
    an operator's decision and holds until someone resumes it: a live sender waits, a new one is refused."""

    SCHEDULED = "scheduled"  # waiting for its start time (the recipient snapshot is taken when it starts)
    SENDING = "sending"
    PAUSED = "paused"
    FINISHED = "finished"  # nobody left queued or deferred
    CANCELLED = "cancelled"  # for good: what was left is `skipped`


class UnsubscribeSource(StrEnum):
    """Who or what unsubscribed someone (the `unsubscribes` table says it for each)."""

    PAGE = "page"  # the button on the unsubscribe page
    ONE_CLICK = "one-click"  # RFC 8058: the mail client's own button
    MAILTO = "mailto"  # a mail to the List-Unsubscribe address
    OPS = "ops"  # mailer unsubscribe EMAIL --list L
    REMOVED = "removed"  # mailer subs remove, for someone a delivery log still names
    COMPLAINT = "complaint"  # they marked an issue as spam
    PREFERENCES = "preferences"  # their own preferences page (a list left, or "unsubscribe from everything")


class SuppressionReason(StrEnum):
    """Why an address is never mailed again."""

    BOUNCED = "bounced"  # the mailbox does not exist (a DSN, or 5.1.x at RCPT)
    COMPLAINED = "complained"  # a complaint report: the person said no
    SOFT_BOUNCES = "soft-bounces"  # MAILER_SOFT_BOUNCE_LIMIT transient failures


class ReturnedKind(StrEnum):
    """What a piece of returned mail says about one address."""

    HARD = "hard"  # permanent failure (5.x.x): bounced, the address is suppressed
    SOFT = "soft"  # transient failure or delay (4.x.x): counted
    COMPLAINT = "complaint"  # the recipient marked it as spam: suppressed
    UNSUBSCRIBE = "unsubscribe"  # a mail to the List-Unsubscribe mailto address
    OTHER = "other"  # not a report we act on (auto-reply, success DSN, unknown)


class Lang(StrEnum):
    ZH = "zh"
    EN = "en"


@dataclass(frozen=True)
class MailingList:
    id: int
    name: str
    title: str
    from_addr: str
    reply_to: str
    lang: str
    created: str = ""
    require_approval: int = 0  # approvals of the exact content a send to this list needs (0: none)
    tz: str = ""  # the IANA timezone of its `--at` times ("": mailer.toml's, else UTC)
    public: bool = False  # offered on every preferences page, to people not on it (lists update --public on)
    archive: bool = False  # its past issues are a public web archive with a feed (lists update --archive on)


@dataclass(frozen=True)
class Theme:
    """The look set in mailer.toml's [theme] (or [lists.NAME.theme]) without touching Jinja.

    Colours are `#rgb` / `#rrggbb` (they go into CSS and into `bgcolor` attributes); the logo is an https URL, or a
    local file whose bytes travel in the message (`logo_data`)."""

    accent: str = "#163e6c"  # masthead, section headings, the table of contents; the pages' top rule and button
    highlight: str = "#c8922a"  # the rule under the masthead and the edge of each section heading
    logo: str = ""
    logo_data: bytes = field(default=b"", repr=False)
    logo_width: int = 160  # CSS pixels; Outlook sizes images by the width attribute
    footer: tuple[str, ...] = ()  # lines at the foot of every issue (editor, contact, a print line)


@dataclass(frozen=True)
class Subscriber:
    email: str
    name: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    status: SubscriberStatus = SubscriberStatus.ACTIVE
    id: int = 0
    list_id: int = 0


@dataclass(frozen=True)
class Recipient:
    """One delivery's view of a subscriber: everything message.py needs to personalise a message."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    list_id: int = 0  # the list they are on, whose unsubscribe link and List-Id they get (0: the campaign's)


@dataclass(frozen=True)
class Campaign:
    id: int
    list_id: int
    slug: str
    subject: str
    issue_path: str
    content_hash: str
    created: str
    is_test: bool = False
    finished: str | None = None
    cancelled: str | None = None
    state: CampaignState = CampaignState.SENDING
    audience: str = ""  # JSON: {"lists": [names, first given first], "where": expression, "segment": name}
    audience_key: str = ""  # what identifies the audience: the sorted list ids and the expression
    look_hash: str = ""  # the rendered output it was snapshotted with (layout, theme, list title)
    send_at: str | None = None  # a scheduled start (UTC stamp); set for every campaign that was scheduled
    archive_slug: str | None = None  # its web edition's name in the list's archive (a test send has none)


@dataclass
class SendSummary:
    campaign_id: int | None
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    test: bool = False
    elapsed: float = 0.0
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    stopped: str = ""  # why the campaign stopped before it was done (relay gone, sender refused, disk full, ...)
    stop_code: int = 0  # the exit status that goes with `stopped`
    scheduled: str = ""  # a scheduled send: when it will go, as the editor reads it
    sample: tuple[str, ...] = ()  # a dry run: a few of the addresses it would send to
    audience: str = ""  # who it is for, as a person reads it ("list news where 地区 = ...")

    @property
    def failed(self) -> int:
        return self.counts.get(DeliveryStatus.FAILED, 0)
