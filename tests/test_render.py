"""Rendering: golden files per case, plain-text shape, template errors, CSS inlining once and offline."""

from __future__ import annotations

import html
import http.server
import re
import threading
import tracemalloc
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

import mailer.render
from mailer.errors import TemplateError
from mailer.message import MessageTemplate, Sender
from mailer.models import Recipient
from mailer.render import PLACEHOLDER_RE, ListContext, RenderedIssue, builtin_layouts, render_issue, substitute

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = {"sample": "zh", "en-basic": "en", "personalised": "zh"}
RECIPIENT = {
    "NAME": "林小雨 <Lin & Co>",
    "EMAIL": "lin.xiaoyu@example.org",
    "UNSUBSCRIBE_URL": "https://news.example.org/u/goldentoken?a=1&b=2",
    "PREFERENCES_URL": "https://news.example.org/p/goldenprefs",
    "VIEW_URL": "https://news.example.org/a/bulletin/issue?k=goldenkey",
}
RECIPIENT_ATTRS = {"city": "杭州"}
MINIMAL = "---\nsubject: Hello\n---\n\nIntro.\n\n## One\n\nBody.\n"


def list_ctx(lang: str = "zh") -> ListContext:
    return ListContext(name="bulletin", title="知识产权运营简报", lang=lang)


def copy_layouts(dest: Path) -> Path:
    for name, data in builtin_layouts():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    return dest


def render_case(case: str) -> RenderedIssue:
    source = (GOLDEN / case / "issue.md").read_text(encoding="utf-8")
    return render_issue(source, f"{case}/issue.md", list_ctx(CASES[case]))


def personalise(issue: RenderedIssue) -> tuple[str, str]:
    """The fixed recipient's HTML (values escaped for HTML) and text (values raw)."""
    values = dict(RECIPIENT)
    for i, key in enumerate(issue.attr_keys):
        values[f"A{i}"] = RECIPIENT_ATTRS[key]
    escaped = {k: html.escape(v, quote=True) for k, v in values.items()}
    return substitute(issue.html, escaped), substitute(issue.text, values)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, update_golden: bool) -> None:
    got_html, got_text = personalise(render_case(case))
    expected_html, expected_text = GOLDEN / case / "expected.html", GOLDEN / case / "expected.txt"
    if update_golden:
        expected_html.write_text(got_html, encoding="utf-8", newline="")
        expected_text.write_text(got_text, encoding="utf-8", newline="")
    assert expected_html.exists() and expected_text.exists(), f"run pytest --update-golden to create {case}"
    assert got_html == expected_html.read_text(encoding="utf-8"), f"{case}: HTML differs from {expected_html}"
    assert got_text == expected_text.read_text(encoding="utf-8"), f"{case}: text differs from {expected_text}"
    assert not PLACEHOLDER_RE.search(got_html + got_text)


def test_personalised_values_reach_both_parts_escaped_for_each() -> None:
    issue = render_case("personalised")
    assert issue.attr_keys == ("city",)
    assert {"NAME", "EMAIL", "UNSUBSCRIBE_URL", "A0"} <= issue.placeholders()
    got_html, got_text = personalise(issue)
    assert "林小雨 <Lin & Co>，本期为您整理了杭州的活动安排。" in got_text
    assert "【杭州本地活动】" in got_text
    assert "林小雨 &lt;Lin &amp; Co&gt;" in got_html
    assert "<Lin & Co>" not in got_html
    assert "杭州专利沙龙" in got_html
    assert 'href="https://news.example.org/u/goldentoken?a=1&amp;b=2"' in got_html
    assert "退订：https://news.example.org/u/goldentoken?a=1&b=2" in got_text


def test_plain_text_keeps_headings_links_and_lists() -> None:
    text = render_case("en-basic").text
    lines = text.split("\n")
    for heading in ("Licensing desks", "Registry and reading"):
        at = lines.index(heading)
        assert lines[at + 1] == "=" * len(heading)
    at = lines.index("What changed")
    assert set(lines[at + 1]) == {"-"}
    assert "registry guide <https://example.org/registry/guide>" in text
    assert "](" not in text and "<a " not in text
    assert re.search(r"^-\s+Shorter waiting times$", text, re.M)
    assert re.search(r"^-\s+One contact point per region$", text, re.M)
    assert re.search(r"^1\. Fill in the form\n2\. Attach the contract\n3\. Wait for the receipt$", text, re.M)
    assert "> Most requests are answered within ten working days." in lines
    assert "North | 120 | 8" in lines
    assert "queue_id" in text and "`" not in text


def test_zh_plain_text_marks_sections_and_links() -> None:
    text = render_case("sample").text
    for section in ("专题会议", "行业动态", "政策速递", "试点进展", "相关链接"):
        assert f"【{section}】" in text.split("\n")
    link = "储能变流装备产业专利导航分析报告（摘要版） <https://example.org/reports/energy-storage-patent-navigation>"
    assert f"-  {link}" in text.split("\n")


