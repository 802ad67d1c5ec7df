"""Subscriber addresses and subscriber CSV files: validation, normalisation, encoding detection.

Pure: takes text or bytes, returns subscribers and per-line problems. The only module that imports email-validator."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from mailer.errors import MailerError
from mailer.message import clean_header_text
from mailer.models import Subscriber
from mailer.spreadsheet import read_cell


class AddressError(MailerError):
    pass


def normalise_address(raw: str) -> str:
    """A syntactically valid address, lower-cased; internationalised addresses allowed."""
    text = raw.strip()
    if not text:
        raise AddressError("empty email address")
    if any(ch in text for ch in "\r\n\t\x00 <>,;"):
        raise AddressError(f"{raw!r} is not an email address")
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=True, allow_quoted_local=False,
                                test_environment=True)
    except EmailNotValidError as exc:
        raise AddressError(f"{raw!r} is not an email address ({exc})") from None
    # Lower case throughout (as listmonk does): nearly every mail system ignores case before the @, and one spelling
    # per person is what keeps suppressions, sign-up limits and duplicate checks from being dodged by `Ann@` vs `ann@`.
    return f"{result.local_part.lower()}@{result.domain.lower()}"


def decode_csv(data: bytes, origin: str) -> str:
    """UTF-8 (with or without BOM), else GB18030 (a superset of GBK and GB2312)."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise MailerError(f"{origin}: not UTF-8 or GB18030 text")


@dataclass(frozen=True)
class CsvProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def read_subscribers_csv(text: str, origin: str) -> Iterator[Subscriber | CsvProblem]:
    """Yield a Subscriber per good row and a CsvProblem (with its line number) per bad one.

    The header row needs an `email` column; `name` is optional; every other column becomes an attribute."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise MailerError(f"{origin}: empty file, expected a header row with an 'email' column") from None
    except csv.Error as exc:
        raise MailerError(f"{origin} line 1: {exc}") from None
    columns = [h.strip().lstrip("\ufeff").lower() for h in header]
    if "email" not in columns:
        raise MailerError(f"{origin}: the header row has no 'email' column (found: {', '.join(columns) or 'nothing'})")
    email_at = columns.index("email")
    name_at = columns.index("name") if "name" in columns else None
    seen: dict[str, int] = {}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield CsvProblem(reader.line_num, f"unreadable CSV ({exc})")
            continue
        line = reader.line_num
        row = [read_cell(cell) for cell in row]  # a file `mailer subs export` wrote reads back as it was
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            yield CsvProblem(line, f"{len(row)} fields, but the header has {len(columns)}")
            continue
        try:
            email = normalise_address(row[email_at])
        except AddressError as exc:
            yield CsvProblem(line, str(exc))
            continue
        if email in seen:
            yield CsvProblem(line, f"{email} already appears on line {seen[email]}; this row is skipped")
            continue
        seen[email] = line
        name = clean_header_text(row[name_at]) if name_at is not None else ""
        attrs = {
            header[i].strip(): cell.strip()
            for i, cell in enumerate(row)
            if i not in (email_at, name_at) and header[i].strip()
        }
        yield Subscriber(email=email, name=name, attrs=attrs)
