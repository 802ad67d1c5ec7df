"""The nouns of the domain as plain dataclasses and enums.

No I/O and no behaviour beyond small derived properties; store.py maps them to and from SQLite."""

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

    @property
    def from_domain(self) -> str:
        return self.from_addr.rpartition("@")[2].rstrip(">").strip().lower() or "localhost"


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
    status: str = SubscriberStatus.ACTIVE
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

    @property
    def failed(self) -> int:
        return self.counts.get(DeliveryStatus.FAILED, 0)
