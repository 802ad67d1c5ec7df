"""Where layouts come from: --templates, `templates` in mailer.toml, ./templates/, then the built-in ones, for issue
layouts and web pages alike; an error in a layout names its file and line."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest

from mailer.capture import CaptureServer, free_port
from mailer.config import MAX_LOGO_BYTES, Config, load_config
from mailer.errors import ConfigError
from mailer.render import builtin_layouts
from mailer.store import Store
from mailer.subscriptions import add_subscriber
from mailer.web import create_app
from tests.conftest import SAMPLE_ISSUE, LiveWeb, web_config


def layouts(folder: Path, marker: str = "", only: tuple[str, ...] = ()) -> Path:
    """Copies of the built-in layouts in `folder` (only those named in `only`, if given), each carrying `marker`
    where a reader sees it: the masthead kicker, the text part's first line, the page's heading."""
    for name, data in builtin_layouts():
        if only and name not in only:
            continue
        text = data.decode("utf-8")
        if marker:
            text = text.replace('{{ "电子简报" if zh else "NEWSLETTER" }}', marker, 1)  # issue.html.j2
            text = text.replace(
                "{{ list_title }}\n{% if dateline", f"{marker} {{{{ list_title }}}}\n{{% if dateline", 1
            )  # issue.txt.j2
            text = text.replace("<h1>{{ heading }}</h1>", f"<h1>{marker} {{{{ heading }}}}</h1>", 1)  # web/page
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def rendered(run_cli, tmp_path: Path, *args: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    result = run_cli("render", str(SAMPLE_ISSUE), "-o", "out", *args)
    assert result.returncode == 0, result.stderr
    return (
        (tmp_path / "out" / "sample.html").read_text(encoding="utf-8"),
        (tmp_path / "out" / "sample.txt").read_text(encoding="utf-8"),
    )


def test_the_order_is_option_then_mailer_toml_then_templates_folder_then_built_in(tmp_path: Path, run_cli) -> None:
    html, text = rendered(run_cli, tmp_path)
    assert "电子简报" in html and "WORKSPACE" not in html  # nothing in the folder: the built-in layouts

    layouts(tmp_path / "templates", "WORKSPACE")
    html, text = rendered(run_cli, tmp_path)
    assert "WORKSPACE" in html and text.startswith("WORKSPACE ")

    layouts(tmp_path / "house", "HOUSE")
    (tmp_path / "mailer.toml").write_text('templates = "house"\n', encoding="utf-8")
    html, text = rendered(run_cli, tmp_path)
    assert "HOUSE" in html and "WORKSPACE" not in html and text.startswith("HOUSE ")

    layouts(tmp_path / "special", "SPECIAL")
    html, text = rendered(run_cli, tmp_path, "--templates", "special")
    assert "SPECIAL" in html and "HOUSE" not in html and text.startswith("SPECIAL ")


def test_a_folder_with_one_layout_takes_the_others_from_the_built_in_ones(tmp_path: Path, run_cli) -> None:
    layouts(tmp_path / "templates", "ONLY-HTML", only=("issue.html.j2",))
    html, text = rendered(run_cli, tmp_path)
    assert "ONLY-HTML" in html
    assert "ONLY-HTML" not in text and "【专题会议】" in text


def test_mailer_toml_templates_is_relative_to_mailer_toml(tmp_path: Path) -> None:
    layouts(tmp_path / "site" / "layouts")
    (tmp_path / "site" / "mailer.toml").write_text('templates = "layouts"\n', encoding="utf-8")
    assert load_config(environ={}, cwd=tmp_path / "site").templates == tmp_path / "site" / "layouts"
    assert load_config(environ={}, cwd=tmp_path).templates is None


def test_a_missing_folder_is_one_error_line(tmp_path: Path, run_cli) -> None:
    (tmp_path / "mailer.toml").write_text('templates = "nowhere"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mailer\.toml: templates = 'nowhere': no such folder"):
        load_config(environ={}, cwd=tmp_path)
    result = run_cli("render", str(SAMPLE_ISSUE))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "mailer.toml").unlink()
    result = run_cli("render", str(SAMPLE_ISSUE), "--templates", "nowhere")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "nowhere" in result.stderr


def test_an_error_in_a_layout_names_its_file_and_line(tmp_path: Path, run_cli) -> None:
    folder = layouts(tmp_path / "templates")
    page = folder / "issue.html.j2"
    lines = page.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if "masthead-title" in line and "<h1" in line)
    lines[at] = lines[at].replace("{{ list_title }}", "{{ list_title | nosuchfilter }}")
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("render", str(SAMPLE_ISSUE))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {page} line {at + 1}: "), line
    assert "nosuchfilter" in line


def test_send_and_the_web_pages_use_the_folder_too(
    tmp_path: Path, config: Config, store: Store, smtp_server: CaptureServer, run_cli
) -> None:
    add_subscriber(store, "bulletin", "wang@example.org", "王")
    folder = layouts(tmp_path / "brand", "BRAND")
    sent = run_cli(
        "send",
        str(SAMPLE_ISSUE),
        "--list",
        "bulletin",
        "--yes",
        "--smtp-port",
        str(smtp_server.port),
        "--templates",
        str(folder),
    )
    assert sent.returncode == 0, sent.stderr
    [mail] = smtp_server.received
    parsed = BytesParser(policy=policy.default).parsebytes(mail.data)
    assert "BRAND" in parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    smtp_server.received.clear()

    def make(url: str) -> object:
        return create_app(web_config(config, smtp_server, url).with_overrides(templates=folder))

    with LiveWeb(make) as live, httpx.Client(base_url=live.url) as http:
        page = http.get("/s/bulletin")
        assert page.status_code == 200 and "<h1>BRAND 订阅「知识产权运营简报」</h1>" in page.text
        forged = http.get("/u/forged")
        assert forged.status_code == 400 and "BRAND" in forged.text


def test_serve_with_a_broken_page_layout_is_one_error_line_at_start(tmp_path: Path, store: Store, run_cli) -> None:
    # It started, then answered every page (a one-click unsubscribe's too) with a 500 until someone read the log
    page = layouts(tmp_path / "templates", only=("web/page.html.j2",)) / "web" / "page.html.j2"
    lines = page.read_text(encoding="utf-8").splitlines()
    at = next(n for n, text in enumerate(lines, start=1) if "{% for paragraph in paragraphs %}" in text)
    lines[at - 1] = "{% for paragraph in paragraphs|wrap %}"
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("serve", "--port", str(free_port()), timeout=20)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line == f"error: {page} line {at}: No filter named 'wrap'.", line


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="the ceiling is Linux's RLIMIT_AS")
def test_a_page_layout_that_builds_gigabytes_stops_serve_at_start(tmp_path: Path, store: Store, run_cli) -> None:
    # Pages render on the server's threads without the memory ceiling; the one check at start runs under it.
    page = layouts(tmp_path / "templates", only=("web/page.html.j2",)) / "web" / "page.html.j2"
    page.write_text('{{ "x".ljust(10**10) }}\n' + page.read_text(encoding="utf-8"), encoding="utf-8")
    result = run_cli("serve", "--port", str(free_port()), timeout=30)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {page} line 1: it needs more than 512 MB of memory to render"), line


# ---- [theme]: colours, logo and footer lines without touching Jinja ----------------------------------------------


def png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_accent_and_footer_are_written_once_in_mailer_toml(tmp_path: Path, run_cli) -> None:
    (tmp_path / "mailer.toml").write_text(
        '[theme]\naccent = "#8A1C1C"\nhighlight = "#222"\nfooter = ["编辑：星河中心", "内部资料 注意保存"]\n',
        encoding="utf-8",
    )
    html, text = rendered(run_cli, tmp_path)
    assert "#163e6c" not in html and "#1d5c96" not in html and "#c8922a" not in html
    assert 'class="masthead" bgcolor="#8a1c1c"' in html and "background-color:#8a1c1c" in html
    assert html.count('class="section-head" bgcolor="#8a1c1c"') == 5
    assert 'bgcolor="#222222"' in html
    assert "<p>编辑：星河中心</p>" in html.replace(' style="margin:0; font-size:13px; line-height:1.7; color:#555"', "")
    assert "编辑：星河中心\n内部资料 注意保存\n" in text


def test_a_logo_url_or_a_local_logo_embedded_in_the_message(tmp_path: Path, run_cli) -> None:
    from email import message_from_bytes

    from mailer.checks import check_html

    (tmp_path / "mailer.toml").write_text(
        '[theme]\nlogo = "https://cdn.example.org/logo.png"\nlogo_width = 120\n', encoding="utf-8"
    )
    html, _ = rendered(run_cli, tmp_path)
    assert 'src="https://cdn.example.org/logo.png"' in html and 'width="120"' in html
    assert not [w for w in check_html(html) if "logo" in w]

    (tmp_path / "brand").mkdir()
    (tmp_path / "brand" / "logo.png").write_bytes(png(400, 100))
    (tmp_path / "mailer.toml").write_text('[theme]\nlogo = "brand/logo.png"\n', encoding="utf-8")
    html, _ = rendered(run_cli, tmp_path)
    message = message_from_bytes((tmp_path / "out" / "sample.eml").read_bytes())
    assert message.get_content_type() == "multipart/related"
    [image] = [part for part in message.walk() if part.get_content_type() == "image/png"]
    assert image.get_payload(decode=True) == (tmp_path / "brand" / "logo.png").read_bytes()
    cid = str(image["Content-ID"]).strip("<>")
    assert f'src="cid:{cid}"' in html and 'width="160"' in html  # 400 px shown at the default 160


def test_a_lists_own_theme_wins_over_the_global_one(
    tmp_path: Path, config: Config, store: Store, smtp_server: CaptureServer, run_cli
) -> None:
    add_subscriber(store, "bulletin", "wang@example.org", "王")
    (tmp_path / "mailer.toml").write_text(
        '[theme]\naccent = "#111111"\n\n[lists.bulletin.theme]\naccent = "#0a7a3c"\n', encoding="utf-8"
    )
    sent = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))
    assert sent.returncode == 0, sent.stderr
    html = BytesParser(policy=policy.default).parsebytes(smtp_server.received[0].data).get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert 'bgcolor="#0a7a3c"' in html and "#111111" not in html
    theme = load_config(environ={}, cwd=tmp_path)
    assert theme.theme_for("bulletin").accent == "#0a7a3c" and theme.theme_for("weekly").accent == "#111111"

    def make(url: str) -> object:
        return create_app(
            web_config(load_config(environ={}, cwd=tmp_path), smtp_server, url).with_overrides(
                db_path=config.db_path, secret=config.secret
            )
        )

    with LiveWeb(make) as live, httpx.Client(base_url=live.url) as http:
        page = http.get("/s/bulletin")
    assert page.status_code == 200 and "border-top: 4px solid #111111" in page.text  # pages wear [theme]


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('[theme]\naccent = "blue"\n', "theme.accent = 'blue' is not a colour"),
        ('[theme]\naccent = "#163e6c; background: url(x)"\n', "is not a colour"),
        ('[theme]\nlogo = "http://cdn.example.org/logo.png"\n', "use an https:// URL"),
        ('[theme]\nlogo = "missing.png"\n', "theme.logo = 'missing.png': cannot read"),
        ("[theme]\nfooter = 3\n", "theme.footer must be a list of lines"),
        ('[lists.bulletin.theme]\nhighlight = "#12"\n', "lists.bulletin.theme.highlight"),
    ],
)
def test_a_theme_value_that_would_break_the_layout_is_one_error_line(
    tmp_path: Path, run_cli, toml: str, says: str
) -> None:
    (tmp_path / "mailer.toml").write_text(toml, encoding="utf-8")
    result = run_cli("render", str(SAMPLE_ISSUE))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "mailer.toml" in line and says in line, line


def test_a_logo_that_is_not_an_image_is_one_error_line(tmp_path: Path, run_cli) -> None:
    (tmp_path / "logo.png").write_text("not an image", encoding="utf-8")
    (tmp_path / "mailer.toml").write_text('[theme]\nlogo = "logo.png"\n', encoding="utf-8")
    result = run_cli("lists", "ls")  # every command: it is read with mailer.toml, not when an issue is rendered
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'mailer.toml'}: theme.logo = 'logo.png': not a PNG, JPEG, GIF or WebP image"
    )


@pytest.mark.parametrize("logo", ["/dev/zero", "big.png", "."])
def test_a_logo_that_is_a_device_a_folder_or_huge_is_refused_before_it_is_read(
    tmp_path: Path, run_cli, logo: str
) -> None:
    # /dev/zero was read until memory ran out, by every command; a 300 MB file went inside every message
    (tmp_path / "big.png").write_bytes(png(16, 16) + bytes(MAX_LOGO_BYTES))
    (tmp_path / "mailer.toml").write_text(f'[theme]\nlogo = "{logo}"\n', encoding="utf-8")
    result = run_cli("render", str(SAMPLE_ISSUE), timeout=20)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    says = "may be at most 1000 KB" if logo == "big.png" else "is not a file"
    assert line.startswith("error: ") and f"theme.logo = '{logo}'" in line and says in line, line
