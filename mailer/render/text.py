"""The plain-text part of an issue, written from its Markdown tokens: headings underlined, lists numbered or
dashed, quotes, code indented, table rows, links as `text <url>`, embedded images by their alt text.

Pure: tokens in, text out."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from markdown_it.token import Token


def inline_text(children: Sequence[Token] | None) -> str:
    """Plain text of an inline token run; links become `text <url>`, images `[alt] <src>`."""
    out: list[str] = []
    href_stack: list[tuple[str, int]] = []
    for tok in children or ():
        if tok.type in ("text", "code_inline"):
            out.append(tok.content)
        elif tok.type == "softbreak" or tok.type == "hardbreak":
            out.append("\n")
        elif tok.type == "link_open":
            href_stack.append((str(tok.attrs.get("href", "")), len(out)))
        elif tok.type == "link_close" and href_stack:
            href, start = href_stack.pop()
            label = "".join(out[start:])
            target = href.removeprefix("mailto:")
            if label.strip() and label.strip() not in (href, target):
                out.append(f" <{href}>")
            else:
                del out[start:]
                out.append(f"<{href}>" if not href.startswith("mailto:") else target)
        elif tok.type == "image":
            alt = tok.content or "".join(c.content for c in tok.children or ())
            src = str(tok.attrs.get("src", ""))
            if src.startswith("cid:"):  # embedded: the text part names it, the image travels with the message
                out.append(f"[{alt}]" if alt else "")
            else:
                out.append(f"[{alt}] <{src}>" if alt else f"<{src}>")
        elif tok.type == "html_inline":
            continue
    return "".join(out)


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def tokens_to_text(tokens: Sequence[Token]) -> str:
    """A readable plain-text rendering of Markdown block tokens: headings, lists, quotes, code, tables."""
    blocks: list[str] = []
    list_stack: list[list[int | None]] = []  # per open list: [next number or None for bullets]
    quote_depth = 0
    pending_prefix = ""
    table_row: list[str] = []
    heading_level = 0
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            heading_level = int(tok.tag[1])
        elif tok.type == "inline":
            text = inline_text(tok.children)
            if heading_level:
                rule = "-" if heading_level >= 3 else "="
                blocks.append(f"{text}\n{rule * max(4, _display_width(text))}")
            elif tokens[i - 1].type in ("th_open", "td_open"):
                table_row.append(text)
            else:
                indent = "   " * max(0, len(list_stack) - 1)
                prefix = pending_prefix or (indent + "   " if list_stack else "")
                lines = text.split("\n")
                body = (prefix + lines[0]) + "".join(
                    "\n" + (indent + "   " if list_stack else "") + line for line in lines[1:]
                )
                if quote_depth:
                    body = "\n".join("> " * quote_depth + line for line in body.split("\n"))
                blocks.append(body)
                pending_prefix = ""
        elif tok.type == "heading_close":
            heading_level = 0
        elif tok.type in ("bullet_list_open", "ordered_list_open"):
            start = int(tok.attrs.get("start", 1) or 1) if tok.type == "ordered_list_open" else None
            list_stack.append([start])
        elif tok.type in ("bullet_list_close", "ordered_list_close"):
            list_stack.pop()
        elif tok.type == "list_item_open" and list_stack:
            indent = "   " * (len(list_stack) - 1)
            counter = list_stack[-1]
            if counter[0] is None:
                pending_prefix = f"{indent}-  "
            else:
                pending_prefix = f"{indent}{counter[0]}. "
                counter[0] += 1
        elif tok.type == "blockquote_open":
            quote_depth += 1
        elif tok.type == "blockquote_close":
            quote_depth -= 1
        elif tok.type in ("fence", "code_block"):
            blocks.append("\n".join("    " + line for line in tok.content.rstrip("\n").split("\n")))
        elif tok.type == "hr":
            blocks.append("-" * 20)
        elif tok.type == "tr_open":
            table_row = []
        elif tok.type == "tr_close":
            blocks.append(" | ".join(cell.strip() for cell in table_row))
        elif tok.type == "html_block":
            stripped = re.sub(r"<[^>]+>", "", tok.content).strip()
            if stripped:
                blocks.append(stripped)
    text = _join_blocks(blocks)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _join_blocks(blocks: list[str]) -> str:
    # Tight list items and table rows sit on consecutive lines; everything else is a paragraph apart.
    out: list[str] = []
    for block in blocks:
        if out and _is_tight(block) and _is_tight(out[-1]):
            out.append("\n" + block)
        else:
            out.append(("\n\n" if out else "") + block)
    return "".join(out)


def _is_tight(block: str) -> bool:
    last_line = block.rsplit("\n", 1)[-1]
    return bool(block.lstrip().startswith("-  ") or re.match(r"\s*\d+\. ", block) or " | " in last_line)
