"""The web edition's HTML made safe to publish (mailer.render.sanitise): what runs script goes, the rest is kept as
written."""

from __future__ import annotations

import pytest

from mailer.render.sanitise import web_safe


@pytest.mark.parametrize(
    ("page", "safe"),
    [
        ("<p>a<script>alert(1)</script>b</p>", "<p>ab</p>"),
        ("<p>a<SCRIPT src=//evil.example/x.js></SCRIPT>b</p>", "<p>ab</p>"),
        ('<img src="x.png" onerror="alert(1)" alt="图">', '<img src="x.png" alt="图">'),
        ('<a href="javascript:alert(1)">x</a>', "<a>x</a>"),
        ('<a href=" jav&#x09;ascript:alert(1)">x</a>', "<a>x</a>"),  # browsers skip the tab: still a script URL
        ('<a href="data:text/html,&lt;script&gt;">x</a>', "<a>x</a>"),
        ('<img src="data:image/png;base64,AAAA">', '<img src="data:image/png;base64,AAAA">'),
        ("<iframe src=https://e.org>in <b>it</b></iframe>after", "after"),
        ('<object data="x.swf"><p>fallback</p></object>', "<p>fallback</p>"),
        ('<svg><script>alert(1)</script><a xlink:href="javascript:1">s</a></svg>', "<svg><a>s</a></svg>"),
        ('<form action="javascript:1"><button formaction="x">b</button></form>', "<form><button>b</button></form>"),
        ('<meta http-equiv="refresh" content="0;url=javascript:1"><p>x</p>', "<p>x</p>"),
        ('<p style="width: expression(alert(1))">x</p>', "<p>x</p>"),
        ("<base href=https://evil.example/><p>x</p>", "<p>x</p>"),
    ],
)
def test_what_could_run_script_is_removed(page: str, safe: str) -> None:
    assert web_safe(page) == safe


def test_a_page_that_needs_nothing_removed_is_kept_byte_for_byte() -> None:
    page = (
        '<!DOCTYPE html>\n<html lang="zh"><head><meta charset="utf-8"><style>p{color:#333}</style></head>'
        '<body><!--[if mso]><table role="presentation"><![endif]--><p class=lead>甲 &amp; 乙 &#169; &nbsp;'
        '<br/><img src="cid:logo" alt=""><a href="https://news.example.org/a/b/n1?k=abc&amp;x=1">看</a>'
        "</p><![if !mso]><p>x</p><![endif]></body></html>\n"
    )
    assert web_safe(page) == page
