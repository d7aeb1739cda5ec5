"""The web client's files as the real server serves them at / and /web/* ([http]
web_client), over real sockets. What the client does in a browser is tests/test_browser.py."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import StartServer

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "chatd" / "web"
STOMPJS = REPO / "tests" / "browser" / "node_modules" / "@stomp" / "stompjs"


async def test_index_and_assets_are_served_with_their_types(start_server: StartServer) -> None:
    server = await start_server()
    async with server.client() as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.content == (WEB / "index.html").read_bytes()
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["x-content-type-options"] == "nosniff"
        for path, kind in [
            ("/web/app.js", "text/javascript; charset=utf-8"),
            ("/web/app.css", "text/css; charset=utf-8"),
            ("/web/vendor/stomp.umd.min.js", "text/javascript; charset=utf-8"),
            ("/web/vendor/LICENSE-stompjs.txt", "text/plain; charset=utf-8"),
        ]:
            r = await http.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"] == kind, path
            assert r.content == (WEB / path.removeprefix("/web/")).read_bytes()
        # Every script and stylesheet the page names is one that is served.
        for ref in ("/web/app.css", "/web/app.js", "/web/vendor/stomp.umd.min.js"):
            assert f'"{ref}"' in page.text


async def test_unknown_and_escaping_paths_are_404(start_server: StartServer) -> None:
    server = await start_server()
    async with server.client() as http:
        for path in ("/web/nope.js", "/web/../config.py", "/web/%2e%2e/config.py", "/web/",
                     "/web/vendor", "/index.html"):
            r = await http.get(path)
            assert r.status_code == 404, path
            assert r.json()["error"] == "not_found"
        # The API around it is untouched.
        assert (await http.get("/healthz")).status_code == 200


async def test_web_client_false_turns_it_off(start_server: StartServer) -> None:
    server = await start_server(http={"web_client": False})
    async with server.client() as http:
        for path in ("/", "/web/app.js"):
            r = await http.get(path)
            assert r.status_code == 404, path
            assert r.json()["error"] == "not_found"
        assert (await http.get("/healthz")).status_code == 200


def test_vendored_stompjs_is_the_pinned_npm_build() -> None:
    """chatd/web/vendor/ holds @stomp/stompjs's own built file and licence, unchanged, of
    the version tests/browser pins (and so runs in Chromium)."""
    pinned = json.loads((REPO / "tests" / "browser" / "package.json").read_text())
    version = pinned["devDependencies"]["@stomp/stompjs"]
    assert (WEB / "vendor" / "README.txt").read_text().count(f"@stomp/stompjs {version}") == 1
    if not (STOMPJS / "package.json").exists():
        return  # tests/browser not installed here: test_browser.py installs it, and skips
    assert json.loads((STOMPJS / "package.json").read_text())["version"] == version
    assert (WEB / "vendor" / "stomp.umd.min.js").read_bytes() == (
        STOMPJS / "bundles" / "stomp.umd.min.js"
    ).read_bytes()
    assert (WEB / "vendor" / "LICENSE-stompjs.txt").read_bytes() == (
        STOMPJS / "LICENSE"
    ).read_bytes()
