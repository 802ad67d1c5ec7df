"""List and subscriber services: create lists, add, import, export and remove subscribers, unsubscribe by hand.

Called by cli.py; they take a Store and values, return results and raise MailerError. No printing."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailer.addresses import CsvProblem, decode_csv, normalise_address, read_subscribers_csv
from mailer.errors import MailerError, UsageError
from mailer.message import clean_header_text, parse_from
from mailer.models import Lang, MailingList, Subscriber, SubscriberStatus
from mailer.store import Store

_BATCH = 1000


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    kept: int
    problems: list[CsvProblem]


def create_list(store: Store, name: str, title: str, from_addr: str, reply_to: str, lang: str) -> MailingList:
    if not name or not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise UsageError(f"list name {name!r}: use letters, digits, '-' and '_' only")
    if lang not in tuple(Lang):
        raise UsageError(f"--lang must be one of {', '.join(Lang)}, not {lang!r}")
    if from_addr:
        parse_from(from_addr)
    if reply_to:
        reply_to = normalise_address(reply_to)
    return store.create_list(name, clean_header_text(title), clean_header_text(from_addr), reply_to, lang)


def add_subscriber(store: Store, list_name: str, email: str, name: str = "") -> tuple[Subscriber, bool]:
    """Add (or update the name of) one subscriber; True when newly added."""
    mailing_list = store.get_list(list_name)
    address = normalise_address(email)
    added, _, _ = store.upsert_subscribers(
        mailing_list.id, [Subscriber(email=address, name=clean_header_text(name))], source="cli"
    )
    return store.get_subscriber(mailing_list.id, address), bool(added)


def import_csv(store: Store, list_name: str, path: Path) -> ImportResult:
    """Import a subscriber CSV: good rows are added or updated in batches, bad rows come back by line number."""
    mailing_list = store.get_list(list_name)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MailerError(f"{path} does not exist") from None
    except OSError as exc:
        raise MailerError(f"cannot read {path}: {exc.strerror}") from None
    text = decode_csv(data, str(path))
    problems: list[CsvProblem] = []
    totals = [0, 0, 0]
    batch: list[Subscriber] = []
    for item in read_subscribers_csv(text, str(path)):
        if isinstance(item, CsvProblem):
            problems.append(item)
            continue
        batch.append(item)
        if len(batch) >= _BATCH:
            totals = [a + b for a, b in zip(totals, store.upsert_subscribers(mailing_list.id, batch, "import"),
                                            strict=True)]
            batch = []
    if batch:
        totals = [a + b for a, b in zip(totals, store.upsert_subscribers(mailing_list.id, batch, "import"),
                                        strict=True)]
    return ImportResult(totals[0], totals[1], totals[2], problems)


def subscribers(store: Store, list_name: str, status: str | None = None) -> Iterator[Subscriber]:
    mailing_list = store.get_list(list_name)
    if status and status not in tuple(SubscriberStatus):
        raise UsageError(f"--status must be one of {', '.join(SubscriberStatus)}, not {status!r}")
    return store.iter_subscribers(mailing_list.id, status)


def export_csv(store: Store, list_name: str) -> Iterator[str]:
    """The list as CSV text, a chunk of rows at a time: email, name, status, then every attribute seen."""
    mailing_list = store.get_list(list_name)
    keys: list[str] = []
    for sub in store.iter_subscribers(mailing_list.id):
        keys.extend(k for k in sub.attrs if k not in keys)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["email", "name", "status", *keys])
    for n, sub in enumerate(store.iter_subscribers(mailing_list.id), start=1):
        writer.writerow([sub.email, sub.name, sub.status, *(sub.attrs.get(k, "") for k in keys)])
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def remove_subscriber(store: Store, list_name: str, email: str) -> None:
    mailing_list = store.get_list(list_name)
    store.remove_subscriber(mailing_list.id, normalise_address(email))


def unsubscribe_by_hand(store: Store, list_name: str, email: str) -> bool:
    mailing_list = store.get_list(list_name)
    sub = store.get_subscriber(mailing_list.id, normalise_address(email))
    return store.unsubscribe(sub.id, source="ops")