def test_html_keeps_structure_and_sections() -> None:
    issue = render_case("en-basic")
    assert issue.sections == ("Licensing desks", "Registry and reading")
    assert issue.subject == "Field Notes, Issue 3"
    assert '<a href="https://example.org/registry/guide"' in issue.html
    assert "<code" in issue.html and "queue_id" in issue.html
    assert "<table" in issue.html and "<blockquote" in issue.html
    assert "<ol" in issue.html and "<ul" in issue.html


@pytest.mark.parametrize(
    ("expression", "misspelt"),
    [("subscribr.name", "subscribr"), ("subscriber_name", "subscriber_name"), ("unsubscribe_ur", "unsubscribe_ur")],
)
def test_misspelt_variable_in_body_names_the_line(expression: str, misspelt: str) -> None:
    source = f"---\nsubject: Hi\n---\n\nFirst line.\n\nDear {{{{ {expression} }}}},\n"
    with pytest.raises(TemplateError) as err:
        render_issue(source, "issues/typo.md", list_ctx())
    message = str(err.value)
    assert message.startswith("issues/typo.md line 7:"), message
    assert misspelt in message


def test_body_syntax_error_names_the_file_line() -> None:
    source = "---\nsubject: Hi\n---\n\nFirst line.\n\n{{ subscriber.name }\n"
    with pytest.raises(TemplateError, match=r"^issues/broken\.md line 7: "):
        render_issue(source, "issues/broken.md", list_ctx())


@pytest.mark.parametrize(
    ("layout", "old", "new"),
    [
        ("issue.html.j2", "{{ list_title }}</h1>", "{{ list_titel }}</h1>"),
        ("issue.txt.j2", "{{ list_title }}", "{{ list_titel }}"),
    ],
)
def test_misspelt_variable_in_layout_names_layout_and_line(tmp_path: Path, layout: str, old: str, new: str) -> None:
    templates = copy_layouts(tmp_path / "templates")
    path = templates / layout
    original = path.read_text(encoding="utf-8")
    assert old in original
    path.write_text(original.replace(old, new, 1), encoding="utf-8")
    line = original[: original.index(old)].count("\n") + 1
    with pytest.raises(TemplateError) as err:
        render_issue(MINIMAL, "issue.md", list_ctx(), templates_dir=templates)
    message = str(err.value)
    assert f"{layout} line {line}:" in message, message
    assert new.split()[1].split(".")[0] in message


def test_unmodified_layout_copy_renders(tmp_path: Path) -> None:
    copy_layouts(tmp_path / "templates")
    assert render_issue(MINIMAL, "issue.md", list_ctx(), templates_dir=tmp_path / "templates").sections == ("One",)


@pytest.mark.parametrize(
    "source",
    [
        "---\ntitle: no subject here\n---\n\nBody.\n",
        "---\nsubject: '   '\n---\n\nBody.\n",
        "Just a body, no front matter.\n",
    ],
)
def test_missing_subject_is_a_template_error(source: str) -> None:
    with pytest.raises(TemplateError, match=r"^issues/x\.md: .*subject"):
        render_issue(source, "issues/x.md", list_ctx())


def test_bad_front_matter_yaml_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match=r"^issues/x\.md line 2: front matter is not valid YAML: while parsing"):
        render_issue("---\nsubject: [unclosed\n---\n\nBody.\n", "issues/x.md", list_ctx())


def test_css_is_inlined() -> None:
    issue = render_case("en-basic")
    assert 'style="' in issue.html
    masthead = re.search(r'<td class="masthead"[^>]*>', issue.html)
    assert masthead and "background-color:#163e6c" in masthead.group(0).replace(" ", "")
    # Rules that cannot be inlined (the mobile media query) stay in one <style> block.
    uncommented = re.sub(r"<!--.*?-->", "", issue.html, flags=re.S)
    styles = re.findall(r"<style[^>]*>(.*?)</style>", uncommented, re.S)
    assert len(styles) == 1 and "@media" in styles[0]
    assert "#163e6c" not in styles[0] and "28px" not in styles[0]
    title = re.search(r'<h1 class="masthead-title"[^>]*>', issue.html)
    assert title and "font-size:28px" in title.group(0).replace(" ", "")


