"""DKIM: keygen and its DNS record, signatures dkimpy verifies (public key injected as the DNS answer), what breaks
them, and real sends through aiosmtpd with MAILER_DKIM_* set."""

from __future__ import annotations

import os
import pickle
import re
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from unittest import mock

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

import mailer.dkim
from mailer.attachments import Attachment
from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.dkim import (
    DKIMError,
    Signer,
    alignment,
    generate_key,
    load_signer,
    organisational_domain,
    record_tags,
    relaxed_body,
)
from mailer.errors import ConfigError
from mailer.message import MessageTemplate, Sender
from mailer.models import Recipient
from mailer.render import InlineImage, ListContext, render_issue
from tests.conftest import CHECK_EML, SAMPLE_CSV, SAMPLE_ISSUE

REQUIRED = {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"}
NOW = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    generate_key("news2026", "example.org", directory)
    return directory


@pytest.fixture(scope="module")
def signer(key_dir: Path) -> Signer:
    return Signer.from_file(key_dir / "news2026._domainkey.example.org.pem", "news2026", "example.org")


@pytest.fixture(scope="module")
def template(signer: Signer) -> MessageTemplate:
    issue = render_issue(
        SAMPLE_ISSUE.read_text(encoding="utf-8"), "sample.md", ListContext("bulletin", "知识产权运营简报", "zh")
    )
    sender = Sender(
        "知识产权运营简报",
        "bulletin@example.org",
        "editor@example.org",
        "bulletin",
        "知识产权运营简报",
        "https://news.example.org",
    )
    return MessageTemplate(issue, sender, secret=b"k" * 32, campaign_id=7, list_id=1, salt="s", signer=signer)


def dns_for(signer: Signer):  # type: ignore[no-untyped-def]
    """A DNS lookup that answers the signer's selector with its public key, as a published record would."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        if name.decode().rstrip(".") == f"{signer.selector}._domainkey.{signer.domain}":
            return f"v=DKIM1; k=rsa; p={signer.public_key}".encode()
        return None

    return lookup


def verify(data: bytes, signer: Signer) -> bool:
    return bool(dkimpy.verify(data, dnsfunc=dns_for(signer)))


def signature_tags(data: bytes) -> dict[str, str]:
    header = str(message_from_bytes(data)["DKIM-Signature"])
    return record_tags(header)


def build(template: MessageTemplate, email: str = "wang@example.org", name: str = "王小明") -> bytes:
    return template.build(Recipient(3, 5, email, name, {}), NOW).data


# ---- keygen --------------------------------------------------------------------------------------------------------


def test_keygen_writes_a_private_2048_bit_key_and_prints_the_txt_record(run_cli, tmp_path: Path) -> None:
    result = run_cli("dkim", "keygen", "--selector", "news2026", "--domain", "example.org", "-o", "keys")

    assert result.returncode == 0, result.stderr
    path = tmp_path / "keys" / "news2026._domainkey.example.org.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert key.key_size == 2048  # type: ignore[union-attr]
    record = result.stdout.strip()
    assert record.startswith('news2026._domainkey.example.org IN TXT "v=DKIM1; k=rsa; p=')
    strings = re.findall(r'"([^"]*)"', record)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert record_tags("".join(strings))["p"] == Signer(path.read_bytes(), "news2026", "example.org").public_key
    assert str(path.relative_to(tmp_path)) in result.stderr  # where the key is, and what to set


def test_keygen_never_overwrites_a_key(run_cli, tmp_path: Path) -> None:
    args = ("dkim", "keygen", "--selector", "s1", "--domain", "example.org")
    assert run_cli(*args).returncode == 0
    before = (tmp_path / "s1._domainkey.example.org.pem").read_bytes()

    again = run_cli(*args)

    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "already exists" in again.stderr
    assert (tmp_path / "s1._domainkey.example.org.pem").read_bytes() == before


def test_keygen_refuses_a_selector_that_is_not_a_dns_name(run_cli) -> None:
    result = run_cli("dkim", "keygen", "--selector", "bad selector;", "--domain", "example.org")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: DKIM selector 'bad selector;' is not a valid DNS name"


# ---- signatures ----------------------------------------------------------------------------------------------------


def test_signed_message_verifies_with_dkimpy_and_covers_the_rfc_8058_headers(
    template: MessageTemplate, signer: Signer
) -> None:
    data = build(template)

    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;")
    assert verify(data, signer)
    tags = signature_tags(data)
    assert tags["s"] == "news2026" and tags["d"] == "example.org" and tags["a"] == "rsa-sha256"
    signed = tags["h"].split(":")
    assert REQUIRED | {"reply-to", "list-id", "mime-version", "content-type"} <= set(signed)
    assert tags["t"] == str(int(NOW.timestamp()))
    assert all(len(line) <= 78 for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))


@pytest.mark.parametrize(
    "change",
    [
        ("List-Unsubscribe: <https://news.example.org/u/", "List-Unsubscribe: <https://evil.example.net/u/"),
        ("List-Unsubscribe-Post: List-Unsubscribe=One-Click", "List-Unsubscribe-Post: List-Unsubscribe=Two-Clicks"),
        ("Subject: =?utf-8?b?", "Subject: =?utf-8?B?"),
        ("To: ", "To: x"),
    ],
)
def test_a_changed_signed_header_fails_verification(
    template: MessageTemplate, signer: Signer, change: tuple[str, str]
) -> None:
    data = build(template)
    old, new = (part.encode() for part in change)
    assert old in data
    assert not verify(data.replace(old, new, 1), signer)


def test_an_added_second_list_unsubscribe_or_from_fails_verification(template: MessageTemplate, signer: Signer) -> None:
    data = build(template)
    head, _, body = data.partition(b"\r\n\r\n")
    for extra in (b"List-Unsubscribe: <https://evil.example.net/u/x>", b"From: <ceo@example.org>"):
        assert not verify(head + b"\r\n" + extra + b"\r\n\r\n" + body, signer)


def test_a_changed_body_fails_but_whitespace_a_relay_may_change_does_not(
    template: MessageTemplate, signer: Signer
) -> None:
    data = build(template)
    head, _, body = data.partition(b"\r\n\r\n")
    assert not verify(
        head + b"\r\n\r\n" + body.replace(b"Content-Type: text/html", b"Content-Type: text/plain"), signer
    )
    # relaxed/relaxed: refolding a header, trailing spaces and extra blank lines at the end still verify
    refolded = head.replace(b"MIME-Version: 1.0", b"MIME-Version:   1.0 ").replace(b",\r\n <mailto:", b", <mailto:")
    assert verify(refolded + b"\r\n\r\n" + body + b"\r\n\r\n", signer)


def test_signature_is_byte_identical_to_dkimpys_own(template: MessageTemplate, signer: Signer) -> None:
    """Same key, headers, time and canonicalisation: RSA PKCS#1 v1.5 is deterministic, so b= must match."""
    data = build(template)
    unsigned = data.split(b"\r\n", 1)[1]
    unsigned = unsigned[unsigned.index(b"From: ") :]
    ours = signature_tags(data)
    with mock.patch("time.time", return_value=NOW.timestamp()):
        theirs = dkimpy.sign(
            unsigned,
            b"news2026",
            b"example.org",
            signer.private_key_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode() for h in ours["h"].split(":")],
        )
    assert record_tags(theirs.decode().split(":", 1)[1])["b"] == ours["b"]
    assert record_tags(theirs.decode().split(":", 1)[1])["bh"] == ours["bh"]


