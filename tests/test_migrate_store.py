"""`chatd migrate-store --to DSN` (issue 16): a node's SQLite data, made by a real server
(rooms, members, invites, messages edited and deleted, idempotency keys, read marks,
revocations, a deleted room), moved into a private PostgreSQL (tests/pg_instance.py) by
the real command, then served by a real server on PostgreSQL: the same history and room
summaries, ids that go on above the old ones (the deleted room's too), a retried
clientMessageId still recognised, revoked credentials still refused. And the refusals:
a target that holds data, a bad DSN; the password never printed."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from chatd.store import migrate, schema
from chatd.store.postgres import schema as pg_schema

from ._chat import bearer, chat, create_room, history, recv_message, roundtrip, send
from .conftest import SECRET, Server, StartServer
from .pg_instance import PgInstance, pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .stomp_client import issue_login, open_stomp, post_json
from .test_admin_disconnect import jwt_for, throw_out

Json = dict[str, Any]
PASSWORD = "pw-never-shown-7d1f"


def on_postgres(dsn: str) -> dict[str, object]:
    return {"backend": "postgresql", "dsn": dsn}


def with_password(dsn: str) -> str:
    # The private server trusts loopback: a password in the DSN is carried, never needed.
    return f"{dsn} password={PASSWORD}"


async def run_cli(tmp_path: Path, *args: str, store: str = "") -> tuple[int, str, str]:
    """`python -m chatd migrate-store ARGS` with a config naming the node's store path
    (and `store`, more of its [store] section); (exit status, stdout, stderr)."""
    config = tmp_path / "node.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "chatd.db"}"\n{store}\n'
        f'[auth]\njwt_secret = "{SECRET}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "CHATD_CONFIG"}
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "chatd", "migrate-store", "--config", str(config), *args],
            capture_stdout=True, capture_stderr=True, check=False, env=env,
        )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def get_json(server: Server, path: str, token: str) -> Any:
    async with server.client() as http:
        resp = await http.get(path, headers=bearer(token))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def change(server: Server, user_id: int, method: str, room: int, mid: int,
                 body: Any = None) -> Json:  # fmt: skip
    async with server.client() as http:
        resp = await http.request(method, f"/chat/rooms/{room}/messages/{mid}",
                                  headers=bearer(server.token(user_id)), json=body)  # fmt: skip
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def what_clients_see(server: Server, rooms: list[int]) -> Json:
    """Everything the migration must keep, as the API shows it."""
    admin = server.admin_token()
    return {
        "rooms": await get_json(server, "/admin/rooms", admin),
        "members": [await get_json(server, f"/admin/rooms/{r}/members", admin) for r in rooms],
        "history": [await history(server, 2 if r == rooms[0] else 1, r) for r in rooms],
        "summaries": {u: await get_json(server, "/chat/rooms", server.token(u)) for u in (1, 2)},
    }


async def fill_a_node(server: Server) -> tuple[list[int], Json]:
    """Rooms, messages and the rest, through the real server; the room ids, and what
    the test needs to remember."""
    talk = await create_room(server, [1, 2], name="talk")
    lobby = await create_room(server, [1], name="lobby", public=True)
    doomed = await create_room(server, [1, 2], name="doomed")
    async with server.client() as http:
        resp = await http.post(f"/admin/rooms/{talk}/invites", json={"userId": 3},
                               headers=bearer(server.admin_token()))  # fmt: skip
        assert resp.status_code == 200, resp.text
    async with chat(server, 1) as alice, chat(server, 2) as bob:
        first = await roundtrip(alice, talk, "hello", clientMessageId="cm-1")
        await recv_message(bob)
        await roundtrip(bob, talk, "hi")
        await recv_message(alice)
        typo = await roundtrip(alice, talk, "typo")
        await recv_message(bob)
        oops = await roundtrip(bob, talk, "oops")
        await recv_message(alice)
        nul = await roundtrip(bob, talk, "nul-here")
        await recv_message(alice)
        # chatd refuses U+0000 now, but an older one stored it: put one in as it would have.
        with sqlite3.connect(server.cfg.store.path) as db:
            db.execute(
                "UPDATE messages SET content = ? WHERE id = ?", ("nul\x00here", nul["id"])
            )
        await roundtrip(alice, talk, "last")
        await recv_message(bob)
        await roundtrip(alice, lobby, "in the lobby")
        await roundtrip(alice, doomed, "gone with its room")
        doomed_message = await recv_message(bob)
    await change(server, 1, "PATCH", talk, typo["id"], {"content": "fixed"})
    await change(server, 2, "DELETE", talk, oops["id"])
    resp = await post_json(server, "/chat-ws/read", 2, {"roomId": talk, "messageId": typo["id"]})
    assert resp.status_code == 200, resp.text
    async with server.client() as http:
        resp = await http.delete(f"/admin/rooms/{doomed}", headers=bearer(server.admin_token()))
        assert resp.status_code == 200, resp.text

    # Revocations: user 5's tokens (an admin's), user 6's issued STOMP logins (a logout).
    old_jwt = jwt_for(5, iat=time.time() - 120)
    assert (await throw_out(server, 5, {"revokeTokens": True})).status_code == 200
    login, passcode = await issue_login(server, 6)
    assert (await post_json(server, "/chat-ws/disconnect", 6)).status_code == 200
    remembered = {
        "first": first, "doomed_room": doomed, "doomed_message": doomed_message["id"],
        "old_jwt": old_jwt, "login": (login, passcode),
        # Not revoked: it stays valid, signed with the node's key, which moves too.
        "kept_login": await issue_login(server, 7),
    }  # fmt: skip
    return [talk, lobby], remembered


async def test_a_migrated_node_carries_on_on_postgresql(
    start_server: StartServer, pg_dsn: str, tmp_path: Path  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(90):
        node = await start_server()
        rooms, kept = await fill_a_node(node)
        talk = rooms[0]
        before = await what_clients_see(node, rooms)
        await node.stop()

        status, out, err = await run_cli(tmp_path, "--to", with_password(pg_dsn))
        assert (status, err) == (0, ""), err
        lines = out.splitlines()
        head = f"copied {tmp_path / 'chatd.db'} into PostgreSQL chatd@127.0.0.1:"
        assert lines[0].startswith(head), out
        counts = {p[0]: int(p[1].replace(",", "")) for p in (ln.split()[:2] for ln in lines[1:7])}
        assert counts == {"rooms": 2, "members": 3, "invites": 1, "messages": 7, "reads": 1,
                          "revocations": 2}  # fmt: skip
        # The deleted room's id and its message's id are not handed out again.
        assert f"next ids: rooms {kept['doomed_room'] + 1}" in out
        assert f"messages {kept['doomed_message'] + 1}" in out
        assert "1 row(s) had U+0000" in out
        assert PASSWORD not in out
        key = (tmp_path / "chatd.db.stomp-key").read_text().strip()
        assert key not in out

        cluster = await start_server(store=on_postgres(pg_dsn))
        after = await what_clients_see(cluster, rooms)
        # PostgreSQL's text cannot hold U+0000: it arrives as U+FFFD, all else unchanged.
        expected = repr(before).replace("nul\\x00here", "nul\ufffdhere")
        assert repr(after) == expected
        summaries = before["summaries"].items()
        unread = {u: {r["id"]: r["unread"] for r in s["rooms"]} for u, s in summaries}
        assert unread == {1: {talk: 2, rooms[1]: 0}, 2: {talk: 1}}
        history_of_talk = after["history"][0]
        assert [m["content"] for m in history_of_talk] == [
            "hello", "hi", "fixed", "", "nul\ufffdhere", "last",
        ]  # fmt: skip

        async with chat(cluster, 1) as alice, chat(cluster, 2) as bob:
            # A retry of a message sent to the old node is still recognised: the stored
            # one comes back, nothing new is stored.
            await send(alice, talk, "hello", clientMessageId="cm-1")
            assert await recv_message(alice) == kept["first"]
            new = await roundtrip(alice, talk, "on the cluster")
            assert await recv_message(bob) == new
        assert new["id"] > kept["doomed_message"]
        assert [m["content"] for m in await history(cluster, 2, talk)][-2:] == [
            "last", "on the cluster",
        ]  # fmt: skip
        assert await create_room(cluster, [1]) > kept["doomed_room"]

        # Revoked credentials stay revoked; others' are fine.
        async with cluster.client() as http:
            refused = await http.get("/chat/rooms", headers=bearer(kept["old_jwt"]))
            assert (refused.status_code, refused.json()["message"]) == (401, "token revoked")
            fine = await http.get("/chat/rooms", headers=bearer(jwt_for(7, iat=time.time() - 120)))
            assert fine.status_code == 200
        login, passcode = kept["login"]
        async with open_stomp(cluster) as c:
            await c.send_connect(login, passcode)
            await c.expect_error("Bad CONNECT", f"Access refused for user '{login}'")
        async with open_stomp(cluster) as c:
            await c.connect(*kept["kept_login"])


def small_store(path: Path, messages: int = 3) -> None:
    conn = schema.connect(path)
    schema.migrate(conn)
    conn.execute("INSERT INTO rooms(name, public, created_at) VALUES ('r', 0, 't')")
    conn.executemany(
        "INSERT INTO messages(room_id, user_id, username, content, created_at, created_unix)"
        " VALUES (1, 1, 'u1', ?, 't', 1.0)",
        [(f"m{i}",) for i in range(messages)],
    )
    conn.close()


def count_rows(dsn: str, table: str) -> int | None:
    """Rows of `table`, or None when the table does not exist."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if found is None or not found[0]:
            return None
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return None if row is None else int(row[0])


