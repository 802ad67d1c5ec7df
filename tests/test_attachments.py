"""Attachments: read once, named right in every script, parsed back by the email package to the same bytes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mailer.message
from mailer.attachments import (
    Attachment,
    content_type_of,
    describe,
    encode_part,
    part_headers,
    read_attachments,
)
from mailer.campaign import build_template, issue_file_reader, issue_from_json, issue_to_json
from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.errors import TemplateError
from mailer.models import Recipient
from mailer.render import InlineImage, issue_content
from mailer.sample import build_sample, prepare_sample
from mailer.store import Store
from mailer.subscriptions import add_subscriber
from tests.conftest import CHECK_EML

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def files(mapping: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def read(name: str, limit: int | None = None) -> bytes:
        if name not in mapping:
            raise TemplateError(f"x.md: {name} does not exist")
        return mapping[name] if limit is None else mapping[name][: limit + 1]

    return read


def wrap(*parts: bytes) -> EmailMessage:
    raw = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
        b"Content-Type: text/plain\r\n\r\nhi\r\n" + b"".join(parts) + b"\r\n--B--\r\n"
    )
    for line in raw.split(b"\r\n"):
        assert len(line) <= 78, line
    return message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


@pytest.mark.parametrize(
    "name",
    [
        "简报第10期.pdf",
        "report 2026 (final).pdf",
        "简报第10期（印刷版）知识产权运营简报附件一：跨区域质押融资协作备忘录全文.pdf",
        "Résumé.docx",
        "ملف.pdf",
    ],
)
def test_a_name_in_any_script_parses_back_with_the_same_bytes(name: str) -> None:
    [attachment], warnings = read_attachments([name], files({name: PDF}), "x.md")
    assert warnings == []
    [part] = wrap(encode_part("B", attachment)).iter_attachments()
    assert part.get_filename() == name
    assert part.get_payload(decode=True) == PDF
    assert part.get_content_disposition() == "attachment"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200).filter(lambda n: n.strip() and "/" not in n and "\\" not in n))
@example("<>")  # the email package reads a quoted "<x>" as x (email.utils.unquote): an empty name
@example("<draft>")
def test_any_file_name_parses_back_as_written_within_78_columns(name: str) -> None:
    [attachment], _ = read_attachments([name], lambda path, limit=None: PDF, "x.md")
    assert attachment.filename.strip() and not set(attachment.filename) & set('"<>')
    [part] = wrap(encode_part("B", attachment)).iter_attachments()
    assert part.get_filename() == attachment.filename
    assert part.get_payload(decode=True) == PDF


def test_headers_for_a_plain_name_stay_plain() -> None:
    assert part_headers(Attachment("report.pdf", "application/pdf", PDF)) == (
        'Content-Type: application/pdf; name="report.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
        'Content-Disposition: attachment; filename="report.pdf"\r\n'
    )


def test_folders_controls_and_quotes_never_reach_the_header() -> None:
    [attachment], _ = read_attachments(
        ['print/简报\r\nBcc: x@evil.test".pdf'], files({'print/简报\r\nBcc: x@evil.test".pdf': PDF}), "x.md"
    )
    assert attachment.filename == "简报Bcc: x@evil.test.pdf"
    assert "\r\nBcc" not in part_headers(attachment)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.pdf", "application/pdf"),
        ("a.PNG", "image/png"),
        ("a.tar.gz", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("a.csv", "text/csv"),
    ],
)
def test_content_types(name: str, kind: str) -> None:
    assert content_type_of(name) == kind


def test_one_name_or_none() -> None:
    assert read_attachments(None, None, "x.md") == ((), [])
    assert read_attachments([], None, "x.md") == ((), [])
    [one], _ = read_attachments("a.pdf", files({"a.pdf": PDF}), "x.md")
    assert one.filename == "a.pdf"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"a": 1}, "must be a list of file names"),
        ([""], "must be a list of file names"),
        (["missing.pdf"], "missing.pdf does not exist"),
        (["empty.pdf"], "attachment empty.pdf is empty"),
        (["a.pdf", "sub/A.PDF"], "two attachments are named A.PDF"),
    ],
)
def test_bad_attachments_are_one_error(value: object, words: str) -> None:
    read = files({"empty.pdf": b"", "a.pdf": PDF, "sub/A.PDF": PDF})
    with pytest.raises(TemplateError, match=words):
        read_attachments(value, read, "x.md")


def test_size_warning_and_limit() -> None:
    big = {"big.pdf": b"x" * (3 * 2**20)}
    _, warnings = read_attachments(["big.pdf"], files(big), "x.md")
    assert warnings and "3.0 MB" in warnings[0]
    with pytest.raises(TemplateError, match=r"over the limit of 2 MB per message \(MAILER_ATTACHMENT_LIMIT\) with big"):
        read_attachments(["big.pdf"], files(big), "x.md", limit=2 * 2**20)


def test_describe_for_layouts() -> None:
    assert describe(
        [Attachment("简报.pdf", "application/pdf", b"x" * 1_300_000), Attachment("a.txt", "text/plain", b"x")]
    ) == [
        {"filename": "简报.pdf", "size": "1.2 MB", "content_type": "application/pdf"},
        {"filename": "a.txt", "size": "1 KB", "content_type": "text/plain"},
    ]


# ---- in the message: multipart/mixed, named for every reader, encoded once per campaign ---------------------------


def make_pdf(side: int = 200, seed: int = 10) -> bytes:
    """A real PDF (one page of noise, which does not compress), about side * side * 0.55 bytes."""
    image = Image.frombytes("L", (side, side), random.Random(seed).randbytes(side * side))
    out = io.BytesIO()
    image.save(out, format="PDF")
    return out.getvalue()


CJK_PDF = "简报第10期.pdf"


def write_issue(folder: Path, files: dict[str, bytes], front: str, body: str = "Intro.\n\n## One\n\nBody.\n") -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    issue = folder / "issue.md"
    issue.write_text(f"---\nsubject: 简报第10期\n{front}\n---\n\n{body}", encoding="utf-8")
    return issue


def parsed(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def check_eml(tmp_path: Path, *messages: bytes) -> None:
    paths = []
    for n, data in enumerate(messages):
        paths.append(tmp_path / f"check-{n}.eml")
        paths[-1].write_bytes(data)
    result = subprocess.run([sys.executable, str(CHECK_EML), *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("images", [False, True], ids=["alternative", "related"])
def test_attachments_travel_in_multipart_mixed_named_in_both_parts(tmp_path: Path, lang: str, images: bool) -> None:
    pdf, table = make_pdf(), "地区,单位\n北京,知识产权局\n".encode()
    files = {CJK_PDF: pdf, "data/附表.csv": table}
    body = "Intro.\n\n![chart](chart.png)\n\n## One\n\nBody.\n"
    if images:
        out = io.BytesIO()
        Image.new("RGB", (40, 20), (1, 2, 3)).save(out, format="PNG")
        files["chart.png"] = out.getvalue()
    front = f"lang: {lang}\nimages: {'cid' if images else 'url'}\nattachments: [{CJK_PDF}, data/附表.csv]"
    issue = write_issue(tmp_path, files, front, body)

    sample = build_sample(issue, Config(base_url="https://news.example.org"))

    message = parsed(sample.data)
    assert message.get_content_type() == "multipart/mixed"
    body_part, *attached = message.iter_parts()
    assert body_part.get_content_type() == ("multipart/related" if images else "multipart/alternative")
    assert [(a.get_filename(), a.get_content_type(), a.get_content_disposition()) for a in attached] == [
        (CJK_PDF, "application/pdf", "attachment"),
        ("附表.csv", "text/csv", "attachment"),
    ]
    assert [a.get_payload(decode=True) for a in attached] == [pdf, table]
    size = describe([Attachment(CJK_PDF, "application/pdf", pdf)])[0]["size"]
    html, text = sample.html, sample.text
    if lang == "zh":
        assert f"本期附件：\n- {CJK_PDF}（{size}）\n- 附表.csv（1 KB）\n" in text
        assert "本期附件" in html and f"{CJK_PDF}<span" in html and f"（{size}）" in html
    else:
        assert f"Attached to this issue:\n- {CJK_PDF} ({size})\n- 附表.csv (1 KB)\n" in text
        assert "Attached to this issue" in html and f" ({size})</span>" in html
    assert sample.notes == ()  # no warning: the built-in layouts name every attachment
    check_eml(tmp_path, sample.data)
    assert max(len(line) for line in sample.data.split(b"\r\n")) <= 78


def test_the_skeleton_encodes_each_attachment_once_per_campaign(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    issue = write_issue(tmp_path, {CJK_PDF: make_pdf()}, f"attachments: [{CJK_PDF}]")
    prepared, _ = prepare_sample(issue, Config(base_url="https://news.example.org"))
    calls = []
    original = mailer.message.encode_part
    monkeypatch.setattr(mailer.message, "encode_part", lambda *a: calls.append(a) or original(*a))
    template = build_template(prepared, 1, "salt", b"k" * 32)
    built = [template.build(Recipient(i, i, f"r{i}@example.org", f"读者{i}"), NOW).data for i in range(1, 51)]
    assert len(calls) == 1
    assert all(parsed(data).get_body(("plain",)) is not None for data in built)
    assert len({data.split(b"\r\n\r\n", 1)[1].split(b"Content-Type: application/pdf")[1] for data in built}) == 1


def test_the_campaign_snapshot_keeps_the_attachments_so_a_resume_builds_the_same_bytes(tmp_path: Path) -> None:
    issue = write_issue(tmp_path, {CJK_PDF: make_pdf()}, f"attachments: [{CJK_PDF}]")
    prepared, _ = prepare_sample(issue, Config(base_url="https://news.example.org"))
    snapshot = issue_from_json(json.loads(json.dumps(issue_to_json(prepared.issue))))
    assert snapshot == prepared.issue
    recipient = Recipient(1, 1, "wang@example.org", "王")
    first = build_template(prepared, 1, "salt", b"k" * 32).build(recipient, NOW).data
    resumed = build_template(replace(prepared, issue=snapshot), 1, "salt", b"k" * 32).build(recipient, NOW).data
    assert first == resumed


def test_content_identity_covers_every_embedded_file(tmp_path: Path) -> None:
    issue = write_issue(tmp_path, {CJK_PDF: make_pdf(seed=1)}, f"attachments: [{CJK_PDF}]")
    config = Config(base_url="https://news.example.org")
    before = prepare_sample(issue, config)[0].issue
    (tmp_path / CJK_PDF).write_bytes(make_pdf(seed=2))  # same name and size, other bytes
    after = prepare_sample(issue, config)[0].issue
    assert before.content_hash != after.content_hash
    changed = [
        what for (what, old), (_, new) in zip(before.content_parts, after.content_parts, strict=True) if old != new
    ]
    assert changed == [f"attachment {CJK_PDF}"]
    # Without attachments the identity is what it was before they existed: a campaign started then still resumes.
    image = InlineImage("c@mailer", "c.png", "image/png", b"png")
    old = hashlib.sha256(b"src" + b"<html>" + b"text" + b"png").hexdigest()
    assert issue_content("src", "<html>", "text", [image]).digest == old


def test_a_layout_that_does_not_list_attachments_is_a_warning(tmp_path: Path) -> None:
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    (layouts / "issue.html.j2").write_text("<html><body>{{ intro_html }}{{ unsubscribe_url }}</body></html>")
    (layouts / "issue.txt.j2").write_text("{{ intro_text }}\n{% for f in attachments %}{{ f.filename }}{% endfor %}\n")
    issue = write_issue(tmp_path, {CJK_PDF: make_pdf()}, f"attachments: [{CJK_PDF}]")
    sample = build_sample(issue, Config(base_url="https://news.example.org", templates=layouts))
    assert [n for n in sample.notes if "attachment" in n] == [
        f"{issue}: attachment {CJK_PDF} is not named in the HTML part: the layout does not list `attachments` "
        "(the built-in layouts do; see: mailer new)"
    ]


def test_a_sparse_file_over_the_limit_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """The trial's 3 GB sparse .pdf took 3.2 GB of memory before the error: the reader stops one byte past the limit."""
    huge = tmp_path / "huge.pdf"
    with huge.open("wb") as out:
        out.truncate(3 * 2**30)
    reader = issue_file_reader(tmp_path / "issue.md")
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match="over the limit of 10 MB per message"):
            read_attachments(["huge.pdf"], reader, "issue.md")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, peak
    assert len(reader("huge.pdf", limit=1000)) == 1001


