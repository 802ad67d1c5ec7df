"""A campaign's content and identity: an issue file read and rendered for one list (every template error found
here, before any SMTP), the hash of the issue and every file it embeds (what identifies its content, and what an
approval approves), its sender, the message skeleton (for each list of the audience), the rendered issue kept as
JSON in the campaign's snapshot, and finding or creating the campaign of that content and audience.

Must not send, wait or hold a lease (send.py and engine.py do); talks to the store only to read the list and its
subscribers' attributes and to write the snapshot."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailer.attachments import Attachment, ReadFile
from mailer.audience import Audience
from mailer.checks import image_source_warnings
from mailer.clock import utcnow
from mailer.config import Config
from mailer.errors import MailerError, TemplateError, UsageError
from mailer.message import BuiltMessage, MessageSigner, MessageTemplate, Sender, parse_from, web_edition_url
from mailer.models import Campaign, MailingList, Recipient, Subscriber, SubscriberStatus
from mailer.render import InlineImage, ListContext, RenderedIssue, WebEdition, render_issue
from mailer.store import Store
from mailer.tokens import archive_key
from mailer.wording import READER

GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" past ~102 KB of HTML


@dataclass
class PreparedIssue:
    """An issue rendered for one list, with its message skeleton's inputs."""

    mailing_list: MailingList
    issue: RenderedIssue
    sender: Sender
    issue_path: Path
    warnings: list[str] = field(default_factory=list)
    # The issue rendered for a neutral reader (the archive's page), made only when a campaign is created.
    web_edition: Callable[[], str] | None = None
    # The issue's own content: the file and every file it embeds (name -> sha256), and their hash. The layout,
    # the theme and the list's settings are its look (issue.content_hash), not what identifies it.
    files: dict[str, str] = field(default_factory=dict)
    identity: str = ""


def content_identity(files: dict[str, str]) -> str:
    """The hash of an issue and everything it embeds, from each file's name and hash (the same in any order)."""
    digest = hashlib.sha256(b"mailer-issue-v1")
    for name in sorted(files):
        digest.update(f"\0{name}\0{files[name]}".encode())
    return digest.hexdigest()


def sender_for(mailing_list: MailingList, issue: RenderedIssue, base_url: str) -> Sender:
    from_value = issue.from_addr or mailing_list.from_addr
    if not from_value:
        raise UsageError(
            f"list {mailing_list.name!r} has no From address; set it with: "
            f"mailer lists create {mailing_list.name} --from \"Name <addr>\" (or 'from:' in the issue)"
        )
    name, addr = parse_from(from_value)
    return Sender(
        from_name=name,
        from_addr=addr,
        reply_to=mailing_list.reply_to,
        list_name=mailing_list.name,
        list_title=mailing_list.title or mailing_list.name,
        base_url=base_url,
    )


