"""Black-box tests of the ticket WebSocket protocol (`/chat?ticket=…`) of
seeds/ticket-websocket-guide.md, against the real server over loopback."""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, open_websocket_url

from ._chat import (
    Gate,
    Json,
    RawWebSocket,
    add_member,
    chat,
    chat_url,
    close_code_for,
    create_room,
    expect_close,
    history,
    new_ticket,
    recv,
    recv_error,
    recv_message,
    remove_member,
    roundtrip,
    send,
)
from .conftest import Server, StartServer

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# No rate limit in the way of tests that send many messages.
FAST = {"rate_per_second": 100000, "rate_burst": 100000}


async def assert_only(ws: Any, room_id: int, sender: Any, marker: str) -> None:
    """Prove that `ws` has nothing pending: the sender posts a marker to a room `ws` is in,
    and the next thing `ws` receives must be that marker."""
    await send(sender, room_id, marker)
    got = await recv(ws)
    assert got.get("content") == marker, f"expected only the marker, got {got}"


# --- the guide's flow ----------------------------------------------------------------------


async def test_guide_flow_ticket_connect_send_receive(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        async with server.client() as http:
            token = server.token(1, "john", profile_image="https://img.example/j.png")
            resp = await http.post("/chat/ticket", headers={"accessToken": token})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        assert body["expiresIn"] == 30
        assert UUID4.match(body["ticket"]), body
        async with (
            open_websocket_url(chat_url(server, body["ticket"])) as ws,
            chat(server, 2, username="jane") as other,
        ):
            sent = {"roomId": room, "content": "안녕하세요!", "timestamp": "2024-01-15T10:30:00Z"}
            await ws.send_message(orjson.dumps(sent).decode())
            mine = await recv_message(ws)
            theirs = await recv_message(other)
            assert mine == theirs
            assert mine["roomId"] == room
            assert mine["content"] == "안녕하세요!"
            assert isinstance(mine["id"], int) and not isinstance(mine["id"], bool)
            assert isinstance(mine["timestamp"], str) and mine["timestamp"]
            assert mine["user"] == {
                "id": 1,
                "username": "john",
                "profileImage": "https://img.example/j.png",
            }
            # The guide's JS client sends no timestamp at all.
            await ws.send_message(orjson.dumps({"roomId": room, "content": "Hello!"}).decode())
            second = await recv_message(ws)
            assert second["id"] > mine["id"]
            assert (await recv_message(other))["id"] == second["id"]
            reply = await roundtrip(other, room, "hi john")
            assert reply["user"] == {"id": 2, "username": "jane", "profileImage": None}
            assert (await recv_message(ws))["id"] == reply["id"] > second["id"]


async def test_binary_frames_are_accepted(server: Server) -> None:
    # The guide's Swift client sends JSON as binary (`.data`) frames.
    with trio.fail_after(10):
        room = await create_room(server, [1])
        async with chat(server, 1) as ws:
            await ws.send_message(orjson.dumps({"roomId": room, "content": "from swift"}))
            msg = await recv_message(ws)
            assert msg["content"] == "from swift"
            await ws.send_message(b"\xff\xfe not utf-8")
            assert (await recv_error(ws))["code"] == "bad_json"
            await roundtrip(ws, room, "still here")


# --- refused connections -------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?ticket=", "?since=3", "?other=1"])
async def test_missing_ticket_closes_1002(server: Server, query: str) -> None:
    with trio.fail_after(10):
        reason = await close_code_for(server, f"{server.ws_base}/chat{query}")
        assert reason.code == 1002
        assert "ticket" in (reason.reason or "")


async def test_disallowed_origin_closes_1002_and_keeps_the_ticket(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        ticket = await new_ticket(server, 1)
        reason = await close_code_for(
            server, chat_url(server, ticket), origin="http://evil.example"
        )
        assert reason.code == 1002
        assert "origin" in (reason.reason or "")
        # The refusal happened before the ticket was looked at: it is still good.
        async with open_websocket_url(chat_url(server, ticket)) as ws:
            await roundtrip(ws, room, "native app, no Origin")


@pytest.mark.parametrize("origin", [None, "http://allowed.example", "http://allowed.example/"])
async def test_no_origin_or_allowed_origin_is_accepted(server: Server, origin: str | None) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        async with chat(server, 1, origin=origin) as ws:
            await roundtrip(ws, room, "hello")


async def test_wildcard_origin_allows_any(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(auth={"allowed_origins": ["*"]})
        room = await create_room(server, [1])
        async with chat(server, 1, origin="https://anything.example") as ws:
            await roundtrip(ws, room, "hello")


async def test_unknown_ticket_closes_1003(server: Server) -> None:
    with trio.fail_after(10):
        bogus = "550e8400-e29b-41d4-a716-446655440000"
        reason = await close_code_for(server, chat_url(server, bogus))
        assert reason.code == 1003
        assert reason.reason == "ticket unknown"
        reason = await close_code_for(server, chat_url(server, "not-even-a-uuid"))
        assert reason.code == 1003


async def test_used_ticket_closes_1003_and_first_connection_carries_on(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        ticket = await new_ticket(server, 1)
        async with open_websocket_url(chat_url(server, ticket)) as first:
            reason = await close_code_for(server, chat_url(server, ticket))
            assert reason.code == 1003
            assert reason.reason == "ticket used"
            await roundtrip(first, room, "first connection still works")
        # Closed or not, a ticket is good once.
        reason = await close_code_for(server, chat_url(server, ticket))
        assert reason.code == 1003


async def test_expired_ticket_closes_1003(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(auth={"ticket_ttl_seconds": 0.2})
        room = await create_room(server, [1])
        ticket = await new_ticket(server, 1)
        await trio.sleep(0.3)  # let the ticket's life run out (not synchronisation)
        reason = await close_code_for(server, chat_url(server, ticket))
        assert reason.code == 1003
        assert reason.reason == "ticket expired"
        # A ticket fetched now works: the client's remedy of the guide's table.
        async with chat(server, 1) as ws:
            await roundtrip(ws, room, "new ticket")


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "", "%C2%B2", "99999999999999999999999"])
async def test_bad_since_closes_1002_and_keeps_the_ticket(server: Server, since: str) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        ticket = await new_ticket(server, 1)
        url = f"{server.ws_base}/chat?ticket={ticket}&since={since}"
        reason = await close_code_for(server, url)
        assert reason.code == 1002
        async with open_websocket_url(chat_url(server, ticket)) as ws:
            await roundtrip(ws, room, "ticket still good")


async def test_other_websocket_paths_are_404(server: Server) -> None:
    with trio.fail_after(10):
        ticket = await new_ticket(server, 1)
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(f"{server.ws_base}/nope?ticket={ticket}"):
                pass  # pragma: no cover
        assert info.value.status_code == 404


# --- delivery --------------------------------------------------------------------------------


async def test_every_device_of_every_member_receives_and_non_members_do_not(
    server: Server,
) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        side = await create_room(server, [1, 3])
        async with (
            chat(server, 1) as phone,
            chat(server, 1) as laptop,
            chat(server, 2) as friend,
            chat(server, 3) as outsider,
        ):
            msg = await roundtrip(phone, room, "to every device")
            assert await recv_message(laptop) == msg
            assert await recv_message(friend) == msg
            # The sender's other device can send too, and the first device hears it.
            msg2 = await roundtrip(laptop, room, "from the laptop")
            assert await recv_message(phone) == msg2
            assert await recv_message(friend) == msg2
            # The outsider got neither: the next thing it sees is a message of its own room.
            await assert_only(outsider, side, phone, "side room")
            assert (await recv_message(laptop))["content"] == "side room"
            assert (await recv_message(phone))["content"] == "side room"
            await assert_only(friend, room, phone, "marker")


async def test_two_clients_sending_at_once_see_the_same_order(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2, 3])
        n = 40
        async with chat(server, 1) as a, chat(server, 2) as b, chat(server, 3) as watcher:

            async def flood(ws: Any, tag: str) -> None:
                for i in range(n):
                    await send(ws, room, f"{tag}{i}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood, a, "a")
                nursery.start_soon(flood, b, "b")
            seen = {}
            for name, ws in (("a", a), ("b", b), ("watcher", watcher)):
                seen[name] = [await recv_message(ws) for _ in range(2 * n)]
            assert seen["a"] == seen["b"] == seen["watcher"]
            contents = [m["content"] for m in seen["a"]]
            assert sorted(contents) == sorted(
                [f"a{i}" for i in range(n)] + [f"b{i}" for i in range(n)]
            )
            # Each sender's own messages keep the order it sent them in.
            for tag in "ab":
                assert [c for c in contents if c[0] == tag] == [f"{tag}{i}" for i in range(n)]
            ids = [m["id"] for m in seen["a"]]
            assert len(set(ids)) == 2 * n
            stored = await history(server, 3, room)
            assert sorted(ids) == [m["id"] for m in stored]


async def test_delivery_follows_id_order(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2, 3])
        async with chat(server, 1) as a, chat(server, 2) as b, chat(server, 3) as watcher:
            for round_ in range(20):
                # Hold the store's writer so both posts land in one group commit.
                gate, entered = threading.Event(), threading.Event()

                def hold(
                    _conn: object, gate: threading.Event = gate, entered: threading.Event = entered
                ) -> None:
                    entered.set()
                    gate.wait()

                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(server.state.store.write, hold)
                        await trio.to_thread.run_sync(entered.wait)
                        await send(a, room, f"a{round_}")
                        await send(b, room, f"b{round_}")
                        await trio.testing.wait_all_tasks_blocked()
                        gate.set()
                finally:
                    gate.set()
                got = [await recv_message(watcher) for _ in range(2)]
                for ws in (a, b):
                    assert [await recv_message(ws) for _ in range(2)] == got
                ids = [m["id"] for m in got]
                assert ids == sorted(ids), f"round {round_}: delivered {ids}"


# --- error replies: the connection stays open and nothing is stored -------------------------

# "@room@" is a room the sender is in, "@other@" one it is not in.
BAD_FRAMES = [
    ("not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('"a string"', "bad_json"),
    ("42", "bad_json"),
    ("", "bad_json"),
    ('{"roomId": @room@, "content": "x"', "bad_json"),
    ('{"content": "no room"}', "bad_room_id"),
    ('{"roomId": "abc", "content": "x"}', "bad_room_id"),
    ('{"roomId": "²", "content": "x"}', "bad_room_id"),
    ('{"roomId": true, "content": "x"}', "bad_room_id"),
    ('{"roomId": 1.5, "content": "x"}', "bad_room_id"),
    ('{"roomId": 0, "content": "x"}', "bad_room_id"),
    ('{"roomId": -3, "content": "x"}', "bad_room_id"),
    ('{"roomId": [1], "content": "x"}', "bad_room_id"),
    ('{"roomId": 99999999999999999999, "content": "x"}', "bad_room_id"),
    ('{"roomId": 18446744073709551615, "content": "x"}', "bad_room_id"),
    ('{"roomId": "99999999999999999999", "content": "x"}', "bad_room_id"),
    ('{"roomId": @room@}', "bad_content"),
    ('{"roomId": @room@, "content": 5}', "bad_content"),
    ('{"roomId": @room@, "content": null}', "bad_content"),
    ('{"roomId": @room@, "content": {"text": "x"}}', "bad_content"),
    ('{"roomId": @room@, "content": ""}', "empty_content"),
    ('{"roomId": @room@, "content": " \\n\\t "}', "empty_content"),
    ('{"roomId": @room@, "content": "@long@"}', "content_too_long"),
    ('{"roomId": @room@, "content": "x", "timestamp": 5}', "bad_timestamp"),
    ('{"roomId": @room@, "content": "x", "clientMessageId": 5}', "bad_clientMessageId"),
    ('{"roomId": @room@, "content": "x", "messageType": "video"}', "bad_message_type"),
    ('{"roomId": 424242, "content": "x"}', "unknown_room"),
    # Not a member: answered as a room that does not exist (issue 12, point 15).
    ('{"roomId": @other@, "content": "x"}', "unknown_room"),
]


@pytest.mark.parametrize(
    ("frame", "code"), BAD_FRAMES, ids=[c + ":" + f[:30] for f, c in BAD_FRAMES]
)
async def test_bad_input_gets_an_error_reply_and_the_connection_stays_open(
    server: Server, frame: str, code: str
) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        other = await create_room(server, [2])
        frame = (
            frame.replace("@room@", str(room))
            .replace("@other@", str(other))
            .replace("@long@", "x" * (server.cfg.chat.max_content_chars + 1))
        )
        async with chat(server, 1) as ws, chat(server, 2) as peer:
            await ws.send_message(frame)
            err = await recv_error(ws)
            assert err["code"] == code
            assert set(err) == {"type", "code", "message"}
            # The same connection still sends and receives, and so does another client.
            ok = await roundtrip(ws, room, "after the error")
            assert await recv_message(peer) == ok
            ok2 = await roundtrip(peer, room, "peer too")
            assert await recv_message(ws) == ok2
            # The peer never heard about the bad frame, and nothing else was stored.
            assert [m["content"] for m in await history(server, 2, room)] == [
                "after the error",
                "peer too",
            ]
            assert await history(server, 2, other) == []


async def test_content_at_the_limit_is_accepted(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        async with chat(server, 1) as ws:
            text = "한" * server.cfg.chat.max_content_chars  # characters, not bytes
            msg = await roundtrip(ws, room, text)
            assert len(msg["content"]) == server.cfg.chat.max_content_chars


async def test_frame_over_the_size_limit_gets_an_error_reply(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={"max_frame_bytes": 1000})
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as ws, chat(server, 2) as peer:
            head = orjson.dumps({"roomId": room, "content": ""}).decode()
            exact = orjson.dumps({"roomId": room, "content": "x" * (1000 - len(head))})
            assert len(exact) == 1000
            await ws.send_message(exact.decode())
            assert len((await recv_message(ws))["content"]) == 1000 - len(head)
            await recv_message(peer)
            # One byte more, as text and as binary; multi-byte characters count as bytes.
            await ws.send_message(exact.decode().replace('"x', '"xx', 1))
            err = await recv_error(ws)
            assert err["code"] == "frame_too_large"
            await ws.send_message(exact.replace(b'"x', b'"xx', 1))
            assert (await recv_error(ws))["code"] == "frame_too_large"
            await send(ws, room, "é" * 500)
            assert (await recv_error(ws))["code"] == "frame_too_large"
            ok = await roundtrip(ws, room, "small again")
            assert await recv_message(peer) == ok
            assert len(await history(server, 2, room)) == 2


async def test_frame_over_the_transport_limit_closes_1009(start_server: StartServer) -> None:
    with trio.fail_after(10):
        # Frames over twice [chat] max_frame_bytes are refused with 1009.
        server = await start_server(chat={"max_frame_bytes": 1000}, stomp={"max_frame_bytes": 2000})
        room = await create_room(server, [1, 2])
        async with chat(server, 2) as peer:
            async with chat(server, 1) as ws:
                await ws.send_message("x" * 3000)
                assert (await expect_close(ws)).code == 1009
            ok = await roundtrip(peer, room, "unaffected")
            async with chat(server, 1) as again:
                assert await roundtrip(again, room, "back") != ok
            assert len(await history(server, 2, room)) == 2


async def test_rate_limit_gets_an_error_reply_and_the_connection_stays_open(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        # A refill of one token per 100 s: the third message is refused however slow the
        # machine is.
        server = await start_server(chat={"rate_per_second": 0.01, "rate_burst": 2})
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as ws, chat(server, 1) as other_device, chat(server, 2) as peer:
            await roundtrip(ws, room, "one")
            await roundtrip(ws, room, "two")
            await send(ws, room, "three")
            err = await recv_error(ws)
            assert err["code"] == "rate_limited"
            # The limit is per user: the user's other device is limited as well ...
            await send(other_device, room, "four")
            for _ in range(2):  # "one" and "two" arrived here first
                await recv_message(other_device)
            assert (await recv_error(other_device))["code"] == "rate_limited"
            # ... but other users are not, and the limited connection still receives.
            for _ in range(2):
                await recv_message(peer)
            ok = await roundtrip(peer, room, "from the peer")
            assert (await recv_message(ws)) == ok
            assert [m["content"] for m in await history(server, 2, room)] == [
                "one",
                "two",
                "from the peer",
            ]
            assert server.state.metrics.rate_limited["chat"] == 2


# --- idempotent retries ------------------------------------------------------------------


async def test_client_message_id_makes_a_retry_idempotent(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as ws, chat(server, 2) as peer:
            await send(ws, room, "once", clientMessageId="c-1")
            first = await recv_message(ws)
            assert await recv_message(peer) == first
            # The retry: the sender gets the stored message back (so it learns the id) ...
            await send(ws, room, "once", clientMessageId="c-1")
            again = await recv_message(ws)
            assert again == first
            # ... the peer sees no second copy, and only one is stored.
            await assert_only(peer, room, ws, "marker")
            assert (await recv_message(ws))["content"] == "marker"
            # A retry from a new connection (the first one dropped) is recognised too.
            async with chat(server, 1) as reconnected:
                await send(reconnected, room, "once", clientMessageId="c-1")
                assert await recv_message(reconnected) == first
            # Another user's id space is separate; a new id is a new message.
            theirs = await roundtrip(peer, room, "mine", clientMessageId="c-1")
            assert theirs["id"] != first["id"]
            assert (await recv_message(ws))["id"] == theirs["id"]
            new = await roundtrip(ws, room, "once", clientMessageId="c-2")
            assert new["id"] > theirs["id"]
            stored = await history(server, 2, room)
            assert [m["content"] for m in stored] == ["once", "marker", "mine", "once"]
            assert server.state.metrics.duplicates_suppressed == 2


# --- resume with since -------------------------------------------------------------------


async def test_resume_delivers_missed_then_live_with_no_gap_or_double(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2])
        elsewhere = await create_room(server, [1, 3])
        async with chat(server, 1) as sender:
            ids = [(await roundtrip(sender, room, f"m{i}"))["id"] for i in range(10)]
            await roundtrip(sender, elsewhere, "not for user 2")
            total = 60
            received: list[Json] = []
            posted = trio.Event()

            async def keep_posting() -> None:
                for i in range(10, total):
                    await roundtrip(sender, room, f"m{i}")
                posted.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_posting)
                # Reconnect while the room is busy: the seam between stored and live.
                async with chat(server, 2, since=ids[4]) as resumed:
                    while len(received) < total - 5:
                        received.append(await recv_message(resumed))
                    assert [m["content"] for m in received] == [f"m{i}" for i in range(5, total)]
                    got_ids = [m["id"] for m in received]
                    assert got_ids == sorted(set(got_ids))
                    assert got_ids[0] > ids[4]
                    await posted.wait()
                    await assert_only(resumed, room, sender, "marker")


async def test_resume_skips_a_message_it_replayed_whose_publication_comes_late(
    start_server: StartServer,
) -> None:
    """The writer thread commits, then hands the commit's hooks (the publication) to the
    event loop; in between, the reader thread already sees the message. A resume whose
    replay read it there, and finished, must not send it again when it is published.
    (The cause of a rare double in the test above: a checkpoint the writer runs after a
    commit, before the hand-over, widened the window.)"""
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2])
        store = server.state.store
        observe = server.state.metrics.observe_commit
        gate = Gate()
        held, release = threading.Event(), threading.Event()
        first_batch_done = threading.Event()

        def observer(seconds: float, jobs: int) -> None:
            observe(seconds, jobs)
            if threading.current_thread() is threading.main_thread():
                return  # committed in the event loop: its hooks run right after
            if not first_batch_done.is_set():
                first_batch_done.set()  # the gate's own (empty) commit
                return
            if not held.is_set():
                held.set()
                release.wait(timeout=10)

        try:
            async with chat(server, 1) as sender, trio.open_nursery() as nursery:
                ids = [(await roundtrip(sender, room, f"m{i}"))["id"] for i in range(3)]
                # Held behind the gate, the next message goes to the writer thread.
                nursery.start_soon(store.write, gate.job)
                await gate.wait_entered()
                store.set_commit_observer(observer)
                await send(sender, room, "late")
                await trio.testing.wait_all_tasks_blocked()
                gate.release.set()
                assert await trio.to_thread.run_sync(held.wait, 10)
                # "late" is committed, not yet published.
                async with chat(server, 2, since=ids[-1]) as resumed:
                    replayed = await recv_message(resumed)
                    assert replayed["content"] == "late"
                    release.set()
                    assert (await recv_message(sender))["id"] == replayed["id"]
                    await assert_only(resumed, room, sender, "marker")
        finally:
            gate.release.set()
            release.set()
            store.set_commit_observer(observe)


async def test_resume_then_nothing_extra(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as sender:
            ids = [(await roundtrip(sender, room, f"m{i}"))["id"] for i in range(5)]
            # since=0: everything from the user's rooms, in order.
            async with chat(server, 2, since=0) as b:
                assert [(await recv_message(b))["id"] for _ in range(5)] == ids
                await assert_only(b, room, sender, "live 1")
                assert (await recv_message(sender))["content"] == "live 1"
            # since=the last id: no replay, only live messages.
            async with chat(server, 2, since=ids[-1] + 1) as b:
                await assert_only(b, room, sender, "live 2")
                assert (await recv_message(sender))["content"] == "live 2"
            # since beyond every id: nothing replayed either.
            async with chat(server, 2, since=10**9) as b:
                await assert_only(b, room, sender, "live 3")


async def test_resume_beyond_every_id_reads_now_before_the_socket_opens(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`since` above every stored id means "from now on", and now is before the client
    sees its socket open: a message sent once it is open must arrive. (The newest id used
    to be read after the handshake, so a message sent right away could be taken as old.)"""
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2])
        store = server.state.store
        real = store.last_message_id
        reading, release, opened = trio.Event(), trio.Event(), trio.Event()

        async def gated() -> int:
            reading.set()
            await release.wait()
            return await real()  # type: ignore[no-any-return]

        monkeypatch.setattr(store, "last_message_id", gated)
        got: list[Json] = []
        async with chat(server, 1) as sender, trio.open_nursery() as nursery:

            async def resumer() -> None:
                async with chat(server, 2, since=10**9) as b:
                    opened.set()
                    got.append(await recv_message(b))

            nursery.start_soon(resumer)
            await reading.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert not opened.is_set(), "the socket opened before `now` was read"
            release.set()
            await opened.wait()
            sent = await roundtrip(sender, room, "right after opening")
        assert [m["id"] for m in got] == [sent["id"]]


async def test_resume_skips_rooms_the_user_is_not_in(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        mine = await create_room(server, [1, 2])
        theirs = await create_room(server, [1, 3])
        async with chat(server, 1) as sender:
            await roundtrip(sender, theirs, "secret")
            visible = await roundtrip(sender, mine, "visible")
            await roundtrip(sender, theirs, "secret 2")
            async with chat(server, 2, since=0) as b:
                assert (await recv_message(b))["id"] == visible["id"]
                await assert_only(b, mine, sender, "live")


async def test_resume_beyond_the_limit_says_so(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={**FAST, "resume_max_messages": 3})
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as sender:
            ids = [(await roundtrip(sender, room, f"m{i}"))["id"] for i in range(5)]
            async with chat(server, 2, since=0) as b:
                assert [(await recv_message(b))["id"] for _ in range(3)] == ids[:3]
                err = await recv_error(b)
                assert err["code"] == "resume_truncated"
                assert err["lastId"] == ids[2]
                await assert_only(b, room, sender, "live")


# --- membership changes ------------------------------------------------------------------


async def test_membership_changes_apply_to_live_connections(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        both = await create_room(server, [1, 2])
        async with chat(server, 1) as owner, chat(server, 2) as guest:
            await roundtrip(owner, room, "before joining")
            await send(guest, room, "not yet")
            assert (await recv_error(guest))["code"] == "unknown_room"

            assert (await add_member(server, room, 2))["members"] == [1, 2]
            joined = await roundtrip(owner, room, "welcome")
            # The first chat message the guest sees is the one after it was added.
            assert await recv_message(guest) == joined
            hello = await roundtrip(guest, room, "thanks")
            assert await recv_message(owner) == hello

            assert (await remove_member(server, room, 2))["members"] == [1]
            await roundtrip(owner, room, "after removal")
            await assert_only(guest, both, owner, "marker")
            assert (await recv_message(owner))["content"] == "marker"
            await send(guest, room, "can I still post?")
            assert (await recv_error(guest))["code"] == "unknown_room"
            contents = [m["content"] for m in await history(server, 1, room)]
            assert contents == ["before joining", "welcome", "thanks", "after removal"]


# --- slow consumers ----------------------------------------------------------------------

SLOW = {**FAST, "outbox_messages": 8, "max_content_chars": 60000}


async def flood_until_cut(server: Server, room: int, flooder: Any, readers: list[Any]) -> int:
    """Post big messages until the server reports a slow-consumer cut; every reader must
    get each message meanwhile. Returns how many were posted."""
    big = "x" * 50000
    sent = 0
    while server.state.metrics.slow_consumer_disconnects == 0:
        sent += 1
        assert sent <= 400, "the silent client was never cut off"
        msg = await roundtrip(flooder, room, f"{sent}:{big}")
        for ws in readers:
            assert await recv_message(ws) == msg
    return sent


async def test_slow_consumer_is_cut_off_and_the_room_carries_on(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=SLOW)
        room = await create_room(server, [1, 2, 3])
        ticket = await new_ticket(server, 3)
        silent = await RawWebSocket.connect(server, f"/chat?ticket={ticket}")
        try:
            async with chat(server, 1) as flooder, chat(server, 2) as reader:
                sent = await flood_until_cut(server, room, flooder, [reader])
                assert server.state.metrics.slow_consumer_disconnects == 1
                # The room is not held up by the silent client.
                for i in range(20):
                    msg = await roundtrip(flooder, room, f"after {i}")
                    assert await recv_message(reader) == msg
                assert server.state.metrics.slow_consumer_disconnects == 1
                # When the silent client finally reads, it finds a prefix of the messages in
                # whole frames, then close 4008, then the end of the stream.
                texts: list[Json] = []
                close: bytes | None = None
                while (frame := await silent.read_frame()) is not None:
                    opcode, payload = frame
                    assert close is None, "a frame after the close frame"
                    if opcode == 0x8:
                        close = payload
                    else:
                        assert opcode == 0x1
                        texts.append(orjson.loads(payload))
                assert close is not None, "no close frame"
                assert int.from_bytes(close[:2], "big") == 4008
                assert close[2:] == b"slow consumer"
                assert len(texts) < sent
                assert [m["content"].split(":")[0] for m in texts] == [
                    str(i) for i in range(1, len(texts) + 1)
                ]
                # The cut client's user reconnects and everything is in the history.
                async with chat(server, 3, since=0) as back:
                    for i in range(1, sent + 1):
                        assert (await recv_message(back))["content"].startswith(f"{i}:")
        finally:
            await silent.aclose()


async def test_slow_consumer_that_never_reads_does_not_hold_up_shutdown(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=SLOW, server={"shutdown_grace_seconds": 0.5})
        room = await create_room(server, [1, 3])
        ticket = await new_ticket(server, 3)
        silent = await RawWebSocket.connect(server, f"/chat?ticket={ticket}")
        try:
            async with chat(server, 1) as flooder:
                await flood_until_cut(server, room, flooder, [])
            with trio.fail_after(3):
                await server.stop()
        finally:
            await silent.aclose()


async def test_a_client_vanishing_mid_stream_does_not_disturb_the_others(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2, 3])
        async with chat(server, 1) as sender, chat(server, 2) as reader:
            for _ in range(3):
                ticket = await new_ticket(server, 3)
                ghost = await RawWebSocket.connect(server, f"/chat?ticket={ticket}")
                msg = await roundtrip(sender, room, "while the ghost is here")
                assert await recv_message(reader) == msg
                # Gone without a close frame, with the server's message unread.
                await ghost.aclose()
                for i in range(5):
                    msg = await roundtrip(sender, room, f"after {i}")
                    assert await recv_message(reader) == msg
            async with chat(server, 3) as back:
                await assert_only(back, room, sender, "welcome back")


# --- server faults -------------------------------------------------------------------------


async def test_unexpected_fault_closes_1011_and_the_server_carries_on(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        service = server.state.service
        real_store = service.store_admitted
        faults = 0

        async def store_once_broken(*args: Any, **kwargs: Any) -> Any:
            nonlocal faults
            if faults == 0:
                faults += 1
                raise RuntimeError("disk on fire")
            return await real_store(*args, **kwargs)

        monkeypatch.setattr(service, "store_admitted", store_once_broken)
        async with chat(server, 2) as bystander:
            async with chat(server, 1) as victim:
                await send(victim, room, "boom")
                reason = await expect_close(victim)
                assert reason.code == 1011
            # Other connections and new ones work; the failed message was not stored.
            ok = await roundtrip(bystander, room, "still up")
            async with chat(server, 1) as again:
                ok2 = await roundtrip(again, room, "back again")
            assert (await recv_message(bystander)) == ok2
            assert [m["id"] for m in await history(server, 2, room)] == [ok["id"], ok2["id"]]
        assert faults == 1
