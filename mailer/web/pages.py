"""The pages of `mailer serve`: one layout (web/page.html.j2) filled with the list's words, the bilingual pages
for a request we cannot tie to a list (a bad link, no such list, our own failure), and the layout checked once at
start.

Renders only: knows nothing of tokens, forms or the store (endpoints.py decides what to show)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.responses import HTMLResponse, PlainTextResponse, Response

from mailer.models import MailingList, Theme
from mailer.render import memory_ceiling, render_page
from mailer.subscriptions import LinkTarget, mask_address
from mailer.wording import BAD_LINK, NO_LIST, TEXT, UNAVAILABLE

TRAP_FIELD = "website"  # hidden from people, filled in by form-spamming bots

# The other page layouts with every part filled in, for the check at start.
SAMPLE_PAGES: dict[str, dict[str, Any]] = {
    "preferences.html.j2": {
        "lang": "zh",
        "heading": "heading",
        "intro": "intro",
        "notice": "notice",
        "warning": "warning",
        "action": "/p/token",
        "form_token": "token",
        "lists_label": "lists",
        "lists": [{"name": "list", "title": "title", "checked": True, "disabled": False, "note": "note"}],
        "name": {"label": "name", "value": "name"},
        "language": {"label": "language", "value": "", "options": [("", "default"), ("zh", "中文")]},
        "save": "save",
        "ask": {"href": "/p/", "text": "ask"},
        "leave": {"heading": "heading", "intro": "intro", "button": "button"},
    },
    "archive.html.j2": {
        "lang": "en",
        "list_title": "title",
        "heading": "heading",
        "intro": "intro",
        "issues": [{"href": "slug", "subject": "subject", "issue_number": "1", "date": "date", "preheader": "p"}],
        "feed": {"href": "feed.xml", "text": "feed"},
        "signup": {"href": "/s/list", "text": "sign up"},
    },
}


class Pages:
    def __init__(self, theme: Theme, templates: Path | None) -> None:
        self.theme = theme
        self.templates = templates

    def check_layout(self) -> None:
        """Render the page once with every part filled in before serving: an error in web/page.html.j2 is then one
        line at start, not a 500 for every request (a one-click unsubscribe's too) until someone reads the log."""
        form = {
            "action": "/s/list",
            "button": "button",
            "hidden": {"form_token": "token"},
            "trap": TRAP_FIELD,
            "fields": [
                {
                    "name": "email",
                    "type": "email",
                    "label": "label",
                    "value": "",
                    "required": True,
                    "autocomplete": "email",
                }
            ],
        }
        with memory_ceiling():  # a layout that would eat the host's memory is found here, before any thread runs
            for lang in TEXT:
                self.page(
                    lang,
                    "heading",
                    ["paragraph"],
                    list_title="title",
                    form=form,
                    links=[("/s/list", "link")],
                    error="error",
                )
            self.bad_link()
            for name, context in SAMPLE_PAGES.items():
                self.render(name, context)

    def page(
        self,
        lang: str,
        heading: str,
        paragraphs: list[str],
        *,
        status: int = 200,
        list_title: str = "",
        form: dict[str, Any] | None = None,
        links: list[tuple[str, str]] | None = None,
        error: str = "",
    ) -> HTMLResponse:
        html = render_page(
            "page.html.j2",
            {
                "lang": lang,
                "heading": heading,
                "paragraphs": paragraphs,
                "list_title": list_title,
                "form": form,
                "links": links or [],
                "error": error,
                "theme": self.theme,
            },
            self.templates,
        )
        return HTMLResponse(html, status_code=status)

    def render(self, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        """Another page layout of web/ (the preferences page, the archive's index), with the theme."""
        return HTMLResponse(render_page(name, {**context, "theme": self.theme}, self.templates), status_code=status)

    def unavailable(self, status: int = 500, list_title: str = "") -> Response:
        """The answer to a request that failed on our side: bilingual, naming nothing."""
        try:
            return self.page("zh", UNAVAILABLE[0], UNAVAILABLE[1], status=status, list_title=list_title)
        except Exception:  # the page itself cannot be rendered (a broken layout folder): plain words then
            return PlainTextResponse("\n".join([UNAVAILABLE[0], *UNAVAILABLE[1]]) + "\n", status_code=status)

    def bad_link(self) -> HTMLResponse:
        """Whatever was wrong with a link, the same page and 400: it reveals nothing."""
        return self.page("zh", BAD_LINK[0], BAD_LINK[1], status=400)

    def no_list(self) -> HTMLResponse:
        return self.page("zh", NO_LIST[0], NO_LIST[1], status=404)

    def test_link(self, mailing_list: MailingList) -> HTMLResponse:
        """A genuine link of a test send: it speaks for nobody, and says so."""
        words = words_for(mailing_list)
        return self.page(
            mailing_list.lang,
            words["test_heading"],
            [words["test_link"]],
            list_title=mailing_list.title or mailing_list.name,
        )


def words_for(mailing_list: MailingList) -> dict[str, str]:
    return TEXT.get(mailing_list.lang, TEXT["en"])


def say(target: LinkTarget, key: str) -> str:
    """A sentence of the list's language about the person a link speaks for (their address masked)."""
    return words_for(target.mailing_list)[key].format(
        title=target.mailing_list.title or target.mailing_list.name,
        addr=mask_address(target.subscriber.email),
    )
