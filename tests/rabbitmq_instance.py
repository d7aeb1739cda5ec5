"""A private RabbitMQ node for the tests, with its STOMP plugin: its data, logs, config and
Erlang cookie in a temporary directory, its own epmd, every port free and on loopback,
started once per test session and stopped at its end. No system service, no fixed port.
Should pytest be killed instead, its watchdog (tests/reaper.py) kills the node and its epmd
and removes its directory.

Debian's /usr/sbin/rabbitmq-server switches to the `rabbitmq` user and its data in
/var/lib/rabbitmq; the scripts it wraps (/usr/lib/rabbitmq/bin) run as whoever starts them,
root included (CI runs as root), so those are run, with every path in the environment.
Without rabbitmq-server the tests that need it skip, saying why; on CI (CI=true, where
scripts/test installs it) they fail instead.

    rabbit_instance   the session's node (RabbitInstance)
    rabbit_url        a fresh vhost on it, as "stomp://chatd:…@127.0.0.1:PORT/VHOST"
    own_rabbit        a node of the test's own, for tests that break it (about 10 s to start)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

import pytest

from .reaper import Reaper, reap
from .services import free_port, skip_or_fail, start_on_free_ports

_SEARCH = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")

# Every process of a node (the start script, beam, erl_child_setup, inet_gethost, epmd,
# rabbitmqctl) carries this variable, so what a node leaves behind can be found.
MARKER = "CHATD_TEST_RABBITMQ"


def _bindir() -> Path | None:
    candidates = [Path(d) for d in _SEARCH]
    found = shutil.which("rabbitmq-server")
    if found and Path(found).resolve().name == "rabbitmq-server":  # not Debian's wrapper
        candidates.append(Path(found).resolve().parent)
    for d in candidates:
        if all((d / tool).exists() for tool in ("rabbitmq-server", "rabbitmqctl")):
            return d
    return None


def unavailable_reason() -> str | None:
    """Why RabbitMQ tests cannot run here, or None."""
    if _bindir() is None:
        return "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
    if shutil.which("epmd") is None:
        return "Erlang's epmd is not on the PATH"
    return None


Frame = tuple[str, dict[str, str], bytes]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def _unescape(value: str) -> str:
    table = {"\\\\": "\\", "\\r": "\r", "\\n": "\n", "\\c": ":"}
    out, i = [], 0
    while i < len(value):
        pair = value[i : i + 2]
        if pair in table:
            out.append(table[pair])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


class RawStomp:
    """A blocking STOMP 1.2 client on one loopback socket, every read bounded by `timeout`:
    to see the node answer, and to look at RabbitMQ directly without chatd's code."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> RawStomp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, command: str, headers: Mapping[str, str] = {}, body: bytes = b"") -> None:
        lines = [command, *(f"{_escape(k)}:{_escape(v)}" for k, v in headers.items())]
        if command != "CONNECT" and body:
            lines.append(f"content-length:{len(body)}")
        self.sock.sendall(("\n".join(lines) + "\n\n").encode() + body + b"\0")

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the broker closed the connection")
        self._buffer += data

    def receive(self) -> Frame:
        """The next frame; heart-beats are skipped."""
        while True:
            self._buffer = self._buffer.lstrip(b"\r\n")
            end = self._buffer.find(b"\n\n")
            if end < 0:
                self._read()
                continue
            head = self._buffer[:end].decode().replace("\r\n", "\n").split("\n")
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers.setdefault(_unescape(name), _unescape(value))  # the first one counts
            start = end + 2
            if "content-length" in headers:
                stop = start + int(headers["content-length"])
                while len(self._buffer) < stop + 1:
                    self._read()
            else:
                while (stop := self._buffer.find(b"\0", start)) < 0:
                    self._read()
            body = self._buffer[start:stop]
            self._buffer = self._buffer[stop + 1 :]
            return head[0], headers, body

    def connect(self, login: str, passcode: str, vhost: str = "/") -> dict[str, str]:
        """CONNECT; the CONNECTED frame's headers, or RuntimeError with the ERROR's message."""
        self.send("CONNECT", {
            "accept-version": "1.2", "host": vhost, "login": login, "passcode": passcode,
            "heart-beat": "0,0",
        })  # fmt: skip
        command, headers, body = self.receive()
        if command != "CONNECTED":
            raise RuntimeError(f"{command}: {headers.get('message', '')} {body.decode()}")
        return headers


class _Exited(RuntimeError):
    """The node exited while starting."""