async def test_a_target_that_holds_data_is_refused(
    tmp_path: Path, pg_dsn: str  # noqa: F811 (fixture)
) -> None:
    small_store(tmp_path / "chatd.db")
    status, out, _err = await run_cli(tmp_path, "--to", pg_dsn)
    assert status == 0, out
    status, out, err = await run_cli(tmp_path, "--to", with_password(pg_dsn))
    assert (status, out) == (1, "")
    assert err.endswith("already holds chatd data (1 rooms, 3 messages): migrate into an empty"
                        " database\n")  # fmt: skip
    assert err.count("\n") == 1 and PASSWORD not in err
    assert count_rows(pg_dsn, "messages") == 3


async def test_a_dry_run_writes_nothing(tmp_path: Path, pg_dsn: str) -> None:  # noqa: F811
    small_store(tmp_path / "chatd.db", messages=5)
    # A node without [auth] jwt_secret made one: the operator is told where (not what).
    (tmp_path / "chatd.db.jwt-secret").write_text("the-node-s-own-secret\n")
    status, out, err = await run_cli(tmp_path, "--to", pg_dsn, "--dry-run")
    assert (status, err) == (0, ""), err
    assert out.startswith("dry run, rolled back: would copy")
    assert f"secret in {tmp_path / 'chatd.db.jwt-secret'}: give every node" in out
    assert "the-node-s-own-secret" not in out
    assert re.search(r"^  messages +5 ", out, re.M), out
    # Not even the schema: it was created inside the transaction rolled back.
    assert count_rows(pg_dsn, "rooms") is None
    status, out, err = await run_cli(tmp_path, "--to", pg_dsn)
    assert (status, err) == (0, ""), err
    assert count_rows(pg_dsn, "messages") == 5


