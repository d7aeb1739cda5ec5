"""`chatd token` and `chatd check-config` (and `serve` refusing a bad config), run as the
real command in a child process."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import jwt
import pytest
import trio
from trio_websocket import open_websocket_url

from ._chat import chat_url, create_room, recv_message, send
from .chatd_proc import chatd_argv, child_env, notify_socket, run_chatd, write_config
from .conftest import SECRET, StartServer

JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


async def chatd(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    return await trio.run_process(
        [sys.executable, "-m", "chatd", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=cwd,
        env={**base, **(env or {})},
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def server_toml(tmp_path: Path, secret: str = SECRET) -> Path:
    return write(
        tmp_path / "chatd.toml",
        f'[store]\npath = "{tmp_path / "chatd.db"}"\n[auth]\njwt_secret = "{secret}"\n',
    )


# --- chatd --version ---------------------------------------------------------------------------


async def test_version_prints_the_package_version(tmp_path: Path) -> None:
    with trio.fail_after(10):
        out = await chatd("--version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == f"chatd {importlib.metadata.version('chatd')}\n"


# --- chatd token -------------------------------------------------------------------------------


async def test_token_prints_only_a_jwt_the_server_accepts(
    start_server: StartServer, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        room = await create_room(server, [7])
        config = server_toml(tmp_path)
        out = await chatd(
            "token",
            "--config",
            str(config),
            "--user-id",
            "7",
            "--username",
            "john",
            "--profile-image",
            "https://img.example/j.png",
            "--ttl",
            "120",
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
        assert out.stderr == b""
        text = out.stdout.decode()
        assert text.endswith("\n") and text.count("\n") == 1
        token = text.strip()
        assert JWT.match(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert 0 < claims["exp"] - claims["iat"] <= 120
        async with server.client() as http:
            resp = await http.post("/chat/ticket", headers={"accessToken": token})
        assert resp.status_code == 200
        async with open_websocket_url(chat_url(server, resp.json()["ticket"])) as ws:
            await send(ws, room, "hello from a CLI token")
            msg = await recv_message(ws)
        assert msg["user"] == {
            "id": 7,
            "username": "john",
            "profileImage": "https://img.example/j.png",
        }


async def test_admin_token_from_the_cli_creates_rooms(
    start_server: StartServer, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        env = {"CHATD_CONFIG": str(server_toml(tmp_path))}
        plain = await chatd("token", "--user-id", "1", "--username", "u", cwd=tmp_path, env=env)
        admin = await chatd(
            "token", "--user-id", "2", "--username", "a", "--admin", cwd=tmp_path, env=env
        )
        assert plain.returncode == admin.returncode == 0
        async with server.client() as http:
            for out, status in ((plain, 403), (admin, 201)):
                resp = await http.post(
                    "/admin/rooms",
                    json={"name": "r"},
                    headers={"Authorization": f"Bearer {out.stdout.decode().strip()}"},
                )
                assert resp.status_code == status


async def test_token_never_creates_the_secret_and_finds_the_servers(tmp_path: Path) -> None:
    # The shipped unit's layout: a relative [store] path, resolved in $STATE_DIRECTORY, no
    # secret in the config. The operator runs `chatd token` from somewhere else.
    state, elsewhere = tmp_path / "state", tmp_path / "home"
    state.mkdir()
    elsewhere.mkdir()
    config = write_config(
        tmp_path / "chatd.toml", tmp_path, store={"path": "chatd.db"}, auth={"jwt_secret": ""}
    )
    env = {"STATE_DIRECTORY": str(state)}
    secret = state / "chatd.db.jwt-secret"
    argv = ["token", "--config", str(config), "--user-id", "3", "--username", "x"]
    with trio.fail_after(30):
        out = await chatd(*argv, cwd=elsewhere, env=env)
        assert out.returncode == 1
        assert out.stdout == b""
        assert out.stderr.decode().startswith(
            f"chatd: cannot mint a token: no JWT secret at {secret};"
        )
        assert out.stderr.count(b"\n") == 1
        assert list(state.iterdir()) == list(elsewhere.iterdir()) == []

        async with run_chatd(chatd_argv(config), child_env(env)) as server:
            generated = await server.wait_line(r"generated a JWT secret in (\S+)$")
            assert generated[1] == str(secret)
            value = secret.read_text().strip()
            assert value not in server.stderr
            out = await chatd(*argv, cwd=elsewhere, env=env)
            assert out.returncode == 0, out.stderr
            assert list(elsewhere.iterdir()) == []
            async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
                resp = await http.post(
                    "/chat/ticket", headers={"accessToken": out.stdout.decode().strip()}
                )
            assert resp.status_code == 200
            server.send_signal(signal.SIGTERM)
            assert await server.wait_exit() == 0
        # Started again, the server uses the secret it made and says nothing about one.
        async with run_chatd(chatd_argv(config), child_env(env)) as server:
            assert "generated a JWT secret" not in server.stderr
            assert secret.read_text().strip() == value


async def test_token_refuses_a_bad_user_id(tmp_path: Path) -> None:
    with trio.fail_after(10):
        config = server_toml(tmp_path)
        out = await chatd(
            "token", "--config", str(config), "--user-id", "0", "--username", "x", cwd=tmp_path
        )
        assert out.returncode == 2
        assert out.stdout == b""
        assert b"--user-id" in out.stderr
        out = await chatd("token", "--config", str(config), "--username", "x", cwd=tmp_path)
        assert out.returncode == 2
        assert out.stdout == b""


# --- chatd check-config ------------------------------------------------------------------------


async def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    with trio.fail_after(10):
        config = write(
            tmp_path / "chatd.toml",
            f'[chat]\nrate_burst = 5\n[auth]\njwt_secret = "{SECRET}"\n',
        )
        out = await chatd(
            "check-config",
            "--config",
            str(config),
            cwd=tmp_path,
            env={"CHATD_HTTP_LISTEN": "127.0.0.1:6000,[::1]:6001"},
        )
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode()
        assert text.startswith(f"# effective config from {config}")
        effective = tomllib.loads(text)
        assert effective["chat"]["rate_burst"] == 5
        assert effective["http"]["listen"] == ["127.0.0.1:6000", "[::1]:6001"]
        assert effective["chat"]["max_content_chars"] == 4000
        assert effective["auth"]["jwt_secret"] == "********"
        assert SECRET not in text


async def test_check_config_with_the_shipped_file(tmp_path: Path) -> None:
    with trio.fail_after(10):
        shipped = Path(__file__).resolve().parent.parent / "chatd.toml"
        out = await chatd("check-config", "--config", str(shipped), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert tomllib.loads(out.stdout.decode())["http"]["listen"] == ["127.0.0.1:5700"]
        # No file at all: the defaults.
        out = await chatd("check-config", cwd=tmp_path)
        assert out.returncode == 0
        assert out.stdout.startswith(b"# effective config from (defaults)")


BAD_CONFIGS = [
    ("[chat]\nrate_burst = 0\n", {}, "chat.rate_burst"),
    ("[chat]\nrate_burst = 'many'\n", {}, "chat.rate_burst: expected an integer"),
    ('[http]\nlisten = ["nowhere"]\n', {}, "http.listen"),
    ("[http]\nlisten_on = []\n", {}, "unknown key http.listen_on"),
    ("[htp]\n", {}, "unknown section [htp]"),
    ('[auth]\nalgorithms = ["none"]\n', {}, "auth.algorithms: 'none' is not allowed"),
    ("", {"CHATD_CHAT_RATE_BURTS": "1"}, "unknown environment setting CHATD_CHAT_RATE_BURTS"),
    ("", {"CHATD_STOMP_ALLOW_ANONYMOUS": "perhaps"}, "CHATD_STOMP_ALLOW_ANONYMOUS"),
    ("[http\n", {}, "not valid TOML"),
]


@pytest.mark.parametrize(("text", "env", "expected"), BAD_CONFIGS)
async def test_bad_configs_exit_2_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    with trio.fail_after(10):
        config = write(tmp_path / "bad.toml", text)
        results: dict[str, subprocess.CompletedProcess[bytes]] = {}

        async def run(command: str) -> None:
            extra = ["--user-id", "1", "--username", "x"] if command == "token" else []
            results[command] = await chatd(
                command, "--config", str(config), *extra, cwd=tmp_path, env=env
            )

        async with trio.open_nursery() as nursery:
            for command in ("check-config", "token", "serve"):
                nursery.start_soon(run, command)
        for command, out in results.items():
            assert out.returncode == 2, (command, out.stderr)
            assert out.stdout == b""
            assert expected in out.stderr.decode(), (command, out.stderr)
        # `serve` refused before anything was created or bound.
        assert not (tmp_path / "chatd.db").exists()


async def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    with trio.fail_after(10):
        out = await chatd("check-config", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
        assert out.returncode == 2
        assert b"does not exist" in out.stderr


# --- chatd serve on a taken port ---------------------------------------------------------------


@pytest.mark.parametrize("listener", ["http", "stomp tcp"])
async def test_a_taken_port_is_one_line_and_exit_1_before_ready(
    tmp_path: Path, listener: str
) -> None:
    with trio.fail_after(30), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        section = {"http": "http", "stomp tcp": "stomp"}[listener]
        key = {"http": "listen", "stomp tcp": "tcp_listen"}[listener]
        config = write_config(tmp_path / "chatd.toml", tmp_path, **{section: {key: [address]}})
        async with notify_socket(tmp_path, abstract=False) as ns:
            env = child_env({"NOTIFY_SOCKET": ns.address})
            async with run_chatd(chatd_argv(config), env, wait_ready=False) as proc:
                assert await proc.wait_exit() == 1
            assert proc.lines == [
                f"chatd: cannot listen on {address} ({listener}): address already in use"
            ]
            # The child has exited: whatever it sent is queued already. It sent nothing,
            # READY=1 least of all, and created no database.
            # (trio's sockets are non-blocking: an empty queue is BlockingIOError.)
            with pytest.raises(BlockingIOError):
                os.read(ns.sock.fileno(), 65536)
        assert not (tmp_path / "chatd.db").exists()


async def test_a_store_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="the cluster extra (psycopg) is not installed")
    with trio.fail_after(60), socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        dsn = f"postgresql://chatd:s3cret@127.0.0.1:{port}/chatd?connect_timeout=5"
        config = write_config(tmp_path / "chatd.toml", tmp_path,
                              store={"backend": "postgresql", "dsn": dsn})
        async with run_chatd(chatd_argv(config), child_env(), wait_ready=False) as proc:
            assert await proc.wait_exit() == 1
    (line,) = [x for x in proc.lines if x.startswith("chatd:")]
    assert line.startswith("chatd: cannot open the store (postgresql): connection failed")
    assert f"port {port} failed: Connection refused" in line
    assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr
