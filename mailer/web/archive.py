"""The public archive on `mailer serve`: `/a/{list}/` (the index), `/a/{list}/{slug}` (an issue's web edition, and
its images beside it) and `/a/{list}/feed.xml` (Atom). Only for a list whose archive is on; an issue of another
list opens with the key its mail's "view in browser" link carries, and is kept out of search engines.

Requests only: archive.py makes the pages, the store finds the issues."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from mailer.archive import archive_url, edition_html, edition_images, edition_of, feed, index_page
from mailer.errors import NotFoundError
from mailer.models import MailingList
from mailer.tokens import check_archive_key

if TYPE_CHECKING:
    from mailer.store import Store
    from mailer.web.endpoints import WebApp

# Pages of an archive show the issue's images (https, or its own files); still no scripts, no frames.
ARCHIVE_CSP = (
    "default-src 'none'; img-src 'self' https:; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC_CACHE = "public, max-age=300"


class ArchiveEndpoints:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def _list(self, name: str) -> MailingList | None:
        try:
            return await self.web.with_store(lambda store: store.lists.get(name))  # type: ignore[no-any-return]
        except NotFoundError:
            return None

    def _headers(self, public: bool) -> dict[str, str]:
        headers = {"content-security-policy": ARCHIVE_CSP}
        if public:
            headers["cache-control"] = PUBLIC_CACHE
        else:  # opened by a mail's key: for that reader, not for search engines or shared caches
            headers["x-robots-tag"] = "noindex"
        return headers

    async def to_index(self, request: Request) -> Response:
        return RedirectResponse(f"{request.path_params['list']}/", status_code=308)  # relative: no Host trusted

    async def index(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None or not mailing_list.archive:
            return self.web.pages.no_list()
        issues = await self.web.with_store(lambda store: store.archive.issues(mailing_list.id))
        config = self.web.config
        html = index_page(mailing_list, issues, config.base_url, config.theme_for(mailing_list.name), config.templates)
        return HTMLResponse(html, headers=self._headers(True))

    async def feed(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None or not mailing_list.archive:
            return self.web.pages.no_list()
        url = archive_url(self.web.config.base_url, mailing_list)

        def make(store: Store) -> bytes:
            return feed(store, mailing_list, store.archive.issues(mailing_list.id), url)

        body = await self.web.with_store(make)
        return Response(body, media_type="application/atom+xml; charset=utf-8", headers=self._headers(True))

    async def _opened(self, request: Request) -> tuple[MailingList, int, str, bool] | None:
        """The list, campaign, web edition and whether it is public; None when it is not to be shown."""
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None:
            return None
        slug = request.path_params["slug"]
        public = mailing_list.archive
        if not public and not check_archive_key(
            self.web.config.secret, mailing_list.id, slug, request.query_params.get("k", "")
        ):
            return None
        found = await self.web.with_store(lambda store: edition_of(store, mailing_list, slug))
        if found is None:
            return None
        issue, html = found
        return mailing_list, issue.campaign_id, html, public

    async def issue(self, request: Request) -> Response:
        opened = await self._opened(request)
        if opened is None:
            return self.web.pages.no_list()
        _, campaign_id, html, public = opened
        images = await self.web.with_store(lambda store: edition_images(store, campaign_id))
        # Opened with a mail's key, its images need the key too.
        query = "" if public else f"?k={request.query_params.get('k', '')}"
        page = edition_html(html, request.path_params["slug"], images, query)
        return HTMLResponse(page, headers=self._headers(public))

    async def image(self, request: Request) -> Response:
        opened = await self._opened(request)
        if opened is None:
            return self.web.pages.no_list()
        _, campaign_id, _, public = opened
        images = await self.web.with_store(lambda store: edition_images(store, campaign_id))
        for image in images:
            if image.name == request.path_params["image"]:
                return Response(image.data, media_type=image.content_type, headers=self._headers(public))
        return self.web.pages.no_list()
