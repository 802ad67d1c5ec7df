"""Attachments: read once, named right in every script, parsed back by the email package to the same bytes."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from mailer.attachments import (
    Attachment,
    content_type_of,
    describe,
    encode_part,
    part_headers,
    read_attachments,
)
from mailer.errors import TemplateError

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40


def files(mapping: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def read(name: str) -> bytes:
        if name not in mapping:
            raise TemplateError(f"x.md: {name} does not exist")
        return mapping[name]

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
    with pytest.raises(TemplateError, match=r"3.0 MB, over the limit of 2 MB"):
        read_attachments(["big.pdf"], files(big), "x.md", limit=2 * 2**20)


def test_describe_for_layouts() -> None:
    assert describe(
        [Attachment("简报.pdf", "application/pdf", b"x" * 1_300_000), Attachment("a.txt", "text/plain", b"x")]
    ) == [
        {"filename": "简报.pdf", "size": "1.2 MB", "content_type": "application/pdf"},
        {"filename": "a.txt", "size": "1 KB", "content_type": "text/plain"},
    ]
