"""The archive's Atom feed, read back by a real feed parser (feedparser) and checked for escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import feedparser

from mailer.feed import ATOM, FeedEntry, FeedInfo, atom_feed

INFO = FeedInfo(
    '知识产权运营简报 <&> "news"',
    "https://news.example.org/a/bulletin/feed.xml",
    "https://news.example.org/a/bulletin/",
    "zh",
    "星河知识产权运营服务中心",
)
ENTRIES = [
    FeedEntry(
        "知识产权运营简报 第12期",
        "https://news.example.org/a/bulletin/issue-12",
        "2026-11-20T01:00:00.000Z",
        "跨区域质押融资协作会议召开",
        "<p>本期 &amp; <b>要点</b></p>",
    ),
    FeedEntry("第11期 <script>alert(1)</script>", "https://news.example.org/a/bulletin/issue-11", "2026-10-20"),
]


def test_a_feed_reader_reads_every_entry() -> None:
    parsed = feedparser.parse(atom_feed(INFO, ENTRIES, "2026-12-01T00:00:00Z"))
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.title == INFO.title
    assert parsed.feed.id == INFO.feed_url
    assert parsed.feed.updated == "2026-11-20T01:00:00.000Z"
    assert parsed.feed.language == "zh"
    assert {link.rel: link.href for link in parsed.feed.links} == {"self": INFO.feed_url, "alternate": INFO.page_url}
    assert [e.title for e in parsed.entries] == [ENTRIES[0].title, ENTRIES[1].title]
    assert parsed.entries[0].summary == "跨区域质押融资协作会议召开"
    assert parsed.entries[0].content[0].value == "<p>本期 &amp; <b>要点</b></p>"
    assert parsed.entries[1].updated == "2026-10-20T00:00:00Z"


def test_values_are_escaped_as_data() -> None:
    root = ET.fromstring(atom_feed(INFO, ENTRIES, "2026-12-01T00:00:00Z"))
    titles = [e.text for e in root.iter(f"{{{ATOM}}}title")]
    assert titles[2] == "第11期 <script>alert(1)</script>"  # text, not markup: no element was made of it
    assert not list(root.iter("script"))


def test_an_empty_archive_is_a_valid_feed() -> None:
    parsed = feedparser.parse(atom_feed(INFO, [], "2026-12-01T00:00:00Z"))
    assert not parsed.bozo and parsed.entries == [] and parsed.feed.updated == "2026-12-01T00:00:00Z"


def test_characters_xml_forbids_are_dropped_from_every_value() -> None:
    forbidden = "\x00\x01\x0b\x0c\x1f\ufffe\uffff\ud800"
    entry = FeedEntry(
        f"标题{forbidden}", f"https://e.org/a/x{forbidden}", "2026-12-01", f"摘{forbidden}要", f"<p>a{forbidden}b</p>"
    )
    info = FeedInfo(f"简报{forbidden}", INFO.feed_url, INFO.page_url, "zh", f"中心{forbidden}")
    document = atom_feed(info, [entry], "2026-12-01")
    ET.fromstring(document)
    parsed = feedparser.parse(document)
    assert not parsed.bozo and parsed.feed.title == "简报" and parsed.entries[0].title == "标题"
    assert parsed.entries[0].summary == "摘要" and "<p>ab</p>" in parsed.entries[0].content[0].value
    assert "\t" in atom_feed(info, [FeedEntry("a\tb", "https://e.org/a/y", "2026-12-01")], "x").decode()  # allowed
