"""Segments: the small `--where` language over subscriber fields, parsed into a tree and evaluated in Python.

Pure: text in, an expression tree (or one SegmentError naming the column) out. It never builds SQL; the store
calls `Expr.matches` through a registered SQLite function, so no segment can ever become SQL source."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mailer.errors import UsageError

BUILTIN_FIELDS = ("email", "domain", "name", "subscribed")
ORDERING = ("<", "<=", ">", ">=")
# How deep `(` and `not` may nest: reading, printing and matching recurse once per level, and no segment a person
# writes needs more than a handful; far below Python's recursion limit, so a pasted `((((…` is one error line.
MAX_NESTING = 50
_KEYWORDS = {"and", "or", "not", "in", "contains", "starts", "with", "is", "empty"}
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A bare field name runs until a character that starts or ends something else: 单位, 地区, city, signup-date.
_NAME_STOP = frozenset(' \t\r\n\f\v()",=!<>`')


class SegmentError(UsageError):
    """A `--where` expression that cannot be read; the message names the column (1-based, in characters)."""


Record = Mapping[str, str]  # a subscriber's fields: email, domain, name, subscribed and every attribute


# ---- the tree -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str

    def __str__(self) -> str:
        # a space of any kind ends a bare word when it is read back (U+00A0 too), so such a name is quoted
        bare = (
            self.name
            and not (_NAME_STOP & set(self.name))
            and self.name.lower() not in _KEYWORDS
            and not any(_is_control(ch) or ch.isspace() for ch in self.name)
        )
        return self.name if bare else "`" + self.name.replace("`", "``") + "`"

    def value(self, record: Record) -> str:
        return record.get(self.name, "")


@dataclass(frozen=True)
class Compare:
    """`field OP "value"`: = and != compare exactly; < <= > >= compare numbers or dates (as the value is);
    contains and starts with ignore case."""

    field: Field
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.field} {self.op} {quote(self.value)}"

    def matches(self, record: Record) -> bool:
        actual = self.field.value(record)
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        if self.op == "contains":
            return self.value.casefold() in actual.casefold()
        if self.op == "starts with":
            return actual.casefold().startswith(self.value.casefold())
        return _ordered(actual, self.op, self.value)

    def fields(self) -> Iterator[Field]:
        yield self.field


@dataclass(frozen=True)
class In:
    field: Field
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.field} in ({', '.join(quote(v) for v in self.values)})"

    def matches(self, record: Record) -> bool:
        return self.field.value(record) in self.values

    def fields(self) -> Iterator[Field]:
        yield self.field


@dataclass(frozen=True)
class IsEmpty:
    field: Field

    def __str__(self) -> str:
        return f"{self.field} is empty"

    def matches(self, record: Record) -> bool:
        return not self.field.value(record).strip()

    def fields(self) -> Iterator[Field]:
        yield self.field


@dataclass(frozen=True)
class Not:
    operand: Expr

    def __str__(self) -> str:
        return f"not {_wrap(self.operand, (And, Or))}"

    def matches(self, record: Record) -> bool:
        return not self.operand.matches(record)

    def fields(self) -> Iterator[Field]:
        yield from self.operand.fields()


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " and ".join(_wrap(e, (And, Or)) for e in self.operands)

    def matches(self, record: Record) -> bool:
        return all(e.matches(record) for e in self.operands)

    def fields(self) -> Iterator[Field]:
        for e in self.operands:
            yield from e.fields()


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " or ".join(_wrap(e, (Or,)) for e in self.operands)

    def matches(self, record: Record) -> bool:
        return any(e.matches(record) for e in self.operands)

    def fields(self) -> Iterator[Field]:
        for e in self.operands:
            yield from e.fields()


Expr = Compare | In | IsEmpty | Not | And | Or


def _wrap(expr: Expr, kinds: tuple[type, ...]) -> str:
    return f"({expr})" if isinstance(expr, kinds) else str(expr)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ordered(actual: str, op: str, value: str) -> bool:
    """Numbers compare as numbers and dates as dates (a date value compares the date part of a timestamp, so
    `subscribed <= "2026-01-31"` includes the whole 31st); a field that is not of the value's kind never matches."""
    if _DATE.fullmatch(value):
        left: Any = actual.strip()[:10]
        if not _DATE.fullmatch(left):
            return False
        right: Any = value
    else:
        try:
            left, right = float(actual.strip().replace(",", "")), float(value)
        except ValueError:
            return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


# ---- reading --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # word, name (a `quoted` field), string, op, (, ), ",", end
    text: str
    column: int  # 1-based, in characters

    def describe(self) -> str:
        if self.kind == "end":
            return "the end"
        if self.kind == "string":
            return quote(self.text)
        return f"'{self.text}'"


