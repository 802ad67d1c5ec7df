"""What the editor sees before sending: screenshots from Debian's Chromium, the mail-client check, the live preview,
test sends, and the layout's conveniences (embedded images, preheader, masthead, a readable plain-text part)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image, ImageDraw, ImageStat

from mailer.campaign import issue_from_json, issue_to_json
from mailer.capture import CaptureServer, free_port
from mailer.checks import GMAIL_CLIP_BYTES, check_html
from mailer.config import Config
from mailer.dkim import Signer, generate_key
from mailer.errors import TemplateError
from mailer.models import Subscriber
from mailer.preview import LivePreview, _allow_request, live_preview, preview_issue
from mailer.sample import build_sample
from mailer.store import Store
from mailer.web.live import live_app
from tests.conftest import CHECK_EML, SAMPLE_CSV, SAMPLE_ISSUE


def add_sample_subscribers(store: Store) -> None:
    from mailer.subscriptions import import_csv

    import_csv(store, "bulletin", SAMPLE_CSV)


def png_stats(path: Path) -> tuple[int, int, float]:
    with Image.open(path) as image:
        return image.width, image.height, ImageStat.Stat(image.convert("L")).stddev[0]


def write_png(path: Path, size: tuple[int, int] = (800, 300)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (29, 92, 150))
    ImageDraw.Draw(image).rectangle((40, 40, size[0] - 40, size[1] - 40), fill=(200, 146, 42))
    image.save(path)


# ---- screenshots ---------------------------------------------------------------------------------------------------


def test_screenshots_at_desktop_and_mobile_width_are_not_blank(config: Config, store: Store, tmp_path: Path) -> None:
    add_sample_subscribers(store)

    result = preview_issue(SAMPLE_ISSUE, tmp_path / "preview", config, store, "bulletin", offline=True)

    assert result.screenshots is not None
    desktop = png_stats(result.screenshots.desktop)
    mobile = png_stats(result.screenshots.mobile)
    assert result.screenshots.desktop.name == "sample-desktop.png"
    assert desktop[0] == 1200 and mobile[0] == 390
    assert desktop[1] > 2000 and mobile[1] > desktop[1]  # the whole issue, longer when the column is narrow
    assert desktop[2] > 20 and mobile[2] > 20  # pixel variance: text and colour, not a blank page
    assert result.warnings == []  # https base URL, no images, only @media left in <style>
    assert "王小明，您好" in result.message.html  # the list's first subscriber, as a recipient sees it


def test_preview_command_writes_both_pngs_and_reports(run_cli, tmp_path: Path) -> None:
    result = run_cli("preview", str(SAMPLE_ISSUE), "-o", "shots", "--offline")

    assert result.returncode == 0, result.stderr
    assert "wrote shots/sample-desktop.png" in result.stdout and "wrote shots/sample-mobile.png" in result.stdout
    assert "HTML " in result.stdout and "KB" in result.stdout
    # The default base URL is this machine: the unsubscribe link is flagged.
    assert "warning: link http://127.0.0.1:8025/u/" in result.stderr
    assert png_stats(tmp_path / "shots" / "sample-mobile.png")[0] == 390


def test_offline_refuses_every_request_leaving_this_machine() -> None:
    assert _allow_request("data:image/png;base64,AAAA", offline=True)
    assert _allow_request("http://127.0.0.1:8026/x.png", offline=True)
    assert not _allow_request("https://example.org/logo.png", offline=True)
    assert _allow_request("https://example.org/logo.png", offline=False)


# ---- the compatibility check ---------------------------------------------------------------------------------------


def page(body: str, style: str = "") -> str:
    return f"<html><head><style>{style}</style></head><body>{body}</body></html>"


def test_image_without_alt_or_width_is_reported() -> None:
    warnings = check_html(
        page('<img src="https://example.org/a.png" width="300"><img src="https://example.org/b.png" alt="Chart">')
    )
    assert warnings == [
        "image https://example.org/a.png has no alt text: clients that block images show nothing in its place",
        "image https://example.org/b.png has no width attribute: Outlook shows it at its full size",
    ]


def test_images_that_will_not_load_and_tracking_pixels_are_reported() -> None:
    warnings = "\n".join(
        check_html(
            page(
                '<img src="images/a.png" alt="" width="10"><img src="http://example.org/b.png" alt="" width="10">'
                '<img src="data:image/png;base64,AAAA" alt="" width="10">'
                '<img src="https://t.example.org/open?u=1" alt="" width="1" height="1">'
            )
        )
    )
    assert "images/a.png is a relative path" in warnings
    assert "http://example.org/b.png is plain http" in warnings
    assert "is a data: URI" in warnings
    assert "is a 1-pixel image" in warnings


def test_css_left_in_style_is_reported_except_media_queries_and_outlook_blocks() -> None:
    fine = "@media only screen and (max-width: 600px) { .a { width: 100% !important } .b { padding: 0 } }"
    assert check_html(page("<p>x</p>", fine)) == []
    outlook = page("<!--[if mso]><style>td { font-family: Arial }</style><![endif]--><p>x</p>")
    assert check_html(outlook) == []
    warnings = check_html(page("<p>x</p>", fine + " a:hover { color: red } /* c */ .x::before { content: 'y' }"))
    assert [w.split("'")[1] for w in warnings] == ["a:hover", ".x::before"]


def test_links_that_are_not_https_are_reported_once() -> None:
    warnings = check_html(
        page(
            '<a href="http://example.org/a">a</a><a href="http://example.org/a">again</a>'
            '<a href="page.html">b</a><a href="#top">c</a><a href="mailto:x@example.org">d</a>'
            '<a href="http://127.0.0.1:8025/u/t">e</a>'
        )
    )
    assert warnings == [
        "link http://example.org/a is not https",
        "link page.html has no https:// host: it cannot work in a mail client",
        "link http://127.0.0.1:8025/u/t is not https (this machine: subscribers cannot open it)",
    ]


def test_an_issue_over_gmails_clipping_limit_is_reported(tmp_path: Path) -> None:
    paragraph = "本段文字用于测试邮件大小，内容较长以便超过 Gmail 的截断阈值。" * 4
    long_issue = tmp_path / "long.md"
    long_issue.write_text(
        "---\nsubject: 很长的一期\n---\n\n## 第一部分\n\n" + "\n\n".join(f"{i}. {paragraph}" for i in range(200)),
        encoding="utf-8",
    )
    short = build_sample(SAMPLE_ISSUE, Config(base_url="https://news.example.org"))

    message = build_sample(long_issue, Config(base_url="https://news.example.org"))

    assert len(message.html.encode()) > GMAIL_CLIP_BYTES
    (warning,) = [w for w in check_html(message.html) if "Gmail clips" in w]
    assert warning.startswith("the HTML part is ") and "102 KB" in warning
    assert not [w for w in check_html(short.html) if "Gmail clips" in w]


# ---- live preview --------------------------------------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[tuple[str, Path, LivePreview]]:
    issue = tmp_path / "draft.md"
    issue.write_text("---\nsubject: Draft one\n---\n\nFirst words.\n\n## Part\n\nText.\n", encoding="utf-8")
    live = live_preview(issue, Config(base_url="https://news.example.org"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(live_app(live, poll_seconds=0.05), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", issue, live
    server.should_exit = True
    thread.join(timeout=10)


def wait_for_version(base: str, after: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        version = httpx.get(f"{base}/version").json()["version"]
        if version > after:
            return int(version)
        time.sleep(0.05)
    raise AssertionError("the live preview did not re-render")


def test_live_preview_reloads_when_the_issue_changes(live_server: tuple[str, Path, LivePreview]) -> None:
    base, issue, _ = live_server
    frame = httpx.get(f"{base}/")
    assert frame.status_code == 200 and 'src="/message.html"' in frame.text and "/version" in frame.text
    assert "First words." in httpx.get(f"{base}/message.html").text
    version = httpx.get(f"{base}/version").json()["version"]

    time.sleep(0.01)
    issue.write_text("---\nsubject: Draft two\n---\n\nSecond words.\n\n## Part\n\nText.\n", encoding="utf-8")
    version = wait_for_version(base, version)
    assert "Second words." in httpx.get(f"{base}/message.html").text

    issue.write_text("---\nsubject: [unclosed\n---\n\nBroken.\n", encoding="utf-8")
    wait_for_version(base, version)
    frame = httpx.get(f"{base}/").text
    assert "front matter is not valid YAML" in frame and "showing the last good version" in frame
    assert "Second words." in httpx.get(f"{base}/message.html").text


def test_live_preview_only_listens_on_this_machine() -> None:
    from mailer.errors import MailerError
    from mailer.web.live import serve_live_preview

    live = LivePreview(lambda: (_ for _ in ()).throw(AssertionError()), lambda: iter(()))
    with pytest.raises(MailerError, match="only listens on this machine"):
        serve_live_preview(live, free_port(), host="0.0.0.0")


# ---- test sends ----------------------------------------------------------------------------------------------------


def test_a_test_send_is_one_signed_message_marked_test_with_a_sample_recipients_data(
    run_cli, tmp_path: Path, smtp_server: CaptureServer
) -> None:
    key = generate_key("news2026", "example.org", tmp_path / "keys")
    env = {
        "MAILER_BASE_URL": "https://news.example.org",
        "MAILER_DKIM_KEY": str(key.path),
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
            "知识产权运营简报",
            "--from",
            "知识产权运营简报 <bulletin@example.org>",
        ),
        ("subs", "import", str(SAMPLE_CSV), "--list", "bulletin"),
    ):
        assert run_cli(*args, env=env).returncode == 0

    result = run_cli(
        "send",
        str(SAMPLE_ISSUE),
        "--list",
        "bulletin",
        "--test",
        "me@example.org",
        "--smtp-port",
        str(smtp_server.port),
        env=env,
    )

    assert result.returncode == 0, result.stderr
    assert re.match(
        r"test message \(campaign (\d+), not counted in the issue's\): 1 sent in [\d.]+s; "
        r"see: mailer log \1$",
        result.stdout.strip(),
    ), result.stdout
    (captured,) = smtp_server.received
    assert captured.rcpt_tos == ("me@example.org",)
    message = message_from_bytes(captured.data, policy=policy.default)
    assert str(message["Subject"]) == "[TEST] 知识产权运营简报 第12期"
    assert str(message["To"]) == "王小明 <me@example.org>"  # the first subscriber's name, the tester's address
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "王小明，您好" in html and "第12期" in html and "me@example.org" in html
    signer = Signer.from_file(key.path, "news2026", "example.org")
    import dkim

    assert dkim.verify(captured.data, dnsfunc=lambda name, timeout=5: f"v=DKIM1; p={signer.public_key}".encode())
    # In the log as a test, not counted as the issue's campaign.
    real = json.loads(run_cli("campaigns", "ls", "--json", env=env).stdout)
    assert real == []
    (test,) = json.loads(run_cli("campaigns", "ls", "--json", "--tests", env=env).stdout)
    assert test["test"] is True and test["counts"] == {"sent": 1}
    assert "sample (test)" in run_cli("campaigns", "ls", "--tests", env=env).stdout
    log = json.loads(run_cli("log", str(test["id"]), "--json", env=env).stdout)
    assert [(row["email"], row["status"]) for row in log] == [("me@example.org", "sent")]


# ---- editor conveniences -------------------------------------------------------------------------------------------


def cid_issue(tmp_path: Path) -> Path:
    write_png(tmp_path / "issue" / "images" / "chart.png")
    issue = tmp_path / "issue" / "march.md"
    issue.write_text(
        "---\nsubject: March\nimages: cid\nlang: en\n---\n\nThe chart:\n\n![Quarterly chart](images/chart.png)\n\n"
        "## Detail\n\nSame chart again ![Quarterly chart](images/chart.png) and [a link](https://example.org/x).\n",
        encoding="utf-8",
    )
    return issue


def test_images_cid_embeds_local_images_in_multipart_related(tmp_path: Path) -> None:
    sample = build_sample(cid_issue(tmp_path), Config(base_url="https://news.example.org"))

    message = message_from_bytes(sample.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "multipart/alternative"
    alternative, image = message.iter_parts()
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert image.get_content_type() == "image/png"
    cid = str(image["Content-ID"]).strip("<>")
    assert image.get_content() == (tmp_path / "issue" / "images" / "chart.png").read_bytes()
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert html.count(f'src="cid:{cid}"') == 2 and 'width="536"' in html and 'alt="Quarterly chart"' in html
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "[Quarterly chart]" in text and "cid:" not in text and "a link <https://example.org/x>" in text
    assert check_html(sample.html) == []
    (tmp_path / "m.eml").write_bytes(sample.data)
    check = subprocess.run([sys.executable, CHECK_EML, str(tmp_path / "m.eml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # The campaign snapshot (what resumes and worker processes build from) keeps the images.
    assert (
        issue_from_json(json.loads(json.dumps(issue_to_json(render_sample_issue(sample))))).images
        == render_sample_issue(sample).images
    )


def render_sample_issue(sample):  # type: ignore[no-untyped-def]
    from mailer.render import RenderedIssue

    return RenderedIssue(
        slug=sample.slug,
        subject="s",
        preheader="",
        lang="en",
        html=sample.html,
        text=sample.text,
        meta={},
        images=sample.images,
    )


def test_embedded_images_show_in_the_screenshot(tmp_path: Path) -> None:
    result = preview_issue(
        cid_issue(tmp_path), tmp_path / "shots", Config(base_url="https://news.example.org"), offline=True
    )
    assert result.screenshots is not None
    with Image.open(result.screenshots.desktop) as shot:
        colours = {colour for _, colour in shot.convert("RGB").getcolors(maxcolors=1 << 20) or []}
    assert (200, 146, 42) in colours  # the chart's orange, drawn from the data: URI the cid became


def test_raw_html_img_tags_are_embedded_too(tmp_path: Path) -> None:
    write_png(tmp_path / "issue" / "images" / "chart.png")
    write_png(tmp_path / "issue" / "图表 一.png", (300, 100))
    issue = tmp_path / "issue" / "raw.md"
    issue.write_text(
        "---\nsubject: Raw\nimages: cid\nlang: en\n---\n\n"
        '<p align="center"><IMG alt="chart" SRC=\'images/chart.png\' /></p>\n\n'
        '<!-- <img src="images/old.png"> -->\n\n'
        'Inline <img src="images/chart.png" width="120"> and <img alt=x src="图表 一.png">, '
        '<img src="https://cdn.example.org/a.png"> stays.\n\n'
        '`<img src="images/missing.png">` is code.\n',
        encoding="utf-8",
    )
    sample = build_sample(issue, Config(base_url="https://news.example.org"))
    message = message_from_bytes(sample.data, policy=policy.default)
    assert message.get_content_type() == "multipart/related"
    images = {str(p["Content-ID"]).strip("<>"): p for p in message.iter_parts() if p.get_content_maintype() == "image"}
    assert len(images) == 2  # the chart once, however often it is shown
    by_size = {len(p.get_content()): cid for cid, p in images.items()}
    chart = by_size[(tmp_path / "issue" / "images" / "chart.png").stat().st_size]
    other = by_size[(tmp_path / "issue" / "图表 一.png").stat().st_size]
    assert f'alt="chart" src="cid:{chart}" width="536"' in sample.html  # 800 px capped at the column
    assert f'src="cid:{chart}" width="120"' in sample.html  # the editor's own width kept
    assert f'alt="x" src="cid:{other}" width="300"' in sample.html
    assert 'src="https://cdn.example.org/a.png"' in sample.html
    assert '<!-- <img src="images/old.png"> -->' in sample.html  # a comment is not read (old.png does not exist)
    assert "images/chart.png" not in sample.html and '&lt;img src="images/missing.png"&gt;' in sample.html
    for src, words in (("../secret.png", "outside the issue's folder"), ("nope.png", "does not exist")):
        issue.write_text(f'---\nsubject: x\nimages: cid\n---\n\n<div><img src="{src}"></div>\n', encoding="utf-8")
        with pytest.raises(TemplateError, match=words):
            build_sample(issue, Config(base_url="https://news.example.org"))


def test_images_cid_refuses_files_outside_the_issue_folder_and_non_images(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    folder = tmp_path / "issue"
    folder.mkdir()
    (folder / "notes.png").write_text("not an image")
    config = Config(base_url="https://news.example.org")
    for src, message in (
        ("../secret.png", "outside the issue's folder"),
        ("notes.png", "not a PNG, JPEG"),
        ("missing.png", "does not exist"),
    ):
        issue = folder / "x.md"
        issue.write_text(f"---\nsubject: x\nimages: cid\n---\n\n![x]({src})\n", encoding="utf-8")
        with pytest.raises(TemplateError, match=message):
            build_sample(issue, config)
    issue.write_text("---\nsubject: x\nimages: inline\n---\n\nx\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="must be url or cid"):
        build_sample(issue, config)


def test_images_by_url_stay_links_and_the_preview_says_so(tmp_path: Path) -> None:
    issue = tmp_path / "url.md"
    issue.write_text(
        "---\nsubject: x\n---\n\n![Logo](https://cdn.example.org/logo.png)\n\n![Local](img/a.png)\n", encoding="utf-8"
    )
    sample = build_sample(issue, Config(base_url="https://news.example.org"))
    assert message_from_bytes(sample.data).get_content_type() == "multipart/alternative"
    assert 'src="https://cdn.example.org/logo.png"' in sample.html
    warnings = "\n".join(check_html(sample.html))
    assert "img/a.png is a relative path (no host): use an https URL, or 'images: cid'" in warnings
    assert "[Logo] <https://cdn.example.org/logo.png>" in sample.text


def test_preheader_masthead_and_readable_plain_text(tmp_path: Path) -> None:
    sample = build_sample(SAMPLE_ISSUE, Config(base_url="https://news.example.org"))
    body = sample.html.split("<body", 1)[1]
    # The preheader is the first text in the body (what inboxes show after the subject), hidden when opened.
    assert body.index("跨区域质押融资协作会议召开") < body.index("电子简报")
    assert 'class="preheader" style="display:none' in body
    assert "第12期 \u00a0|\u00a0 2026年11月" in body  # issue number and date in the masthead
    assert sample.text.splitlines()[:2] == ["（简报名称）", "第12期 | 2026年11月"]  # no list: no list name
    head = message_from_bytes(sample.data)
    assert head["List-Id"] == "=?utf-8?b?77yI566A5oql5ZCN56ew77yJ?= <newsletter.example.org>"  # not a list "sample"
    for heading in ("【专题会议】", "【行业动态】", "【政策速递】", "【试点进展】", "【相关链接】"):
        assert f"\n{heading}\n" in sample.text
    assert "跨区域知识产权质押融资协作推进会在临江召开\n------" in sample.text
    assert (
        "-  跨区域知识产权质押融资协作备忘录（全文） <https://example.org/bulletin/2026/memo-ip-pledge>" in sample.text
    )
    assert all(len(line.encode()) < 998 for line in sample.text.splitlines())


def test_images_cid_with_chinese_and_spaced_file_names(tmp_path: Path) -> None:
    write_png(tmp_path / "issue" / "images" / "图表 一.png")
    issue = tmp_path / "issue" / "zh.md"
    issue.write_text("---\nsubject: 图\nimages: cid\n---\n\n![图表](<images/图表 一.png>)\n", encoding="utf-8")
    sample = build_sample(issue, Config(base_url="https://news.example.org"))
    message = message_from_bytes(sample.data, policy=policy.default)
    image = list(message.iter_parts())[1]
    assert image.get_content() == (tmp_path / "issue" / "images" / "图表 一.png").read_bytes()


def test_empty_alt_counts_as_missing_and_an_upper_case_scheme_is_fine() -> None:
    html = (
        '<html><body><img src="https://cdn.example.org/a.png" alt="" width="100">'
        '<a href="HTTPS://EXAMPLE.ORG/x">x</a><a href="HTTP://EXAMPLE.ORG/y">y</a></body></html>'
    )
    warnings = check_html(html)
    assert any("has no alt text" in w for w in warnings)
    assert not any("EXAMPLE.ORG/x" in w for w in warnings)
    assert any("HTTP://EXAMPLE.ORG/y is not https" in w for w in warnings)
    assert not any("no https:// host" in w for w in warnings)


def test_send_warns_about_clipping_and_dkim_misalignment(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    big = tmp_path / "big.md"
    big.write_text("---\nsubject: Big\n---\n\n## One\n\n" + "这是一段很长的正文。" * 4000 + "\n", encoding="utf-8")
    store.subscribers.upsert(store.lists.get("bulletin").id, [Subscriber(email="a@example.org")], "test")
    from mailer.dkim import generate_key

    key = generate_key("s1", "other.example", tmp_path / "keys").path
    env = {"MAILER_DKIM_KEY": str(key), "MAILER_DKIM_SELECTOR": "s1", "MAILER_DKIM_DOMAIN": "other.example"}
    result = run_cli("send", str(big), "--list", "bulletin", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "Gmail clips messages over 102 KB" in result.stderr
    assert "From domain example.org is not aligned with DKIM d=other.example" in result.stderr


def test_send_dry_run_warns_about_an_image_that_will_go_out_broken(store: Store, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    issue = tmp_path / "pictures.md"
    issue.write_text(
        "---\nsubject: 本期图表\n---\n\n## 图表\n\n![Chart](images/chart.png)\n\n"
        "![Logo](https://cdn.example.org/logo.png)\n",
        encoding="utf-8",
    )
    store.subscribers.upsert(store.lists.get("bulletin").id, [Subscriber(email="a@example.org")], "test")
    result = run_cli("send", str(issue), "--list", "bulletin", "--dry-run")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    # The very sentence preview says (one check, used by both), and nothing about the https image.
    assert warnings == [
        "warning: image images/chart.png is a relative path (no host): use an https URL, or 'images: cid' to embed it"
    ]


@pytest.mark.parametrize(
    ("subject", "warned"),
    [
        ("BIG NEWS FOR ALL READERS", True),
        ("ÉTÉ EN FRANCE", True),
        ("IP NEWS 第12期", True),
        ("Big news for all readers", False),
        ("知识产权运营简报 第12期", False),
        ("NEWS", False),
        ("Q3 in review", False),
    ],
)
def test_preview_warns_about_a_subject_in_capitals(tmp_path: Path, subject: str, warned: bool) -> None:
    issue = tmp_path / "caps.md"
    issue.write_text(f'---\nsubject: "{subject}"\n---\n\n## One\n\nText.\n', encoding="utf-8")
    sample = build_sample(issue, Config(base_url="https://news.example.org"))
    live = LivePreview(lambda: sample, lambda: iter(()))
    live.refresh(force=True)
    caps = [w for w in live.warnings if "in capitals" in w]
    assert bool(caps) == warned, live.warnings
    if warned:
        assert "SUBJ_ALL_CAPS" in caps[0]
