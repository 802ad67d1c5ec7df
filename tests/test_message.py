"""Messages on the wire: headers in any script, MIME shape, unsubscribe and bounce tokens, header injection."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parseaddr
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailer.attachments import Attachment
from mailer.campaign import build_template, prepare_issue
from mailer.config import Config
from mailer.errors import HeaderError
from mailer.message import (
    BuiltMessage,
    MessageTemplate,
    Sender,
    address_header,
    clean_header_text,
    parse_from,
    unstructured_header,
)
from mailer.models import Recipient
from mailer.render import InlineImage, ListContext, RenderedIssue, render_issue
from mailer.sample import render_to_dir
from mailer.store import Store
from mailer.tokens import BadToken, Token, TokenKind, make_token, read_token
from tests.conftest import CHECK_EML

GOLDEN = Path(__file__).resolve().parent / "golden"
SECRET = b"k" * 32
NOW = datetime(2026, 11, 15, 8, 30, tzinfo=UTC)
CAMPAIGN_ID = 42
LIST_ID = 3
SENDER = Sender(
    from_name="知识产权运营简报编辑部",
    from_addr="bulletin@example.org",
    reply_to="editor@example.org",
    list_name="bulletin",
    list_title="知识产权运营简报",
    base_url="https://news.example.org",
)
CHINESE_RECIPIENTS = [
    Recipient(101, 1, "zhang.san@example.org", "张三"),
    Recipient(102, 2, "ouyang@example.com", "欧阳娜娜"),
    Recipient(103, 3, "li.ming@example.net", "李明（研究员）"),
    Recipient(104, 4, "wang@example.org", "王" * 80),  # long enough to fold
    Recipient(105, 5, "mixed@example.org", "Zhou 周明远, PhD"),
]
ASCII_RECIPIENT = Recipient(201, 21, "ann.lee@example.org", "Ann Lee")
BASE32 = re.compile(r"[a-z2-7]+")
EXPECTED_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
}
EVIL = [
    "\r",
    "\n",
    "a\r\nBcc: x@evil.test",
    "=?utf-8?q?a=0D=0ABcc:_x@evil.test?=",
    "=?utf-8?b?DQpCY2M6IHhAZXZpbC50ZXN0?=",
    "\u2028Bcc: x@evil.test\u0085Cc: y@evil.test",
    "a\x00b\x1b[31m",
    '"quoted \\" name"',
    "x" * 3000,
    "中" * 1500,
    "a.b " * 400,
    "word " * 600,
    "",
    " \t ",
]


@functools.cache
def rendered(case: str, lang: str) -> RenderedIssue:
    source = (GOLDEN / case / "issue.md").read_text(encoding="utf-8")
    return render_issue(source, f"{case}.md", ListContext(name="bulletin", title="知识产权运营简报", lang=lang))


def zh_issue() -> RenderedIssue:
    return rendered("sample", "zh")


def en_issue() -> RenderedIssue:
    return rendered("en-basic", "en")


ISSUES = {"zh": zh_issue, "en": en_issue}


def template(
    issue: RenderedIssue,
    *,
    sender: Sender = SENDER,
    secret: bytes = SECRET,
    campaign_id: int = CAMPAIGN_ID,
    list_id: int = LIST_ID,
    salt: str = "salt",
) -> MessageTemplate:
    return MessageTemplate(issue, sender, secret=secret, campaign_id=campaign_id, list_id=list_id, salt=salt)


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def header_block(data: bytes) -> bytes:
    head, sep, _ = data.partition(b"\r\n\r\n")
    assert sep, "no blank line after the header block"
    return head + b"\r\n"


def header_names(head: bytes) -> list[str]:
    names = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, _ = line.partition(b":")
        assert colon, f"header line without a colon: {line!r}"
        names.append(name.decode("ascii").lower())
    return names


def raw_header(data: bytes, name: str) -> str:
    """One header's value as on the wire, unfolded (RFC 5322 2.2.3)."""
    head = header_block(data).decode("utf-8")
    fields = re.split(r"\r\n(?![ \t])", head.removesuffix("\r\n"))
    values = [f.partition(":")[2] for f in fields if f.partition(":")[0].lower() == name.lower()]
    assert len(values) == 1, (name, values)
    return values[0].replace("\r\n", "").strip()


