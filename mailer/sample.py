"""The one sample message `mailer render` writes and `mailer preview` shows and measures: the issue rendered for a
list's first active subscriber (or, with no list, a sample Chinese list and reader) and built exactly as `mailer
send` builds each message, DKIM signature included.

Must not send, screenshot or check anything (preview.py and checks.py do)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailer.campaign import (
    PreparedIssue,
    audience_sample,
    build_template,
    dkim_signer,
    issue_file_reader,
    prepare_issue,
    read_issue_file,
    sample_subscriber,
    sender_for,
)
from mailer.clock import utcnow
from mailer.config import Config
from mailer.errors import MailerError
from mailer.models import MailingList, Recipient, Subscriber
from mailer.render import InlineImage, ListContext, render_issue
from mailer.store import Store
from mailer.targeting import refuse_blank, resolve_audience
from mailer.wording import NO_LIST_TITLE


@dataclass(frozen=True)
class SampleMessage:
    """One sample recipient's message: what the browser shows and what travels."""

    slug: str
    html: str  # personalised HTML as sent (embedded images still `cid:`)
    text: str
    data: bytes  # the whole message as it goes on the wire
    images: tuple[InlineImage, ...] = ()
    subject: str = ""
    notes: tuple[str, ...] = ()  # what mailer send would warn about (a front-matter field nothing reads, ...)

    @property
    def browser_html(self) -> str:
        """The HTML with `cid:` images as data: URIs, which a browser can show."""
        out = self.html
        for image in self.images:
            uri = f"data:{image.content_type};base64,{base64.b64encode(image.data).decode('ascii')}"
            out = out.replace(f"cid:{image.cid}", uri)
        return out


def no_list(lang: str) -> MailingList:
    """The list a rendering without --list is shown for: a neutral stand-in, named as such in List-Id too."""
    return MailingList(
        id=0,
        name="newsletter",
        title=NO_LIST_TITLE.get(lang, NO_LIST_TITLE["en"]),
        from_addr="Newsletter <newsletter@example.org>",
        reply_to="",
        lang=lang,
    )


def prepare_sample(
    issue_path: Path,
    config: Config,
    store: Store | None = None,
    list_name: str | None = None,
    segment: tuple[str | None, str | None] = (None, None),
) -> tuple[PreparedIssue, Subscriber]:
    """The issue rendered for a list and that list's first active subscriber (the first one `segment`, a
    `--where` expression or a saved segment's name, matches), or, with no list, for a sample Chinese list and
    reader (what `mailer render` and `mailer preview` show)."""
    refuse_blank(*segment)
    if list_name:
        if store is None:
            raise MailerError("--list needs a database; run: mailer init")
        prepared = prepare_issue(store, config, issue_path, list_name)
        where, saved = segment
        if where or saved:
            audience = resolve_audience(store, [list_name], where, saved)
            if not store.audiences.count(audience):
                raise MailerError(f"nobody on list {list_name} matches {audience.where}: there is no sample reader")
            return prepared, audience_sample(store, audience)
        return prepared, sample_subscriber(store, prepared.mailing_list.id)
    if any(segment):
        raise MailerError("--where and --segment choose a reader of a list: add --list NAME")
    source = read_issue_file(issue_path)
    issue = render_issue(
        source,
        origin=str(issue_path),
        list_ctx=ListContext(lang="zh"),
        read_file=issue_file_reader(issue_path),
        templates_dir=config.templates,
        theme=config.theme,
        attachment_limit=config.attachment_limit,
    )
    neutral = no_list(issue.lang)
    prepared = PreparedIssue(
        neutral, issue, sender_for(neutral, issue, config.base_url), issue_path, list(issue.warnings)
    )
    return prepared, Subscriber(email="reader@example.org", name="")


def build_sample(
    issue_path: Path,
    config: Config,
    store: Store | None = None,
    list_name: str | None = None,
    warn: Callable[[str], None] | None = None,
    segment: tuple[str | None, str | None] = (None, None),
) -> SampleMessage:
    """The issue rendered and personalised for the list's first active subscriber (or a sample reader), exactly as
    `mailer send` would build it: the same template, the same DKIM signer. `warn` hears what mailer send would
    warn about as soon as the issue is rendered (before a bad DKIM key, say, stops the build)."""
    prepared, sample = prepare_sample(issue_path, config, store, list_name, segment)
    for warning in prepared.warnings:
        if warn:
            warn(warning)
    secret = config.secret or secrets.token_bytes(16)  # a sample needs some key; links in it are samples
    template = build_template(prepared, 0, "preview", secret, signer=dkim_signer(config))
    recipient = Recipient(0, sample.id, sample.email, sample.name, sample.attrs)
    now = utcnow()
    message = template.build(recipient, now)
    html, text = template.personal_bodies(recipient, message.unsubscribe_url, now)
    return SampleMessage(
        prepared.issue.slug,
        html,
        text,
        message.data,
        prepared.issue.images,
        prepared.issue.subject,
        tuple(prepared.warnings),
    )


def render_to_dir(
    issue_path: Path,
    out_dir: Path,
    config: Config,
    store: Store | None = None,
    list_name: str | None = None,
    warn: Callable[[str], None] | None = None,
    segment: tuple[str | None, str | None] = (None, None),
) -> list[Path]:
    """Write <slug>.html, <slug>.txt and <slug>.eml (as for a sample recipient of the list) into out_dir;
    `warn` hears what mailer send would warn about."""
    sample = build_sample(issue_path, config, store, list_name, warn, segment)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{sample.slug}.html", out_dir / f"{sample.slug}.txt", out_dir / f"{sample.slug}.eml"]
    paths[0].write_text(sample.html, encoding="utf-8")
    paths[1].write_text(sample.text, encoding="utf-8")
    paths[2].write_bytes(sample.data)
    return paths