def test_a_named_pipe_or_a_folder_is_refused_without_opening_it_for_good(tmp_path: Path, run_cli_process) -> None:  # type: ignore[no-untyped-def]
    """A FIFO named as an attachment hung `mailer render` forever: in a process of its own, with a timeout."""
    folder = tmp_path / "issues"
    folder.mkdir()
    os.mkfifo(folder / "f.pdf")
    (folder / "dir.pdf").mkdir()
    for name, kind in (("f.pdf", "a named pipe"), ("dir.pdf", "a folder")):
        issue = folder / f"{name}.md"
        issue.write_text(f'---\nsubject: "x"\nattachments: [{name}]\n---\nx\n', encoding="utf-8")
        result = run_cli_process("render", str(issue), "-o", "out", timeout=20)
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [
            f"error: {issue}: {name} is {kind}, not a file: only regular files can travel with an issue"
        ]
    assert not (tmp_path / "out").exists()


def test_attachments_outside_the_issue_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.pdf").write_bytes(make_pdf())
    folder = tmp_path / "issue"
    folder.mkdir()
    issue = write_issue(folder, {}, "attachments: [../secret.pdf]")
    with pytest.raises(TemplateError, match="outside the issue's folder"):
        build_sample(issue, Config(base_url="https://news.example.org"))


