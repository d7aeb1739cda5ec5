"""Graceful shutdown: every /chat client gets 1001, pending writes are committed, and the
process exits 0 on SIGTERM/SIGINT within the grace period."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from chatd import config as config_mod
from chatd.auth import Authenticator

from . import chatd_proc
from ._chat import (
    Gate,
    chat,
    create_room,
    expect_close,
    history,
    recv_message,
    roundtrip,
    send,
)
from .conftest import SECRET, StartServer

REPO = Path(__file__).resolve().parent.parent


async def test_shutdown_closes_every_chat_client_with_1001(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server()
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as phone, chat(server, 1) as laptop, chat(server, 2) as peer:
            msg = await roundtrip(phone, room, "last words")
            assert await recv_message(laptop) == msg
            server.running.shutdown()
            for ws in (phone, laptop, peer):
                if ws is peer:
                    assert await recv_message(peer) == msg
                reason = await expect_close(ws)
                assert reason.code == 1001
            await server.stopped.wait()
        assert server.state.hub.count() == 0
        # Nothing listens any more.
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", server.running.http_port)


async def test_pending_writes_are_committed_at_shutdown(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server()
        room = await create_room(server, [1, 2, 3, 4])
        gate = Gate()
        try:
            async with (
                chat(server, 1) as a,
                chat(server, 2) as b,
                chat(server, 3) as c,
                chat(server, 4) as watcher,
                trio.open_nursery() as nursery,
            ):
                # Hold the writer so the three posts below are queued but not committed.
                nursery.start_soon(server.state.store.write, gate.job)
                await gate.wait_entered()
                for ws, text in ((a, "a"), (b, "b"), (c, "c")):
                    await send(ws, room, text)
                await trio.testing.wait_all_tasks_blocked()
                server.running.shutdown()
                for ws in (a, b, c, watcher):
                    # Nothing was published before the commit, so the close comes first.
                    assert (await expect_close(ws)).code == 1001
                gate.release.set()
                await server.stopped.wait()
        finally:
            gate.release.set()
        again = await start_server()
        assert sorted(m["content"] for m in await history(again, 1, room)) == ["a", "b", "c"]


# --- the real process ------------------------------------------------------------------------


def write_config(tmp_path: Path, grace: float = 5.0) -> Path:
    # chatd_proc's config puts every listener on port 0: one left out (metrics was) binds
    # its default port and fails whenever anything else on the machine holds it.
    return chatd_proc.write_config(
        tmp_path / "chatd.toml",
        tmp_path,
        auth={"jwt_secret": SECRET},
        server={"shutdown_grace_seconds": grace},
        log={"level": "info"},
    )


def clean_env() -> dict[str, str]:
    # Also without the test's own NOTIFY_SOCKET and LISTEN_FDS, which the child would act on.
    return chatd_proc.child_env()


class ServerProcess:
    """`python -m chatd serve` in a child process; its port is read from the ready line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.stderr = b""
        self.port = 0
        self._ready = trio.Event()
        self.eof = trio.Event()

    async def drain(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.receive_some(65536):
            self.stderr += chunk
            found = re.search(rb"ready: http 127\.0\.0\.1:(\d+)", self.stderr)
            if found and not self._ready.is_set():
                self.port = int(found.group(1))
                self._ready.set()
        self.eof.set()
        self._ready.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()
        assert self.port, self.stderr.decode(errors="replace")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_process_exits_0_on_signal_and_clients_see_1001(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with trio.fail_after(10):
        config_path = write_config(tmp_path, grace=5.0)
        cfg = config_mod.load(config_path, env={})
        auth = Authenticator(cfg.auth, SECRET)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "chatd", "serve", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=clean_env(),
        )
        child = ServerProcess(proc)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child.drain)
                await child.wait_ready()
                base = f"http://127.0.0.1:{child.port}"
                async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                    admin = {"Authorization": f"Bearer {auth.mint(9000, 'admin', admin=True)}"}
                    resp = await http.post(
                        "/admin/rooms", json={"name": "r", "members": [1]}, headers=admin
                    )
                    room = resp.json()["id"]
                    resp = await http.post(
                        "/chat/ticket", headers={"accessToken": auth.mint(1, "u")}
                    )
                    ticket = resp.json()["ticket"]
                url = f"ws://127.0.0.1:{child.port}/chat?ticket={ticket}"
                async with open_websocket_url(url) as ws:
                    msg = await roundtrip(ws, room, "before the signal")
                    started = trio.current_time()
                    proc.send_signal(signum)
                    assert (await expect_close(ws)).code == 1001
                code = await proc.wait()
                assert code == 0, child.stderr.decode(errors="replace")
                assert trio.current_time() - started < cfg.server.shutdown_grace_seconds
                await child.eof.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = child.stderr.decode(errors="replace")
        assert "Traceback" not in log, log
        assert "stopped" in log
        assert signal.Signals(signum).name in log
        conn = sqlite3.connect(tmp_path / "chatd.db")
        try:
            rows = list(conn.execute("SELECT id, content FROM messages"))
        finally:
            conn.close()
        assert rows == [(msg["id"], "before the signal")]
