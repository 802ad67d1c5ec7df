"""Subscriber addresses and subscriber CSV files: validation, normalisation, encoding detection; and whether a
host is this machine's loopback.

Pure: takes text or bytes, returns subscribers and per-line problems. The only module that imports email-validator."""

from __future__ import annotations

import codecs
import csv
import io
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
        result = validate_email(
            text, check_deliverability=False, allow_smtputf8=True, allow_quoted_local=False, test_environment=True
        )
    except EmailNotValidError as exc:
        raise AddressError(f"{raw!r} is not an email address ({exc})") from None
    # Lower case throughout (as listmonk does): nearly every mail system ignores case before the @, and one spelling
    # per person is what keeps suppressions, sign-up limits and duplicate checks from being dodged by `Ann@` vs `ann@`.
    return f"{result.local_part.lower()}@{result.domain.lower()}"


_BOMS = (  # longest first: the UTF-32 LE mark begins with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_GB = {"gb18030", "gbk", "gb2312", "hz"}


@dataclass(frozen=True)
class CsvText:
    text: str
    encoding: str  # as read: utf-8, utf-8-sig, utf-16, utf-32 or gb18030


def _convert_hint(origin: str, encoding: str) -> str:
    return f"convert it to UTF-8 first, e.g.: iconv -f {encoding} -t UTF-8 {origin} > utf8-{Path(origin).name}"


def decode_csv(data: bytes, origin: str) -> CsvText:
    """UTF-8 (with or without BOM), UTF-16/32 with a BOM, or GB18030 (a superset of GBK and GB2312) when the bytes
    read as Chinese in it. Anything else is refused with the encoding it looks like: GB18030 decodes nearly any
    bytes, so trying it blindly turned Big5 張三 into 眎 and Latin-1 Müller into CJK, with exit 0."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return CsvText(data.decode(encoding), encoding)
            except UnicodeDecodeError:
                raise MailerError(
                    f"{origin}: starts with a {encoding.upper()} byte-order mark but is not {encoding.upper()} text"
                ) from None
    if b"\x00" in data:
        head = data[:4096]
        odd, even = head[1::2].count(0), head[0::2].count(0)
        if max(odd, even) > len(head) // 4:  # an ASCII header in UTF-16 is every other byte NUL
            order = "UTF-16LE" if odd > even else "UTF-16BE"
            raise MailerError(
                f"{origin}: looks like {order} without a byte-order mark; " + _convert_hint(origin, order)
            )
        raise MailerError(f"{origin}: contains NUL bytes; not a CSV text file")
    try:
        return CsvText(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    if _mostly_utf8(data):  # the bytes that are not UTF-8 stay as surrogates: their rows are reported, not read
        return CsvText(data.decode("utf-8", "surrogateescape"), "utf-8")
    from charset_normalizer import from_bytes  # only for the files that are not UTF-8

    matches = list(from_bytes(data))
    least_mess = min((m.chaos for m in matches), default=1.0)
    # Short CJK text reads as more than one encoding (张三 is also Korean in cp949); GB18030 is what we accept, so it
    # is chosen whenever it reads as well as the best, and never when another encoding reads better.
    if any(m.encoding in _GB and m.chaos <= least_mess for m in matches):
        try:
            return CsvText(data.decode("gb18030"), "gb18030")
        except UnicodeDecodeError:
            pass
    raise MailerError(_not_utf8(origin, data, [m.encoding for m in matches]))


def _mostly_utf8(data: bytes) -> bool:
    """Whether a file that is not all UTF-8 is a UTF-8 file with a few lines in another encoding (a row pasted from an
    old file): most of its lines with non-ASCII text read as UTF-8. Converting it all from a legacy encoding, as
    the hint for a legacy file says, would garble every UTF-8 name in it."""
    good = bad = 0
    for line in data.splitlines():
        if not line.isascii():
            try:
                line.decode("utf-8")
                good += 1
            except UnicodeDecodeError:
                bad += 1
    return good >= 4 * bad  # a legacy file has few lines, if any, that happen to be valid UTF-8


def _not_utf8(origin: str, data: bytes, guesses: list[str]) -> str:
    """What a file in another encoding looks like. A multi-byte guess (Big5, Shift-JIS) is reliable; a single-byte
    one is not: a short list of Latin names reads without error in a dozen code pages, and charset-normalizer put
    CP775 (Baltic) first for Latin-1 "François Müller", so its iconv command would have imported "Franńois M³ller".
    Then the first line the likely encodings read differently is shown as each reads it, for the person to choose."""
    first = guesses[0] if guesses else ""
    lines = [(n, line) for n, line in enumerate(data.splitlines(), start=1) if not line.isascii()]
    candidates: list[str] = []
    if first and lines and len(lines[0][1].decode(first, "replace")) == len(lines[0][1]):  # one byte a character
        for encoding in dict.fromkeys([first, "cp1252", *guesses[1:3]]):
            try:
                data.decode(encoding)
            except (UnicodeDecodeError, LookupError):
                continue
            candidates.append(encoding)
    for line_no, line in lines:
        readings: dict[str, str] = {}
        for encoding in candidates:
            text = line.decode(encoding)
            if text not in readings.values():
                readings[encoding.upper().replace("_", "-")] = text
        if len(readings) > 1:
            at = next(i for i, byte in enumerate(line) if byte > 0x7F)
            shown = ", ".join(
                f"{text[max(0, at - 12) : at + 24].strip()!r} in {name}" for name, text in list(readings.items())[:3]
            )
            hint = _convert_hint(origin, next(iter(readings))).replace("e.g.", "with the one that reads right, e.g.")
            return f"{origin}: not UTF-8 or GB18030 text; line {line_no} reads {shown}: {hint}"
    guess = first.upper().replace("_", "-")  # every likely reading agrees, or the guess is a multi-byte encoding
    looks = f" (it looks like {guess})" if guess else ""
    return f"{origin}: not UTF-8 or GB18030 text{looks}; " + _convert_hint(origin, guess or "ENCODING")


@dataclass(frozen=True)
class CsvProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


_STRAY = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8, kept by surrogateescape
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _columns(header: list[str]) -> list[str]:
    return [h.strip().lstrip("\ufeff").lower() for h in header]


def csv_delimiter(text: str) -> str:
    """The delimiter whose split of the header row has an `email` column: a comma, or what Excel writes where the
    comma is the decimal sign (a semicolon), or a tab (a sheet pasted into a text file). Comma when none has one."""
    first = text.lstrip("\ufeff").split("\n", 1)[0]
    for delimiter in DELIMITER_NAMES:
        try:
            header = next(csv.reader([first], delimiter=delimiter), [])
        except csv.Error:
            continue
        if "email" in _columns(header):
            return delimiter
    return ","


def read_subscribers_csv(text: str, origin: str, delimiter: str = ",") -> Iterator[Subscriber | CsvProblem]:
    """Yield a Subscriber per good row and a CsvProblem (with its line number) per bad one.

    The header row needs an `email` column; `name` is optional; every other column becomes an attribute."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise MailerError(f"{origin}: empty file, expected a header row with an 'email' column") from None
    except csv.Error as exc:
        raise MailerError(f"{origin} line 1: {exc}") from None
    if any(_STRAY.search(cell) for cell in header):
        raise MailerError(f"{origin} line 1: not UTF-8, though the rest of the file is; re-save it as UTF-8")
    columns = _columns(header)
    if "email" not in columns:
        others = [name for d, name in DELIMITER_NAMES.items() if d != delimiter and d in header[0]]
        hint = f"; it looks {others[0]}-separated" if len(header) == 1 and others else ""
        raise MailerError(
            f"{origin}: the header row has no 'email' column (found: {', '.join(columns) or 'nothing'}){hint}"
        )
    email_at = columns.index("email")
    name_at = columns.index("name") if "name" in columns else None
    seen: dict[str, int] = {}
    line = reader.line_num
    while True:
        first_line = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            yield CsvProblem(line, f"unreadable CSV ({exc})")
            continue
        line = reader.line_num
        if any(_STRAY.search(cell) for cell in row):
            yield CsvProblem(
                first_line,
                "not UTF-8, though the rest of the file is; retype or re-save this row as UTF-8 (it is skipped)",
            )
            continue
        if line > first_line and _swallowed(row, delimiter):
            # A quote that is never closed makes csv read every following line, up to the next quote or the end
            # of the file, as part of one field: say which lines went, instead of importing a garbled name.
            yield CsvProblem(
                first_line,
                f"a quoted field is not closed, so lines {first_line}-{line} were read "
                "as one row; close the quote and import again (these lines are skipped)",
            )
            continue
        broken = next(
            (
                columns[i]
                for i in (email_at, name_at)
                if i is not None and i < len(row) and ("\n" in row[i] or "\r" in row[i])
            ),
            None,
        )
        if line > first_line and broken:
            # A quoted name with a line break in it (Alt+Enter in Excel) is closed properly: it is not the
            # unclosed quote above, though it may be one at the end of the file.
            yield CsvProblem(
                first_line,
                f"the {broken} runs over lines {first_line}-{line} (a line break inside "
                "its quotes, or a quote never closed); put it on one line (this row is skipped)",
            )
            continue
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


def _swallowed(row: list[str], delimiter: str) -> bool:
    """Whether a row that spans several lines is an unclosed quote rather than a field with a line break in it
    (an attribute such as a postal address may have one): a later line of a field that holds the delimiter is a
    row that was swallowed."""
    return any(any(delimiter in part for part in cell.splitlines()[1:]) for cell in row)


def is_loopback(host: str) -> bool:
    """A host name or IP address of this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
