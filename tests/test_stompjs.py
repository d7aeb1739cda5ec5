"""Runs the Node suite in tests/node/ (the real @stomp/stompjs and `ws` from npm, the STOMP
guide's client code) against a real chatd started in-process.

CI runs nothing extra: this test installs the npm packages itself with
`npm ci --no-audit --no-fund` in tests/node when they are missing or not the pinned
versions (scripts/test also runs that `npm ci`). It is skipped only when `node` is not on
PATH. CHATD_NODE_VERBOSE=1 prints node's report (with `pytest -s`); CHATD_NODE_ARGS adds
arguments to `node --test`.

Environment contract (what every tests/node/*.test.mjs reads through helpers.mjs):

  CHATD_HTTP              http://127.0.0.1:<http port>            (HTTP API, /chat-ws/*)
  CHATD_STOMP_WS          ws://127.0.0.1:<stomp ws port>/ws       (dedicated Web-STOMP listener)
  CHATD_WS_ON_HTTP        ws://127.0.0.1:<http port>/ws           (STOMP on the HTTP listener)
  CHATD_CHAT_WS           ws://127.0.0.1:<http port>/chat         (ticket protocol)
  CHATD_STOMP_TCP         127.0.0.1:<stomp tcp port>              (informational)
  CHATD_STOMP_PUBLIC_URL  the configured `stomp.public_url`; /chat-ws/connect must return
                          it as connectionInfo.stompUrl
  CHATD_ALLOWED_ORIGIN    an Origin in `auth.allowed_origins`
  CHATD_ADMIN_TOKEN       admin JWT (user 9000) for POST /admin/rooms etc.
  CHATD_TOKENS            JSON object {"<user id>": "<JWT>"} for users 1..99; user N has
                          username "user<N>", email "user<N>@example.com", userType "user".
                          Each test file owns a disjoint block of ids (see helpers.mjs) and
                          creates its own rooms with the admin API, so files may run in
                          parallel without seeing each other's presence or messages.
  CHATD_TOKEN_1/2/3       the same JWTs as CHATD_TOKENS for users 1, 2 and 3 (the guide flow)
  CHATD_ROOM_SHARED       private room, members 1 and 2
  CHATD_ROOM_PUBLIC       public room, member 1 (anyone may join)
  CHATD_ROOM_PRIVATE      private room, member 1 only (user 3 is not invited)
  CHATD_TYPING_TIMEOUT_MS the configured `chat.typing_timeout_seconds`, in ms

Users 1..3 and the three rooms above belong to guide-flow.test.mjs only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from .cluster import start_cluster  # noqa: F401 (fixture)
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import rabbit_instance, rabbit_url  # noqa: F401 (fixtures)

NODE_DIR = Path(__file__).resolve().parent / "node"
PUBLIC_URL = "wss://chat.example.test/ws"
ALLOWED_ORIGIN = "http://allowed.example"
POOL = range(1, 100)
TYPING_TIMEOUT = 1.0


def _installed_ok() -> bool:
    """True when node_modules holds exactly the pinned devDependencies."""
    pinned = json.loads((NODE_DIR / "package.json").read_text())["devDependencies"]
    for name, version in pinned.items():
        meta = NODE_DIR / "node_modules" / name / "package.json"
        try:
            if json.loads(meta.read_text()).get("version") != version:
                return False
        except (OSError, ValueError):
            return False
    return True


async def _npm_ci() -> None:
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not; cannot install tests/node"
    with trio.fail_after(600):
        proc = await trio.run_process(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert proc.returncode == 0, (
        f"npm ci in {NODE_DIR} failed ({proc.returncode}):\n"
        + proc.stdout.decode(errors="replace")
        + proc.stderr.decode(errors="replace")
    )


async def _run_suite(http: Any, stomp: Any, chat: Any) -> None:
    """The suite with its HTTP API at `http`, its STOMP endpoints at `stomp` and /chat at
    `chat` (one server, or three nodes of a cluster)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    if not _installed_ok():
        await _npm_ci()
    files = sorted(str(p) for p in NODE_DIR.glob("*.test.mjs"))
    assert files, f"no *.test.mjs files in {NODE_DIR}"

    service = http.state.service
    shared = await service.create_room("shared room", False, [1, 2])
    public = await service.create_room("public room", True, [1])
    private = await service.create_room("private room", False, [1])

    tokens = {
        str(uid): http.token(uid, f"user{uid}", email=f"user{uid}@example.com", user_type="user")
        for uid in POOL
    }
    env = {
        **os.environ,
        "CHATD_HTTP": f"http://127.0.0.1:{http.running.http_port}",
        "CHATD_STOMP_WS": f"ws://127.0.0.1:{stomp.running.stomp_ws_port}/ws",
        "CHATD_WS_ON_HTTP": f"ws://127.0.0.1:{stomp.running.http_port}/ws",
        "CHATD_CHAT_WS": f"ws://127.0.0.1:{chat.running.http_port}/chat",
        "CHATD_STOMP_TCP": f"127.0.0.1:{stomp.running.stomp_tcp_port}",
        "CHATD_STOMP_PUBLIC_URL": PUBLIC_URL,
        "CHATD_ALLOWED_ORIGIN": ALLOWED_ORIGIN,
        "CHATD_ADMIN_TOKEN": http.admin_token(),
        "CHATD_TOKENS": json.dumps(tokens),
        "CHATD_TOKEN_1": tokens["1"],
        "CHATD_TOKEN_2": tokens["2"],
        "CHATD_TOKEN_3": tokens["3"],
        "CHATD_ROOM_SHARED": str(shared.id),
        "CHATD_ROOM_PUBLIC": str(public.id),
        "CHATD_ROOM_PRIVATE": str(private.id),
        "CHATD_TYPING_TIMEOUT_MS": str(int(TYPING_TIMEOUT * 1000)),
        "NO_COLOR": "1",
    }
    # For local debugging, e.g. CHATD_NODE_ARGS="--test-name-pattern=heart".
    extra = os.environ.get("CHATD_NODE_ARGS", "").split()
    with trio.fail_after(180):
        proc = await trio.run_process(
            [node, "--test", "--test-reporter=spec", *extra, *files],
            cwd=NODE_DIR,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if os.environ.get("CHATD_NODE_VERBOSE"):
        print(out)
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{out}"


SECTIONS: dict[str, dict[str, Any]] = {
    "stomp": {"public_url": PUBLIC_URL},
    "chat": {"typing_timeout_seconds": TYPING_TIMEOUT},
    "auth": {"allowed_origins": [ALLOWED_ORIGIN]},
}


async def test_stompjs_suite(start_server: Any) -> None:
    server = await start_server(**SECTIONS)
    await _run_suite(server, server, server)


async def test_stompjs_suite_on_a_cluster_each_endpoint_on_another_node(
    start_cluster: Any,  # noqa: F811 (fixture)
) -> None:
    """The same suite, unmodified, against three nodes: the HTTP API (sends, rooms,
    tickets, logins) on one, STOMP on another, /chat on the third, so every event it
    waits for crosses the bus and every credential is redeemed elsewhere."""
    n1, n2, n3 = await start_cluster(3, **SECTIONS)
    await _run_suite(n1, n2, n3)
