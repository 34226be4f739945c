"""The web dashboard: HTML pages and their static assets, served by the coordinator itself.

    add_dashboard(app)      # GET /, /campaigns/7, /campaigns/new, /signin, /lead, /admin, /volunteer, /machines,
                            # /teams, /static/...

Each page is a body fragment in `static/pages/` wrapped in `static/layout.html`; its behaviour is
one ES module in `static/js/` that talks to the REST API. Nothing loads from another origin (the
Content-Security-Policy says so), and the pages only hide what a role can't do: the API enforces it.

/volunteer, the browser volunteer, is *cross-origin isolated* (COOP same-origin, COEP require-corp),
which WebAssembly threads need, and its policy lets WebAssembly compile (`'wasm-unsafe-eval'`). Every
static file is served with the headers a worker and its imports need under that isolation; the
vendored onnxruntime-web and MessagePack (static/vendor/, see VENDOR.json) come from this origin.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

from aiohttp import web

from protocol.version import RELEASE_VERSION

__all__ = ["PAGES", "STATIC_DIR", "Page", "add_dashboard", "render"]

STATIC_DIR = Path(__file__).parent / "static"

_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'{wasm}; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": _POLICY.format(wasm=""),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The browser volunteer: cross-origin isolated for WebAssembly threads, and allowed to compile wasm.
ISOLATED_HEADERS = SECURITY_HEADERS | {
    "Content-Security-Policy": _POLICY.format(wasm=" 'wasm-unsafe-eval'"),
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}
# Static files: loadable by an isolated page and its workers (a worker script carries its own policy).
STATIC_HEADERS = {
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": ISOLATED_HEADERS["Content-Security-Policy"],
    "X-Content-Type-Options": "nosniff",
}
mimetypes.add_type("text/javascript", ".mjs")  # not in every system's mime.types
mimetypes.add_type("application/wasm", ".wasm")  # WebAssembly.instantiateStreaming needs it


@dataclass(frozen=True)
class Page:
    path: str
    fragment: str  # file in static/pages/
    title: str
    script: str  # module in static/js/
    isolated: bool = False  # cross-origin isolated, may compile WebAssembly (ISOLATED_HEADERS)


PAGES: tuple[Page, ...] = (
    Page("/", "campaigns.html", "Campaigns", "campaigns.js"),
    Page("/campaigns/new", "new-campaign.html", "New campaign", "new-campaign.js"),
    Page(r"/campaigns/{campaign_id:\d+}", "campaign.html", "Campaign", "campaign.js"),
    Page("/signin", "signin.html", "Sign in", "signin.js"),
    Page("/lead", "lead.html", "Your campaigns", "lead.js"),
    Page("/admin", "admin.html", "Administration", "admin.js"),
    Page("/volunteer", "volunteer.html", "Contribute", "volunteer/page.js", isolated=True),
    Page("/machines", "machines.html", "My machines", "machines.js"),
    Page("/teams", "teams.html", "Teams", "teams.js"),
)


@cache
def render(page: Page) -> str:
    layout = Template((STATIC_DIR / "layout.html").read_text(encoding="utf-8"))
    return layout.substitute(
        title=page.title,
        body=(STATIC_DIR / "pages" / page.fragment).read_text(encoding="utf-8"),
        script=page.script,
        version=RELEASE_VERSION,
    )


def _handler(page: Page) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        headers = ISOLATED_HEADERS if page.isolated else SECURITY_HEADERS
        return web.Response(text=render(page), content_type="text/html", charset="utf-8", headers=headers)

    return serve


def add_dashboard(app: web.Application) -> None:
    for page in PAGES:
        app.router.add_get(page.path, _handler(page), name=f"page:{page.fragment.removesuffix('.html')}")
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=False)
    app.on_response_prepare.append(_static_headers)


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/static/"):
        response.headers.update(STATIC_HEADERS)
