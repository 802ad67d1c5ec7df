"""The sign-up form of `mailer serve` (`/s/{list}`): the form with its CSRF cookie and token, the checks a post must
pass (same origin, fresh token, no bot in the honeypot), and the confirmation mail sent after the answer, so a slow
relay holds no browser and the answer takes as long whoever signs up.

Requests and pages only: subscriptions.request_signup decides and the store remembers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from mailer.addresses import AddressError
from mailer.errors import NotFoundError
from mailer.models import MailingList
from mailer.subscriptions import SignupOutcome, build_confirmation, mask_address, request_signup
from mailer.web.forms import FormGuard
from mailer.web.pages import TRAP_FIELD, words_for
from mailer.wording import UNAVAILABLE

if TYPE_CHECKING:
    from mailer.web.endpoints import WebApp

log = logging.getLogger("mailer.web")

CSRF_COOKIE = "mailer_form"


class SignupEndpoints:
    """GET and POST /s/{list}, on the WebApp's configuration, pages and store."""

    def __init__(self, web: WebApp) -> None:
        self.web = web

    def _guard(self, mailing_list: MailingList) -> FormGuard:
        return FormGuard(self.web.config.secret, CSRF_COOKIE, f"/s/{mailing_list.name}", self.web.config.base_url)

    async def _list(self, name: str) -> MailingList | None:
        try:
            return await self.web.with_store(lambda store: store.lists.get(name))  # type: ignore[no-any-return]
        except NotFoundError:
            return None

    def _signup_form(
        self, mailing_list: MailingList, *, status: int = 200, error: str = "", email: str = "", name: str = ""
    ) -> HTMLResponse:
        words = words_for(mailing_list)
        guard = self._guard(mailing_list)
        form_token, nonce = guard.issue(mailing_list.name)
        form = {
            "action": f"/s/{mailing_list.name}",
            "button": words["signup_button"],
            "hidden": {"form_token": form_token},
            "fields": [
                {
                    "name": "email",
                    "type": "email",
                    "label": words["email_label"],
                    "value": email,
                    "required": True,
                    "autocomplete": "email",
                },
                {
                    "name": "name",
                    "type": "text",
                    "label": words["name_label"],
                    "value": name,
                    "required": False,
                    "autocomplete": "name",
                },
            ],
            "trap": TRAP_FIELD,
        }
        title = mailing_list.title or mailing_list.name
        response = self.web.pages.page(
            mailing_list.lang,
            words["signup_heading"].format(title=title),
            [words["signup_intro"]],
            status=status,
            list_title=title,
            form=form,
            error=error,
        )
        guard.set_cookie(response, nonce)
        return response

    async def page(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None:
            return self.web.pages.no_list()
        return self._signup_form(mailing_list)

    async def post(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None:
            return self.web.pages.no_list()
        words = words_for(mailing_list)
        title = mailing_list.title or mailing_list.name
        form = await self.web.read_form(request)
        if form is None:
            return self._signup_form(mailing_list, status=400, error=words["signup_bad_email"])
        email = str(form.get("email", "")).strip()[:254]
        name = str(form.get("name", "")).strip()[:200]
        if not self._guard(mailing_list).check(request, form, mailing_list.name):
            return self.web.pages.page(
                mailing_list.lang,
                words["form_expired_heading"],
                [words["form_expired"]],
                status=403,
                list_title=title,
                links=[(f"/s/{mailing_list.name}", words["back_to_form"])],
            )
        sent_page = self.web.pages.page(
            mailing_list.lang,
            words["signup_sent_heading"],
            [
                words["signup_sent"].format(addr=mask_address(email) if "@" in email else email, title=title),
                words["signup_sent_hint"],
            ],
            list_title=title,
        )
        if str(form.get(TRAP_FIELD, "")):
            log.info("sign-up to %s: honeypot filled, ignored", mailing_list.name)
            return sent_page  # a bot learns nothing
        if not mailing_list.from_addr:
            # Nothing is recorded and nothing counted: the form cannot work until ops sets a From address.
            log.error(
                "sign-up to %s refused: the list has no From address (lists create --from), so no "
                "confirmation can be sent",
                mailing_list.name,
            )
            return self.web.pages.page(mailing_list.lang, UNAVAILABLE[0], UNAVAILABLE[1], status=503, list_title=title)
        client = request.client.host if request.client else "unknown"
        now = self.web.clock()
        try:
            signup = await self.web.with_store(
                lambda store: request_signup(store, mailing_list.name, email, name, client, now, self.web.limits)
            )
        except AddressError:
            return self._signup_form(mailing_list, status=400, error=words["signup_bad_email"], email=email, name=name)
        if signup.outcome == SignupOutcome.LIMITED:
            return self.web.pages.page(
                mailing_list.lang, words["limited_heading"], [words["limited"]], status=429, list_title=title
            )
        if signup.outcome == SignupOutcome.MAIL and signup.subscriber is not None:
            # Mailed after the answer is sent: a slow relay does not hold the browser, and the answer takes as long
            # for an address that gets a mail as for one that does not (timing must not tell who is subscribed).
            config = self.web.config
            message = build_confirmation(
                mailing_list,
                signup.subscriber,
                config.secret,
                config.base_url,
                now,
                self.web.signer,
                signup.request_id,
                templates_dir=config.templates,
                theme=config.theme_for(mailing_list.name),
            )
            email = signup.subscriber.email
            self.web.mail_later(sent_page, message, lambda store: store.signups.forget_last_mail(email))
        return sent_page