# ---- mailer send: through the real SMTP server; the warning and the limit -----------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])  # two: worker processes build from the campaign's snapshot
def test_a_send_delivers_the_pdf_intact_to_every_reader(
    tmp_path: Path, store: Store, smtp_server: CaptureServer, run_cli, workers: str
) -> None:  # type: ignore[no-untyped-def]
    for n in range(3):
        add_subscriber(store, "bulletin", f"reader{n}@example.org", f"读者{n}")
    pdf = make_pdf(side=600)
    issue = write_issue(tmp_path / "issues", {f"print/{CJK_PDF}": pdf}, f"attachments: [print/{CJK_PDF}]")

    port = str(smtp_server.port)
    result = run_cli("send", str(issue), "--list", "bulletin", "--yes", "--workers", workers, "--smtp-port", port)

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    received = smtp_server.received
    assert sorted(c.rcpt_tos[0] for c in received) == [f"reader{n}@example.org" for n in range(3)]
    for captured in received:
        [attached] = parsed(captured.data).iter_attachments()
        assert attached.get_filename() == CJK_PDF and attached.get_content_type() == "application/pdf"
        assert attached.get_payload(decode=True) == pdf
    check_eml(tmp_path, *(c.data for c in received))


def test_over_2_mb_is_a_warning_and_over_the_limit_stops_before_anything_is_sent(
    tmp_path: Path, store: Store, smtp_server: CaptureServer, run_cli
) -> None:  # type: ignore[no-untyped-def]
    add_subscriber(store, "bulletin", "reader@example.org", "读者")
    big = b"%PDF-1.4\n" + random.Random(3).randbytes(3 * 2**20)
    issue = write_issue(tmp_path / "issues", {"big.pdf": big}, "attachments: [big.pdf]")
    send = ("send", str(issue), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))

    refused = run_cli(*send, env={"MAILER_ATTACHMENT_LIMIT": "2 MB"})
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"error: {issue}: attachments are over the limit of 2 MB per message (MAILER_ATTACHMENT_LIMIT) with big.pdf; "
        "link to the files instead"
    ]
    assert smtp_server.connections == 0
    assert json.loads(run_cli("campaigns", "ls", "--json").stdout) == []  # no campaign, no snapshot

    (tmp_path / "mailer.toml").write_text('attachment_limit = "2 MB"\n', encoding="utf-8")
    assert run_cli(*send).returncode == 1 and smtp_server.connections == 0

    (tmp_path / "mailer.toml").write_text('attachment_limit = "4 MB"\n', encoding="utf-8")
    sent = run_cli(*send)
    assert sent.returncode == 0, sent.stderr
    assert (
        "warning: attachments make every message 3.0 MB: over 2 MB, many receivers slow or spam-folder bulk mail; "
        "consider a link instead"
    ) in sent.stderr.splitlines()
    [captured] = smtp_server.received
    assert next(parsed(captured.data).iter_attachments()).get_payload(decode=True) == big


