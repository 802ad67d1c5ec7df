"""A subscriber's own preferences: what their signed link opens (every list they are on or may join, their name,
their language), the changes they make there (recorded with their source; each one rotates their links), leaving
everything, and "send me my link" (the same answer for any address, rate limited like sign-ups).

Called by the web endpoints with a Store and values; no HTTP, no printing. The link's expiry and rotation:

* A preferences token carries when it was made. It works for PREFERENCES_TTL (a year) after that, so the link in
  an issue kept in a mail folder for months still opens the page, and a forwarded or leaked mail stops being a
  key to someone's subscriptions after a year at most. (The unsubscribe link never expires: RFC 8058.)
* Any change made with a link rotates: every preferences link of that address made before the change stops working
  (people.links_valid_from), and the page goes on with a new one. A link in a forwarded issue cannot undo what its
  owner just chose; the next issue carries a fresh link, and /p/ mails one at any time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from mailer.addresses import normalise_address
from mailer.clock import stamp
from mailer.errors import NotFoundError
from mailer.message import BuiltMessage, MessageSigner, clean_header_text
from mailer.models import Lang, MailingList, Subscriber, SubscriberStatus, Theme, UnsubscribeSource
from mailer.store import Store
from mailer.subscriptions import SignupLimits, SignupOutcome, TestLink, build_notice
from mailer.tokens import BadToken, TokenKind, make_token, read_token

PREFERENCES_TTL = timedelta(days=366)


class LinkExpired(BadToken):
    """A genuine preferences link that is too old, or was replaced when its owner changed something."""


@dataclass(frozen=True)
class ListChoice:
    """One list on the page: the person's subscription to it (None: not on it, and the list is public)."""

    mailing_list: MailingList
    subscription: Subscriber | None

    @property
    def subscribed(self) -> bool:
        return self.subscription is not None and self.subscription.status == SubscriberStatus.ACTIVE

    @property
    def status(self) -> SubscriberStatus | None:
        return self.subscription.status if self.subscription else None


@dataclass(frozen=True)
class Preferences:
    """Whom a preferences link speaks for and what their page shows."""

    subscriber: Subscriber  # the subscription the link was made for
    home: MailingList  # its list: the page's words when the person chose no language
    choices: list[ListChoice]
    name: str
    lang: str  # the person's choice, "" for each list's own
    suppressed: bool

    @property
    def email(self) -> str:
        return self.subscriber.email

    @property
    def page_lang(self) -> str:
        return self.lang or self.home.lang


def preferences_token(secret: bytes, subscriber: Subscriber, issued: int) -> str:
    return make_token(secret, TokenKind.PREFERENCES, subscriber.list_id, subscriber.id, issued)


def open_preferences(store: Store, secret: bytes, token: str, now: datetime) -> Preferences | TestLink:
    """What a preferences link opens. BadToken for anything forged, truncated or of another kind; LinkExpired for a
    genuine one past PREFERENCES_TTL or made before the person's last change."""
    parsed = read_token(secret, token, TokenKind.PREFERENCES)
    try:
        home = store.lists.by_id(parsed.a)
        subscriber = store.subscribers.by_id(parsed.b) if parsed.b else None
    except NotFoundError:
        raise BadToken("no such list or subscriber") from None
    if subscriber is None:
        return TestLink(home)  # a test send's link speaks for nobody
    if subscriber.list_id != home.id:
        raise BadToken("token for another list")
    person = store.people.get(subscriber.email)
    if parsed.c < person.links_valid_from or now - datetime.fromtimestamp(parsed.c, now.tzinfo) > PREFERENCES_TTL:
        raise LinkExpired("preferences link expired or replaced")
    choices = [
        ListChoice(mailing_list, subscription)
        for mailing_list, subscription in store.people.subscriptions(subscriber.email)
        if subscription is not None or mailing_list.public
    ]
    return Preferences(
        subscriber,
        home,
        choices,
        subscriber.name,
        person.lang,
        store.suppressions.is_suppressed(subscriber.email),
    )


def _rotate(store: Store, secret: bytes, prefs: Preferences, now: datetime) -> str:
    """Every earlier link of this address stops working; the new one (made at that moment) goes on."""
    # Past the previous rotation too: two changes within one second must still retire the link of the first.
    valid_from = max(int(now.timestamp()), store.people.get(prefs.email).links_valid_from) + 1
    store.people.rotate_links(prefs.email, valid_from)
    return preferences_token(secret, prefs.subscriber, valid_from)


