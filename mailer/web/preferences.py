"""The subscriber's own pages of `mailer serve`: `/p/{token}` (their lists, name and language; "unsubscribe from
everything") and `/p/` ("send me my link"). A GET changes nothing; every change is a POST that passes the form
guard (a cookie-bound token and the Origin), and answers with a redirect to the page under the new, rotated link.

Requests and pages only: preferences.py decides, the store remembers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from mailer.addresses import AddressError
from mailer.models import Lang, SubscriberStatus
from mailer.preferences import (
    LinkExpired,
    Preferences,
    build_link_mail,
    leave_everything,
    open_preferences,
    request_link,
    save_preferences,
)
from mailer.subscriptions import SignupOutcome, TestLink, mask_address
from mailer.tokens import BadToken
from mailer.web.forms import FormGuard
from mailer.web.pages import TRAP_FIELD
from mailer.wording import TEXT

if TYPE_CHECKING:
    from mailer.web.endpoints import WebApp

log = logging.getLogger("mailer.web")

CSRF_COOKIE = "mailer_prefs"
LINK_SCOPE = "p:link"
LANG_NAMES = {"zh": "中文", "en": "English"}


class PreferencesEndpoints:
    """GET and POST /p/{token} and /p/, on the WebApp's configuration, pages and store."""

    def __init__(self, web: WebApp) -> None:
        self.web = web
        self.guard = FormGuard(web.config.secret, CSRF_COOKIE, "/p/", web.config.base_url)

    async def _open(self, token: str) -> Preferences | TestLink | Response:
        now = self.web.clock()
        try:
            return await self.web.with_store(  # type: ignore[no-any-return]
                lambda store: open_preferences(store, self.web.config.secret, token, now)
            )
        except LinkExpired:
            lang = await self._default_lang()
            said = TEXT[lang]
            return self.web.pages.page(
                lang,
                said["prefs_expired_heading"],
                [said["prefs_expired"]],
                status=400,
                links=[("/p/", said["link_get_new"])],
            )
        except BadToken:
            return self.web.pages.bad_link()

    async def _default_lang(self) -> str:
        """The language of a page that speaks for no list: that of the first list, as the organisation's own."""
        lists = await self.web.with_store(lambda store: store.lists.all())
        return str(lists[0].lang) if lists and lists[0].lang in TEXT else "zh"

    # ---- /p/{token} --------------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        opened = await self._open(request.path_params["token"])
        if isinstance(opened, Response):
            return opened
        if isinstance(opened, TestLink):
            return self.web.pages.test_link(opened.mailing_list)
        notice = ""
        said = TEXT.get(opened.page_lang, TEXT["en"])
        if request.query_params.get("saved"):
            notice = f"{said['prefs_saved']} {said['prefs_rotated']}"
        elif request.query_params.get("left"):
            notice = said["prefs_left"].format(addr=mask_address(opened.email))
        return self._page(request.path_params["token"], opened, notice)

    def _page(self, token: str, prefs: Preferences, notice: str) -> HTMLResponse:
        lang = prefs.page_lang
        said = TEXT.get(lang, TEXT["en"])
        form_token, nonce = self.guard.issue(f"p:{prefs.subscriber.id}")
        lists: list[dict[str, Any]] = []
        for choice in prefs.choices:
            note = {
                SubscriberStatus.PENDING: said["prefs_status_pending"],
                SubscriberStatus.BOUNCED: said["prefs_status_bounced"],
            }.get(choice.status or SubscriberStatus.ACTIVE, "")
            lists.append(
                {
                    "name": choice.mailing_list.name,
                    "title": choice.mailing_list.title or choice.mailing_list.name,
                    "checked": choice.subscribed,
                    "disabled": choice.status == SubscriberStatus.BOUNCED or prefs.suppressed,
                    "note": note,
                }
            )
        context = {
            "lang": lang,
            "heading": said["prefs_heading"],
            "intro": said["prefs_intro"].format(addr=mask_address(prefs.email)),
            "warning": said["prefs_suppressed"] if prefs.suppressed else "",
            "notice": notice,
            "action": f"/p/{token}",
            "form_token": form_token,
            "lists_label": said["prefs_lists"],
            "lists": lists,
            "name": {"label": said["prefs_name"], "value": prefs.name},
            "language": {
                "label": said["prefs_lang"],
                "value": prefs.lang,
                "options": [("", said["prefs_lang_default"])] + [(code, LANG_NAMES[code]) for code in Lang],
            },
            "save": said["prefs_save"],
            "ask": {"href": "/p/", "text": said["link_get_new"]},
            "leave": {
                "heading": said["prefs_leave_heading"],
                "intro": said["prefs_leave_intro"],
                "button": said["prefs_leave_button"],
            },
        }
        response = self.web.pages.render("preferences.html.j2", context)
        self.guard.set_cookie(response, nonce)
        return response

    async def change(self, request: Request) -> Response:
        token = request.path_params["token"]
        form = await self.web.read_form(request)
        if form is None:
            return self.web.pages.bad_link()
        opened = await self._open(token)
        if isinstance(opened, Response):
            return opened
        if isinstance(opened, TestLink):
            return self.web.pages.test_link(opened.mailing_list)
        prefs = opened
        if not self.guard.check(request, form, f"p:{prefs.subscriber.id}"):
            said = TEXT.get(prefs.page_lang, TEXT["en"])
            return self.web.pages.page(
                prefs.page_lang,
                said["form_expired_heading"],
                [said["form_expired"]],
                status=403,
                links=[(f"/p/{token}", said["prefs_heading"])],
            )
        now = self.web.clock()
        secret = self.web.config.secret
        if form.get("action") == "leave":
            new = await self.web.with_store(lambda store: leave_everything(store, secret, prefs, now))
            return RedirectResponse(f"/p/{new}?left=1", status_code=303)
        wanted = {str(name) for name in form.getlist("list")}
        name = str(form.get("name", prefs.name))
        lang = str(form.get("lang", prefs.lang))
        new = await self.web.with_store(lambda store: save_preferences(store, secret, prefs, wanted, name, lang, now))
        return RedirectResponse(f"/p/{new}?saved=1", status_code=303)

    # ---- /p/ : send me my link ---------------------------------------------------------------------------------

    async def _link_form(self, lang: str, *, status: int = 200, error: str = "", email: str = "") -> HTMLResponse:
        said = TEXT[lang]
        form_token, nonce = self.guard.issue(LINK_SCOPE)
        form = {
            "action": "/p/",
            "button": said["link_button"],
            "hidden": {"form_token": form_token},
            "fields": [
                {
                    "name": "email",
                    "type": "email",
                    "label": said["email_label"],
                    "value": email,
                    "required": True,
                    "autocomplete": "email",
                }
            ],
            "trap": TRAP_FIELD,
        }
        response = self.web.pages.page(
            lang, said["link_heading"], [said["link_intro"]], status=status, form=form, error=error
        )
        self.guard.set_cookie(response, nonce)
        return response

    async def link_page(self, request: Request) -> Response:
        return await self._link_form(await self._default_lang())

    async def link_request(self, request: Request) -> Response:
        lang = await self._default_lang()
        said = TEXT[lang]
        form = await self.web.read_form(request)
        if form is None:
            return await self._link_form(lang, status=400, error=said["signup_bad_email"])
        if not self.guard.check(request, form, LINK_SCOPE):
            return self.web.pages.page(
                lang,
                said["form_expired_heading"],
                [said["form_expired"]],
                status=403,
                links=[("/p/", said["link_heading"])],
            )
        email = str(form.get("email", "")).strip()[:254]
        answer = self.web.pages.page(
            lang,
            said["link_sent_heading"],
            [said["link_sent"].format(addr=mask_address(email) if "@" in email else email), said["signup_sent_hint"]],
        )
        if str(form.get(TRAP_FIELD, "")):
            log.info("preferences link: honeypot filled, ignored")
            return answer
        client = request.client.host if request.client else "unknown"
        now = self.web.clock()
        try:
            asked = await self.web.with_store(lambda store: request_link(store, email, client, now, self.web.limits))
        except AddressError:
            return await self._link_form(lang, status=400, error=said["signup_bad_email"], email=email)
        if asked.outcome == SignupOutcome.LIMITED:
            return self.web.pages.page(lang, said["limited_heading"], [said["link_limited"]], status=429)
        if asked.outcome == SignupOutcome.MAIL and asked.mailing_list is not None and asked.subscriber is not None:
            config = self.web.config
            message = build_link_mail(
                asked,
                config.secret,
                config.base_url,
                now,
                self.web.signer,
                templates_dir=config.templates,
                theme=config.theme_for(asked.mailing_list.name),
            )
            address = asked.subscriber.email
            self.web.mail_later(answer, message, lambda store: store.people.forget_last_link_mail(address))
        return answer