def test_a_message_larger_than_the_relay_takes_is_refused_before_the_campaign(
    tmp_path: Path, store: Store, run_cli
) -> None:  # type: ignore[no-untyped-def]
    add_subscriber(store, "bulletin", "reader@example.org", "读者")
    pdf = b"%PDF-1.4\n" + random.Random(4).randbytes(800_000)  # 1.1 MB in base64: over the relay's 1 MB
    issue = write_issue(tmp_path / "issues", {"print.pdf": pdf}, "attachments: [print.pdf]")
    with CaptureServer(tmp_path / "small", size_limit=2**20) as relay:
        send = ("send", str(issue), "--list", "bulletin", "--yes", "--smtp-port", str(relay.port))
        refused = run_cli(*send)
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            "error: each message is 1.1 MB with its attachments (base64 adds a third) and 127.0.0.1:"
            f"{relay.port} takes at most 1.0 MB (its EHLO SIZE); nothing was sent: attach less, or link to the files"
        ]
        assert relay.received == [] and json.loads(run_cli("campaigns", "ls", "--json").stdout) == []

        (tmp_path / "issues" / "print.pdf").write_bytes(pdf[:600_000])
        sent = run_cli(*send)
        assert sent.returncode == 0, sent.stderr
        assert next(parsed(relay.received[0].data).iter_attachments()).get_payload(decode=True) == pdf[:600_000]


