"""List and subscriber services: create lists; add, import, export and remove subscribers; unsubscribe by hand;
and the subscriber's own side: what a signed link speaks for (unsubscribe, confirm, a test send's link), the
sign-up decision with its limits, double opt-in, the confirmation mail.

Called by the CLI and the web endpoints; they take a Store and values, return results and raise MailerError.
No printing, no HTTP."""

from __future__ import annotations

import functools
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from mailer.addresses import CsvProblem, csv_delimiter, decode_csv, normalise_address, read_subscribers_csv
from mailer.clock import stamp
from mailer.errors import MailerError, NotFoundError, UsageError
from mailer.message import BuiltMessage, MessageSigner, MessageTemplate, Sender, clean_header_text, parse_from
from mailer.models import Lang, MailingList, Recipient, Subscriber, SubscriberStatus, Theme, UnsubscribeSource
from mailer.render import ListContext, RenderedIssue, render_issue
from mailer.spreadsheet import SpreadsheetWriter
from mailer.store import Store
from mailer.tokens import BadToken, TokenKind, make_token, read_token
from mailer.wording import CONFIRM_BODY, CONFIRM_META, LINK_BODY, LINK_META, READER

_BATCH = 1000


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    kept: int
    problems: list[CsvProblem]
    suppressed: int = 0  # new on the list but suppressed (bounced or complained): listed, never mailed
    encoding: str = "utf-8"
    delimiter: str = ","


def create_list(store: Store, name: str, title: str, from_addr: str, reply_to: str, lang: str) -> MailingList:
    if not name or not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise UsageError(f"list name {name!r}: use letters, digits, '-' and '_' only")
    if lang not in tuple(Lang):
        raise UsageError(f"--lang must be one of {', '.join(Lang)}, not {lang!r}")
    if from_addr:
        parse_from(from_addr)
    if reply_to:
        reply_to = normalise_address(reply_to)
    return store.lists.create(name, clean_header_text(title), clean_header_text(from_addr), reply_to, lang)


def update_list(
    store: Store,
    name: str,
    *,
    title: str | None = None,
    from_addr: str | None = None,
    reply_to: str | None = None,
    lang: str | None = None,
    require_approval: int | None = None,
    tz: str | None = None,
) -> MailingList:
    """Change what is given of a list's settings, each checked as `lists create` checks it."""
    from mailer.schedule import timezone

    changes: dict[str, object] = {}
    if title is not None:
        changes["title"] = clean_header_text(title)
    if from_addr is not None:
        if from_addr:
            parse_from(from_addr)
        changes["from_addr"] = clean_header_text(from_addr)
    if reply_to is not None:
        changes["reply_to"] = normalise_address(reply_to) if reply_to else ""
    if lang is not None:
        if lang not in tuple(Lang):
            raise UsageError(f"--lang must be one of {', '.join(Lang)}, not {lang!r}")
        changes["lang"] = lang
    if require_approval is not None:
        changes["require_approval"] = require_approval
    if tz is not None:
        if tz:
            timezone(tz)
        changes["tz"] = tz
    return store.lists.update(name, changes)


def add_subscriber(store: Store, list_name: str, email: str, name: str = "") -> tuple[Subscriber, bool]:
    """Add (or update the name of) one subscriber; True when newly added."""
    mailing_list = store.lists.get(list_name)
    address = normalise_address(email)
    counts = store.subscribers.upsert(
        mailing_list.id, [Subscriber(email=address, name=clean_header_text(name))], source="cli"
    )
    return store.subscribers.get(mailing_list.id, address), bool(counts.added)


def import_csv(store: Store, list_name: str, path: Path) -> ImportResult:
    """Import a subscriber CSV: good rows are added or updated in batches, bad rows come back by line number."""
    mailing_list = store.lists.get(list_name)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MailerError(f"{path} does not exist") from None
    except OSError as exc:
        raise MailerError(f"cannot read {path}: {exc.strerror}") from None
    decoded = decode_csv(data, str(path))
    delimiter = csv_delimiter(decoded.text)
    problems: list[CsvProblem] = []
    totals = [0, 0, 0, 0]
    batch: list[Subscriber] = []
    for item in read_subscribers_csv(decoded.text, str(path), delimiter):
        if isinstance(item, CsvProblem):
            problems.append(item)
            continue
        batch.append(item)
        if len(batch) >= _BATCH:
            totals = [
                a + b for a, b in zip(totals, store.subscribers.upsert(mailing_list.id, batch, "import"), strict=True)
            ]
            batch = []
    if batch:
        totals = [
            a + b for a, b in zip(totals, store.subscribers.upsert(mailing_list.id, batch, "import"), strict=True)
        ]
    return ImportResult(totals[0], totals[1], totals[2], problems, totals[3], decoded.encoding, delimiter)


