"""Review before sending: `mailer approve` records who approved the exact content of an issue for a list (the hash
of the issue and every file it embeds) and what it looked like (the rendered mail's hash, the layouts and the theme
that made it: what readers receive), and a send or a scheduled start to a list that requires N approvals stops, in
one line naming who has approved and what changed since, until N people approved the content as it is now. A new
look does not make a new campaign (its identity is the content), but it does need approving again.

A service over the store and campaign.py's content hash; must not send. An edit after an approval is a new
content hash: the approval stays recorded but no longer counts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

from mailer.audience import Audience
from mailer.campaign import PreparedIssue, prepare_issue
from mailer.config import Config
from mailer.errors import MailerError, UsageError
from mailer.message import clean_header_text
from mailer.models import Campaign
from mailer.render.layouts import BUILTIN_TEMPLATES
from mailer.store import Approval, Store


@dataclass(frozen=True)
class ApprovalResult:
    list_name: str
    by: str
    new: bool
    have: int  # approvals of this content for the list, this one included
    needed: int  # what the list requires (0: none)


def approve(store: Store, config: Config, issue_path: Path, list_name: str, by: str, note: str = "") -> ApprovalResult:
    """Approve the issue as it is now (rendered and checked for the list, as a send would) for the list."""
    by = clean_header_text(by).strip()
    if not by:
        raise UsageError("--by names who approves, e.g. --by 李四")
    prepared = prepare_issue(store, config, issue_path, list_name)
    mailing_list = prepared.mailing_list
    new = store.approvals.add(
        mailing_list.id,
        prepared.identity,
        str(issue_path),
        prepared.files,
        by,
        clean_header_text(note),
        look_of(prepared, config),
    )
    have = len(store.approvals.of_content(mailing_list.id, prepared.identity))
    return ApprovalResult(mailing_list.name, by, new, have, mailing_list.require_approval)


def look_of(prepared: PreparedIssue, config: Config, campaign: Campaign | None = None) -> dict[str, str]:
    """What readers would receive: a campaign's own snapshot (its look_hash) when it exists, else the issue as it
    renders now: the rendered mail's hash ("output") and, to name what changed, each layout file and each [theme]
    field that made it."""
    if campaign is not None:
        return {"output": campaign.look_hash}
    look = {"output": prepared.issue.content_hash}
    folder = config.templates
    if folder is not None and folder.is_dir():
        for path in sorted(folder.rglob("*.j2")):
            look[f"layout {path.relative_to(folder)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        for entry in sorted(BUILTIN_TEMPLATES.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".j2"):
                look[f"layout {entry.name}"] = hashlib.sha256(entry.read_bytes()).hexdigest()
    theme = config.theme_for(prepared.mailing_list.name)
    for item in fields(theme):
        value = getattr(theme, item.name)
        look[f"theme {item.name}"] = hashlib.sha256(
            value if isinstance(value, bytes) else repr(value).encode("utf-8")
        ).hexdigest()
    return look


def check_prepared(
    store: Store, config: Config, audience: Audience, prepared: PreparedIssue, campaign: Campaign | None
) -> None:
    """check_approvals for a send or schedule of this issue: of `campaign`'s snapshot when it exists, else of the
    issue as it renders now."""
    look = look_of(prepared, config, campaign)
    check_approvals(store, audience, prepared.identity, str(prepared.issue_path), prepared.files, look)


def covers(approval: Approval, look: dict[str, str] | None) -> bool:
    """Whether an approval is of this look (one recorded before looks were covers the content only)."""
    return not look or not approval.look or approval.look.get("output") == look.get("output")


def check_approvals(
    store: Store,
    audience: Audience,
    content_hash: str,
    issue_path: str,
    files: dict[str, str] | None = None,
    look: dict[str, str] | None = None,
) -> None:
    """Stop (one MailerError) unless every list of the audience that requires approvals has enough of them for
    this exact content and look; the line names who approved it, who approved an earlier version and what changed
    since."""
    for list_id in audience.list_ids:
        mailing_list = store.lists.by_id(list_id)
        needed = mailing_list.require_approval
        if not needed:
            continue
        of_content = store.approvals.of_content(list_id, content_hash)
        approvals = [a for a in of_content if covers(a, look)]
        if len({a.by for a in approvals}) >= needed:
            continue
        other_looks = [a for a in of_content if not covers(a, look)]
        since = (
            _other_look(other_looks, look or {})
            if other_looks
            else _earlier(store, list_id, issue_path, content_hash, files)
        )
        raise MailerError(
            f"list {mailing_list.name} requires {needed} approval(s) of the content being sent and it has "
            f"{len(approvals)}{_who(approvals)}{since}; nothing "
            f"was sent: approve it with 'mailer approve {issue_path} --list {mailing_list.name} --by NAME'"
        )


def _other_look(approvals: list[Approval], look: dict[str, str]) -> str:
    names = ", ".join(sorted({a.by for a in approvals}))
    latest = max(approvals, key=lambda a: a.at)
    return f"; {names} approved it as it looked before, changed since: {', '.join(look_changes(latest.look, look))}"


def look_changes(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """What made the look differ, as a person names it: the layout, the footer, the theme (or the look, when the
    parts that made it cannot be compared: a scheduled campaign knows its rendered mail only)."""
    changed = {k for k in set(before) & set(now) if k != "output" and before[k] != now[k]}
    changed |= {k for k in set(before) ^ set(now) if k.startswith("layout ")}
    words = []
    if any(k.startswith("layout ") for k in changed):
        words.append("the layout")
    if "theme footer" in changed:
        words.append("the footer")
    if any(k.startswith("theme ") and k != "theme footer" for k in changed):
        words.append("the theme")
    return words or ["the look (layout, theme or list settings)"]


def _who(approvals: list[Approval]) -> str:
    return f" (by {', '.join(a.by for a in approvals)})" if approvals else ""


def _earlier(store: Store, list_id: int, issue_path: str, content_hash: str, files: dict[str, str] | None) -> str:
    earlier = store.approvals.earlier(list_id, issue_path, content_hash)
    if not earlier:
        return ""
    names = ", ".join(sorted({a.by for a in earlier}))
    text = f"; {names} approved an earlier version (the latest at {earlier[0].at})"
    changed = changed_files(earlier[0].files, files) if files is not None else []
    return text + (f", changed since: {', '.join(changed)}" if changed else ", changed since")


def changed_files(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The files of an issue that differ between two versions: edited, added (+) or no longer embedded (-)."""
    changed = [name for name in sorted(set(before) & set(now)) if before[name] != now[name]]
    changed += [f"+{name}" for name in sorted(set(now) - set(before))]
    changed += [f"-{name}" for name in sorted(set(before) - set(now))]
    return changed
