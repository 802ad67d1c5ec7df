"""The endpoints of `mailer serve`: unsubscribe (page and RFC 8058 one-click) and confirm, with the sign-up form
in signup.py. Thin: it parses requests and picks a page; subscriptions.py decides, the store remembers, pages.py
renders.

A GET never changes anything (mail scanners follow links); a bad token gets the same 400 page whatever was wrong."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from mailer.campaign import dkim_signer
from mailer.clock import utcnow
from mailer.config import Config
from mailer.errors import MailerError
from mailer.message import BuiltMessage
from mailer.models import MailingList, SubscriberStatus, UnsubscribeSource
from mailer.smtp import relays, send_one
from mailer.store import Store
from mailer.subscriptions import (
    ConfirmState,
    LinkTarget,
    SignupLimits,
    TestLink,
    confirm_with_token,
    link_target,
    mask_address,
    requested_name,
    unsubscribe_with_token,
)
from mailer.tokens import BadToken, TokenKind
from mailer.web.archive import ArchiveEndpoints
from mailer.web.pages import Pages, say, words_for
from mailer.web.preferences import PreferencesEndpoints
from mailer.web.signup import SignupEndpoints

log = logging.getLogger("mailer.web")

TOKEN_IN_PATH = re.compile(r"^/(u|c|p)/[^/]+")


class WebApp:
    """The endpoints, bound to one configuration; `create_app` wraps them in Starlette."""

    def __init__(
        self, config: Config, limits: SignupLimits | None = None, clock: Callable[[], datetime] = utcnow
    ) -> None:
        if not config.secret:
            raise MailerError("no signing secret: run 'mailer init' (or set MAILER_SECRET) before 'mailer serve'")
        self.config = config
        self.limits = limits or SignupLimits()
        self.clock = clock
        self.pending = 0  # mails (confirmations, preferences links) handed to the background and not yet sent
        self.signer = dkim_signer(config)  # confirmations are DKIM-signed like issues; the key is read once
        self.pages = Pages(config.theme, config.templates)
        self.pages.check_layout()
        self.signups = SignupEndpoints(self)
        self.preferences = PreferencesEndpoints(self)
        self.archive = ArchiveEndpoints(self)

    # ---- plumbing ----------------------------------------------------------------------------------------------

    async def with_store(self, work: Callable[[Store], Any]) -> Any:
        def run() -> Any:
            with Store.open(self.config.db_path) as store:
                return work(store)

        return await run_in_threadpool(run)

    def signup_url(self, mailing_list: MailingList) -> str:
        return f"{self.config.base_url}/s/{mailing_list.name}"

    def mail_later(self, response: Response, message: BuiltMessage, forget: Callable[[Store], None]) -> None:
        """Send `message` after `response` has gone: a slow relay does not hold the browser, and the answer takes as
        long for an address that gets a mail as for one that does not (timing must not tell who is subscribed).
        A mail that cannot be sent is `forget`-ten: it does not count against the address's limits."""
        self.pending += 1
        response.background = BackgroundTask(self._send_later, message, forget)

    async def _send_later(self, message: BuiltMessage, forget: Callable[[Store], None]) -> None:
        try:
            try:
                reply = await send_one(relays(self.config), message)
                delivered = reply.code is not None and 200 <= reply.code < 300
                problem = f"{reply.code} {reply.text}"
            except MailerError as exc:
                delivered, problem = False, str(exc)
            if not delivered:
                # Not counted against the address: the person can simply send the form again.
                log.warning("mail to %s not sent: %s", mask_address(message.rcpt_to), problem)
                await self.with_store(forget)
        finally:
            self.pending -= 1

    @staticmethod
    async def read_form(request: Request) -> FormData | None:
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
            target = await self.with_store(
                lambda store: link_target(store, self.config.secret, token, TokenKind.UNSUBSCRIBE)
            )
        except BadToken:
            return self.pages.bad_link()
        if isinstance(target, TestLink):
            return self.pages.test_link(target.mailing_list)
        words = words_for(target.mailing_list)
        title = target.mailing_list.title or target.mailing_list.name
        if target.subscriber.status == SubscriberStatus.UNSUBSCRIBED:
            return self.pages.page(
                target.mailing_list.lang, words["unsub_done_heading"], [say(target, "unsub_already")], list_title=title
            )
        form = {"action": f"/u/{token}", "button": words["unsub_button"], "hidden": {}, "fields": [], "trap": ""}
        return self.pages.page(
            target.mailing_list.lang,
            say(target, "unsub_heading"),
            [say(target, "unsub_ask")],
            list_title=title,
            form=form,
        )

    async def unsubscribe(self, request: Request) -> Response:
        """RFC 8058: a POST with `List-Unsubscribe=One-Click` (no cookies, no redirect) or the page's button."""
        token = request.path_params["token"]
        form = await self.read_form(request)
        if form is None:
            return self.pages.bad_link()
        one_click = str(form.get("List-Unsubscribe", "")) == "One-Click"
        try:
            target, _ = await self.with_store(
                lambda store: unsubscribe_with_token(
                    store,
                    self.config.secret,
                    token,
                    UnsubscribeSource.ONE_CLICK if one_click else UnsubscribeSource.PAGE,
                )
            )
        except BadToken:
            return self.pages.bad_link()
        if isinstance(target, TestLink):
            return self.pages.test_link(target.mailing_list)
        words = words_for(target.mailing_list)
        return self.pages.page(
            target.mailing_list.lang,
            words["unsub_done_heading"],
            [say(target, "unsub_done")],
            list_title=target.mailing_list.title or target.mailing_list.name,
            links=[(self.signup_url(target.mailing_list), words["unsub_undo"])],
        )

    # ---- confirm -----------------------------------------------------------------------------------------------

    async def _confirm(self, request: Request, apply: bool) -> Response:
        token = request.path_params["token"]
        now = self.clock()
        name: str | None = None  # a POST without the page's name field (a bare POST) takes the request's name
        if apply:
            form = await self.read_form(request)
            if form is None:
                return self.pages.bad_link()
            name = str(form["name"]).strip()[:200] if "name" in form else None

        def look(store: Store) -> tuple[LinkTarget, ConfirmState, str]:
            target, state = confirm_with_token(store, self.config.secret, token, now, apply=apply, name=name)
            shown = "" if apply else requested_name(store, self.config.secret, token) or target.subscriber.name
            return target, state, shown

        try:
            target, state, shown_name = await self.with_store(look)
        except BadToken:
            return self.pages.bad_link()
        words = words_for(target.mailing_list)
        title = target.mailing_list.title or target.mailing_list.name
        lang = target.mailing_list.lang
        again = [(self.signup_url(target.mailing_list), words["back_to_form"])]
        if state == ConfirmState.READY:
            # The name asked for is shown to the mailbox owner, who may change or clear it before confirming.
            fields = [
                {
                    "name": "name",
                    "type": "text",
                    "label": words["name_label"],
                    "value": shown_name,
                    "required": False,
                    "autocomplete": "name",
                }
            ]
            confirm_form = {
                "action": f"/c/{token}",
                "button": words["confirm_button"],
                "hidden": {},
                "fields": fields,
                "trap": "",
            }
            return self.pages.page(
                lang, say(target, "confirm_heading"), [say(target, "confirm_ask")], list_title=title, form=confirm_form
            )
        if state == ConfirmState.CONFIRMED:
            return self.pages.page(lang, words["confirmed_heading"], [say(target, "confirmed")], list_title=title)
        if state == ConfirmState.EXPIRED:
            return self.pages.page(
                lang, words["expired_heading"], [words["expired"]], status=400, list_title=title, links=again
            )
        return self.pages.page(lang, words["gone_heading"], [words["gone"]], status=400, list_title=title, links=again)

    async def confirm_page(self, request: Request) -> Response:
        return await self._confirm(request, apply=False)

    async def confirm(self, request: Request) -> Response:
        return await self._confirm(request, apply=True)

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")
