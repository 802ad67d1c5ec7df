"""The --where language: parsing, printing, evaluation, and errors that name the column."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from mailer.segments import (
    MAX_NESTING,
    And,
    Compare,
    Field,
    In,
    IsEmpty,
    Not,
    Or,
    SegmentError,
    check_fields,
    parse,
    record_of,
)

WANG = record_of(
    "wang@example.org",
    "王小明",
    {"单位": "重庆江北区知识产权局", "地区": "重庆", "age": "41"},
    "2026-01-15T08:00:00.000Z",
)
LI = record_of("li@example.com", "李静", {"单位": "临江银行", "地区": "临江", "age": "29"}, "2026-03-02T10:00:00.000Z")
ANON = record_of("x@qq.com", "", {"单位": "", "地区": "北京"}, "2025-12-31T23:59:00.000Z")


def test_the_issue_example_selects_by_cjk_attribute() -> None:
    expr = parse('单位 = "重庆江北区知识产权局" or 地区 in ("北京", "重庆")')
    assert expr == Or((Compare(Field("单位"), "=", "重庆江北区知识产权局"), In(Field("地区"), ("北京", "重庆"))))
    assert [r["email"] for r in (WANG, LI, ANON) if expr.matches(r)] == ["wang@example.org", "x@qq.com"]


@pytest.mark.parametrize(
    ("text", "emails"),
    [
        ('domain = "qq.com"', ["x@qq.com"]),
        ('email starts with "WANG@"', ["wang@example.org"]),  # starts with and contains ignore case
        ('name contains "静"', ["li@example.com"]),
        ("name is empty", ["x@qq.com"]),
        ("name is not empty", ["wang@example.org", "li@example.com"]),
        ('单位 is empty or not 地区 != "临江"', ["li@example.com", "x@qq.com"]),
        ("age > 30", ["wang@example.org"]),  # numbers compare as numbers ("9" > "30" as text)
        ('age <= "29"', ["li@example.com"]),
        ('subscribed < "2026-01-01"', ["x@qq.com"]),
        ('subscribed <= "2026-01-15"', ["wang@example.org", "x@qq.com"]),  # a date includes its whole day
        ('subscribed >= "2026-02-01" and not (domain = "qq.com")', ["li@example.com"]),
        ('地区 not in ("北京", "临江")', ["wang@example.org"]),
        ('NOT name = "李静" AND 地区 IN ("临江", "北京")', ["x@qq.com"]),  # keywords in any case
        ('`单位` = "临江银行"', ["li@example.com"]),
    ],
)
def test_operators(text: str, emails: list[str]) -> None:
    expr = parse(text)
    assert [r["email"] for r in (WANG, LI, ANON) if expr.matches(r)] == emails


def test_and_binds_tighter_than_or() -> None:
    assert parse('a = "1" or b = "2" and c = "3"') == Or(
        (Compare(Field("a"), "=", "1"), And((Compare(Field("b"), "=", "2"), Compare(Field("c"), "=", "3"))))
    )


def test_a_number_compare_never_matches_text() -> None:
    assert not parse("age > 3").matches(ANON)  # ANON has no age at all
    assert not parse("age > 3").matches(record_of("a@b.c", "", {"age": "unknown"}, ""))


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("单位 = 重庆", 6, "expected a value in double quotes, found '重庆'"),
        ('city = "北京', 8, "no closing"),
        ('city == "x"', 7, "expected a value in double quotes, found '='"),
        ('city = "x" and', 15, "expected a field name"),
        ('(city = "x"', 12, "expected ')'"),
        ('city "x"', 6, "expected an operator"),
        ('city < "north"', 8, "compares numbers or dates"),
        ('city = "a" "b"', 12, "expected 'and', 'or' or the end"),
        ('city starts "a"', 13, "'with'"),
        ('city is "a"', 9, "'empty'"),
        ('city in "a"', 9, "'('"),
        ('city in ("a" "b")', 14, "',' or ')'"),
        ("city ! x", 6, "'!' must be followed by '='"),
        ('city = "a\x1b[2J"', 10, "control character"),
    ],
)
def test_errors_point_at_the_column(text: str, column: int, words: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"column {column}:"), message
    assert words in message
    assert "\n" not in message


def test_empty_expression() -> None:
    with pytest.raises(SegmentError, match="empty"):
        parse("   ")


def test_unknown_fields_name_what_the_list_has() -> None:
    expr = parse('cty = "北京" or 单位 = "x"')
    check_fields(parse('单位 = "x" and email contains "@"'), ["单位", "地区"])
    with pytest.raises(SegmentError, match=r"unknown field cty: .*its subscribers have: 单位, 地区"):
        check_fields(expr, ["地区", "单位"])


# ---- printing and parsing round-trip, and nothing but SegmentError on any input -------------------------------

_names = st.one_of(
    st.sampled_from(["email", "domain", "name", "subscribed", "单位", "地区", "city", "in", "a b", "x`y", "42"]),
    st.text(min_size=1, max_size=6),
)
_values = st.text(max_size=8)
_fields = _names.map(Field)
_leaves = st.one_of(
    st.builds(Compare, _fields, st.sampled_from(["=", "!=", "contains", "starts with"]), _values),
    st.builds(
        Compare,
        _fields,
        st.sampled_from(["<", "<=", ">", ">="]),
        st.one_of(st.integers(-999, 999).map(str), st.dates().map(lambda d: d.isoformat())),
    ),
    st.builds(In, _fields, st.lists(_values, min_size=1, max_size=3).map(tuple)),
    st.builds(IsEmpty, _fields),
)
_exprs = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
        st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
    ),
    max_leaves=8,
)


def _printable(expr) -> bool:  # type: ignore[no-untyped-def]
    """Control characters are refused on reading, so trees holding them have no text form."""
    return all(unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") for ch in str(expr))


@settings(max_examples=400, deadline=None)
@given(_exprs)
@example(IsEmpty(Field("\xa0")))  # a no-break space was printed bare and read back as a space: "  is empty"
@example(Compare(Field("a\u3000b"), "=", "x"))
def test_printing_then_parsing_gives_the_same_tree(expr) -> None:  # type: ignore[no-untyped-def]
    assume(_printable(expr))
    text = str(expr)
    assert parse(text) == expr
    assert str(parse(text)) == text


_pieces = st.sampled_from(
    [
        *'ab 单位=!<>"()`,\\\n\x1b',
        "and ",
        "or ",
        "not ",
        "in ",
        "is ",
        "empty ",
        "starts ",
        "with ",
        "contains ",
        '"x" ',
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_pieces, max_size=20).map("".join))
def test_any_input_parses_or_raises_one_line_segment_error(text: str) -> None:
    try:
        parse(text)
    except SegmentError as exc:
        assert str(exc).startswith(("column ", "the expression is empty"))
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    "text",
    ["(" * 1000 + 'email = "a"' + ")" * 1000, "not " * 400 + 'email = "a"', "(not " * 300 + 'a = "1"' + ")" * 300],
)
def test_nesting_beyond_the_limit_is_one_error_naming_it(text: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(text)
    assert f"deeper than {MAX_NESTING} levels" in str(caught.value) and "\n" not in str(caught.value)


def test_nesting_up_to_the_limit_reads_prints_and_matches() -> None:
    for text in ("(" * MAX_NESTING + 'email = "x@qq.com"' + ")" * MAX_NESTING, "not " * MAX_NESTING + "age > 30"):
        expr = parse(text)
        assert parse(str(expr)) == expr
        expr.matches(ANON)
