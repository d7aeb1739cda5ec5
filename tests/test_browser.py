"""Real Chromium against a real chatd: the Node suite in tests/browser/ drives Debian's
`chromium` with puppeteer-core (pinned there) while this file runs chatd in-process.

- test_guides_in_chromium: the ticket guide's ChatClient and the STOMP guide's web Client,
  as the guides print them (tests/browser/pages/), in pages of an allowed origin, talk to
  each other; a page of an origin not allowed is refused on POST /chat/ticket (CORS), /chat
  and /ws with the README's answers.
- test_web_client_in_chromium: the web client at / (chatd/web/), two users in two pages.

Pages other than chatd's own come from small HTTP servers of this file on port 0 (one per
origin, serving tests/browser/, so node_modules/@stomp/stompjs too: no CDN). For the web
client test one also takes POST /control/stop and /control/start from the Node side: this
file stops chatd, or starts it again on the same port and database, and answers once done.

No chromium: skipped with the reason, but on CI (CI=true, where scripts/test installs it)
that is a failure. CHATD_NODE_VERBOSE=1 prints node's report; CHATD_CHROMIUM names a browser.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import Server, StartServer

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
ON_CI = os.environ.get("CI") == "true"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")


def _need(what: str, found: str | None) -> str:
    if found is None:
        if ON_CI:
            pytest.fail(f"{what} is not installed; scripts/test installs it on CI")
        pytest.skip(f"{what} is not installed (Debian: apt-get install chromium)")
    return found


def _chromium() -> str:
    named = os.environ.get("CHATD_CHROMIUM")
    if named:
        return named
    return _need("chromium", next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None))


def _installed_ok() -> bool:
    pinned = json.loads((BROWSER_DIR / "package.json").read_text())["devDependencies"]
    for name, version in pinned.items():
        try:
            meta = json.loads((BROWSER_DIR / "node_modules" / name / "package.json").read_text())
        except (OSError, ValueError):
            return False
        if meta.get("version") != version:
            return False
    return True


async def _npm_ci() -> None:
    npm = _need("npm", shutil.which("npm"))
    with trio.fail_after(600):
        proc = await trio.run_process(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=BROWSER_DIR, capture_stdout=True, capture_stderr=True, check=False,
        )
    assert proc.returncode == 0, (
        f"npm ci in {BROWSER_DIR} failed:\n{proc.stdout.decode()}{proc.stderr.decode()}"
    )


Control = Callable[[str], Awaitable[None]]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files under tests/browser/, and POST /control/<command> when a control is set."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
    }
    control: Control | None = None
    trio_token: trio.lowlevel.TrioToken | None = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, directory=str(BROWSER_DIR), **kw)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        command = self.path.removeprefix("/control/")
        if self.control is None or command == self.path or self.trio_token is None:
            self.send_error(404)
            return
        try:
            trio.from_thread.run(self.control, command, trio_token=self.trio_token)
        except Exception as exc:  # reported to the Node side, which fails its test
            self.send_error(500, str(exc))
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _origin(control: Control | None = None) -> Iterator[str]:
    """An HTTP server on 127.0.0.1, port 0, in a thread; yields its origin."""
    handler = type(
        "Handler", (_Handler,), {"control": staticmethod(control) if control else None,
                                 "trio_token": trio.lowlevel.current_trio_token()}
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture
def tools() -> tuple[str, str]:
    """node and chromium, found before any server starts (a plain fixture, so a skip keeps
    its reason); skipped, or failed on CI, without them."""
    return _need("node", shutil.which("node")), _chromium()


async def _run_node(tools: tuple[str, str], test_file: str, env: dict[str, str]) -> None:
    node, chromium = tools
    if not _installed_ok():
        await _npm_ci()
    full = {**os.environ, **env, "CHATD_CHROMIUM": chromium, "NO_COLOR": "1"}
    extra = os.environ.get("CHATD_NODE_ARGS", "").split()
    with trio.fail_after(300):
        proc = await trio.run_process(
            [node, "--test", "--test-reporter=spec", *extra, test_file],
            cwd=BROWSER_DIR, env=full, capture_stdout=True, capture_stderr=True, check=False,
        )
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if os.environ.get("CHATD_NODE_VERBOSE"):
        print(out)
    assert proc.returncode == 0, f"node --test {test_file} failed ({proc.returncode}):\n{out}"


async def test_guides_in_chromium(tools: tuple[str, str], start_server: StartServer) -> None:
    with _origin() as allowed, _origin() as refused:
        server = await start_server(auth={"allowed_origins": [allowed]})
        service = server.state.service
        # The guides' own ids: `chat.send({ roomId: 1, ... })` and 'user.123'.
        room = await service.create_room("guide room", False, [1, 123])
        assert room.id == 1
        running = server.running
        await _run_node(tools, "guides.test.mjs", {
            "CHATD_HTTP": server.base,
            "CHATD_STOMP_WS": f"ws://127.0.0.1:{running.stomp_ws_port}/ws",
            "CHATD_CHAT_WS": f"{server.ws_base}/chat",
            "CHATD_ORIGIN": allowed,
            "CHATD_REFUSED_ORIGIN": refused,
            "CHATD_TOKEN_1": server.token(1, "ticketuser"),
            "CHATD_TOKEN_123": server.token(123, "stompuser"),
        })


async def test_web_client_in_chromium(tools: tuple[str, str], start_server: StartServer) -> None:
    # The page's origin is chatd's own, so chatd must listen where it listened before a
    # restart, and allow that origin: its port is learned from a first start on port 0.
    probe = await start_server()
    port = probe.running.http_port
    await probe.stop()
    origin = f"http://127.0.0.1:{port}"
    sections: dict[str, dict[str, Any]] = {
        "http": {"listen": [f"127.0.0.1:{port}"]},
        "auth": {"allowed_origins": [origin]},
        # /ws on the HTTP listener only, so the stompUrl handed out survives the restart.
        "stomp": {"websocket_listen": [], "tcp_listen": []},
        "chat": {"typing_timeout_seconds": 30.0},
    }
    current: list[Server] = [await start_server(**sections)]

    async def control(command: str) -> None:
        if command == "stop":
            await current[-1].stop()
        elif command == "start":
            current.append(await start_server(**sections))
        else:
            raise ValueError(f"unknown command {command!r}")

    server = current[0]
    service = server.state.service
    general = await service.create_room("General", False, [1, 2])
    other = await service.create_room("Release planning", False, [1, 2])
    archive = await service.create_room("Archive", False, [1, 2])
    shots = os.environ.get("CHATD_SCREENSHOTS")
    with _origin(control) as helper:
        await _run_node(tools, "webclient.test.mjs", {
            **({"CHATD_SCREENSHOTS": str(Path(shots).resolve())} if shots else {}),
            "CHATD_HTTP": origin,
            "CHATD_CONTROL": f"{helper}/control",
            "CHATD_ROOM_GENERAL": str(general.id),
            "CHATD_ROOM_OTHER": str(other.id),
            "CHATD_ROOM_ARCHIVE": str(archive.id),
            "CHATD_TOKEN_1": server.token(1, "alice"),
            "CHATD_TOKEN_2": server.token(2, "bob"),
        })
