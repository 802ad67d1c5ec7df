"""Where layouts come from: --templates, `templates` in mailer.toml, ./templates/, then the built-in ones, for issue
layouts and web pages alike; an error in a layout names its file and line."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest

from mailer.capture import CaptureServer
from mailer.config import Config, load_config
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
            text = text.replace("{{ list_title }}\n{% if dateline", f"{marker} {{{{ list_title }}}}\n{{% if dateline",
                                1)  # issue.txt.j2
            text = text.replace("<h1>{{ heading }}</h1>", f"<h1>{marker} {{{{ heading }}}}</h1>", 1)  # web/page
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def rendered(run_cli, tmp_path: Path, *args: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    result = run_cli("render", str(SAMPLE_ISSUE), "-o", "out", *args)
    assert result.returncode == 0, result.stderr
    return ((tmp_path / "out" / "sample.html").read_text(encoding="utf-8"),
            (tmp_path / "out" / "sample.txt").read_text(encoding="utf-8"))


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


def test_send_and_the_web_pages_use_the_folder_too(tmp_path: Path, config: Config, store: Store,
                                                    smtp_server: CaptureServer, run_cli) -> None:
    add_subscriber(store, "bulletin", "wang@example.org", "王")
    folder = layouts(tmp_path / "brand", "BRAND")
    sent = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port),
                   "--templates", str(folder))
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
