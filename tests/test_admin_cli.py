"""The operator's commands (`chatd rooms …`, `users disconnect`, `history`, `backup`)
run as an operator runs them: a separate `chatd` process, from another directory,
against a real `chatd serve` subprocess whose JWT secret the server generated itself."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from chatd import config as config_mod
from chatd.admin_cli import server_url, table

from .chatd_proc import ChatdProcess, chatd_argv, child_env, run_chatd, write_config

TIMEOUT = 300  # a hang, not speed: each command is a Python start, slow on a loaded machine


class Operator:
    def __init__(self, chatd: ChatdProcess, config: Path, cwd: Path) -> None:
        self.chatd = chatd
        self.config = config
        self.cwd = cwd

    async def run(self, *argv: str | int, url: bool = True) -> tuple[int, str, str]:
        extra = ["--url", self.chatd.base] if url and argv[0] != "backup" else []
        res = await trio.run_process(
            [sys.executable, "-m", "chatd", *map(str, argv), "--config", str(self.config),
             *extra],
            capture_stdout=True, capture_stderr=True, check=False, env=child_env(),
            cwd=self.cwd,
        )
        return res.returncode, res.stdout.decode(), res.stderr.decode()

    async def ok(self, *argv: str | int) -> str:
        code, out, err = await self.run(*argv)
        assert code == 0, err
        assert err == ""
        return out

    async def json(self, *argv: str | int) -> Any:
        return json.loads(await self.ok(*argv, "--json"))

    async def token(self, user_id: int, username: str) -> str:
        code, out, err = await self.run("token", "--user-id", user_id, "--username", username,
                                        url=False)
        assert code == 0, err
        return out.strip()


@asynccontextmanager
async def operator(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Operator]:
    # No jwt_secret: the server generates one beside its database, and the commands
    # must find that one.
    config = write_config(tmp_path / "chatd.toml", tmp_path, auth={"jwt_secret": ""}, **sections)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with run_chatd(chatd_argv(config), child_env()) as chatd:
        yield Operator(chatd, config, elsewhere)
        assert list(elsewhere.iterdir()) == [], "a command created state where it ran"


async def test_rooms_from_create_to_delete(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with operator(tmp_path) as op:
            created = await op.json("rooms", "create", "general", "--member", 1, "--member", 2)
            room = created["id"]
            assert created == {"id": room, "name": "general", "public": False, "members": [1, 2]}
            out = await op.ok("rooms", "create", "lobby", "--public")
            assert out.startswith("created room ") and "lobby (public)" in out

            listed = await op.ok("rooms", "list")
            header, *rows = listed.splitlines()
            assert header.split() == ["ID", "NAME", "PUBLIC", "MEMBERS"]
            assert rows[0].split() == [str(room), "general", "no", "2"]
            assert rows[1].split()[1:] == ["lobby", "yes", "0"]
            assert [r["name"] for r in await op.json("rooms", "list")] == ["general", "lobby"]

            assert "renamed room" in await op.ok("rooms", "rename", room, "main hall")
            await op.ok("rooms", "add-member", room, 3)
            await op.ok("rooms", "remove-member", room, 1)
            assert await op.ok("rooms", "invite", room, 9) == f"invited user 9 to room {room}\n"
            shown = await op.ok("rooms", "show", room)
            assert shown.splitlines()[0] == f"room {room}: main hall (private)"
            assert [line.split() for line in shown.splitlines()[1:]] == [
                ["MEMBER", "ONLINE"], ["2", "no"], ["3", "no"], ["invited:", "9"]
            ]
            assert await op.ok("rooms", "delete", room) == f"deleted room {room}: main hall\n"
            code, out, err = await op.run("rooms", "show", room)
            assert (code, out) == (1, "")
            assert err == f"chatd: room {room} does not exist (404 unknown_room)\n"
            assert [r["name"] for r in await op.json("rooms", "list")] == ["lobby"]


async def test_history_and_disconnect(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with operator(tmp_path) as op:
            room = (await op.json("rooms", "create", "talk", "--member", 1))["id"]
            alice = await op.token(1, "alice")
            async with httpx.AsyncClient(base_url=op.chatd.base, timeout=10) as http:
                for text in ("one", "two", "three"):
                    resp = await http.post(
                        "/chat-ws/send-message",
                        json={"roomId": room, "message": {"content": text}},
                        headers={"Authorization": f"Bearer {alice}"},
                    )
                    assert resp.status_code == 200, resp.text
                ticket = (await http.post("/chat/ticket", headers={"accessToken": alice}))
            # Oldest first, as a chat reads; the two newest.
            rows = (await op.ok("history", room, "--limit", 2)).splitlines()
            assert rows[0].split() == ["ID", "TIME", "USER", "CONTENT"]
            assert [r.split()[2:] for r in rows[1:]] == [["alice", "two"], ["alice", "three"]]
            assert [m["content"] for m in await op.json("history", room)] == [
                "three", "two", "one"
            ]

            url = f"ws://127.0.0.1:{op.chatd.http_port}/chat?ticket={ticket.json()['ticket']}"
            async with open_websocket_url(url) as ws:
                out = await op.ok("users", "disconnect", 1, "--revoke-tokens")
                assert out == ("closed 1 session(s) of user 1; tokens issued before now are"
                               " revoked\n")
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 4003


async def test_refusals_are_one_line_and_status_1(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with operator(tmp_path) as op:
            code, _, err = await op.run("rooms", "rename", 424242, "x")
            assert (code, err) == (1, "chatd: room 424242 does not exist (404 unknown_room)\n")
            code, _, err = await op.run("rooms", "create", "   ")
            assert code == 1 and "(400 bad_name)" in err
            # A token that is not an admin's is refused by the server, and said so.
            user = await op.token(5, "mallory")
            code, _, err = await op.run("rooms", "list", "--token", user)
            assert code == 1 and "(403 " in err
            # Nobody listening there.
            with socket.socket() as unused:
                unused.bind(("127.0.0.1", 0))  # bound, never listening: refused
                port = unused.getsockname()[1]
                res = await trio.run_process(
                    [sys.executable, "-m", "chatd", "rooms", "list", "--config",
                     str(op.config), "--url", f"http://127.0.0.1:{port}"],
                    capture_stdout=True, capture_stderr=True, check=False, env=child_env(),
                    cwd=op.cwd,
                )
            assert res.returncode == 1
            assert res.stderr.decode().startswith(
                f"chatd: cannot reach the server at http://127.0.0.1:{port}: ")


async def test_no_secret_yet_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "chatd.toml", tmp_path, auth={"jwt_secret": ""})
    with trio.fail_after(TIMEOUT):
        res = await trio.run_process(
            [sys.executable, "-m", "chatd", "rooms", "list", "--config", str(config),
             "--url", "http://127.0.0.1:9"],
            capture_stdout=True, capture_stderr=True, check=False, env=child_env(),
            cwd=tmp_path,
        )
    err = res.stderr.decode()
    assert res.returncode == 1
    assert err.startswith(f"chatd: cannot sign an admin token: no JWT secret at {tmp_path}")
    assert err.rstrip().endswith("(or give --token)")
    assert not (tmp_path / "chatd.db.jwt-secret").exists()


def test_the_server_is_found_at_its_first_http_listener() -> None:
    def url(*listen: str) -> str:
        return server_url(config_mod.from_mapping({"http": {"listen": list(listen)}}))

    assert url("127.0.0.1:5700") == "http://127.0.0.1:5700"
    assert url("0.0.0.0:80", "127.0.0.1:81") == "http://127.0.0.1:80"
    assert url("[::]:5700") == "http://[::1]:5700"
    assert url("[::1]:5700") == "http://[::1]:5700"


def test_tables_align_numbers_right() -> None:
    assert table(["ID", "NAME"], [[7, "a"], [12, "bb"]]) == "ID  NAME\n 7  a\n12  bb"


async def test_backup_under_write_load_is_consistent_and_complete(tmp_path: Path) -> None:
    copy = tmp_path / "backups" / "chatd-copy.db"
    copy.parent.mkdir()
    acked: list[int] = []
    with trio.fail_after(TIMEOUT * 2):
        # One writer as fast as it goes: the per-user rate limit is not what is tested.
        fast = {"rate_per_second": 1e6, "rate_burst": 1_000_000}
        async with operator(tmp_path, chat=fast) as op:
            room = (await op.json("rooms", "create", "busy", "--member", 1))["id"]
            alice = await op.token(1, "alice")
            backed_up = trio.Event()

            async with httpx.AsyncClient(base_url=op.chatd.base, timeout=10) as http:

                async def write(n: int) -> None:
                    resp = await http.post(
                        "/chat-ws/send-message",
                        json={"roomId": room, "message": {"content": f"message {n}"}},
                        headers={"Authorization": f"Bearer {alice}"},
                    )
                    assert resp.status_code == 200, resp.text
                    acked.append(resp.json()["message"]["id"])

                for n in range(100):
                    await write(n)

                async def keep_writing() -> None:
                    n = 100
                    while not backed_up.is_set():
                        await write(n)
                        n += 1

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_writing)
                    before = len(acked)
                    out = await op.ok("backup", copy)
                    backed_up.set()
                after = len(acked)
            assert after > before, "no write went on during the backup"
            assert out.startswith(f"backed up {tmp_path / 'chatd.db'} to {copy}: ")

    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not copy.with_name(copy.name + "-wal").exists()
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        ids = [row[0] for row in db.execute("SELECT id FROM messages ORDER BY id")]
        copied = db.execute("SELECT id, content FROM messages ORDER BY id").fetchall()
    # Complete up to a point: every message acknowledged before the backup began, and a
    # prefix of what the server went on storing, with no gap.
    assert set(acked[:before]) <= set(ids)
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    with contextlib.closing(sqlite3.connect(tmp_path / "chatd.db")) as live:
        stored = live.execute(
            "SELECT id, content FROM messages WHERE id <= ? ORDER BY id", (ids[-1],)
        ).fetchall()
    assert copied == stored
    assert len(ids) < len(acked) or ids[-1] == max(acked)
