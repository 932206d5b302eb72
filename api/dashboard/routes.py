"""``GET /dashboard`` and its static files, shipped inside the package (no CDN, no build).

The page needs no key to load: it asks for the API key when the feed answers 401 and
keeps it in the tab's ``sessionStorage``. Its Content-Security-Policy allows this origin
only, so a page that tried to reach another one would be stopped by the browser itself.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get, head
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "index.html"
# 'self' only: scripts, styles, fetches (the feed, the reads, the chat) and images.
# uPlot sizes its canvas through element.style (CSSOM), which style-src does not govern.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new version shows on the next load
}


@get(["/dashboard", "/dashboard/"], include_in_schema=False, media_type=MediaType.HTML)
async def dashboard_page() -> Response[bytes]:
    return Response(PAGE.read_bytes(), media_type=MediaType.HTML, headers=HEADERS)


@head(["/dashboard", "/dashboard/"], include_in_schema=False, media_type=MediaType.HTML)
async def dashboard_head() -> Response[None]:
    """What a link checker or uptime probe asks: the page's headers, no body."""
    return Response(None, media_type=MediaType.HTML, headers=HEADERS)


def dashboard_routes() -> list[ControllerRouterHandler]:
    """The page and ``/dashboard/static/...``; open (no key), like ``/health``."""
    static = create_static_files_router(
        path="/dashboard/static",
        directories=[STATIC],
        name="dashboard-static",
        include_in_schema=False,
        cache_control=CacheControlHeader(no_cache=True),
    )
    return [dashboard_page, dashboard_head, static]