def _tokens(source: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch in " \t\r\n\f\v" or (ch.isspace() and not _is_control(ch)):
            i += 1
        elif _is_control(ch):
            raise SegmentError(f"column {i + 1}: control character U+{ord(ch):04X} is not allowed")
        elif ch in "(),":
            out.append(_Token(ch, ch, i + 1))
            i += 1
        elif ch in "=!<>":
            op = source[i : i + 2] if source[i : i + 2] in ("!=", "<=", ">=") else ch
            if op == "!":
                raise SegmentError(f"column {i + 1}: '!' must be followed by '=' (write != for 'not equal')")
            out.append(_Token("op", op, i + 1))
            i += len(op)
        elif ch in '"`':
            text, end = _read_quoted(source, i)
            out.append(_Token("string" if ch == '"' else "name", text, i + 1))
            i = end
        else:
            start = i
            while i < n and source[i] not in _NAME_STOP and not _is_control(source[i]) and not source[i].isspace():
                i += 1
            out.append(_Token("word", source[start:i], start + 1))
    out.append(_Token("end", "", n + 1))
    return out


def _read_quoted(source: str, start: int) -> tuple[str, int]:
    """A "value" (backslash escapes \\" and \\\\) or a `field name` (`` for a backtick); returns (text, end)."""
    mark = source[start]
    chars: list[str] = []
    i = start + 1
    while i < len(source):
        ch = source[i]
        if mark == '"' and ch == "\\" and source[i + 1 : i + 2] in ('"', "\\"):
            chars.append(source[i + 1])
            i += 2
        elif ch == mark and mark == "`" and source[i + 1 : i + 2] == "`":
            chars.append("`")
            i += 2
        elif ch == mark:
            return "".join(chars), i + 1
        elif _is_control(ch):
            raise SegmentError(f"column {i + 1}: control character U+{ord(ch):04X} is not allowed")
        else:
            chars.append(ch)
            i += 1
    what = "value" if mark == '"' else "field name"
    raise SegmentError(f"column {start + 1}: the {what} that starts here has no closing {mark}")


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokens(source)
        self.pos = 0
        self.depth = 0

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.peek()
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return tok

    def keyword(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok.kind == "word" and tok.text.lower() == word

    def fail(self, expected: str, tok: _Token | None = None) -> SegmentError:
        tok = tok or self.peek()
        return SegmentError(f"column {tok.column}: expected {expected}, found {tok.describe()}")

    def parse(self) -> Expr:
        if self.peek().kind == "end":
            raise SegmentError('the expression is empty (example: city = "北京")')
        expr = self.or_expr()
        if self.peek().kind != "end":
            raise self.fail("'and', 'or' or the end")
        return expr

    def or_expr(self) -> Expr:
        operands = [self.and_expr()]
        while self.keyword("or"):
            self.take()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Expr:
        operands = [self.not_expr()]
        while self.keyword("and"):
            self.take()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_expr(self) -> Expr:
        if not (self.keyword("not") or self.peek().kind == "("):
            return self.condition()
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise SegmentError(
                f"column {self.peek().column}: nested deeper than {MAX_NESTING} levels of '(' and 'not' (the limit)"
            )
        if self.take().kind == "(":
            expr = self.or_expr()
            if self.peek().kind != ")":
                raise self.fail("')'")
            self.take()
        else:
            expr = Not(self.not_expr())
        self.depth -= 1
        return expr

    def field(self) -> Field:
        tok = self.peek()
        if tok.kind == "name" or (tok.kind == "word" and tok.text.lower() not in _KEYWORDS):
            self.take()
            return Field(tok.text)
        raise self.fail("a field name (email, domain, name, subscribed or a CSV column)")

    def value(self) -> str:
        tok = self.peek()
        if tok.kind == "string":
            self.take()
            return tok.text
        if tok.kind == "word" and _NUMBER.fullmatch(tok.text):  # numbers may go without quotes: age > 30
            self.take()
            return tok.text
        raise self.fail("a value in double quotes")

    def condition(self) -> Expr:
        field = self.field()
        tok = self.peek()
        if tok.kind == "op":
            self.take()
            value_tok = self.peek()
            value = self.value()
            if tok.text in ORDERING and not (_DATE.fullmatch(value) or _NUMBER.fullmatch(value)):
                raise SegmentError(
                    f"column {value_tok.column}: {tok.text} compares numbers or dates (YYYY-MM-DD), not {quote(value)}"
                )
            return Compare(field, tok.text, value)
        if self.keyword("contains"):
            self.take()
            return Compare(field, "contains", self.value())
        if self.keyword("starts"):
            self.take()
            if not self.keyword("with"):
                raise self.fail("'with' after 'starts'")
            self.take()
            return Compare(field, "starts with", self.value())
        if self.keyword("is"):
            self.take()
            negate = self.keyword("not")
            if negate:
                self.take()
            if not self.keyword("empty"):
                raise self.fail("'empty' after 'is'")
            self.take()
            return Not(IsEmpty(field)) if negate else IsEmpty(field)
        negate = self.keyword("not") and self.keyword("in", 1)
        if negate:
            self.take()
        if self.keyword("in"):
            self.take()
            if self.peek().kind != "(":
                raise self.fail("'(' after 'in'")
            self.take()
            values = [self.value()]
            while self.peek().kind == ",":
                self.take()
                values.append(self.value())
            if self.peek().kind != ")":
                raise self.fail("',' or ')'")
            self.take()
            found = In(field, tuple(values))
            return Not(found) if negate else found
        raise self.fail("an operator (=, !=, <, <=, >, >=, in, contains, starts with, is empty)")


def parse(source: str) -> Expr:
    """The expression tree of a `--where` text; one SegmentError (with the column) for anything else."""
    return _Parser(source).parse()


def check_fields(expr: Expr, known: Iterable[str]) -> None:
    """Every field the expression names must be a built-in one or an attribute some subscriber has."""
    have = set(BUILTIN_FIELDS) | set(known)
    for field in expr.fields():
        if field.name not in have:
            attrs = sorted(set(known))
            listed = ", ".join(attrs) if attrs else "none"
            raise SegmentError(
                f"unknown field {field}: use {', '.join(BUILTIN_FIELDS)} or an attribute of the "
                f"list (its subscribers have: {listed})"
            )


def record_of(email: str, name: str, attrs: Mapping[str, Any], subscribed: str) -> dict[str, str]:
    """The fields a segment sees for one subscriber (attributes first, so a built-in name always wins)."""
    fields = {str(k): "" if v is None else str(v) for k, v in attrs.items()}
    fields.update(email=email, domain=email.rpartition("@")[2], name=name, subscribed=subscribed)
    return fields
