"""Charts: SVG that parses, scales, escapes its labels and carries no style or script (strict CSP)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from mailer.charts import STATUS_COLOURS, columns, sparkline, stacked_bar

SVG = "{http://www.w3.org/2000/svg}"


def rects(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}rect"))


def test_stacked_bar_pieces_are_proportional_and_in_status_order() -> None:
    svg = stacked_bar({"failed": 1, "sent": 3, "weird<status>": 0}, width=400)
    background, sent, failed = rects(svg)
    assert background.get("fill") == "#eeeeee"
    assert (sent.get("fill"), float(sent.get("width") or 0)) == (STATUS_COLOURS["sent"], 300.0)
    assert (failed.get("fill"), float(failed.get("x") or 0), float(failed.get("width") or 0)) == (
        STATUS_COLOURS["failed"],
        300.0,
        100.0,
    )
    assert [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")] == ["sent: 3", "failed: 1"]


def test_an_empty_campaign_is_just_the_track() -> None:
    assert len(rects(stacked_bar({}))) == 1


def test_columns_stack_by_minute_and_scale_to_the_peak() -> None:
    svg = columns([("09:00", {"sent": 10, "deferred": 10}), ("09:01", {"sent": 5}), ("09:02", {})], height=166)
    heights = [float(r.get("height") or 0) for r in rects(svg)]
    assert heights == [71.0, 71.0, 35.5]  # plot height 142: 10/20 of it twice, then 5/20
    texts = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert texts == ["20", "0", "09:00", "09:02"]


def test_labels_are_text_never_markup_and_nothing_needs_unsafe_csp() -> None:
    hostile = '<script>alert(1)</script>" onload="x'
    for svg in (stacked_bar({hostile: 2}, label=hostile), columns([(hostile, {"sent": 1})], label=hostile)):
        root = ET.fromstring(svg)
        assert not [e for e in root.iter() if e.tag.endswith("script")]
        assert all("style" not in e.attrib and not any(k.startswith("on") for k in e.attrib) for e in root.iter())
        assert root.get("aria-label") == hostile


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([5, 5]) == "▄▄"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
