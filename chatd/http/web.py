"""The chat web client at `/`: static files shipped inside the package (chatd/web/), served
as they are, with no build step ([http] web_client; off, every path here is a 404).

The files are read once, at import, into a table of path to bytes: what is served is only
what ships, and no request path is ever joined to a filesystem path. The table comes from
importlib.resources, so it works from a wheel, a checkout and chatd.pyz alike.
"""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable

from quart import Blueprint, Response
from werkzeug.exceptions import NotFound

from chatd.http.context import server_state

web = Blueprint("web", __name__)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

# The page loads its own scripts and styles only (no inline code, no CDN). It talks to this
# server's API and to the STOMP URL the server hands out, which may be another port or
# host (the [stomp] websocket_listen or public_url), so connections may go anywhere.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:;"
    " connect-src 'self' http: https: ws: wss:; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'none'"
)


def _files(root: Traversable, prefix: str = "") -> dict[str, tuple[bytes, str]]:
    out: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            out.update(_files(entry, name + "/"))
            continue
        suffix = "." + entry.name.rpartition(".")[2]
        kind = _TYPES.get(suffix) or ("text/plain; charset=utf-8" if "LICENSE" in name else None)
        if kind is not None:
            out[name] = (entry.read_bytes(), kind)
    return out


_FILES = _files(importlib.resources.files("chatd") / "web")


def _serve(name: str) -> Response:
    if not server_state().cfg.http.web_client or name not in _FILES:
        raise NotFound()
    body, kind = _FILES[name]
    resp = Response(body, 200, content_type=kind)
    # Revalidated on every load, so an upgraded chatd is never paired with an old script.
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    if kind.startswith("text/html"):
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


@web.get("/")
async def index() -> Response:
    return _serve("index.html")


@web.get("/web/<path:name>")
async def asset(name: str) -> Response:
    return _serve(name)
