"""sd_notify and socket activation: the helpers against a real datagram socket, then a
real `chatd serve` subprocess driven with real signals, as systemd would."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from chatd.ops import sdnotify

from .chatd_proc import chatd_argv, child_env, notify_socket, run_chatd, write_config

TIMEOUT = 30


# --- the helpers, in this process ----------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_notifier_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    with trio.fail_after(TIMEOUT):
        async with notify_socket(tmp_path, abstract=abstract) as ns:
            n = sdnotify.Notifier(ns.address)
            try:
                assert n.notify("READY=1", "STATUS=hello")
                assert await ns.receive() == {"READY": "1", "STATUS": "hello"}
            finally:
                n.close()


async def test_module_helpers_follow_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        async with notify_socket(tmp_path, abstract=True) as ns:
            monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
            sdnotify.reset()
            try:
                sdnotify.ready("0 /chat, 0 STOMP connections")
                assert await ns.receive() == {
                    "READY": "1",
                    "STATUS": "0 /chat, 0 STOMP connections",
                }
                sdnotify.reloading()
                msg = await ns.receive()
                assert msg["RELOADING"] == "1"
                assert 0 < int(msg["MONOTONIC_USEC"]) <= time_usec()
                sdnotify.status("two\nlines")  # a newline must not forge a second command
                assert await ns.receive() == {"STATUS": "two lines"}
                sdnotify.stopping()
                assert (await ns.receive())["STOPPING"] == "1"
                sdnotify.watchdog()
                assert await ns.receive() == {"WATCHDOG": "1"}
            finally:
                sdnotify.reset()


def time_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sdnotify.reset()
    try:
        assert not sdnotify.notifier().enabled
        assert sdnotify.ready() is False
        assert sdnotify.watchdog() is False
    finally:
        sdnotify.reset()


def test_send_to_a_missing_socket_is_not_an_error(tmp_path: Path) -> None:
    n = sdnotify.Notifier(str(tmp_path / "nobody-listens"))
    assert n.notify("READY=1") is False
    n.close()


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": me}) == 0.1
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_listen_fds_only_for_our_pid_and_unsets_the_environment() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http", "OTHER": "x"}
    assert sdnotify.listen_fds(env) == []
    assert env == {"OTHER": "x"}
    assert sdnotify.listen_fds({"LISTEN_FDS": "2"}) == []
    assert sdnotify.listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}) == []
    # A count of 0 matches our pid without touching any descriptor of this process.
    assert sdnotify.listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) == []


# --- a real chatd under a fake systemd -------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_ready_status_watchdog_reload_stop(tmp_path: Path, abstract: bool) -> None:
    config = write_config(tmp_path / "chatd.toml", tmp_path)
    with trio.fail_after(TIMEOUT):
        async with notify_socket(tmp_path, abstract=abstract) as ns:
            env = child_env({"NOTIFY_SOCKET": ns.address, "WATCHDOG_USEC": "200000"})
            async with run_chatd(chatd_argv(config), env, wait_ready=False) as chatd:
                ready = await ns.wait_for("READY", "1")
                assert ready["STATUS"] == "0 /chat, 0 STOMP connections"
                # READY=1 comes after every listener is bound: the log line with the
                # ports is written before it, and the HTTP port already answers.
                await chatd.wait_ready()
                async with httpx.AsyncClient(base_url=chatd.base, timeout=10) as http:
                    assert (await http.get("/readyz")).status_code == 200

                # The watchdog is pinged at half of WATCHDOG_USEC, repeatedly.
                await ns.wait_for("WATCHDOG", "1")
                await ns.wait_for("WATCHDOG", "1")

                # SIGHUP: RELOADING=1 (with the monotonic time), then READY=1 again.
                mark = len(chatd.lines)
                chatd.send_signal(signal.SIGHUP)
                reloading = await ns.wait_for("RELOADING", "1")
                assert int(reloading["MONOTONIC_USEC"]) > 0
                again = await ns.wait_for("READY", "1")
                assert again["STATUS"] == "0 /chat, 0 STOMP connections"
                await chatd.wait_line(r"reload: config applied from", mark)

                # SIGTERM: STOPPING=1, then a clean exit.
                chatd.send_signal(signal.SIGTERM)
                await ns.wait_for("STOPPING", "1")
                assert await chatd.wait_exit() == 0
                await chatd.wait_line(r"stopped")


async def test_bad_config_on_sighup_keeps_the_old_one(tmp_path: Path) -> None:
    config = write_config(tmp_path / "chatd.toml", tmp_path)
    with trio.fail_after(TIMEOUT):
        async with notify_socket(tmp_path, abstract=False) as ns:
            env = child_env({"NOTIFY_SOCKET": ns.address})
            async with run_chatd(chatd_argv(config), env) as chatd:
                await ns.wait_for("READY", "1")
                good = config.read_text()
                config.write_text(good + "\n[chat]\nmax_content_chars = -1\n")
                mark = len(chatd.lines)
                chatd.send_signal(signal.SIGHUP)
                await ns.wait_for("RELOADING", "1")
                await ns.wait_for("READY", "1")
                refused = await chatd.wait_line(r"reload refused", mark)
                assert "chat.max_content_chars" in refused.string
                # Still up, still serving with what it had.
                async with httpx.AsyncClient(base_url=chatd.base, timeout=10) as http:
                    assert (await http.get("/healthz")).status_code == 200
                    assert (await http.get("/readyz")).status_code == 200
                assert chatd.proc.returncode is None

                # A restart-only change is applied as far as it can be, and named.
                config.write_text(
                    good.replace('"127.0.0.1:0"]\n\n[store]', '"127.0.0.1:1"]\n\n[store]', 1)
                )
                mark = len(chatd.lines)
                chatd.send_signal(signal.SIGHUP)
                await ns.wait_for("READY", "1")
                named = await chatd.wait_line(r"only change on restart", mark)
                assert "http.listen" in named.string
                assert named.string.endswith("http.listen; restart chatd to apply them")

                chatd.send_signal(signal.SIGTERM)
                await ns.wait_for("STOPPING", "1")
                assert await chatd.wait_exit() == 0


# --- socket activation -----------------------------------------------------------------------

# Stands in for systemd: put the listening sockets (argv[1], comma-separated) on fds 3, 4,
# ..., say they are ours, exec chatd.
_ACTIVATE = """
import fcntl, os, sys
given = [int(fd) for fd in sys.argv[1].split(",")]
# Out of the way first, so that moving one to 3 + i cannot overwrite another.
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
for fd in given:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(given))
os.environ["LISTEN_FDNAMES"] = ":".join(["chatd.socket"] * len(given))
os.execv(sys.executable, [sys.executable, "-m", "chatd", *sys.argv[2:]])
"""


async def test_socket_activation_serves_http_on_the_passed_socket(tmp_path: Path) -> None:
    config = write_config(tmp_path / "chatd.toml", tmp_path)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, trio.fail_after(TIMEOUT):
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        argv = [
            sys.executable,
            "-c",
            _ACTIVATE,
            str(listener.fileno()),
            "serve",
            "--config",
            str(config),
        ]
        async with notify_socket(tmp_path, abstract=True) as ns:
            env = child_env({"NOTIFY_SOCKET": ns.address})
            async with run_chatd(argv, env, pass_fds=[listener.fileno()]) as chatd:
                await ns.wait_for("READY", "1")
                assert chatd.http_port == port
                async with httpx.AsyncClient(timeout=10) as http:
                    resp = await http.get(f"http://127.0.0.1:{port}/readyz")
                    assert resp.status_code == 200

                # A reload must not report the listeners systemd gave us as changed.
                mark = len(chatd.lines)
                chatd.send_signal(signal.SIGHUP)
                await chatd.wait_line(r"reload: config applied", mark)
                assert not any("only change on restart" in line for line in chatd.lines[mark:])

                chatd.send_signal(signal.SIGTERM)
                assert await chatd.wait_exit() == 0


async def test_socket_activation_of_every_listener(tmp_path: Path) -> None:
    # systemd passes four sockets (fds 3-6). The config gives fds 4-6 to the STOMP and
    # metrics listeners as fd://N; HTTP takes the one that no other listener names.
    config = write_config(
        tmp_path / "chatd.toml",
        tmp_path,
        stomp={"websocket_listen": ["fd://4"], "tcp_listen": ["fd://5"]},
        metrics={"listen": ["fd://6"]},
    )
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(4)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
        http, ws, tcp, metrics = (sock.getsockname()[1] for sock in socks)
        fds = [sock.fileno() for sock in socks]
        argv = [sys.executable, "-c", _ACTIVATE, ",".join(map(str, fds))]
        argv += ["serve", "--config", str(config)]
        with trio.fail_after(TIMEOUT):
            async with notify_socket(tmp_path, abstract=True) as ns:
                env = child_env({"NOTIFY_SOCKET": ns.address})
                async with run_chatd(argv, env, pass_fds=fds) as chatd:
                    await ns.wait_for("READY", "1")
                    assert (chatd.http_port, chatd.stomp_ws_port) == (http, ws)
                    assert (chatd.stomp_tcp_port, chatd.metrics_port) == (tcp, metrics)
                    async with httpx.AsyncClient(timeout=10) as client:
                        ready = await client.get(f"http://127.0.0.1:{http}/readyz")
                        assert ready.status_code == 200
                        scrape = await client.get(f"http://127.0.0.1:{metrics}/metrics")
                        assert scrape.status_code == 200
                        assert "chatd_ready 1.0" in scrape.text
                    # STOMP over TCP answers a CONNECT (refused: no login) on its socket.
                    stream = await trio.open_tcp_stream("127.0.0.1", tcp)
                    async with stream:
                        await stream.send_all(b"CONNECT\naccept-version:1.2\n\n\0")
                        reply = await stream.receive_some(4096)
                        assert reply.startswith(b"ERROR\n"), reply
                    # The STOMP WebSocket listener answers a handshake on its socket.
                    stream = await trio.open_tcp_stream("127.0.0.1", ws)
                    async with stream:
                        await stream.send_all(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
                        reply = await stream.receive_some(4096)
                        assert reply.startswith(b"HTTP/1.1 426 "), reply

                    chatd.send_signal(signal.SIGTERM)
                    assert await chatd.wait_exit() == 0
    finally:
        for sock in socks:
            sock.close()
