"""Review before sending: `mailer approve` records who approved the exact content of an issue for a list (the hash
of the issue and every file it embeds), and a send or a scheduled start to a list that requires N approvals stops,
in one line naming who has approved and what changed since, until N people approved the content as it is now.

A service over the store and campaign.py's content hash; must not send. An edit after an approval is a new
content hash: the approval stays recorded but no longer counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailer.audience import Audience
from mailer.campaign import prepare_issue
from mailer.config import Config
from mailer.errors import MailerError, UsageError
from mailer.message import clean_header_text
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
        mailing_list.id, prepared.identity, str(issue_path), prepared.files, by, clean_header_text(note)
    )
    have = len(store.approvals.of_content(mailing_list.id, prepared.identity))
    return ApprovalResult(mailing_list.name, by, new, have, mailing_list.require_approval)


def check_approvals(
    store: Store, audience: Audience, content_hash: str, issue_path: str, files: dict[str, str] | None = None
) -> None:
    """Stop (one MailerError) unless every list of the audience that requires approvals has enough of them for
    this exact content; the line names who approved it, who approved an earlier version and what changed since."""
    for list_id in audience.list_ids:
        mailing_list = store.lists.by_id(list_id)
        needed = mailing_list.require_approval
        if not needed:
            continue
        approvals = store.approvals.of_content(list_id, content_hash)
        if len({a.by for a in approvals}) >= needed:
            continue
        raise MailerError(
            f"list {mailing_list.name} requires {needed} approval(s) of the content being sent and it has "
            f"{len(approvals)}{_who(approvals)}{_earlier(store, list_id, issue_path, content_hash, files)}; nothing "
            f"was sent: approve it with 'mailer approve {issue_path} --list {mailing_list.name} --by NAME'"
        )


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
