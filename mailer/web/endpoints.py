"""The endpoints of `mailer serve`: unsubscribe (page and RFC 8058 one-click), sign-up with double opt-in,
confirm. Thin: it parses requests and picks a page; subscriptions.py decides, the store remembers, pages.py renders.

A GET never changes anything (mail scanners follow links); a bad token gets the same 400 page whatever was wrong."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response

from mailer.addresses import AddressError
from mailer.campaign import dkim_signer
from mailer.clock import utcnow
from mailer.config import Config
from mailer.errors import MailerError, NotFoundError
from mailer.message import BuiltMessage
from mailer.models import MailingList, SubscriberStatus, UnsubscribeSource
from mailer.smtp import relays, send_one
from mailer.store import Store
from mailer.subscriptions import (
    ConfirmState,
    LinkTarget,
    SignupLimits,
    SignupOutcome,
    TestLink,
    build_confirmation,
    confirm_with_token,
    link_target,
    mask_address,
    request_signup,
    requested_name,
    unsubscribe_with_token,
)
from mailer.tokens import BadToken, TokenKind, check_form_token, make_form_token
from mailer.web.pages import TRAP_FIELD, Pages, say, words_for
from mailer.wording import UNAVAILABLE

log = logging.getLogger("mailer.web")

FORM_MAX_AGE = 2 * 3600  # a sign-up form older than this asks for a reload
CSRF_COOKIE = "mailer_form"
TOKEN_IN_PATH = re.compile(r"^/(u|c)/[^/]+")

class WebApp:
    """The endpoints, bound to one configuration; `create_app` wraps them in Starlette."""

    def __init__(self, config: Config, limits: SignupLimits | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if not config.secret:
            raise MailerError("no signing secret: run 'mailer init' (or set MAILER_SECRET) before 'mailer serve'")
        self.config = config
        self.limits = limits or SignupLimits()
        self.clock = clock
        self.secure_cookie = config.base_url.startswith("https://")
        self.pending = 0  # confirmation mails handed to the background and not yet sent
        self.signer = dkim_signer(config)  # confirmations are DKIM-signed like issues; the key is read once
        self.pages = Pages(config.theme, config.templates)
        self.pages.check_layout()

    # ---- plumbing ----------------------------------------------------------------------------------------------

    async def _with_store(self, work: Callable[[Store], Any]) -> Any:
        def run() -> Any:
            with Store.open(self.config.db_path) as store:
                return work(store)

        return await run_in_threadpool(run)

    def _signup_url(self, mailing_list: MailingList) -> str:
        return f"{self.config.base_url}/s/{mailing_list.name}"

    @staticmethod
    async def _form(request: Request) -> FormData | None:
        """The posted form, or None when the body is not a form we can read (broken multipart, too large)."""
        try:
            return await request.form(max_files=0, max_fields=20)
        except Exception as exc:  # Starlette raises MultiPartException, HTTPException or a decoding error
            log.info("unreadable form posted to %s: %s", TOKEN_IN_PATH.sub(r"/\1/…", request.url.path), exc)
            return None

    # ---- unsubscribe -------------------------------------------------------------------------------------------

    async def unsubscribe_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            target = await self._with_store(
                lambda store: link_target(store, self.config.secret, token, TokenKind.UNSUBSCRIBE))
        except BadToken:
            return self.pages.bad_link()
        if isinstance(target, TestLink):
            return self.pages.test_link(target.mailing_list)
        words = words_for(target.mailing_list)
        title = target.mailing_list.title or target.mailing_list.name
        if target.subscriber.status == SubscriberStatus.UNSUBSCRIBED:
            return self.pages.page(target.mailing_list.lang, words["unsub_done_heading"],
                              [say(target, "unsub_already")], list_title=title)
        form = {"action": f"/u/{token}", "button": words["unsub_button"], "hidden": {}, "fields": [], "trap": ""}
        return self.pages.page(target.mailing_list.lang, say(target, "unsub_heading"),
                          [say(target, "unsub_ask")], list_title=title, form=form)

    async def unsubscribe(self, request: Request) -> Response:
        """RFC 8058: a POST with `List-Unsubscribe=One-Click` (no cookies, no redirect) or the page's button."""
        token = request.path_params["token"]
        form = await self._form(request)
        if form is None:
            return self.pages.bad_link()
        one_click = str(form.get("List-Unsubscribe", "")) == "One-Click"
        try:
            target, _ = await self._with_store(lambda store: unsubscribe_with_token(
                store, self.config.secret, token, UnsubscribeSource.ONE_CLICK if one_click else UnsubscribeSource.PAGE))
        except BadToken:
            return self.pages.bad_link()
        if isinstance(target, TestLink):
            return self.pages.test_link(target.mailing_list)
        words = words_for(target.mailing_list)
        return self.pages.page(target.mailing_list.lang, words["unsub_done_heading"], [say(target, "unsub_done")],
                          list_title=target.mailing_list.title or target.mailing_list.name,
                          links=[(self._signup_url(target.mailing_list), words["unsub_undo"])])

    # ---- sign-up -----------------------------------------------------------------------------------------------

    async def _list(self, name: str) -> MailingList | None:
        try:
            return await self._with_store(lambda store: store.lists.get(name))  # type: ignore[no-any-return]
        except NotFoundError:
            return None

    def _signup_form(self, mailing_list: MailingList, *, status: int = 200, error: str = "", email: str = "",
                     name: str = "") -> HTMLResponse:
        words = words_for(mailing_list)
        nonce = secrets.token_urlsafe(16)
        form = {
            "action": f"/s/{mailing_list.name}",
            "button": words["signup_button"],
            "hidden": {"form_token": make_form_token(self.config.secret, mailing_list.name, int(time.time()), nonce)},
            "fields": [
                {"name": "email", "type": "email", "label": words["email_label"], "value": email, "required": True,
                 "autocomplete": "email"},
                {"name": "name", "type": "text", "label": words["name_label"], "value": name, "required": False,
                 "autocomplete": "name"},
            ],
            "trap": TRAP_FIELD,
        }
        title = mailing_list.title or mailing_list.name
        response = self.pages.page(mailing_list.lang, words["signup_heading"].format(title=title),
                              [words["signup_intro"]], status=status, list_title=title, form=form, error=error)
        response.set_cookie(CSRF_COOKIE, nonce, max_age=FORM_MAX_AGE, path=f"/s/{mailing_list.name}",
                            httponly=True, samesite="strict", secure=self.secure_cookie)
        return response

    async def signup_page(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None:
            return self.pages.no_list()
        return self._signup_form(mailing_list)

    def _same_origin(self, request: Request) -> bool:
        """A browser names the page a form came from; it must be us (MAILER_BASE_URL, or the Host we serve)."""
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        ours = {urlsplit(self.config.base_url).netloc, request.headers.get("host", "")}
        return urlsplit(origin).netloc in ours

    async def signup(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None:
            return self.pages.no_list()
        words = words_for(mailing_list)
        title = mailing_list.title or mailing_list.name
        form = await self._form(request)
        if form is None:
            return self._signup_form(mailing_list, status=400, error=words["signup_bad_email"])
        email = str(form.get("email", "")).strip()[:254]
        name = str(form.get("name", "")).strip()[:200]
        valid_form = self._same_origin(request) and check_form_token(
            self.config.secret, mailing_list.name, str(form.get("form_token", "")),
            request.cookies.get(CSRF_COOKIE, ""), int(time.time()), FORM_MAX_AGE)
        if not valid_form:
            return self.pages.page(mailing_list.lang, words["form_expired_heading"], [words["form_expired"]],
                              status=403, list_title=title,
                              links=[(f"/s/{mailing_list.name}", words["back_to_form"])])
        sent_page = self.pages.page(mailing_list.lang, words["signup_sent_heading"],
                               [words["signup_sent"].format(addr=mask_address(email) if "@" in email else email,
                                                            title=title), words["signup_sent_hint"]],
                               list_title=title)
        if str(form.get(TRAP_FIELD, "")):
            log.info("sign-up to %s: honeypot filled, ignored", mailing_list.name)
            return sent_page  # a bot learns nothing
        if not mailing_list.from_addr:
            # Nothing is recorded and nothing counted: the form cannot work until ops sets a From address.
            log.error("sign-up to %s refused: the list has no From address (lists create --from), so no "
                      "confirmation can be sent", mailing_list.name)
            return self.pages.page(mailing_list.lang, UNAVAILABLE[0], UNAVAILABLE[1], status=503, list_title=title)
        client = request.client.host if request.client else "unknown"
        now = self.clock()
        try:
            signup = await self._with_store(
                lambda store: request_signup(store, mailing_list.name, email, name, client, now, self.limits))
        except AddressError:
            return self._signup_form(mailing_list, status=400, error=words["signup_bad_email"], email=email,
                                     name=name)
        if signup.outcome == SignupOutcome.LIMITED:
            return self.pages.page(mailing_list.lang, words["limited_heading"], [words["limited"]], status=429,
                              list_title=title)
        if signup.outcome == SignupOutcome.MAIL and signup.subscriber is not None:
            # Mailed after the answer is sent: a slow relay does not hold the browser, and the answer takes as long
            # for an address that gets a mail as for one that does not (timing must not tell who is subscribed).
            message = build_confirmation(mailing_list, signup.subscriber, self.config.secret, self.config.base_url,
                                         now, self.signer, signup.request_id, templates_dir=self.config.templates,
                                         theme=self.config.theme_for(mailing_list.name))
            self.pending += 1
            sent_page.background = BackgroundTask(self._send_confirmation, signup.subscriber.email, message)
        return sent_page

    async def _send_confirmation(self, email: str, message: BuiltMessage) -> None:
        try:
            try:
                reply = await send_one(relays(self.config), message)
                delivered = reply.code is not None and 200 <= reply.code < 300
                problem = f"{reply.code} {reply.text}"
            except MailerError as exc:
                delivered, problem = False, str(exc)
            if not delivered:
                # Not counted against the address: the person can simply send the form again.
                log.warning("confirmation mail to %s not sent: %s", mask_address(email), problem)
                await self._with_store(lambda store: store.signups.forget_last_mail(email))
        finally:
            self.pending -= 1

    # ---- confirm -----------------------------------------------------------------------------------------------

    async def _confirm(self, request: Request, apply: bool) -> Response:
        token = request.path_params["token"]
        now = self.clock()
        name: str | None = None  # a POST without the page's name field (a bare POST) takes the request's name
        if apply:
            form = await self._form(request)
            if form is None:
                return self.pages.bad_link()
            name = str(form["name"]).strip()[:200] if "name" in form else None

        def look(store: Store) -> tuple[LinkTarget, ConfirmState, str]:
            target, state = confirm_with_token(store, self.config.secret, token, now, apply=apply, name=name)
            shown = "" if apply else requested_name(store, self.config.secret, token) or target.subscriber.name
            return target, state, shown

        try:
            target, state, shown_name = await self._with_store(look)
        except BadToken:
            return self.pages.bad_link()
        words = words_for(target.mailing_list)
        title = target.mailing_list.title or target.mailing_list.name
        lang = target.mailing_list.lang
        again = [(self._signup_url(target.mailing_list), words["back_to_form"])]
        if state == ConfirmState.READY:
            # The name asked for is shown to the mailbox owner, who may change or clear it before confirming.
            fields = [{"name": "name", "type": "text", "label": words["name_label"], "value": shown_name,
                       "required": False, "autocomplete": "name"}]
            confirm_form = {"action": f"/c/{token}", "button": words["confirm_button"], "hidden": {},
                            "fields": fields, "trap": ""}
            return self.pages.page(lang, say(target, "confirm_heading"), [say(target, "confirm_ask")],
                                   list_title=title, form=confirm_form)
        if state == ConfirmState.CONFIRMED:
            return self.pages.page(lang, words["confirmed_heading"], [say(target, "confirmed")], list_title=title)
        if state == ConfirmState.EXPIRED:
            return self.pages.page(lang, words["expired_heading"], [words["expired"]], status=400, list_title=title,
                              links=again)
        return self.pages.page(lang, words["gone_heading"], [words["gone"]], status=400, list_title=title, links=again)

    async def confirm_page(self, request: Request) -> Response:
        return await self._confirm(request, apply=False)

    async def confirm(self, request: Request) -> Response:
        return await self._confirm(request, apply=True)

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")