def subscribers(store: Store, list_name: str, status: str | None = None) -> Iterator[Subscriber]:
    mailing_list = store.lists.get(list_name)
    if status and status not in tuple(SubscriberStatus):
        raise UsageError(f"--status must be one of {', '.join(SubscriberStatus)}, not {status!r}")
    return store.subscribers.of_list(mailing_list.id, SubscriberStatus(status) if status else None)


def export_csv(store: Store, list_name: str) -> Iterator[str]:
    """The list as CSV text, a chunk of rows at a time: email, name, status, then every attribute seen."""
    mailing_list = store.lists.get(list_name)
    keys: list[str] = []
    for sub in store.subscribers.of_list(mailing_list.id):
        keys.extend(k for k in sub.attrs if k not in keys)
    buffer = io.StringIO()
    writer = SpreadsheetWriter(buffer)
    writer.writerow(["email", "name", "status", *keys])
    for n, sub in enumerate(store.subscribers.of_list(mailing_list.id), start=1):
        writer.writerow([sub.email, sub.name, sub.status, *(sub.attrs.get(k, "") for k in keys)])
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def remove_subscriber(store: Store, list_name: str, email: str) -> None:
    mailing_list = store.lists.get(list_name)
    store.subscribers.remove(mailing_list.id, normalise_address(email))


def unsubscribe_by_hand(store: Store, list_name: str, email: str) -> bool:
    mailing_list = store.lists.get(list_name)
    sub = store.subscribers.get(mailing_list.id, normalise_address(email))
    return store.subscribers.unsubscribe(sub.id, UnsubscribeSource.OPS)


# ---- the subscriber's own side: links in mail, the sign-up form ---------------------------------------------------

CONFIRM_TTL = timedelta(days=7)  # a confirmation link older than this asks the person to sign up again


@dataclass(frozen=True)
class SignupLimits:
    """How often the sign-up form may mail one address, and how often one client may use it."""

    address_interval: timedelta = timedelta(minutes=10)  # at most one confirmation mail per address per interval
    address_per_day: int = 3
    client_window: timedelta = timedelta(hours=1)
    client_max: int = 10


class SignupOutcome(StrEnum):
    MAIL = "mail"  # send a confirmation mail
    QUIET = "quiet"  # say "check your inbox" but send nothing (already subscribed, bounced, address limit, bot)
    LIMITED = "limited"  # this client asked too often: 429


@dataclass(frozen=True)
class LinkTarget:
    """Whom a signed link in a mail speaks for."""

    mailing_list: MailingList
    subscriber: Subscriber


def mask_address(email: str) -> str:
    """Enough of an address for its owner to recognise it, not enough to harvest: zh***@example.org."""
    local, _, domain = email.rpartition("@")
    keep = 1 if len(local) <= 3 else 2
    return f"{local[:keep]}***@{domain}"


@dataclass(frozen=True)
class TestLink:
    """A genuine link from a test send (`mailer send --test`): it speaks for nobody on the list."""

    __test__ = False  # not a pytest test class, whatever its name

    mailing_list: MailingList


def link_target(store: Store, secret: bytes, token: str, kind: TokenKind) -> LinkTarget | TestLink:
    """Verify an unsubscribe or confirm token: whom it speaks for, or a TestLink for a test send's link. BadToken
    for anything forged, truncated, of another kind or list."""
    parsed = read_token(secret, token, kind)
    if parsed.b == 0:  # test sends use subscriber 0
        try:
            return TestLink(store.lists.by_id(parsed.a))
        except NotFoundError:
            raise BadToken("no such list") from None
    try:
        subscriber = store.subscribers.by_id(parsed.b)
        mailing_list = store.lists.by_id(parsed.a)
    except MailerError:
        raise BadToken("no such subscriber") from None
    if subscriber.list_id != mailing_list.id:
        raise BadToken("token for another list")
    return LinkTarget(mailing_list, subscriber)


