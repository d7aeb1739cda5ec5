"""A real `chatd serve` subprocess for black-box tests: its stderr, its ports, its
sd_notify datagrams, and signals. Every wait here is for an event (a log line, a
datagram, an exit), never a sleep; callers put the whole test under `trio.fail_after`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from chatd import toml_writer

SECRET = "subprocess-test-secret-long-enough-for-hs256-0123456789"

_READY = re.compile(
    r"ready: http (?P<http>\S+?)(?:,[^;]*)?; stomp websocket (?P<ws>\S+?)(?:,[^;]*)?; "
    r"stomp tcp (?P<tcp>\S+?)(?:,[^;]*)?; metrics (?P<metrics>\S+?)(?:,[^;]*)?; "
)

# Variables of the test's own environment that would change what the child does.
_SCRUB = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC")


def write_config(path: Path, store_dir: Path, **sections: Mapping[str, Any]) -> Path:
    """A TOML config with every listener on a free loopback port."""
    raw: dict[str, dict[str, Any]] = {
        "http": {"listen": ["127.0.0.1:0"]},
        "store": {"path": str(store_dir / "chatd.db")},
        "auth": {"jwt_secret": SECRET},
        "stomp": {"websocket_listen": ["127.0.0.1:0"], "tcp_listen": ["127.0.0.1:0"]},
        "metrics": {"listen": ["127.0.0.1:0"]},
        "server": {"shutdown_grace_seconds": 5.0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path.write_text(toml_writer.dumps(raw), encoding="utf-8")
    return path


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_") and k not in _SCRUB}
    env.update(extra or {})
    return env


def _port(hostport: str) -> int:
    return int(hostport.rpartition(":")[2])


@dataclass(eq=False)
class ChatdProcess:
    proc: trio.Process
    lines: list[str] = field(default_factory=list)
    _more: trio.Event = field(default_factory=trio.Event)
    _eof: bool = False
    http_port: int = 0
    stomp_ws_port: int = 0
    stomp_tcp_port: int = 0
    metrics_port: int = 0

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def _pump(self) -> None:
        assert self.proc.stderr is not None
        buf = b""
        while True:
            data = await self.proc.stderr.receive_some(65536)
            if not data:
                break
            buf += data
            *done, buf = buf.split(b"\n")
            self.lines.extend(d.decode("utf-8", "replace") for d in done)
            self._wake()
        if buf:
            self.lines.append(buf.decode("utf-8", "replace"))
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        self._more.set()
        self._more = trio.Event()

    async def wait_line(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first stderr line at or after index `start` that matches `pattern`."""
        rx = re.compile(pattern)
        i = start
        while True:
            while i < len(self.lines):
                m = rx.search(self.lines[i])
                if m:
                    return m
                i += 1
            if self._eof:
                raise AssertionError(f"chatd exited without logging {pattern!r}:\n{self.stderr}")
            await self._more.wait()

    async def wait_ready(self) -> None:
        m = await self.wait_line(_READY.pattern)
        self.http_port = _port(m["http"])
        self.stomp_ws_port = _port(m["ws"])
        self.stomp_tcp_port = _port(m["tcp"])
        self.metrics_port = _port(m["metrics"])

    def send_signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self) -> int:
        code = await self.proc.wait()
        while not self._eof:
            await self._more.wait()
        return code

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def chatd_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "chatd", "serve", "--config", str(config)]


@asynccontextmanager
async def run_chatd(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    pass_fds: Sequence[int] = (),
    wait_ready: bool = True,
) -> AsyncIterator[ChatdProcess]:
    """Start chatd and read its stderr; on the way out a still-running child is killed."""
    proc = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(env),
        pass_fds=tuple(pass_fds),
    )
    chatd = ChatdProcess(proc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chatd._pump)
        try:
            if wait_ready:
                await chatd.wait_ready()
            yield chatd
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()


class NotifySocket:
    """A NOTIFY_SOCKET of our own: what systemd would receive from the service."""

    def __init__(self, sock: trio.socket.SocketType, address: str) -> None:
        self.sock = sock
        self.address = address  # the value for $NOTIFY_SOCKET
        self.received: list[dict[str, str]] = []

    async def receive(self) -> dict[str, str]:
        data = await self.sock.recv(65536)
        msg: dict[str, str] = {}
        for line in data.decode("utf-8").split("\n"):
            key, _, value = line.partition("=")
            msg[key] = value
        self.received.append(msg)
        return msg

    async def wait_for(self, key: str, value: str | None = None) -> dict[str, str]:
        """Read datagrams until one carries `key` (with `value`, if given)."""
        while True:
            msg = await self.receive()
            if key in msg and (value is None or msg[key] == value):
                return msg


@asynccontextmanager
async def notify_socket(tmp_path: Path, *, abstract: bool) -> AsyncIterator[NotifySocket]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        if abstract:
            name = f"chatd-test-{uuid.uuid4().hex}"
            await sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify.sock")
            await sock.bind(address)
        yield NotifySocket(sock, address)