class _StylesheetServer(http.server.ThreadingHTTPServer):
    """Serves a stylesheet on 127.0.0.1 and records every request, so a fetch shows up instead of hanging."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = b".remote-marker { color: #123456; }"
                self.send_response(200)
                self.send_header("Content-Type", "text/css")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)


def test_css_inlining_never_fetches_a_stylesheet() -> None:
    server = _StylesheetServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    source = (
        "---\nsubject: Styles\n---\n\n"
        f'<link rel="stylesheet" href="http://127.0.0.1:{port}/remote.css">\n\n'
        f'<link rel="stylesheet" href="//127.0.0.1:{port}/relative.css">\n\n'
        '<p class="remote-marker">Body text.</p>\n'
    )
    try:
        issue = render_issue(source, "issue.md", list_ctx("en"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert server.requests == []
    assert 'style="' in issue.html
    assert "#123456" not in issue.html
    assert f"127.0.0.1:{port}/remote.css" in issue.html


def test_rendering_happens_once_per_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_inline_css = mailer.render.inline_css

    def counting_inline_css(html_text: str) -> str:
        calls.append(len(html_text))
        return real_inline_css(html_text)

    monkeypatch.setattr(mailer.render, "inline_css", counting_inline_css)
    issue = render_case("personalised")
    sender = Sender("简报", "bulletin@example.org", "", "bulletin", "知识产权运营简报", "https://news.example.org")
    template = MessageTemplate(issue, sender, secret=b"k" * 32, campaign_id=1, list_id=1, salt="s")
    now = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    messages = [
        template.build(Recipient(i, i, f"reader{i}@example.org", f"读者{i}", {"city": f"城市{i}"}), now)
        for i in range(1, 51)
    ]
    assert len(calls) == 1
    assert len({m.message_id for m in messages}) == 50
    last = BytesParser(policy=policy.default).parsebytes(messages[-1].data)
    assert "城市50专利沙龙" in last.get_body(("plain",)).get_content()


def test_render_is_deterministic_and_hash_tracks_content() -> None:
    source = (GOLDEN / "en-basic" / "issue.md").read_text(encoding="utf-8")
    first = render_issue(source, "en-basic.md", list_ctx("en"))
    again = render_issue(source, "en-basic.md", list_ctx("en"))
    changed = render_issue(source.replace("third issue", "3rd issue"), "en-basic.md", list_ctx("en"))
    assert first == again
    assert first.content_hash != changed.content_hash
    assert first.slug == "en-basic"


def test_front_matter_aliases_that_expand_or_hold_themselves_are_one_error() -> None:
    # 9 lines of "billion laughs" took 40 s and 2 GB, then a MemoryError traceback; a self-holding alias recursed
    laughs = "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
    bomb = f"---\nsubject: Hi\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n{laughs}---\nBody.\n"
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match=r"^bomb\.md: front matter holds over 10,000 values"):
            render_issue(bomb, "bomb.md")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20  # refused before expanding (the 9^9 values took 2 GB), counted in bytes, not seconds
    with pytest.raises(TemplateError, match=r"^loop\.md: front matter has a value that contains itself"):
        render_issue("---\nsubject: Hi\na: &a [1, *a]\n---\nBody.\n", "loop.md")
    shared = render_issue("---\nsubject: Hi\nperson: &p {name: Ann}\neditor: *p\n---\nBody.\n", "ok.md")
    assert shared.meta["editor"] == {"name": "Ann"}  # an alias used as one, a few values, still reads


@pytest.mark.parametrize("lang", ["fr", "zh-CN", "chinese", "1"])
def test_a_lang_the_layout_has_no_words_for_is_one_error(lang: str) -> None:
    # it rendered the English layout with "Hello ," (no fallback name) for any value but zh and en
    with pytest.raises(TemplateError, match=rf"^issue\.md: front matter 'lang' must be zh or en, not '?{lang}'?$"):
        render_issue(f"---\nsubject: Hi\nlang: {lang}\n---\nBody.\n", "issue.md", ListContext(name="news", lang="zh"))


def test_lang_is_read_whatever_its_case() -> None:
    issue = render_issue("---\nsubject: Hi\nlang: ZH\n---\nBody.\n", "issue.md", ListContext(name="news", lang="en"))
    assert issue.lang == "zh" and "您好" in issue.text


def test_a_column_named_keys_is_a_column_like_any_other() -> None:
    # {{ subscriber.keys }} printed the renderer's own list of fields ("[]") instead of the subscriber's `keys`
    issue = render_issue("---\nsubject: Hi\n---\nYour keys: {{ subscriber.keys }}.\n", "issue.md")
    assert issue.attr_keys == ("keys",) and "Your keys: @@MAILER_A0@@." in issue.text


@pytest.mark.parametrize(
    ("field", "value"),
    [("subject", '["a", "b"]'), ("preheader", "{x: 1}"), ("from", "[a@example.org]"), ("date", "!!set {a}")],
)
def test_a_text_field_given_a_list_or_table_is_one_error(field: str, value: str) -> None:
    # `subject: ["a", "b"]` went out as the Subject ['a', 'b']
    source = f"---\nsubject: Hi\n{field}: {value}\n---\nBody.\n"
    with pytest.raises(TemplateError, match=rf"^issue\.md: front matter '{field}' must be text, not a "):
        render_issue(source, "issue.md")