def save_preferences(
    store: Store, secret: bytes, prefs: Preferences, wanted: set[str], name: str, lang: str, now: datetime
) -> str:
    """The page's form: the lists ticked (by name; lists not on the page are ignored), the name, the language.
    Leaving a list is an unsubscribe with source `preferences`; joining one is confirmed at once (the link proves
    the mailbox) and recorded in `joins`. Returns the new token (the old one no longer works)."""
    with store.transaction():
        for choice in prefs.choices:
            listed = choice.mailing_list.name in wanted
            if listed and not choice.subscribed and choice.status != SubscriberStatus.BOUNCED and not prefs.suppressed:
                store.people.join(choice.mailing_list.id, prefs.email, clean_header_text(name)[:200], "preferences")
            elif not listed and choice.subscribed and choice.subscription is not None:
                store.subscribers.unsubscribe(choice.subscription.id, UnsubscribeSource.PREFERENCES)
        store.people.rename(prefs.email, clean_header_text(name)[:200])
        store.people.set_lang(prefs.email, lang if lang in tuple(Lang) else "")
        return _rotate(store, secret, prefs, now)


def leave_everything(store: Store, secret: bytes, prefs: Preferences, now: datetime) -> str:
    """Unsubscribe from every list (pending requests too), each recorded with source `preferences`."""
    with store.transaction():
        for choice in prefs.choices:
            if choice.subscription is not None and choice.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
                store.subscribers.unsubscribe(choice.subscription.id, UnsubscribeSource.PREFERENCES)
        return _rotate(store, secret, prefs, now)


# ---- "send me my link" --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkRequest:
    """What the "send me my link" form decided; for a mail, the subscription whose list sends it."""

    outcome: SignupOutcome
    mailing_list: MailingList | None = None
    subscriber: Subscriber | None = None
    lang: str = ""


def _sender_subscription(store: Store, email: str) -> tuple[MailingList, Subscriber] | None:
    """The list that mails the link: one the address is active on, else any it is on, that has a From address."""
    found = [
        (mailing_list, sub)
        for mailing_list, sub in store.people.subscriptions(email)
        if sub is not None and sub.status != SubscriberStatus.BOUNCED and mailing_list.from_addr
    ]
    found.sort(key=lambda pair: pair[1].status != SubscriberStatus.ACTIVE)
    return found[0] if found else None


def request_link(
    store: Store, email: str, client: str, now: datetime, limits: SignupLimits | None = None
) -> LinkRequest:
    """Decide whether to mail an address its preferences link. The page says the same whatever is decided (an
    unknown, suppressed or rate-limited address gets no mail and no hint); only a client asking too often is told
    (429). AddressError for text that is not an address."""
    limits = limits or SignupLimits()
    address = normalise_address(email)
    with store.transaction():
        if store.people.link_counts(address, client, stamp(now - limits.client_window))[1] >= limits.client_max:
            return LinkRequest(SignupOutcome.LIMITED)
        mailed_today = store.people.link_counts(address, client, stamp(now - timedelta(days=1)))[0]
        last = store.people.last_link_mail(address)
        too_soon = last is not None and last > stamp(now - limits.address_interval)
        target = None if store.suppressions.is_suppressed(address) else _sender_subscription(store, address)
        mail = target is not None and not too_soon and mailed_today < limits.address_per_day
        store.people.log_link_request(address, client, mail, stamp(now))
    if not mail or target is None:
        return LinkRequest(SignupOutcome.QUIET)
    return LinkRequest(SignupOutcome.MAIL, target[0], target[1], store.people.get(address).lang)


def build_link_mail(
    request: LinkRequest,
    secret: bytes,
    base_url: str,
    now: datetime,
    signer: MessageSigner | None = None,
    *,
    templates_dir: Path | None = None,
    theme: Theme | None = None,
) -> BuiltMessage:
    """The mail with the person's preferences link, from the list chosen for it, in their language."""
    if request.mailing_list is None or request.subscriber is None:
        raise ValueError("no link mail for a request that decided not to mail")
    return build_notice(
        "link",
        request.mailing_list,
        request.subscriber,
        secret,
        base_url,
        now,
        signer,
        lang=request.lang,
        templates_dir=templates_dir,
        theme=theme,
    )