def prepare_issue(store: Store, config: Config, issue_path: Path, list_name: str) -> PreparedIssue:
    """Read and render the issue for the list: every template error surfaces here, before any SMTP."""
    mailing_list = store.lists.get(list_name)
    source = read_issue_file(issue_path)
    files = {Path(issue_path).name: hashlib.sha256(source.encode("utf-8")).hexdigest()}
    ctx = ListContext(name=mailing_list.name, title=mailing_list.title, lang=mailing_list.lang)

    def render(edition: WebEdition | None = None) -> RenderedIssue:
        return render_issue(
            source,
            origin=str(issue_path),
            list_ctx=ctx,
            read_file=issue_file_reader(issue_path, files),
            templates_dir=config.templates,
            theme=config.theme_for(mailing_list.name),
            attachment_limit=config.attachment_limit,
            edition=edition,
        )

    issue = render()
    warnings = [*issue.warnings, *check_attributes(store, mailing_list, issue, issue_path)]
    warnings += image_source_warnings(issue.html)  # a relative path goes out broken (preview's own check)
    sender = sender_for(mailing_list, issue, config.base_url)
    size = len(issue.html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        warnings.append(
            f"the HTML part is {size / 1024:.0f} KB: Gmail clips messages over 102 KB, hiding the rest "
            "and the unsubscribe link (see: mailer preview)"
        )
    if config.dkim_domain:
        from mailer.dkim import alignment

        if alignment(sender.mail_domain, config.dkim_domain) is None:
            warnings.append(
                f"From domain {sender.mail_domain} is not aligned with DKIM d={config.dkim_domain}: "
                "DMARC fails and Gmail or Yahoo may reject or spam-folder the issue (see: mailer doctor)"
            )
    edition = WebEdition(signup_url=f"{config.base_url.rstrip('/')}/s/{mailing_list.name}")
    return PreparedIssue(
        mailing_list, issue, sender, issue_path, warnings, lambda: render(edition).html, files, content_identity(files)
    )


def check_attributes(store: Store, mailing_list: MailingList, issue: RenderedIssue, issue_path: Path) -> list[str]:
    """`{{ subscriber.cty }}` renders (attributes are per person, any name goes), but if no active subscriber of
    the list has it, it is a misspelling: stop before the first message rather than mail everyone a blank."""
    if not issue.attr_keys:
        return []
    have = store.subscribers.attribute_counts(mailing_list.id, issue.attr_keys)
    active = store.subscribers.count_recipients(mailing_list.id)
    if not active:
        return []
    unknown = [key for key in issue.attr_keys if not have.get(key)]
    if unknown:
        known = store.subscribers.attribute_counts(mailing_list.id, None)
        hint = f" (its subscribers have: {', '.join(sorted(known))})" if known else " (its subscribers have none)"
        raise TemplateError(
            f"{issue_path}: {', '.join('{{ subscriber.' + k + ' }}' for k in unknown)} is not an attribute of any "
            f"subscriber of list {mailing_list.name!r}{hint}"
        )
    return [
        f"{active - have[key]} of {active} subscribers have no '{key}'; it will be blank for them"
        for key in issue.attr_keys
        if have[key] < active
    ]


def read_issue_file(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MailerError(f"issue file {path} does not exist") from None
    except UnicodeDecodeError:
        raise MailerError(f"issue file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise MailerError(f"cannot read issue file {path}: {exc.strerror}") from None


def issue_file_reader(issue_path: Path, files: dict[str, str] | None = None) -> ReadFile:
    """Reads files the issue names (its `images: cid` images, its attachments), relative to its folder and never
    outside it; `files` hears each name read and its sha256 (what the issue embeds is part of its content)."""
    folder = Path(issue_path).resolve().parent

    def read(name: str, limit: int | None = None) -> bytes:
        path = (folder / name).resolve()
        if not path.is_relative_to(folder):
            raise TemplateError(f"{issue_path}: {name} is outside the issue's folder {folder}")
        try:
            _refuse_special(issue_path, name, os.stat(path).st_mode)  # before opening: a FIFO's open would block
            # O_NONBLOCK: were it swapped for a FIFO since the stat, the open returns and fstat says what it is
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as opened:
                _refuse_special(issue_path, name, os.fstat(opened.fileno()).st_mode)
                data = opened.read() if limit is None else opened.read(max(limit, 0) + 1)
            if files is not None:
                files[name] = hashlib.sha256(data).hexdigest()
            return data
        except FileNotFoundError:
            raise TemplateError(f"{issue_path}: {name} does not exist (looked for {path})") from None
        except OSError as exc:
            raise TemplateError(f"{issue_path}: cannot read {name}: {exc.strerror}") from None

    return read


def _refuse_special(issue_path: Path, name: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket"
        raise TemplateError(f"{issue_path}: {name} is {kind}, not a file: only regular files can travel with an issue")


def issue_to_json(issue: RenderedIssue) -> dict[str, Any]:
    return {
        "slug": issue.slug,
        "subject": issue.subject,
        "preheader": issue.preheader,
        "lang": issue.lang,
        "html": issue.html,
        "text": issue.text,
        "meta": issue.meta,
        "attr_keys": list(issue.attr_keys),
        "content_hash": issue.content_hash,
        "from_addr": issue.from_addr,
        "sections": list(issue.sections),
        "images": [
            {
                "cid": i.cid,
                "filename": i.filename,
                "content_type": i.content_type,
                "data": base64.b64encode(i.data).decode("ascii"),
            }
            for i in issue.images
        ],
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "data": base64.b64encode(a.data).decode("ascii")}
            for a in issue.attachments
        ],
        "content_parts": [list(part) for part in issue.content_parts],
    }


def issue_from_json(data: dict[str, Any]) -> RenderedIssue:
    images = tuple(InlineImage(**{**i, "data": base64.b64decode(i["data"])}) for i in data.get("images", ()))
    attachments = tuple(Attachment(**{**a, "data": base64.b64decode(a["data"])}) for a in data.get("attachments", ()))
    return RenderedIssue(
        **{
            **data,
            "attr_keys": tuple(data["attr_keys"]),
            "sections": tuple(data["sections"]),
            "images": images,
            "attachments": attachments,
            "content_parts": tuple(tuple(part) for part in data.get("content_parts", ())),
        }
    )


def build_template(
    prepared: PreparedIssue,
    campaign_id: int,
    salt: str,
    secret: bytes,
    *,
    signer: MessageSigner | None = None,
    test: bool = False,
    lists: Sequence[MailingList] = (),
    archive_slug: str | None = None,
) -> MessageTemplate:
    """The campaign's skeleton; `lists` are the audience's other lists, whose people get their own List-Id and
    unsubscribe link."""
    if not secret:
        raise MailerError("no signing secret: run 'mailer init' (or set MAILER_SECRET)")
    # A test send links where the real send's web edition will most likely be: under the issue's own slug.
    slug = archive_slug or prepared.issue.slug
    view_url = web_edition_url(
        prepared.sender.base_url,
        prepared.mailing_list.name,
        slug,
        archive_key(secret, prepared.mailing_list.id, slug),
    )
    template = MessageTemplate(
        prepared.issue,
        prepared.sender,
        secret=secret,
        campaign_id=campaign_id,
        list_id=prepared.mailing_list.id,
        salt=salt,
        fallback_name=READER.get(prepared.issue.lang, ""),
        signer=signer,
        test=test,
        view_url=view_url,
    )
    for other in lists:
        other_view = web_edition_url(prepared.sender.base_url, other.name, slug, archive_key(secret, other.id, slug))
        template.add_list(other.id, other.name, other.title or other.name, other_view)
    return template


def dkim_signer(config: Config) -> MessageSigner | None:
    """The DKIM signer of MAILER_DKIM_* (key read and parsed once), or None when DKIM is not configured."""
    if not (config.dkim_key or config.dkim_selector or config.dkim_domain):
        return None
    from mailer.dkim import load_signer  # cryptography is imported only when DKIM is configured

    return load_signer(config)


def sample_subscriber(store: Store, list_id: int) -> Subscriber:
    for sub in store.subscribers.of_list(list_id, SubscriberStatus.ACTIVE):
        return sub
    return Subscriber(email="reader@example.org", name="")


def sample_message(
    store: Store,
    prepared: PreparedIssue,
    secret: bytes,
    signer: MessageSigner | None,
    audience: Audience | None = None,
) -> BuiltMessage:
    """The message of the audience's (default: the list's) first subscriber, built as the send would build it
    (every error surfaces)."""
    audience = audience or store.campaigns.audience(prepared.mailing_list.id)
    sample = audience_sample(store, audience)
    others = [store.lists.by_id(i) for i in audience.list_ids[1:]]
    template = build_template(prepared, 0, "sample", secret, signer=signer, lists=others)
    return template.build(Recipient(0, sample.id, sample.email, sample.name, sample.attrs, sample.list_id), utcnow())


def open_campaign(
    store: Store,
    prepared: PreparedIssue,
    secret: bytes,
    signer: MessageSigner | None = None,
    *,
    audience: Audience | None = None,
    test_email: str | None = None,
    send_at: str | None = None,
) -> tuple[Campaign, MessageTemplate]:
    """Find the campaign of this issue and audience (default: the whole list it was prepared for) to resume, or
    create it with its recipient snapshot (or, with `send_at`, scheduled: snapshotted when it starts); with
    `test_email`, a test campaign of one message to that address (as the audience's first subscriber)."""
    issue = prepared.issue
    audience = audience or store.campaigns.audience(prepared.mailing_list.id)

    def create(test_recipient: Subscriber | None = None) -> Campaign:
        return store.campaigns.create(
            audience,
            issue.slug,
            issue.subject,
            str(prepared.issue_path),
            prepared.identity,
            issue_to_json(issue),
            secrets.token_hex(8),
            look_hash=issue.content_hash,
            send_at=send_at,
            is_test=test_recipient is not None,
            test_recipient=test_recipient,
            web_edition=prepared.web_edition() if prepared.web_edition and test_recipient is None else None,
        )

    if test_email:
        sample = audience_sample(store, audience)
        campaign = create(Subscriber(id=0, email=test_email, name=sample.name, attrs=sample.attrs))
        _, salt = store.campaigns.rendered(campaign.id)
        return campaign, build_template(prepared, campaign.id, salt, secret, signer=signer, test=True)
    # An existing campaign is found without the write lock, which a stopped sender may hold (acquire_lease names it).
    campaign = store.campaigns.find(audience, prepared.identity, issue.content_hash) or create()
    return campaign, template_for_campaign(store, campaign, prepared.sender.base_url, secret, signer)


def audience_sample(store: Store, audience: Audience) -> Subscriber:
    """The first subscriber the audience reaches (the sample reader of a render, a test send or a dry run)."""
    for sub in store.audiences.sample(audience, 1):
        return sub
    return sample_subscriber(store, audience.list_ids[0])


def stored_audience(store: Store, campaign: Campaign) -> Audience:
    """A campaign's audience as it was given (lists first given first, the expression)."""
    from mailer.audience import audience_lists, audience_of

    names = audience_lists(campaign.audience)
    if not names:  # a test campaign: its list
        return Audience((campaign.list_id,), (store.lists.by_id(campaign.list_id).name,))
    return audience_of(campaign.audience, [store.lists.get(name).id for name in names])


def template_for_campaign(
    store: Store,
    campaign: Campaign,
    base_url: str,
    secret: bytes,
    signer: MessageSigner | None = None,
) -> MessageTemplate:
    """The message skeleton of an existing campaign, from the issue as it was snapshotted."""
    rendered, salt = store.campaigns.rendered(campaign.id)
    issue = issue_from_json(rendered)
    mailing_list = store.lists.by_id(campaign.list_id)
    prepared = PreparedIssue(mailing_list, issue, sender_for(mailing_list, issue, base_url), Path(campaign.issue_path))
    others = [] if campaign.is_test else [store.lists.by_id(i) for i in stored_audience(store, campaign).list_ids[1:]]
    return build_template(
        prepared,
        campaign.id,
        salt,
        secret,
        signer=signer,
        test=campaign.is_test,
        lists=others,
        archive_slug=campaign.archive_slug,
    )


def revivable(store: Store, campaign: Campaign | None) -> Campaign | None:
    """refuse_cancelled, but a campaign cancelled before it reached anyone (while scheduled) is returned instead:
    sending or scheduling the same content to the same audience again un-cancels it (`revive`)."""
    if campaign is not None and store.schedules.never_began(campaign.id):
        return campaign
    refuse_cancelled(campaign)
    return None


def revive(store: Store, campaign: Campaign | None, notes: list[str], send_at: str | None = None) -> Campaign | None:
    """The campaign again, scheduled (at `send_at`, else its old time) if it was cancelled before it reached anyone;
    says so in `notes`. Any other campaign is returned as it is."""
    if campaign is None or not store.schedules.revive(campaign.id, send_at):
        return campaign
    then = "it is scheduled again" if send_at else "it goes out after all"
    notes.append(f"campaign {campaign.id} was cancelled before it reached anyone; {then}")
    return store.campaigns.get(campaign.id)


def refuse_cancelled(campaign: Campaign | None) -> None:
    if campaign is not None and campaign.cancelled:
        raise MailerError(
            f"campaign {campaign.id} of this content and list was cancelled at {campaign.cancelled}; "
            "nothing was sent (changed content makes a new campaign)"
        )