def _end(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Signals the process group `proc` leads; SIGKILL if it has not ended after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class RabbitInstance:
    """One RabbitMQ node with the STOMP plugin. Blocking: from Trio, call start, stop,
    restart, kill and ctl through `trio.to_thread.run_sync`."""

    USER = "chatd"
    PASSWORD = "chatd-test-password"
    START_TIMEOUT = 90.0  # a cold start takes about 10 s on a busy 2-core machine
    _numbers = itertools.count(1)

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="chatd-rabbitmq-"))
        self.reaper = Reaper(self.root)
        self.nodename = f"chatd-test-{os.getpid()}-{next(self._numbers)}@localhost"
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._vhosts = itertools.count(1)
        self.choose_ports()
        (self.root / "enabled_plugins").write_text("[rabbitmq_stomp].\n")
        # Sourced by the start script instead of /etc/rabbitmq/rabbitmq-env.conf.
        (self.root / "rabbitmq-env.conf").write_text("")

    # -- ports and addresses

    def choose_ports(self) -> None:
        """New free ports for everything; only while the node is stopped."""
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        self._amqp_port, self._stomp_port, self.dist_port, self.epmd_port = sorted(ports)

    @property
    def stomp_port(self) -> int:
        return self._stomp_port

    @property
    def amqp_port(self) -> int:
        return self._amqp_port

    def url(self, vhost: str = "/") -> str:
        """`stomp://USER:PASSWORD@127.0.0.1:PORT/VHOST`; the path is the vhost, percent-
        encoded, and an empty one means "/" (so the default vhost's URL ends in "/")."""
        path = "" if vhost == "/" else quote(vhost, safe="")
        return f"stomp://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.stomp_port}/{path}"

    def amqp_url(self, vhost: str = "/") -> str:
        """The AMQP URI of the same vhost (AMQP's own rule: "/" is "%2F")."""
        return (
            f"amqp://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.amqp_port}/{quote(vhost, safe='')}"
        )

    # -- environment and config

    def env(self) -> dict[str, str]:
        """The environment of every process of this node, the CLI tools' included."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update({
            MARKER: str(self.root),
            "HOME": str(self.root),  # the Erlang cookie, private to this node
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback_dist,
            "RABBITMQ_CTL_ERL_ARGS": loopback_dist,
            # Unbound schedulers: pinned ones fight the other processes of a busy machine.
            "RABBITMQ_SCHEDULER_BIND_TYPE": "u",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })  # fmt: skip
        return env

    def _write_config(self) -> None:
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"stomp.listeners.tcp.1 = 127.0.0.1:{self.stomp_port}\n"
            # Created on the first boot only; kept in the node's data after.
            f"default_user = {self.USER}\n"
            f"default_pass = {self.PASSWORD}\n"
            "default_vhost = /\n"
            # A busy test machine's full disk or memory must not block publishers.
            "disk_free_limit.absolute = 1MB\n"
            "vm_memory_high_watermark.relative = 0.8\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    def log_tail(self, size: int = 3000) -> str:
        """The node's errors and the end of its logs, for a failure's message."""
        parts = []
        for path in (self.root / "server.out", self.root / "log" / f"{self.nodename}.log"):
            if path.exists():
                text = path.read_text(errors="replace")
                errors = [line for line in text.splitlines() if "[error]" in line][-20:]
                parts.append(f"--- {path.name}:\n" + "\n".join(errors) + f"\n...\n{text[-size:]}")
        return "\n".join(parts)

    # -- processes

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def _start_epmd(self, deadline: float) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return  # still up after kill(), as the machine's epmd would be
        with open(self.root / "epmd.out", "ab") as out:
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=self.env(), cwd=self.root, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=1),
            ):
                if self._epmd.poll() is None:
                    return
            try:
                code = self._epmd.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise RuntimeError("epmd did not listen in time") from None
            else:
                self._epmd = None
                out_text = (self.root / "epmd.out").read_text(errors="replace")[-500:]
                raise RuntimeError(f"epmd exited with {code}: {out_text}")

    def _answers(self) -> str | None:
        """None once STOMP answers CONNECT with CONNECTED and AMQP accepts; else why not."""
        try:
            with RawStomp(self.stomp_port, timeout=5) as stomp:
                stomp.connect(self.USER, self.PASSWORD)
            socket.create_connection(("127.0.0.1", self.amqp_port), timeout=5).close()
        except (OSError, RuntimeError) as exc:
            return repr(exc)
        return None

    def start(self, timeout: float | None = None, attempts: int = 3) -> None:
        """Starts the node on its ports and data; returns once STOMP answers CONNECT.
        A node that exits while starting is started again, up to `attempts` times: on this
        busy machine another process's connection may hold one of its ports for a moment
        (seen once with the distribution port, right after kill()). RuntimeError (with the
        logs' tails) when it keeps exiting or does not answer in time."""
        if self.running:
            raise RuntimeError("already running")
        deadline = time.monotonic() + (timeout or self.START_TIMEOUT)
        for attempt in range(attempts):
            # Nobody else needs the distribution port (the CLI asks epmd for it): a new one
            # each time.
            self.dist_port = free_port()
            while self.dist_port in (self.amqp_port, self.stomp_port, self.epmd_port):
                self.dist_port = free_port()
            try:
                self._start_once(deadline)
                return
            except _Exited:
                if attempt == attempts - 1 or time.monotonic() > deadline:
                    raise

    def _start_once(self, deadline: float) -> None:
        self._write_config()
        self._start_epmd(deadline)
        with open(self.root / "server.out", "ab") as out:
            self._server = subprocess.Popen(
                [str(self.bindir / "rabbitmq-server")], env=self.env(), cwd=self.root,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        server = self._server
        while (why := self._answers()) is not None:
            try:
                code = server.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"no STOMP answer in time ({why})\n{self.log_tail()}"
                    ) from None
            else:
                self._server = None
                self._wait_gone(keep_epmd=True)
                raise _Exited(f"rabbitmq-server exited with {code}\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the node (SIGTERM: RabbitMQ's orderly shutdown) and its epmd, and waits
        until none of their processes is left."""
        if self._server is not None:
            _end(self._server, signal.SIGTERM, timeout)
            self._server = None
        if self._epmd is not None:
            _end(self._epmd, signal.SIGTERM, 10)
            self._epmd = None
        self._wait_gone()

    def kill(self) -> None:
        """SIGKILL to the node, as a crash; its epmd stays up. `start` recovers it."""
        if self._server is not None:
            _end(self._server, signal.SIGKILL, 10)
            self._server = None
        self._wait_gone(keep_epmd=True)

    def restart(self, timeout: float | None = None) -> None:
        """Stops and starts the node on the same ports and data."""
        self.stop()
        self.start(timeout)

    def processes(self) -> dict[int, str]:
        """The live processes of this node (pid: command line), epmd included."""
        found: dict[int, str] = {}
        marker = f"{MARKER}={self.root}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if marker not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found[int(proc.name)] = cmdline.strip()
        return found

    def _wait_gone(self, keep_epmd: bool = False) -> None:
        """Port programs (erl_child_setup, inet_gethost) run in sessions of their own and
        end by themselves once beam is gone; waits for that, then kills what is left."""
        keep = self._epmd.pid if keep_epmd and self._epmd is not None else None
        deadline = time.monotonic() + 10
        while left := {pid for pid in self.processes() if pid != keep}:
            if time.monotonic() > deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)  # polling /proc: these are not our children

    # -- administration

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        """Runs `rabbitmqctl ARGS` against this node; its output. Takes a second or more:
        the CLI is an Erlang node of its own."""
        env = self.env()
        env["RABBITMQ_CTL_DIST_PORT_MIN"] = env["RABBITMQ_CTL_DIST_PORT_MAX"] = str(free_port())
        result = subprocess.run(
            [str(self.bindir / "rabbitmqctl"), "-q", *args], env=env, cwd=self.root,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def add_vhost(self) -> str:
        """A new, empty vhost, USER allowed everything in it; its name. One CLI call."""
        name = f"t{next(self._vhosts)}"
        definitions = self.root / f"{name}.json"
        definitions.write_text(json.dumps({
            "vhosts": [{"name": name}],
            "permissions": [{
                "user": self.USER, "vhost": name, "configure": ".*", "write": ".*", "read": ".*",
            }],
        }))  # fmt: skip
        self.ctl("import_definitions", str(definitions))
        return name

    def remove(self) -> None:
        """Once stopped: its directory and its watchdog go; whatever still runs in the
        directory (after a stop that failed) is killed first, while the watchdog still
        would, should pytest be killed meanwhile."""
        reap(self.root)
        self.reaper.disarm()


def _started() -> Iterator[RabbitInstance]:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail("RabbitMQ", reason)
    bindir = _bindir()
    assert bindir is not None
    instance = RabbitInstance(bindir)
    try:

        def choose_ports() -> None:
            instance.stop()
            instance.choose_ports()

        start_on_free_ports(instance.start, choose_ports)
        yield instance
    finally:
        instance.stop()
        instance.remove()


@pytest.fixture(scope="session")
def rabbit_instance() -> Iterator[RabbitInstance]:
    """The session's node. A test that stops or kills it need not start it again:
    `rabbit_url` does, for the next test."""
    yield from _started()


@pytest.fixture
def rabbit_url(rabbit_instance: RabbitInstance) -> str:
    """A fresh vhost on the session's node (started again if a test left it down)."""
    if not rabbit_instance.running:
        rabbit_instance.start()
    return rabbit_instance.url(rabbit_instance.add_vhost())


@pytest.fixture
def own_rabbit() -> Iterator[RabbitInstance]:
    """A node of this test's own, removed after it."""
    yield from _started()