def unsubscribe_with_token(
    store: Store,
    secret: bytes,
    token: str,
    source: UnsubscribeSource,
) -> tuple[LinkTarget | TestLink, bool]:
    """RFC 8058 one-click or the page's button: unsubscribe now (idempotent); True if it changed anything. A test
    send's link changes nothing."""
    target = link_target(store, secret, token, TokenKind.UNSUBSCRIBE)
    if isinstance(target, TestLink):
        return target, False
    return target, store.subscribers.unsubscribe(target.subscriber.id, source)


def _confirm_target(store: Store, secret: bytes, token: str) -> LinkTarget:
    """The subscriber a confirm link speaks for; a test send carries no confirm link, so one naming nobody is bad."""
    target = link_target(store, secret, token, TokenKind.CONFIRM)
    if isinstance(target, TestLink):
        raise BadToken("a confirm link names no subscriber")
    return target


@dataclass(frozen=True)
class Signup:
    """What the sign-up form decided: the outcome, and for a mail, who gets it and which request it confirms."""

    outcome: SignupOutcome
    subscriber: Subscriber | None = None
    request_id: int = 0


def request_signup(
    store: Store,
    list_name: str,
    email: str,
    name: str,
    client: str,
    now: datetime,
    limits: SignupLimits | None = None,
) -> Signup:
    """The sign-up form: record a pending subscriber and decide whether to mail a confirmation.

    Every answer the form shows is the same whether the address is new, pending, active or bounced, so the form
    cannot be used to learn who is subscribed; the limits stop it being used to mail-bomb an address. The name is
    kept with the request, not the subscriber: only the confirmation of that request (by whoever reads the
    mailbox) may put it into later mail."""
    limits = limits or SignupLimits()
    mailing_list = store.lists.get(list_name)
    address = normalise_address(email)
    if store.signups.counts(address, client, stamp(now - limits.client_window))[1] >= limits.client_max:
        return Signup(SignupOutcome.LIMITED)
    mailed_today = store.signups.counts(address, client, stamp(now - timedelta(days=1)))[0]
    last = store.signups.last_mailed(address)
    too_soon = last is not None and last > stamp(now - limits.address_interval)
    subscriber = None
    outcome = SignupOutcome.QUIET
    if not store.suppressions.is_suppressed(address):
        subscriber = store.subscribers.add_pending(mailing_list.id, address)
        can_join = subscriber.status in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED)
        if can_join and not too_soon and mailed_today < limits.address_per_day:
            outcome = SignupOutcome.MAIL
    request_id = store.signups.log(
        mailing_list.id, address, client, outcome == SignupOutcome.MAIL, stamp(now), clean_header_text(name)[:200]
    )
    return Signup(outcome, subscriber, request_id)


class ConfirmState(StrEnum):
    READY = "ready"  # pending: the page shows the button; POST activates
    CONFIRMED = "confirmed"  # active now (or already)
    EXPIRED = "expired"  # pending for longer than CONFIRM_TTL
    GONE = "gone"  # unsubscribed or bounced since: the link no longer applies


def requested_name(store: Store, secret: bytes, token: str) -> str:
    """The name the sign-up request behind a confirm link asked for ("" for links older than kept requests)."""
    target = _confirm_target(store, secret, token)
    request_id = read_token(secret, token, TokenKind.CONFIRM).c
    if not request_id:
        return ""
    return store.signups.requested_name(request_id, target.mailing_list.id, target.subscriber.email) or ""


def confirm_with_token(
    store: Store, secret: bytes, token: str, now: datetime, *, apply: bool, name: str | None = None
) -> tuple[LinkTarget, ConfirmState]:
    """GET (apply=False) only looks; POST (apply=True) activates. The link proves the person reads that mailbox;
    it works for CONFIRM_TTL after the latest confirmation mail, and not if they unsubscribed after it was sent.
    Confirming sets the name `name` (what the owner left in the confirm page's field), else the one the confirmed
    request asked for; a blank one keeps the name already known."""
    target = _confirm_target(store, secret, token)
    sub = target.subscriber
    if sub.status == SubscriberStatus.ACTIVE:
        return target, ConfirmState.CONFIRMED
    requested = store.signups.last_mailed(sub.email, target.mailing_list.id)
    if (
        sub.status not in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED)
        or requested is None
        or store.suppressions.is_suppressed(sub.email)
    ):
        return target, ConfirmState.GONE
    if sub.status == SubscriberStatus.UNSUBSCRIBED:
        left = store.subscribers.last_unsubscribe(sub.id)
        if left is not None and left.at >= requested:
            return target, ConfirmState.GONE
    if requested < stamp(now - CONFIRM_TTL):
        return target, ConfirmState.EXPIRED
    if apply:
        chosen = requested_name(store, secret, token) if name is None else name
        store.subscribers.confirm(sub.id, clean_header_text(chosen)[:200])
        return target, ConfirmState.CONFIRMED
    return target, ConfirmState.READY