@pytest.mark.parametrize(
    "name", ["setup.exe", "run.BAT", "tool.cmd", "x.com", "s.scr", "a.js", "b.vbs", "i.msi", "p.ps1", "j.jar"]
)
def test_a_program_or_script_is_a_warning_naming_the_risk(name: str) -> None:
    [_], warnings = read_attachments([name], files({name: PDF}), "x.md")
    [warning] = warnings
    assert warning.startswith(f"attachment {name} is a program or script") and "reject" in warning


def test_documents_get_no_such_warning() -> None:
    names = ["简报.pdf", "data.xlsx", "exe", "notes.js.txt"]
    _, warnings = read_attachments(names, files(dict.fromkeys(names, PDF)), "x.md")
    assert warnings == []


def test_send_warns_of_an_exe_attachment(tmp_path: Path, store: Store, smtp_server: CaptureServer, run_cli) -> None:  # type: ignore[no-untyped-def]
    add_subscriber(store, "bulletin", "reader@example.org", "读者")
    issue = write_issue(tmp_path / "issues", {"setup.exe": b"MZ" + bytes(100)}, "attachments: [setup.exe]")
    dry = run_cli("send", str(issue), "--list", "bulletin", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert any(
        line.startswith("warning: attachment setup.exe is a program or script") for line in dry.stderr.splitlines()
    )
