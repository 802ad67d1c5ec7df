"""`mailer bounces scan`: read returned mail from an mbox, a Maildir, a folder of .eml files or one .eml file, match
each report to its delivery (VERP address, else the original Message-ID) and record it once.

A service: it reads files and writes through the store, and returns rows for the CLI to print. It never deletes
mail."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailer.bounces import Finding, ReturnedMail, parse_returned
from mailer.errors import MailerError
from mailer.models import ReturnedKind, SuppressionReason, UnsubscribeSource
from mailer.store import DeliveryRef, Store
from mailer.tokens import BadToken, TokenKind, read_token


@dataclass(frozen=True)
class ScanRow:
    origin: str  # where the report was read: file, mbox#n or Maildir key
    kind: str
    email: str
    campaign: int | None
    status: str
    result: str  # what was done, or why nothing was

    @property
    def matched(self) -> bool:
        return not self.result.startswith(("unmatched", "ignored"))


def read_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """(origin, raw bytes) for every message at `path`: Maildir, folder of .eml files, mbox or one .eml file."""
    path = Path(path)
    if not path.exists():
        raise MailerError(f"{path} does not exist")
    if path.is_dir():
        if all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            box = mailbox.Maildir(str(path), factory=None, create=False)
            for key in sorted(box.keys()):
                yield f"{path.name}/{key}", box.get_bytes(key)
            return
        files = sorted(p for p in path.rglob("*.eml") if p.is_file())
        if not files:
            raise MailerError(f"{path} is neither a Maildir nor a folder with .eml files")
        for file in files:
            yield str(file.relative_to(path)), file.read_bytes()
        return
    try:
        with path.open("rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        raise MailerError(f"cannot read {path}: {exc.strerror}") from None
    if head.startswith(b"From "):
        mbox = mailbox.mbox(str(path), create=False)
        for n, key in enumerate(mbox.keys(), start=1):
            yield f"{path.name}#{n}", mbox.get_bytes(key)
        return
    if not path.is_file() or is_binary(head):
        raise MailerError(f"{path} is not a mail message, an mbox or a Maildir (it holds binary data)")
    yield path.name, path.read_bytes()


def is_binary(data: bytes) -> bool:
    """Mail is text (RFC 5322 2.3: no NUL); a NUL among the first octets, where the headers are, says it is
    something else (an image, a program, a compressed archive). A body may carry a returned binary part."""
    return b"\x00" in data[:1024]


class _Matcher:
    """Finds the delivery a report is about and records what it says."""

    def __init__(self, store: Store, secret: bytes, soft_limit: int) -> None:
        self.store = store
        self.secret = secret
        self.soft_limit = soft_limit

    def delivery(self, report: ReturnedMail) -> tuple[DeliveryRef | None, str]:
        for token in report.verp_tokens:
            try:
                parsed = read_token(self.secret, token, TokenKind.BOUNCE)
            except BadToken:
                continue
            if parsed.a == 0:  # a sign-up confirmation: the "delivery" is the subscriber
                try:
                    sub = self.store.subscribers.by_id(parsed.b)
                except MailerError:
                    continue
                return DeliveryRef(None, 0, sub.id, sub.email), "verp"
            ref = self.store.returned.delivery(parsed.b)
            if ref is not None and ref.campaign_id == parsed.a:
                return ref, "verp"
        for message_id in report.message_ids:
            ref = self.store.returned.by_message_id(message_id)
            if ref is not None:
                return ref, "message-id"
        return None, ""

    def record(self, origin: str, report: ReturnedMail) -> list[ScanRow]:
        if any(f.kind == ReturnedKind.UNSUBSCRIBE for f in report.findings):
            return [self._unsubscribe(origin, report)]
        acted = [f for f in report.findings if f.kind != ReturnedKind.OTHER]
        if not acted:
            return [ScanRow(origin, ReturnedKind.OTHER, "", None, "", f"ignored: not a bounce ({report.subject[:60]})")]
        ref, how = self.delivery(report)
        if ref is None:
            return [
                ScanRow(origin, f.kind, f.email, None, f.status, "unmatched: no valid VERP address or known Message-ID")
                for f in acted
            ]
        # With VERP one report is about one delivery; the report may name an alias, our log names the recipient.
        finding = next((f for f in acted if f.email == ref.email.lower()), acted[0])
        return [self._apply(origin, report, finding, ref, how)]

    def _apply(self, origin: str, report: ReturnedMail, finding: Finding, ref: DeliveryRef, how: str) -> ScanRow:
        store = self.store
        email = ref.email
        campaign = ref.campaign_id
        if not store.returned.record(
            report.key, email, finding.kind, campaign, ref.id, finding.status, finding.diagnostic, origin
        ):
            return ScanRow(origin, finding.kind, email, campaign, finding.status, "duplicate: already counted")
        detail = f"{finding.status} {finding.diagnostic}".strip()
        if finding.kind == ReturnedKind.HARD:
            if ref.id is not None:
                store.returned.mark_bounced(ref.id, finding.status, finding.diagnostic)
            store.suppressions.suppress_address(email, SuppressionReason.BOUNCED, detail)
            result = f"bounced and suppressed (matched by {how})"
        elif finding.kind == ReturnedKind.COMPLAINT:
            store.suppressions.suppress_address(email, SuppressionReason.COMPLAINED, detail)
            result = f"complaint: unsubscribed and suppressed (matched by {how})"
        else:
            count = store.returned.soft_bounce_count(email)
            if count >= self.soft_limit:
                store.suppressions.suppress_address(
                    email, SuppressionReason.SOFT_BOUNCES, f"{count} soft bounces; last: {detail}"
                )
                result = f"soft bounce {count}/{self.soft_limit}: suppressed (matched by {how})"
            else:
                result = f"soft bounce {count}/{self.soft_limit} counted (matched by {how})"
        return ScanRow(origin, finding.kind, email, campaign, finding.status, result)

    def _unsubscribe(self, origin: str, report: ReturnedMail) -> ScanRow:
        for token in report.unsubscribe_tokens:
            try:
                parsed = read_token(self.secret, token, TokenKind.UNSUBSCRIBE)
                sub = self.store.subscribers.by_id(parsed.b)
            except (BadToken, MailerError):
                continue
            if sub.list_id != parsed.a:
                continue
            if not self.store.returned.record(
                report.key, sub.email, ReturnedKind.UNSUBSCRIBE, None, None, "", "", origin
            ):
                return ScanRow(origin, ReturnedKind.UNSUBSCRIBE, sub.email, None, "", "duplicate: already counted")
            changed = self.store.subscribers.unsubscribe(sub.id, UnsubscribeSource.MAILTO)
            return ScanRow(
                origin,
                ReturnedKind.UNSUBSCRIBE,
                sub.email,
                None,
                "",
                "unsubscribed (mailto)" if changed else "already unsubscribed",
            )
        return ScanRow(
            origin, ReturnedKind.UNSUBSCRIBE, "", None, "", "unmatched: the unsubscribe address is not valid"
        )


def scan(store: Store, secret: bytes, path: Path, soft_limit: int = 3) -> list[ScanRow]:
    """Read every message at `path` and record the bounces, complaints and unsubscribe requests in it."""
    if not secret:
        raise MailerError("no signing secret: run 'mailer init' (or set MAILER_SECRET)")
    matcher = _Matcher(store, secret, soft_limit)
    rows: list[ScanRow] = []
    for origin, raw in read_messages(path):
        if not raw.strip():
            continue
        if is_binary(raw):
            rows.append(ScanRow(origin, ReturnedKind.OTHER, "", None, "", "ignored: binary data, not a mail message"))
            continue
        try:
            report = parse_returned(raw)
        except Exception as exc:  # one broken message must not stop a cron job at it on every run
            rows.append(
                ScanRow(origin, ReturnedKind.OTHER, "", None, "", f"ignored: unreadable ({type(exc).__name__})")
            )
            continue
        rows += matcher.record(origin, report)
    return rows