async def test_the_cluster_config_names_the_target(
    tmp_path: Path, pg_dsn: str  # noqa: F811 (fixture)
) -> None:
    """Without --to, the config's [store] dsn: the password stays off the command line."""
    small_store(tmp_path / "node.db")
    node = ("--from", str(tmp_path / "node.db"))
    status, out, err = await run_cli(tmp_path, *node)
    assert (status, out) == (2, "")
    assert err == "chatd: migrate-store: give --to DSN, or a config with [store] dsn\n"
    cluster = f'backend = "postgresql"\ndsn = "{with_password(pg_dsn)}"'
    status, out, err = await run_cli(tmp_path, *node, store=cluster)
    assert (status, err) == (0, ""), err
    assert out.startswith(f"copied {tmp_path / 'node.db'} into PostgreSQL chatd@127.0.0.1:")
    assert PASSWORD not in out
    assert count_rows(pg_dsn, "messages") == 3


@pytest.mark.parametrize(
    "dsn",
    [
        # A server that is not there (port 1 on loopback refuses at once).
        f"host=127.0.0.1 port=1 user=chatd dbname=x password={PASSWORD}",
        f"postgresql://chatd:{PASSWORD}@127.0.0.1:1/x",
        # Not a DSN at all: libpq's complaint would quote it.
        f"host=127.0.0.1 password={PASSWORD} nonsense",
        f"password='{PASSWORD}' bogus_option=1",
    ],
)
async def test_failures_are_one_line_without_the_password(tmp_path: Path, dsn: str) -> None:
    small_store(tmp_path / "chatd.db")
    status, out, err = await run_cli(tmp_path, "--to", dsn)
    assert (status, out) == (1, "")
    assert err.startswith("chatd: migrate-store: ") and err.count("\n") == 1, err
    assert PASSWORD not in err