def mailbox(data: bytes, name: str) -> tuple[str, str]:
    """(display name, address) of a one-mailbox header, decoded per RFC 2047 6.2: white space between adjacent
    encoded words is dropped. Python's modern parser keeps it inside a phrase (cpython gh-128110), so it cannot
    judge a name long enough to need several encoded words."""
    display, addr = parseaddr(raw_header(data, name))
    return str(make_header(decode_header(display))), addr


def bodies(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def unsubscribe_tokens(message: EmailMessage) -> tuple[str, str]:
    value = str(message["List-Unsubscribe"])
    match = re.fullmatch(
        r"<https://news\.example\.org/u/([a-z2-7]+)>,\s*<mailto:unsubscribe\+([a-z2-7]+)@example\.org\?subject=unsubscribe>",
        value,
    )
    assert match, value
    return match.group(1), match.group(2)


def assert_wire_safe(data: bytes) -> None:
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n"), "bare CR or LF on the wire"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    head = header_block(data)
    # Inside the header block every line break is CRLF and every line after the first of a header is a fold.
    for line in head.split(b"\r\n")[1:-1]:
        assert line[:1] in (b" ", b"\t") or b":" in line


# --- headers in Chinese -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", sorted(ISSUES))
@pytest.mark.parametrize("recipient", CHINESE_RECIPIENTS, ids=lambda r: r.email)
def test_headers_decode_to_the_original_text(lang: str, recipient: Recipient) -> None:
    issue = ISSUES[lang]()
    built = template(issue).build(recipient, NOW)
    message = parse(built.data)
    assert mailbox(built.data, "From") == ("知识产权运营简报编辑部", "bulletin@example.org")
    assert mailbox(built.data, "To") == (recipient.name, recipient.email)
    assert mailbox(built.data, "List-Id") == ("知识产权运营简报", "bulletin.example.org")
    assert message["To"].addresses[0].addr_spec == recipient.email
    if len(recipient.name.encode()) <= 42:  # one encoded word: Python's parser agrees
        assert message["To"].addresses == (Address(recipient.name, addr_spec=recipient.email),)
    assert str(message["Subject"]) == issue.subject
    assert str(message["List-Id"]) == "知识产权运营简报 <bulletin.example.org>"
    assert str(message["Reply-To"]) == "editor@example.org"
    assert message["Date"].datetime == NOW
    assert str(message["MIME-Version"]) == "1.0"
    head = header_block(built.data)
    assert head.isascii(), "non-ASCII text must be RFC 2047 encoded"
    assert b"=?utf-8?b?" in head
    assert f"<{recipient.email}>".encode() in head, "an address is never encoded"
    assert b"<bulletin@example.org>" in head
    assert sorted(header_names(head)) == sorted(EXPECTED_HEADERS)


def test_sample_subject_in_chinese() -> None:
    message = parse(template(zh_issue()).build(CHINESE_RECIPIENTS[0], NOW).data)
    assert str(message["Subject"]) == "知识产权运营简报 第12期"


# --- MIME shape -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lang", "cte"), [("zh", "base64"), ("en", "quoted-printable")])
def test_multipart_alternative_text_first_html_last(lang: str, cte: str) -> None:
    message = parse(template(ISSUES[lang]()).build(CHINESE_RECIPIENTS[1], NOW).data)
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == cte
    text, html = bodies(message)
    assert "欧阳娜娜" in text and "欧阳娜娜" in html
    assert "ouyang@example.com" in text and "ouyang@example.com" in html
    assert html.lstrip().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("lang", sorted(ISSUES))
def test_lines_are_crlf_and_never_over_998_octets(lang: str) -> None:
    tmpl = template(ISSUES[lang]())
    for recipient in [*CHINESE_RECIPIENTS, ASCII_RECIPIENT]:
        data = tmpl.build(recipient, NOW).data
        assert_wire_safe(data)
        # Bodies are transfer-encoded, so their lines also keep RFC 5322's 78-character SHOULD.
        assert max(len(line) for line in data.partition(b"\r\n\r\n")[2].split(b"\r\n")) <= 78


# --- unsubscribe ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", sorted(ISSUES))
def test_list_unsubscribe_one_click(lang: str) -> None:
    recipient = CHINESE_RECIPIENTS[0]
    built = template(ISSUES[lang]()).build(recipient, NOW)
    message = parse(built.data)
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in header_block(built.data)
    https_token, mailto_token = unsubscribe_tokens(message)
    assert https_token == mailto_token
    assert built.unsubscribe_url == f"https://news.example.org/u/{https_token}"
    text, html = bodies(message)
    assert built.unsubscribe_url in text
    assert f'href="{built.unsubscribe_url}"' in html
    assert read_token(SECRET, https_token, TokenKind.UNSUBSCRIBE) == Token(
        TokenKind.UNSUBSCRIBE, LIST_ID, recipient.subscriber_id
    )


def test_unsubscribe_token_is_refused_when_altered() -> None:
    recipient = CHINESE_RECIPIENTS[2]
    token, _ = unsubscribe_tokens(parse(template(en_issue()).build(recipient, NOW).data))
    assert read_token(SECRET, token, TokenKind.UNSUBSCRIBE).b == recipient.subscriber_id
    for i in (0, len(token) // 2, len(token) - 1):
        other = "a" if token[i] != "a" else "b"
        with pytest.raises(BadToken):
            read_token(SECRET, token[:i] + other + token[i + 1 :], TokenKind.UNSUBSCRIBE)
    for cut in (1, 8, len(token) - 1):
        with pytest.raises(BadToken):
            read_token(SECRET, token[:-cut], TokenKind.UNSUBSCRIBE)
    with pytest.raises(BadToken):
        read_token(b"another secret, another install", token, TokenKind.UNSUBSCRIBE)
    with pytest.raises(BadToken):
        read_token(SECRET, token, TokenKind.CONFIRM)
    confirm = make_token(SECRET, TokenKind.CONFIRM, LIST_ID, recipient.subscriber_id)
    with pytest.raises(BadToken):
        read_token(SECRET, confirm, TokenKind.UNSUBSCRIBE)


def test_unsubscribe_token_names_its_own_list() -> None:
    recipient = CHINESE_RECIPIENTS[0]
    token_3, _ = unsubscribe_tokens(parse(template(en_issue(), list_id=3).build(recipient, NOW).data))
    token_4, _ = unsubscribe_tokens(parse(template(en_issue(), list_id=4).build(recipient, NOW).data))
    assert token_3 != token_4
    assert read_token(SECRET, token_4, TokenKind.UNSUBSCRIBE).a == 4


# --- envelope, Message-ID ---------------------------------------------------------------------------------------


def test_envelope_is_verp_bounce_address_and_one_recipient() -> None:
    tmpl = template(zh_issue())
    for recipient in CHINESE_RECIPIENTS:
        built = tmpl.build(recipient, NOW)
        match = re.fullmatch(r"bounces\+([a-z2-7]+)@example\.org", built.mail_from)
        assert match, built.mail_from
        assert len(built.mail_from.partition("@")[0]) <= 64
        assert read_token(SECRET, match.group(1), TokenKind.BOUNCE) == Token(
            TokenKind.BOUNCE, CAMPAIGN_ID, recipient.delivery_id
        )
        with pytest.raises(BadToken):
            read_token(SECRET, match.group(1), TokenKind.UNSUBSCRIBE)
        assert built.rcpt_to == recipient.email
        assert built.smtputf8 is False


def test_internationalised_recipient_address() -> None:
    built = template(en_issue()).build(Recipient(1, 1, "用户@例子.测试", "用户"), NOW)
    assert built.rcpt_to == "用户@xn--fsqu00a.xn--0zwm56d"
    assert built.smtputf8 is True


def test_message_id_unique_per_recipient_and_stable_across_retries() -> None:
    tmpl = template(zh_issue())
    first = [tmpl.build(r, NOW) for r in CHINESE_RECIPIENTS]
    ids = [m.message_id for m in first]
    assert len(set(ids)) == len(ids)
    for built in first:
        assert re.fullmatch(r"<[^<>@\s]+@example\.org>", built.message_id)
        assert str(parse(built.data)["Message-ID"]) == built.message_id
    # A retry after a crash rebuilds the template from the stored campaign: same campaign id, same salt.
    retried = template(zh_issue()).build(CHINESE_RECIPIENTS[0], datetime(2026, 11, 16, 9, 0, tzinfo=UTC))
    assert retried.message_id == ids[0]
    assert template(zh_issue(), campaign_id=CAMPAIGN_ID + 1).build(CHINESE_RECIPIENTS[0], NOW).message_id not in ids


def test_same_recipient_built_twice_is_the_same_message() -> None:
    tmpl = template(en_issue())
    assert tmpl.build(CHINESE_RECIPIENTS[0], NOW) == tmpl.build(CHINESE_RECIPIENTS[0], NOW)


# --- subscriber data in the bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", sorted(ISSUES))
def test_subscriber_data_is_escaped_in_html_only(lang: str) -> None:
    name = "<script>alert(1)</script>"
    message = parse(template(ISSUES[lang]()).build(Recipient(1, 1, "x@example.org", name), NOW).data)
    text, html = bodies(message)
    assert name in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert message["To"].addresses[0].display_name == name


def test_subscriber_attributes_are_substituted_and_cleaned() -> None:
    source = (GOLDEN / "personalised" / "issue.md").read_text(encoding="utf-8")
    issue = render_issue(source, "personalised.md", ListContext(name="bulletin", title="简报", lang="zh"))
    recipient = Recipient(1, 1, "x@example.org", "赵六", {"city": "杭州\r\nBcc: <b>x</b>"})
    text, html = bodies(parse(template(issue).build(recipient, NOW).data))
    assert "【杭州 Bcc: <b>x</b>本地活动】" in text
    assert "杭州 Bcc: &lt;b&gt;x&lt;/b&gt;专利沙龙" in html


def test_empty_name_uses_the_list_language_fallback(store: Store, config: Config) -> None:
    prepared = prepare_issue(store, config, GOLDEN / "sample" / "issue.md", "bulletin")
    tmpl = build_template(prepared, 7, "salt", config.secret)
    text, html = bodies(parse(tmpl.build(Recipient(1, 1, "anon@example.org", ""), NOW).data))
    assert "读者，您好：" in text
    assert "读者，您好：" in html


def test_store_backed_template_uses_the_list_identity(store: Store, config: Config) -> None:
    prepared = prepare_issue(store, config, GOLDEN / "sample" / "issue.md", "bulletin")
    built = build_template(prepared, 7, "salt", config.secret).build(CHINESE_RECIPIENTS[0], NOW)
    message = parse(built.data)
    assert message["From"].addresses == (Address("简报", addr_spec="bulletin@example.org"),)
    assert mailbox(built.data, "To") == ("张三", "zhang.san@example.org")
    assert str(message["Reply-To"]) == "editor@example.org"
    assert str(message["List-Id"]) == "知识产权运营简报 <bulletin.example.org>"
    token, _ = unsubscribe_tokens(message)
    assert read_token(config.secret, token, TokenKind.UNSUBSCRIBE) == Token(
        TokenKind.UNSUBSCRIBE, prepared.mailing_list.id, CHINESE_RECIPIENTS[0].subscriber_id
    )
    with pytest.raises(BadToken):
        read_token(SECRET, token, TokenKind.UNSUBSCRIBE)


# --- the shared wire checker ------------------------------------------------------------------------------------


def test_generated_messages_pass_check_eml(tmp_path: Path, store: Store, config: Config) -> None:
    paths = []
    for campaign_id, (lang, issue) in enumerate(ISSUES.items(), start=1):
        tmpl = template(issue(), campaign_id=campaign_id)
        for recipient in [*CHINESE_RECIPIENTS[:3], ASCII_RECIPIENT]:
            path = tmp_path / f"{lang}-{recipient.subscriber_id}.eml"
            path.write_bytes(tmpl.build(recipient, NOW).data)
            paths.append(path)
    paths.extend(
        p
        for p in render_to_dir(GOLDEN / "sample" / "issue.md", tmp_path / "render", config, store, "bulletin")
        if p.suffix == ".eml"
    )
    result = subprocess.run(
        [sys.executable, str(CHECK_EML), *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(paths)} messages, 0 failures" in result.stdout


# --- identity with the email package ----------------------------------------------------------------------------


def reference_message(tmpl: MessageTemplate, recipient: Recipient, built: BuiltMessage) -> EmailMessage:
    """The same message built by the email package, as the fast builder claims to reproduce."""
    html, text = tmpl.personal_bodies(recipient, built.unsubscribe_url, NOW)
    ref = EmailMessage(policy=policy.SMTP)
    ref["From"] = Address(tmpl.sender.from_name, addr_spec=tmpl.sender.from_addr)
    ref["To"] = Address(recipient.name, addr_spec=recipient.email)
    ref["Subject"] = tmpl.issue.subject
    ref["Date"] = NOW
    ref["Message-ID"] = built.message_id
    ref["Reply-To"] = tmpl.sender.reply_to
    ref["List-Id"] = f"{tmpl.sender.list_title} <bulletin.example.org>"
    ref["List-Unsubscribe"] = (
        f"<{built.unsubscribe_url}>, <mailto:unsubscribe+"
        f"{built.unsubscribe_url.rpartition('/')[2]}@example.org?subject=unsubscribe>"
    )
    ref["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    ref.set_content(text, cte=tmpl.text.cte)
    ref.add_alternative(html, subtype="html", cte=tmpl.html.cte)
    ref.set_boundary(tmpl.boundary)
    # add_alternative makes the new part an EmailMessage, which stamps MIME-Version on it; RFC 2045 wants it only
    # at the top level, and the fast builder writes it only there.
    del ref.get_payload()[1]["MIME-Version"]
    return ref


@pytest.mark.parametrize(("lang", "cte"), [("zh", "base64"), ("en", "quoted-printable")])
def test_bodies_are_byte_identical_to_the_email_package(lang: str, cte: str) -> None:
    tmpl = template(ISSUES[lang]())
    assert tmpl.text.cte == tmpl.html.cte == cte
    built = tmpl.build(ASCII_RECIPIENT, NOW)
    ours = built.data.partition(b"\r\n\r\n")[2]
    theirs = reference_message(tmpl, ASCII_RECIPIENT, built).as_bytes().partition(b"\r\n\r\n")[2]
    assert ours == theirs


@pytest.mark.parametrize("lang", sorted(ISSUES))
def test_bodies_with_an_attachment_are_byte_identical_to_the_email_package(lang: str) -> None:
    pdf = Attachment("report.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(range(256)) * 300)
    tmpl = template(replace(ISSUES[lang](), attachments=(pdf,)))
    built = tmpl.build(ASCII_RECIPIENT, NOW)
    ref = reference_message(tmpl, ASCII_RECIPIENT, built)
    ref.add_attachment(pdf.data, "application", "pdf", filename=pdf.filename, params={"name": pdf.filename})
    ref.set_boundary(tmpl.boundary.replace("==mailer-", "==mailer-mix-"))
    alternative, attached = ref.iter_parts()
    del alternative["MIME-Version"], attached["MIME-Version"]
    # set_param re-adds Content-Type last; a part's header order is the builder's choice (Content-Type first, as
    # for the text parts), so the reference gets the same order and everything else must match byte for byte.
    fields = attached.items()
    for name, _ in fields:
        del attached[name]
    for name, value in sorted(fields, key=lambda field: field[0] != "Content-Type"):
        attached[name] = value
    assert parse(built.data).get_content_type() == "multipart/mixed"
    assert built.data.partition(b"\r\n\r\n")[2] == ref.as_bytes().partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("lang", sorted(ISSUES))
def test_a_cjk_named_attachment_with_images_has_the_email_packages_structure(lang: str) -> None:
    """A name in any script is written as RFC 2047 `name=` beside RFC 2231 `filename*=` (the email package writes
    only the latter, which Outlook and Gmail's web client do not read), and images add multipart/related: not byte
    for byte the email package's then, but the same tree, the same decoded names and the same bytes."""
    pdf = Attachment("简报第10期（印刷版）.pdf", "application/pdf", bytes(range(256)) * 300)
    image = InlineImage("chart.1@mailer", "chart.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    tmpl = template(replace(ISSUES[lang](), attachments=(pdf,), images=(image,)))
    built = tmpl.build(ASCII_RECIPIENT, NOW)
    ref = reference_message(tmpl, ASCII_RECIPIENT, built)
    ref.make_mixed()  # the email package nests related inside alternative; Outlook's order is built by hand
    related = EmailMessage(policy=policy.SMTP)
    related["Content-Type"] = 'multipart/related; type="multipart/alternative"'
    embedded = EmailMessage(policy=policy.SMTP)
    embedded.set_content(
        image.data, "image", "png", cid=f"<{image.cid}>", filename=image.filename, disposition="inline"
    )
    for part in (ref.get_payload()[0], embedded):
        related.attach(part)
    ref.get_payload()[0] = related
    ref.add_attachment(pdf.data, "application", "pdf", filename=pdf.filename)

    def tree(message: EmailMessage) -> list[tuple[str, str | None, str | None, bytes | None]]:
        return [
            (
                part.get_content_type(),
                part.get_filename(),
                part.get_content_disposition(),
                None if part.is_multipart() else part.get_payload(decode=True),
            )
            for part in message.walk()
        ]

    ours, theirs = parse(built.data), parse(ref.as_bytes())
    assert tree(ours) == tree(theirs)
    assert [str(p["Content-ID"]) for p in ours.walk()] == [str(p["Content-ID"]) for p in theirs.walk()]
    assert ours.get_content_type() == "multipart/mixed" and ours.get_body(("html",)) is not None


@pytest.mark.parametrize("lang", sorted(ISSUES))
@pytest.mark.parametrize("recipient", [*CHINESE_RECIPIENTS, ASCII_RECIPIENT], ids=lambda r: r.email)
def test_headers_and_bodies_parse_like_the_email_package(lang: str, recipient: Recipient) -> None:
    tmpl = template(ISSUES[lang]())
    built = tmpl.build(recipient, NOW)
    ours = parse(built.data)
    reference = reference_message(tmpl, recipient, built).as_bytes()
    theirs = parse(reference)
    for name in ("From", "To", "List-Id"):
        assert mailbox(built.data, name) == mailbox(reference, name), name
    for name in (
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "MIME-Version",
        "Content-Type",
    ):
        assert str(ours[name]) == str(theirs[name]), name
    assert bodies(ours) == bodies(theirs)


# --- header injection, any script -------------------------------------------------------------------------------


@functools.cache
def small_issue() -> RenderedIssue:
    return render_issue(
        "---\nsubject: x\n---\n\nHi.\n\n## One\n\nBody.\n",
        "small.md",
        ListContext(name="bulletin", title="Bulletin", lang="en"),
    )


def with_evil_examples(test):  # type: ignore[no-untyped-def]
    for value in EVIL:
        test = example(display=value, subject=value)(test)
    return example(display="\r\n".join(EVIL), subject="".join(EVIL))(test)


@settings(max_examples=200, deadline=None)
@given(display=st.text(), subject=st.text())
@with_evil_examples
def test_no_input_adds_a_header_or_breaks_a_line(display: str, subject: str) -> None:
    issue = replace(small_issue(), subject=subject)
    sender = replace(SENDER, from_name=display, list_title=display)
    built = template(issue, sender=sender).build(Recipient(1, 1, "reader@example.org", display), NOW)
    assert_wire_safe(built.data)
    head = header_block(built.data)
    names = header_names(head)
    assert sorted(names) == sorted(EXPECTED_HEADERS)
    assert "bcc" not in names and "cc" not in names
    message = parse(built.data)
    assert str(message["Subject"]) == clean_header_text(subject)
    expected = clean_header_text(display)
    assert mailbox(built.data, "From") == (expected, "bulletin@example.org")
    assert mailbox(built.data, "To") == (expected, "reader@example.org")
    assert mailbox(built.data, "List-Id") == (expected, "bulletin.example.org")
    assert message["To"].addresses[0].addr_spec == "reader@example.org"
    assert message["Bcc"] is None and message["Cc"] is None


def assert_one_safe_header(header: str, name: str) -> None:
    assert header.startswith(f"{name}:") and header.endswith("\r\n")
    lines = header[:-2].split("\r\n")
    for line in lines:
        assert "\r" not in line and "\n" not in line
        assert len(line.encode("utf-8")) <= 998
    assert all(line[:1] in (" ", "\t") for line in lines[1:])
    assert not re.search(r"[\x00-\x1f\x7f]", header[:-2].replace("\r\n", ""))


@settings(max_examples=200, deadline=None)
@given(value=st.text())
@example(value="a\r\nBcc: x@evil.test")
@example(value="=?utf-8?b?DQpCY2M6IHhAZXZpbC50ZXN0?=")
@example(value="=?utf-8?q?a=0D=0ABcc:_x@evil.test?=")
@example(value="a.b " * 400)
@example(value="中" * 1500)
def test_header_functions_clean_fold_and_round_trip(value: str) -> None:
    subject = unstructured_header("Subject", value)
    assert_one_safe_header(subject, "Subject")
    assert subject.isascii()
    to = address_header("To", value, "reader@example.org")
    assert_one_safe_header(to, "To")
    assert to.isascii()
    data = (subject + to + "\r\nbody\r\n").encode("ascii")
    parsed = parse(data)
    assert list(parsed.keys()) == ["Subject", "To"]
    assert str(parsed["Subject"]) == clean_header_text(value)
    assert mailbox(data, "To") == (clean_header_text(value), "reader@example.org")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\r\nBcc: x@evil.test", "a Bcc: x@evil.test"),
        ("  two   spaces\there ", "two spaces here"),
        ("line\u2028sep\u2029para\u0085nel", "line sep para nel"),
        ("nul\x00esc\x1b", "nul esc"),
        ("e\u0301", "\u00e9"),  # NFC
        ("张三", "张三"),
    ],
)
def test_clean_header_text(raw: str, clean: str) -> None:
    assert clean_header_text(raw) == clean


def test_encoded_word_that_decodes_to_crlf_stays_one_word() -> None:
    header = unstructured_header("Subject", "=?utf-8?b?DQpCY2M6IHhAZXZpbC50ZXN0?=")
    # The literal text is re-encoded, so a reader decodes it back to the same harmless characters.
    assert "=?utf-8?b?DQpCY2M6IHhAZXZpbC50ZXN0?=" not in header
    parsed = parse((header + "\r\n").encode("ascii"))
    assert str(parsed["Subject"]) == "=?utf-8?b?DQpCY2M6IHhAZXZpbC50ZXN0?="
    assert parsed["Bcc"] is None


@pytest.mark.parametrize(
    "addr",
    [
        "a@b.example\r\nBcc: x@evil.test",
        "x@evil.test>, <y@evil.test",
        "",
        "no-at-sign",
        "a b@example.org",
        "a@b@example.org",
        "<x@example.org>",
    ],
)
def test_unusable_addresses_are_refused_never_encoded(addr: str) -> None:
    with pytest.raises(HeaderError):
        address_header("To", "Name", addr)
    with pytest.raises(HeaderError):
        template(en_issue()).build(Recipient(1, 1, addr, "Name"), NOW)


def test_bidi_overrides_are_removed_from_names() -> None:
    """U+202E would show 'gpj.exe' as 'exe.jpg'-style reversed text in a client; a name never needs it."""
    assert clean_header_text("Bob\u202egpj.exe\u202c") == "Bobgpj.exe"
    assert clean_header_text("\u2067李娜\u2069") == "李娜"
    assert clean_header_text("עברית and English") == "עברית and English"  # right-to-left text itself stays


# --- subjects: only the words that need it are encoded ------------------------------------------------------------

ENCODED_WORD = re.compile(r"=\?utf-8\?b\?[A-Za-z0-9+/=]*\?=")


def unfolded_subject(value: str) -> str:
    return unstructured_header("Subject", value).removesuffix("\r\n").replace("\r\n", "")


@pytest.mark.parametrize(
    "subject",
    [
        "Weekly notes: https://news.example.org/2026/11/" + "a-very-long-slug-" * 6 + "that-goes-on",
        "Donaudampfschifffahrtselektrizitaetenhauptbetriebswerkbauunterbeamtengesellschaftsnewsletter 12",
    ],
)
def test_an_ascii_subject_with_a_long_word_is_not_encoded(subject: str) -> None:
    header = unstructured_header("Subject", subject)
    assert "=?" not in header  # rspamd scores an ASCII subject sent in base64 (SUBJ_EXCESS_BASE64)
    assert unfolded_subject(subject) == "Subject: " + subject
    assert max(len(line) for line in header.split("\r\n")) <= 998


def test_a_mixed_subject_encodes_only_its_non_ascii_runs() -> None:
    subject = "Newsletter #12: 知识产权 运营 from Zürich, and more news"
    header = unstructured_header("Subject", subject)
    raw = unfolded_subject(subject)
    assert raw.startswith("Subject: Newsletter #12: =?utf-8?b?") and raw.endswith(
        "?= from =?utf-8?b?WsO8cmljaCw=?= and more news"
    )
    assert len(ENCODED_WORD.findall(raw)) == 2  # 知识产权 运营 is one run, its space encoded inside it
    assert str(make_header(decode_header(raw.removeprefix("Subject: ")))) == subject
    assert str(parse((header + "\r\n").encode("ascii"))["Subject"]) == subject


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(
        st.one_of(
            st.from_regex(r"[A-Za-z0-9#:,.!?&-]{1,20}", fullmatch=True),
            st.text(
                st.characters(
                    min_codepoint=0xA0, max_codepoint=0x2FFFF, blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc", "Cf")
                ),
                min_size=1,
                max_size=30,
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_subject_words_round_trip_and_fold_within_78(words: list[str]) -> None:
    subject = clean_header_text(" ".join(words))
    header = unstructured_header("Subject", subject)
    lines = header.removesuffix("\r\n").split("\r\n")
    assert max(len(line) for line in lines) <= 78
    assert all(len(word) <= 75 for word in ENCODED_WORD.findall(header))
    raw = unfolded_subject(subject)
    for word in subject.split(" "):
        if word.isascii() and "=?" not in word:
            assert re.search(rf"(^| ){re.escape(word)}( |$)", raw.removeprefix("Subject: ")), (word, raw)
    assert str(parse((header + "\r\n").encode("ascii"))["Subject"]) == subject


@pytest.mark.parametrize(
    "value",
    [
        "A <a@example.org>, B <b@example.org>",
        "Evil <evil@example.org>\r\nBcc: x@example.org",
        '"News" <news@example.org> junk <other@example.org>',
        "news@example.org other@example.org",
    ],
)
def test_a_from_of_more_than_one_mailbox_is_refused_not_cut_to_the_first(value: str) -> None:
    with pytest.raises(HeaderError, match="one, with nothing after it"):
        parse_from(value)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("简报 <news@example.org>", ("简报", "news@example.org")),
        ('"Doe, John" <j@example.org>', ("Doe, John", "j@example.org")),
        ("news@example.org", ("", "news@example.org")),
        ("<news@example.org>", ("", "news@example.org")),
    ],
)
def test_a_from_of_one_mailbox_reads(value: str, parsed: tuple[str, str]) -> None:
    assert parse_from(value) == parsed


def test_lists_create_with_two_from_addresses_is_one_error_line(store, run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("lists", "create", "two", "--from", "A <a@example.org>, B <b@example.org>")
    assert result.returncode == 1 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "two" not in run_cli("lists", "ls").stdout