# The mails mailer writes to one person (not issues): their words per language, rendered in the issue layout.
NOTICES = {"confirmation": (CONFIRM_BODY, CONFIRM_META), "link": (LINK_BODY, LINK_META)}


@functools.lru_cache(maxsize=32)
def _notice_issue(
    kind: str,
    name: str,
    title: str,
    lang: str,
    templates_dir: Path | None,
    theme: Theme | None,
) -> RenderedIssue:
    """Rendered once per list and kind (premailer costs ~15 ms); the links in it are per-recipient values."""
    bodies, metas = NOTICES[kind]
    words = lang if lang in bodies else "en"
    given = {key: value.format(title=title) for key, value in metas[words].items()}
    return render_issue(
        bodies[words],
        origin=f"{kind}.md",
        list_ctx=ListContext(name=name, title=title, lang=lang),
        given=given,
        templates_dir=templates_dir,
        theme=theme,
        view_link=False,  # a notice has no web edition
    )


def build_notice(
    kind: str,
    mailing_list: MailingList,
    subscriber: Subscriber,
    secret: bytes,
    base_url: str,
    now: datetime,
    signer: MessageSigner | None = None,
    attrs: dict[str, str] | None = None,
    *,
    lang: str = "",
    templates_dir: Path | None = None,
    theme: Theme | None = None,
) -> BuiltMessage:
    """A mail to one person from a list (a confirmation, their preferences link): same wire rules as an issue
    (List-Unsubscribe included: it means "not me"), in the issue layout of `templates_dir` (else the built-in one)
    and the list's theme, in `lang` (else the list's language)."""
    if not mailing_list.from_addr:
        raise MailerError(f"list {mailing_list.name!r} has no From address; cannot send it mail")
    from_name, from_addr = parse_from(mailing_list.from_addr)
    title = mailing_list.title or mailing_list.name
    lang = lang or mailing_list.lang
    issue = _notice_issue(kind, mailing_list.name, title, lang, templates_dir, theme)
    sender = Sender(from_name, from_addr, mailing_list.reply_to, mailing_list.name, title, base_url)
    # Campaign 0 marks a notice: a bounce of it (VERP delivery id = subscriber id) suppresses the address.
    template = MessageTemplate(
        issue,
        sender,
        secret=secret,
        campaign_id=0,
        list_id=mailing_list.id,
        salt=secrets.token_hex(8),
        fallback_name=READER.get(lang, "reader"),
        signer=signer,
    )
    # The name typed into a form is not in the mail: a stranger could otherwise put their words into a mail to
    # any address. It waits with the request (the link names it) for the issues that follow confirmation.
    recipient = Recipient(subscriber.id, subscriber.id, subscriber.email, "", attrs or {})
    return template.build(recipient, now)


def build_confirmation(
    mailing_list: MailingList,
    subscriber: Subscriber,
    secret: bytes,
    base_url: str,
    now: datetime,
    signer: MessageSigner | None = None,
    request_id: int = 0,
    *,
    templates_dir: Path | None = None,
    theme: Theme | None = None,
) -> BuiltMessage:
    """The double opt-in mail, with its confirm link and (as every mail) the person's preferences link."""
    token = make_token(secret, TokenKind.CONFIRM, mailing_list.id, subscriber.id, request_id)
    confirm_url = f"{base_url.rstrip('/')}/c/{token}"
    return build_notice(
        "confirmation",
        mailing_list,
        subscriber,
        secret,
        base_url,
        now,
        signer,
        {"confirm_url": confirm_url},
        templates_dir=templates_dir,
        theme=theme,
    )