# ---- with attachments: the campaign's fixed end canonicalised once ------------------------------------------------

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4096 + b"\n%%EOF\n"  # 1 MB


@pytest.fixture(scope="module")
def attachment_templates(signer: Signer) -> tuple[MessageTemplate, MessageTemplate]:
    """The sample issue with a 1 MB PDF under a CJK name and an image: signed, and the same unsigned."""
    base = render_issue(
        SAMPLE_ISSUE.read_text(encoding="utf-8"), "sample.md", ListContext("bulletin", "知识产权运营简报", "zh")
    )
    issue = replace(
        base,
        attachments=(Attachment("简报第10期.pdf", "application/pdf", PDF),),
        images=(InlineImage("c.1@mailer", "c.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),),
    )
    sender = Sender("简报", "bulletin@example.org", "", "bulletin", "知识产权运营简报", "https://news.example.org")
    common: dict[str, Any] = {"secret": b"k" * 32, "campaign_id": 7, "list_id": 1, "salt": "s"}
    return MessageTemplate(issue, sender, signer=signer, **common), MessageTemplate(issue, sender, **common)


def test_a_message_with_attachments_verifies_and_signs_as_the_whole_message_would(
    attachment_templates: tuple[MessageTemplate, MessageTemplate], signer: Signer
) -> None:
    signed, unsigned = attachment_templates
    for email, name in (("wang@example.org", "王小明"), ("li@example.org", "李  四 ")):
        data = build(signed, email, name)
        assert verify(data, signer)
        assert data == signer.sign(build(unsigned, email, name), int(NOW.timestamp()))
        [pdf] = message_from_bytes(data, policy=policy.default).iter_attachments()
        assert pdf.get_payload(decode=True) == PDF and pdf.get_filename() == "简报第10期.pdf"
    assert not verify(data.replace(b"AAECAwQF", b"AAECAwQG", 1), signer)  # the hash still reads the attachment


def test_the_attachment_is_not_canonicalised_again_per_recipient(
    attachment_templates: tuple[MessageTemplate, MessageTemplate], monkeypatch: pytest.MonkeyPatch
) -> None:
    signed, _ = attachment_templates
    scanned = []
    original = mailer.dkim._needs_wsp_fix
    monkeypatch.setattr(mailer.dkim, "_needs_wsp_fix", lambda body: scanned.append(len(body)) or original(body))
    for n in range(20):
        build(signed, f"r{n}@example.org", f"读者{n}")
    assert len(scanned) == 20 and max(scanned) < len(PDF) / 10  # the personal start only: ~60 KB of 1.4 MB


@pytest.mark.parametrize(
    ("start", "tail"),
    [
        (b"From: a@example.org\r\n\r\nbody\r\n", b"\r\n--b--\r\n"),
        (b"From: a@example.org\r\n\r\nno line end", b" \t x  \r\n"),  # the start's last line goes on in the tail
        (b"From: a@example.org\r\n\r\nbody\r\n\r\n", b"\r\n\r\n"),  # an all-empty tail: trailing lines go
        (b"From: a@example.org\r\n\r\n", b"only\r\n"),
        (b"From: a@example.org\nSubject: lf\n\nbody\n", b"end \n\n"),
    ],
)
def test_the_tail_signer_signs_exactly_as_signing_the_whole(signer: Signer, start: bytes, tail: bytes) -> None:
    whole = signer.sign(start + tail, timestamp=5)
    assert signer.for_tail(tail)(start, 5) == whole
    assert verify(whole, signer)


def test_bare_lf_messages_are_signed_in_their_crlf_form(signer: Signer) -> None:
    message = b"From: a@example.org\nTo: b@example.org\nSubject: hi\n\nline one\nline two  \n\n\n"
    signed = signer.sign(message, timestamp=1)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert verify(signed, signer)
    assert relaxed_body(b"a  b \t\r\nc\r\n\r\n\r\n") == b"a b\r\nc\r\n"
    assert relaxed_body(b"") == b""


def test_a_message_without_from_is_not_signed(signer: Signer) -> None:
    with pytest.raises(DKIMError, match="without a From"):
        signer.sign(b"To: b@example.org\r\n\r\nhi\r\n")


def test_signer_survives_pickling_for_worker_processes(signer: Signer) -> None:
    copy = pickle.loads(pickle.dumps(signer))
    assert copy.public_key == signer.public_key
    assert verify(copy.sign(b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"), signer)


PLAIN_ISSUE = render_issue(
    "---\nsubject: Weekly\n---\n\nHi {{ subscriber.name }}\n\n## A\n\nB\n", "p.md", ListContext("l", "List", "en")
)


@settings(max_examples=25, deadline=None)
@given(sender_name=st.text(max_size=40), name=st.text(max_size=40))
def test_any_sender_or_recipient_name_still_verifies(signer: Signer, sender_name: str, name: str) -> None:
    sender = Sender(sender_name, "news@example.org", "", "l", sender_name or "List", "https://news.example.org")
    data = (
        MessageTemplate(PLAIN_ISSUE, sender, secret=b"k" * 32, campaign_id=1, list_id=1, salt="s", signer=signer)
        .build(Recipient(1, 1, "r@example.org", name, {}), NOW)
        .data
    )
    assert verify(data, signer)


# ---- configuration -------------------------------------------------------------------------------------------------


def test_load_signer_needs_all_three_settings_and_a_private_key(key_dir: Path, tmp_path: Path) -> None:
    key = key_dir / "news2026._domainkey.example.org.pem"
    assert load_signer(Config()) is None
    with pytest.raises(ConfigError, match="MAILER_DKIM_DOMAIN"):
        load_signer(Config(dkim_key=str(key), dkim_selector="news2026"))
    loose = tmp_path / "loose.pem"
    loose.write_bytes(key.read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_signer(Config(dkim_key=str(loose), dkim_selector="s", dkim_domain="example.org"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_signer(Config(dkim_key=str(tmp_path / "nope.pem"), dkim_selector="s", dkim_domain="example.org"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    os.chmod(garbage, 0o600)
    with pytest.raises(DKIMError, match="not a PEM private key"):
        load_signer(Config(dkim_key=str(garbage), dkim_selector="s", dkim_domain="example.org"))


def test_alignment_uses_the_organisational_domain() -> None:
    assert alignment("example.org", "example.org") == "strict"
    assert alignment("news.example.org", "example.org") == "relaxed"
    assert alignment("bulletin.example.com.cn", "mail.example.com.cn") == "relaxed"
    assert alignment("example.com.cn", "other.com.cn") is None
    assert alignment("example.org", "example.net") is None
    assert organisational_domain("a.b.example.co.uk") == "example.co.uk"


# ---- real sends ----------------------------------------------------------------------------------------------------


def dkim_env(key_dir: Path) -> dict[str, str]:
    return {
        "MAILER_DKIM_KEY": str(key_dir / "news2026._domainkey.example.org.pem"),
        "MAILER_DKIM_SELECTOR": "news2026",
        "MAILER_DKIM_DOMAIN": "example.org",
        "MAILER_BASE_URL": "https://news.example.org",
    }


def setup_list(run_cli, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    for args in (
        ("init",),
        (
            "lists",
            "create",
            "bulletin",
            "--title",
            "知识产权运营简报",
            "--from",
            "知识产权运营简报 <bulletin@example.org>",
            "--reply-to",
            "editor@example.org",
        ),
        ("subs", "import", str(SAMPLE_CSV), "--list", "bulletin"),
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_mailer_send_with_dkim_configured_signs_every_message(
    run_cli, key_dir: Path, signer: Signer, smtp_server: CaptureServer, workers: str
) -> None:
    env = dkim_env(key_dir)
    setup_list(run_cli, env)

    result = run_cli(
        "send",
        str(SAMPLE_ISSUE),
        "--list",
        "bulletin",
        "--yes",
        "--workers",
        workers,
        "--smtp-port",
        str(smtp_server.port),
        env=env,
    )

    assert result.returncode == 0, result.stderr
    received = smtp_server.received
    assert len(received) == 20
    assert all(verify(c.data, signer) for c in received)
    assert all(c.data.startswith(b"DKIM-Signature: ") for c in received)
    check = subprocess.run(
        [sys.executable, str(CHECK_EML), *(str(c.path) for c in received)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout


def test_a_bad_key_stops_the_send_before_any_smtp(
    run_cli, key_dir: Path, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    env = dkim_env(key_dir) | {"MAILER_DKIM_KEY": str(tmp_path / "missing.pem")}
    setup_list(run_cli, env)

    result = run_cli(
        "send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port), env=env
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: DKIM key ") and "does not exist" in result.stderr
    assert smtp_server.connections == 0


def test_mailer_render_signs_the_sample_eml(run_cli, key_dir: Path, signer: Signer, tmp_path: Path) -> None:
    result = run_cli("render", str(SAMPLE_ISSUE), "-o", "out", env=dkim_env(key_dir))
    assert result.returncode == 0, result.stderr
    assert verify((tmp_path / "out" / "sample.eml").read_bytes(), signer)