async def test_a_missing_or_old_source_is_refused(tmp_path: Path) -> None:
    status, _out, err = await run_cli(tmp_path, "--to", "host=127.0.0.1 port=1")
    assert status == 1
    assert err == f"chatd: migrate-store: no database at {tmp_path / 'chatd.db'}\n"
    assert not (tmp_path / "chatd.db").exists()  # read-only: nothing created
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("PRAGMA user_version = 4").connection.close()
    status, _out, err = await run_cli(tmp_path, "--from", str(old), "--to", "host=x")
    assert status == 1 and "is at schema 4, older than this chatd's (5)" in err


async def test_later_schemas_get_their_marks_of_the_newest_message(
    tmp_path: Path, pg_dsn: str  # noqa: F811 (fixture)
) -> None:
    """Cluster mode's `rooms.last_message_id` is set when the target has it (and not
    needed when it has not: the other tests run without it); `message_clock`, when the
    target's schema has one, says the highest id."""
    path = tmp_path / "chatd.db"
    small_store(path, messages=4)
    conn = schema.connect(path)
    conn.execute("INSERT INTO rooms(name, public, created_at) VALUES ('quiet', 1, 't')")
    conn.execute(
        "INSERT INTO messages(room_id, user_id, username, content, created_at, created_unix)"
        " VALUES (3, 1, 'u1', 'of a room gone', 't', 1.0)"
    )
    conn.execute("DELETE FROM messages WHERE room_id = 3")
    conn.close()
    with pg_schema.connect(pg_dsn) as target:
        pg_schema.migrate(target)
        target.execute("ALTER TABLE rooms ADD COLUMN IF NOT EXISTS last_message_id BIGINT")
    status, out, err = await run_cli(tmp_path, "--to", pg_dsn)
    assert (status, err) == (0, ""), err
    assert "rooms.last_message_id set for 1 room(s)" in out
    with psycopg.connect(pg_dsn) as check:
        marks = check.execute("SELECT id, public, last_message_id FROM rooms ORDER BY id")
        assert marks.fetchall() == [(1, False, 4), (2, True, None)]
        has_clock = check.execute("SELECT to_regclass('message_clock') IS NOT NULL").fetchone()
        if has_clock is not None and has_clock[0]:
            assert check.execute("SELECT last_id FROM message_clock").fetchall() == [(5,)]
            assert "message_clock at 5" in out


def test_a_source_written_during_the_copy_is_reported(
    tmp_path: Path, pg_instance: PgInstance  # noqa: F811 (fixture)
) -> None:
    path = tmp_path / "chatd.db"
    small_store(path)
    writer = schema.connect(path)
    wrote: list[str] = []

    def progress(table: str, done: int, total: int) -> None:
        if table == "rooms" and not wrote:
            writer.execute(
                "INSERT INTO messages(room_id, user_id, username, content, created_at,"
                " created_unix) VALUES (1, 1, 'u1', 'after the snapshot', 't', 2.0)"
            )
            wrote.append(table)

    dsn = pg_instance.create_database()
    result = migrate.migrate_store(path, dsn, progress=progress)
    writer.close()
    assert wrote and result.source_changed
    # The snapshot's three messages, not the fourth written after it.
    assert result.counts["messages"] == 3 and count_rows(dsn, "messages") == 3
    # Unchanged meanwhile: nothing to say.
    assert not migrate.migrate_store(path, pg_instance.create_database()).source_changed
