"""Spam-safe by construction: the sample issue as actually sent (DKIM-signed, through aiosmtpd) scored by Debian's
SpamAssassin with network tests off, and the structure filters look at: both parts, every link in both, no trackers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mailer.capture import CaptureServer
from mailer.dkim import generate_key
from tests.conftest import SAMPLE_CSV, SAMPLE_ISSUE

REPO = Path(__file__).resolve().parent.parent
EN_ISSUE = REPO / "tests" / "golden" / "en-basic" / "issue.md"
THRESHOLD = 2.0  # SpamAssassin's own cut-off is 5
# Rules that mean a structural mistake: missing headers, HTML-only or broken MIME, links whose text and target
# disagree, hidden or low-contrast text, a bad signature.
FORBIDDEN = re.compile(
    r"^(MISSING_|MIME_|MPART_|HTML_MIME_|HTML_IMAGE_|HTML_FONT_LOW|HTML_SHORT_LINK|INVALID_|"
    r"FORGED_|DKIM_INVALID|T_DKIM_INVALID|HEADER_|TVD_)|MISMATCH|HTML_ONLY|OBFU"
)


def spamassassin() -> str:
    exe = shutil.which("spamassassin")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("spamassassin is not installed (CI installs it: bash scripts/setup --test)")
        pytest.skip("spamassassin is not installed (apt-get install spamassassin)")
    return exe


def spam_report(data: bytes, home: Path) -> tuple[float, list[str]]:
    """Score and rules of `spamassassin -L -t` (local tests only: no DNS, no network), without touching the user's
    Bayes database (a throwaway HOME, learning off)."""
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [spamassassin(), "-L", "-t", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
        input=data,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    status = str(message_from_bytes(result.stdout, policy=policy.default)["X-Spam-Status"])
    match = re.search(r"score=(-?[\d.]+) required=[\d.]+ tests=(\S*)", re.sub(r",\s+", ",", status))
    assert match, status
    return float(match.group(1)), [t for t in match.group(2).split(",") if t and t != "none"]


def send(run_cli, smtp_server: CaptureServer, tmp_path: Path, issue: Path, lang: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    """The issue sent to the sample subscribers as `mailer send` does it: DKIM-signed, https links."""
    generate_key("news2026", "example.org", tmp_path / "keys")
    env = {
        "MAILER_BASE_URL": "https://news.example.org",
        "MAILER_DKIM_KEY": str(tmp_path / "keys" / "news2026._domainkey.example.org.pem"),
        "MAILER_DKIM_SELECTOR": "news2026",
        "MAILER_DKIM_DOMAIN": "example.org",
    }
    for args in (
        ("init",),
        (
            "lists",
            "create",
            "bulletin",
            "--title",
            "知识产权运营简报" if lang == "zh" else "IP Bulletin",
            "--from",
            "知识产权运营简报 <bulletin@example.org>",
            "--reply-to",
            "editor@example.org",
            "--lang",
            lang,
        ),
        ("subs", "import", str(SAMPLE_CSV), "--list", "bulletin"),
        ("send", str(issue), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port)),
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
    return [c.data for c in smtp_server.received]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and dict(attrs).get("href"):
            self.hrefs.append(dict(attrs)["href"] or "")
        if tag == "img":
            self.images.append(dict(attrs))
        if tag in ("style", "title", "head"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title", "head"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def parts(data: bytes) -> tuple[str, str]:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


@pytest.mark.parametrize(("issue", "lang"), [(SAMPLE_ISSUE, "zh"), (EN_ISSUE, "en")], ids=["sample-zh", "en"])
def test_spamassassin_scores_the_sent_issue_well_below_the_threshold(
    run_cli, smtp_server: CaptureServer, tmp_path: Path, issue: Path, lang: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spamassassin()
    messages = send(run_cli, smtp_server, tmp_path, issue, lang)

    score, rules = spam_report(messages[0], tmp_path / "sa-home")

    with capsys.disabled():
        print(f"\n{issue.name} ({lang}): SpamAssassin {score} ({', '.join(rules)}); message {len(messages[0]):,} bytes")
    assert score < THRESHOLD, rules
    assert not [rule for rule in rules if FORBIDDEN.search(rule)], rules


def test_every_link_in_the_html_is_in_the_text_and_nothing_tracks(
    run_cli, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    first, second = send(run_cli, smtp_server, tmp_path, SAMPLE_ISSUE, "zh")[:2]
    text, html = parts(first)
    links = _Links()
    links.feed(html)

    targets = [href for href in links.hrefs if not href.startswith("#")]  # the table of contents jumps in place
    assert len(targets) >= 5
    for href in targets:
        assert href.removeprefix("mailto:") in text, f"{href} is in the HTML part only"
    # No tracking: no images at all in this issue (so no pixel), and the only link that differs between two
    # recipients are their own unsubscribe and preferences links (no per-recipient click redirects).
    assert links.images == []
    other = _Links()
    other.feed(parts(second)[1])
    differing = [(a, b) for a, b in zip(links.hrefs, other.hrefs, strict=True) if a != b]
    assert [kind for pair in differing for kind in {href.split("/")[3] for href in pair}] == ["u", "p"]
    # Text-to-HTML ratio: the plain part carries the whole issue, not a stub.
    visible = "".join("".join(links.text).split())
    assert len("".join(text.split())) >= 0.9 * len(visible)


def test_the_check_catches_what_it_guards_against(tmp_path: Path) -> None:
    """The same SpamAssassin run flags an HTML-only message with no Date or Message-ID (so a pass above means
    something)."""
    spamassassin()
    bad = EmailMessage()
    bad["From"] = "news@example.org"
    bad["To"] = "reader@example.org"
    bad["Subject"] = "Hello"
    bad.set_content(
        "<html><body><p>Click <a href='https://example.org/x'>https://example.net/y</a></p></body></html>",
        subtype="html",
    )

    _, rules = spam_report(bad.as_bytes(), tmp_path / "sa-home")

    assert [rule for rule in rules if FORBIDDEN.search(rule)], rules
