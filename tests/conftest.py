"""Fixtures that start the real server on port 0 and talk to it over real sockets."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd import config as config_mod
from chatd.server import Running, serve

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> config_mod.Config:
    raw: dict[str, dict[str, Any]] = {
        "http": {"listen": ["127.0.0.1:0"]},
        "store": {"path": str(tmp_path / "chatd.db")},
        "auth": {"jwt_secret": SECRET, "allowed_origins": ["http://allowed.example"]},
        "stomp": {"websocket_listen": ["127.0.0.1:0"], "tcp_listen": ["127.0.0.1:0"]},
        "server": {"shutdown_grace_seconds": 5.0},
        "metrics": {"listen": ["127.0.0.1:0"]},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_mod.from_mapping(raw, env={})


@dataclasses.dataclass
class Server:
    running: Running
    cfg: config_mod.Config
    stopped: trio.Event = dataclasses.field(default_factory=trio.Event)

    @property
    def state(self) -> Any:
        return self.running.state

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.running.http_port}"

    def token(self, user_id: int, username: str | None = None, **kw: Any) -> str:
        return self.state.auth.mint(user_id, username or f"user{user_id}", **kw)

    def admin_token(self) -> str:
        return self.token(9000, "admin", admin=True)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=10)

    async def stop(self) -> None:
        """Shut the server down gracefully and wait until `serve` has returned."""
        self.running.shutdown()
        await self.stopped.wait()


StartServer = Callable[..., Any]


async def serve_in(nursery: trio.Nursery, cfg: config_mod.Config) -> Server:
    """`serve(cfg)` in `nursery`, once it is ready."""
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Running]) -> None:
        try:
            await serve(cfg, task_status=task_status)
        finally:
            stopped.set()

    running: Running = await nursery.start(run)
    return Server(running, cfg, stopped)


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """`await start_server(**sections)` starts a server; it is shut down after the test.
    Several may be started (restart tests) on the same tmp_path."""
    async with trio.open_nursery() as nursery:
        started: list[Server] = []

        async def start(**sections: dict[str, Any]) -> Server:
            server = await serve_in(nursery, make_config(tmp_path, **sections))
            started.append(server)
            return server

        yield start
        for server in started:
            server.running.shutdown()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()
