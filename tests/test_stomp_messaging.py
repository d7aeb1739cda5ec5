"""STOMP messaging over real sockets: SEND to a room reaches every subscriber on every
protocol once, the MESSAGE frame's exact shape, receipts, UNSUBSCRIBE, ack modes,
transactions, and one bus shared with /chat and the /chat-ws HTTP API."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack

import orjson
import pytest
import trio

from chatd.stomp import Frame

from ._chat import chat, recv_message, send
from ._chat import history as http_history
from .conftest import Server
from .stomp_client import (
    KINDS,
    Kind,
    StompClient,
    issue_login,
    make_room,
    open_stomp,
    post_json,
    room_dest,
    stomp_user,
    user_dest,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def check_message_frame(frame: Frame, sub_id: str, room: int, *, ack: bool = False) -> dict:
    """Every header of a MESSAGE to a room subscription, in order, and the JSON body."""
    assert frame.command == "MESSAGE"
    names = [name for name, _ in frame.headers]
    expected = ["subscription", "destination", "message-id", "redelivered", "content-type"]
    if ack:
        expected.insert(1, "ack")
    assert names == [*expected, "content-length"], frame.headers
    assert frame.get("subscription") == sub_id
    assert frame.get("destination") == room_dest(room)
    assert frame.get("message-id")
    assert frame.get("redelivered") == "false"
    assert frame.get("content-type") == "application/json"
    assert frame.get("content-length") == str(len(frame.body))
    return dict(orjson.loads(frame.body))


def check_new_message(body: dict, *, room: int, sender: int, content: str, mtype: str = "text"):
    assert set(body) == {"type", "roomId", "message", "timestamp"}, body
    assert body["type"] == "new_message" and body["roomId"] == room
    assert ISO.match(body["timestamp"]), body
    msg = body["message"]
    # The guide's fields, and a few more a client can use.
    assert set(msg) == {
        "id",
        "room_id",
        "content",
        "message_type",
        "sender_id",
        "sender_name",
        "sender_profile_image",
        "created_at",
    }, msg
    assert isinstance(msg["id"], int) and msg["id"] > 0
    assert (msg["room_id"], msg["content"], msg["message_type"], msg["sender_id"]) == (
        room,
        content,
        mtype,
        sender,
    )
    assert msg["sender_name"] == f"user{sender}"
    assert ISO.match(msg["created_at"]), msg
    return msg


# --- fan-out ------------------------------------------------------------------------------


@pytest.mark.parametrize("sender_kind", KINDS)
async def test_send_reaches_every_subscriber_on_every_protocol_once(
    server: Server, sender_kind: Kind
) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3, 4, 5])
        async with AsyncExitStack() as stack:
            ticket_client = await stack.enter_async_context(chat(server, 5))
            # Everyone connects before anyone subscribes, so no presence event interleaves.
            sender = await stack.enter_async_context(stomp_user(server, 1, sender_kind))
            subs: dict[Kind, StompClient] = {}
            for uid, kind in zip((2, 3, 4), KINDS, strict=True):
                subs[kind] = await stack.enter_async_context(stomp_user(server, uid, kind))
            for c in subs.values():
                await c.subscribe(room_dest(room), sub_id=f"room-{c.kind}")

            ids = []
            for content in ("안녕하세요 👋", "second: \\ \n done"):
                assert await sender.publish(room_dest(room), {"content": content}) == []
                seen = set()
                for kind, c in subs.items():
                    frame, _ = await c.expect_message()
                    body = check_message_frame(frame, f"room-{kind}", room)
                    msg = check_new_message(body, room=room, sender=1, content=content)
                    seen.add(msg["id"])
                chat_msg = await recv_message(ticket_client)
                assert set(chat_msg) == {
                    "id",
                    "roomId",
                    "content",
                    "timestamp",
                    "messageType",
                    "user",
                }
                assert chat_msg["content"] == content and chat_msg["roomId"] == room
                assert chat_msg["user"] == {"id": 1, "username": "user1", "profileImage": None}
                seen.add(chat_msg["id"])
                assert len(seen) == 1, "one stored message, the same id everywhere"
                ids.append(seen.pop())
            assert ids[0] < ids[1]
            # WebSocket deliveries are TEXT messages (trio-websocket returns str).
            for kind in ("ws", "http"):
                assert set(subs[kind].ws_kinds) == {str}
        stored = await http_history(server, 2, room)
        assert [m["id"] for m in stored] == ids


async def test_one_bus_for_chat_stomp_and_http(server: Server) -> None:
    """A message posted through /chat, STOMP SEND or /chat-ws/send-message reaches the
    STOMP subscribers as new_message and the /chat clients in their own shape, once."""
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with (
            chat(server, 3) as ticket_client,
            stomp_user(server, 1) as stomp_sender,
            stomp_user(server, 2, "http") as sub,
        ):
            await sub.subscribe(room_dest(room))
            await send(ticket_client, room, "via /chat")
            echoes = [(await recv_message(ticket_client))["content"]]  # stored: in order
            resp = await post_json(
                server,
                "/chat-ws/send-message",
                3,
                {"roomId": room, "message": {"message_type": "text", "content": "via http"}},
            )
            assert resp.status_code == 200
            await stomp_sender.publish(room_dest(room), {"content": "via stomp"})
            got = []
            for _ in range(3):
                _, body = await sub.expect_message("new_message")
                got.append(body["message"]["content"])
            assert got == ["via /chat", "via http", "via stomp"]
            echoes += [(await recv_message(ticket_client))["content"] for _ in range(2)]
            assert echoes == got
        assert [m["content"] for m in await http_history(server, 1, room)] == got


async def test_receipt_comes_after_the_message_is_stored(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 1, "http") as c, server.client() as http:
            for i in range(5):
                assert await c.publish(room_dest(room), {"content": f"m{i}"}) == []
                # Right after the RECEIPT, the history already has it.
                resp = await http.get(
                    f"/chat/rooms/{room}/messages", headers={"accessToken": server.token(2)}
                )
                assert resp.json()["messages"][0]["content"] == f"m{i}"


async def test_own_message_arrives_before_the_receipt(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with stomp_user(server, 1, rooms=[room]) as c:
            before = await c.publish(room_dest(room), {"content": "mine"})
            assert [orjson.loads(f.body)["message"]["content"] for f in before] == ["mine"]


async def test_order_is_kept_and_ids_increase(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 1) as sender, stomp_user(server, 2, "ws") as sub:
            await sub.subscribe(room_dest(room))
            for i in range(30):
                await sender.publish(room_dest(room), {"content": str(i)}, receipt=False)
            await sender.publish(room_dest(room), {"content": "end"})
            got = []
            for _ in range(31):
                _, body = await sub.expect_message("new_message")
                got.append((body["message"]["id"], body["message"]["content"]))
            assert [c for _, c in got] == [*map(str, range(30)), "end"]
            assert [i for i, _ in got] == sorted(i for i, _ in got)


@pytest.mark.parametrize("mtype", ["text", "image", "file", "system", None])
async def test_message_types(server: Server, mtype: str | None) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with stomp_user(server, 1, rooms=[room]) as c:
            body = {"content": "x"} | ({"message_type": mtype} if mtype else {})
            [frame] = await c.publish(room_dest(room), body)
            msg = orjson.loads(frame.body)["message"]
            assert msg["message_type"] == (mtype or "text")


async def test_send_with_client_message_id_is_stored_once(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 1) as sender, stomp_user(server, 2) as sub:
            await sub.subscribe(room_dest(room))
            for _ in range(2):  # the retry gets its RECEIPT too, but publishes nothing
                await sender.publish(room_dest(room), {"content": "once", "clientMessageId": "c1"})
            await sender.publish(room_dest(room), {"content": "after"})
            contents = []
            for _ in range(2):
                _, body = await sub.expect_message("new_message")
                contents.append(body["message"]["content"])
            assert contents == ["once", "after"]
        assert [m["content"] for m in await http_history(server, 1, room)] == ["once", "after"]
        assert server.state.metrics.duplicates_suppressed == 1


async def test_client_message_id_reused_in_another_room_is_not_swallowed(server: Server) -> None:
    """Idempotency is per room: the same clientMessageId in another room is a new message."""
    with trio.fail_after(10):
        a = await make_room(server, [1, 2])
        b = await make_room(server, [1, 2])
        async with stomp_user(server, 1) as sender, stomp_user(server, 2) as sub:
            await sub.subscribe(room_dest(b))
            await sender.publish(room_dest(a), {"content": "to a", "clientMessageId": "7"})
            await sender.publish(room_dest(b), {"content": "to b", "clientMessageId": "7"})
            await sender.publish(room_dest(b), {"content": "marker"})
            _, body = await sub.expect_message("new_message")
            assert body["message"]["content"] == "to b", body


# --- subscriptions -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_unsubscribe_stops_delivery(server: Server, kind: Kind) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 1) as sender, stomp_user(server, 2, kind) as c:
            await c.subscribe(room_dest(room), sub_id="first")
            await sender.publish(room_dest(room), {"content": "one"})
            frame, _ = await c.expect_message("new_message")
            assert frame.get("subscription") == "first"
            await c.unsubscribe("first")  # with a receipt
            await sender.publish(room_dest(room), {"content": "missed"})
            # The next thing this client gets is the message after it subscribed again.
            await c.subscribe(room_dest(room), sub_id="second")
            await sender.publish(room_dest(room), {"content": "three"})
            frame, body = await c.expect_message("new_message")
            assert frame.get("subscription") == "second"
            assert body["message"]["content"] == "three"
            # An id that was unsubscribed is unknown now.
            await c.send_frame("UNSUBSCRIBE", {"id": "first", "receipt": "u"})
            await c.expect_error(
                "No subscription found",
                "UNSUBSCRIBE must refer to an existing subscription.\n"
                'Subscription to "first" not found.',
                receipt_id="u",
            )


async def test_a_room_subscribed_twice_gets_one_copy_under_the_newest_id(
    server: Server,
) -> None:
    """RabbitMQ would take a second subscription to the room and send two copies; chatd
    takes it too, but one connection must not multiply a room's messages: one copy comes,
    under the newest live subscription (stompjs dispatches by that header), and the older
    one takes over again when the newest is unsubscribed."""
    with trio.fail_after(10):
        room = await make_room(server, [1])
        dest = room_dest(room)
        async with stomp_user(server, 1) as c:
            await c.subscribe(dest, sub_id="a")
            frames = await c.publish(dest, {"content": "once"})
            assert [f.get("subscription") for f in frames] == ["a"]
            await c.subscribe(dest, sub_id="b", ack="client")
            await c.subscribe(dest, sub_id="c")
            frames = await c.publish(dest, {"content": "newest"})
            assert [(f.get("subscription"), f.get("ack")) for f in frames] == [("c", None)]
            await c.unsubscribe("c")
            frames = await c.publish(dest, {"content": "back to b"})
            # b's own ack mode comes back with it.
            assert [f.get("subscription") for f in frames] == ["b"]
            assert frames[0].get("ack") is not None
            await c.unsubscribe("a")  # shadowed: b stays live
            frames = await c.publish(dest, {"content": "still b"})
            assert [f.get("subscription") for f in frames] == ["b"]
            await c.unsubscribe("b")
            assert await c.publish(dest, {"content": "none"}) == []


async def test_alike_subscriptions_share_a_frame_and_each_gets_its_own_headers(
    server: Server,
) -> None:
    """A MESSAGE is built once per kind of subscription (its id, ack mode, STOMP version
    and framing) and shared by the subscriptions alike; every subscriber still gets a
    frame with its own headers, escaped by its own version, in its own framing."""
    specs: list[tuple[Kind, str, str, str | None]] = [
        ("tcp", "1.2", "sub-0", None),
        ("tcp", "1.2", "sub-0", None),
        ("ws", "1.2", "sub-0", None),
        ("http", "1.2", "sub-0", None),
        ("tcp", "1.2", "sub-1", None),
        ("tcp", "1.2", "sub-0", "client"),
        ("tcp", "1.2", "x:y", None),
        ("tcp", "1.1", "x:y", None),
        ("tcp", "1.0", "x:y", None),
    ]
    with trio.fail_after(15):
        users = list(range(1, len(specs) + 2))
        room = await make_room(server, users)
        async with AsyncExitStack() as stack:
            # Everyone connects before anyone subscribes, so no presence event interleaves.
            sender = await stack.enter_async_context(stomp_user(server, users[-1]))
            clients = []
            for uid, (kind, version, _, _) in zip(users, specs, strict=False):
                versions = {"1.2": "1.2", "1.1": "1.0,1.1", "1.0": None}[version]
                c = await stack.enter_async_context(
                    stomp_user(server, uid, kind, accept_version=versions)
                )
                assert c.version == version
                clients.append(c)
            for c, (_, _, sub_id, ack) in zip(clients, specs, strict=True):
                await c.subscribe(room_dest(room), sub_id=sub_id, ack=ack)
            ids = set()
            for content in ("first", "second"):
                await sender.publish(room_dest(room), {"content": content})
                for c, (kind, _, sub_id, ack) in zip(clients, specs, strict=True):
                    frame, _ = await c.expect_message()
                    body = check_message_frame(frame, sub_id, room, ack=ack is not None)
                    assert body["message"]["content"] == content
                    ids.add(body["message"]["id"])
                    if kind != "tcp":
                        assert set(c.ws_kinds) == {str}
            assert len(ids) == 2


async def test_stomp_10_subscription_without_id(server: Server) -> None:
    """In STOMP 1.0 `id` is optional: the destination stands in for it."""
    with trio.fail_after(10):
        room = await make_room(server, [1])
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            await c.connect(login, passcode, accept_version=None)
            assert c.version == "1.0"
            assert await c.request("SUBSCRIBE", {"destination": room_dest(room)}) == []
            [frame] = await c.publish(room_dest(room), {"content": "old school"})
            assert frame.get("subscription") == room_dest(room)
            assert await c.request("UNSUBSCRIBE", {"destination": room_dest(room)}) == []
            assert await c.publish(room_dest(room), {"content": "gone"}) == []


async def test_user_queue_subscription_own_id(server: Server) -> None:
    with trio.fail_after(10):
        async with stomp_user(server, 4, "ws") as c:
            sub = await c.subscribe(user_dest(4))
            room = await make_room(server, [4], name="new")
            frame, body = await c.expect_message("room_joined")
            assert frame.get("subscription") == sub
            assert frame.get("destination") == user_dest(4)
            assert body["roomId"] == room


# --- ack modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("ack", ["client", "client-individual"])
async def test_ack_modes_on_chat_destinations(server: Server, ack: str) -> None:
    """Chat destinations are fan-out: with a client ack mode the MESSAGE carries an `ack`
    header, and ACK / NACK of it are answered with their receipts."""
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with stomp_user(server, 1) as c:
            await c.subscribe(room_dest(room), sub_id="s", ack=ack)
            for command in ("ACK", "NACK"):
                [frame] = await c.publish(room_dest(room), {"content": command})
                check_message_frame(frame, "s", room, ack=True)
                ack_id = frame.get("ack")
                assert ack_id
                assert await c.request(command, {"id": ack_id}) == []
            # Acknowledging again (already settled) is harmless.
            assert await c.request("ACK", {"id": ack_id}) == []


async def test_auto_ack_has_no_ack_header(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with stomp_user(server, 1) as c:
            await c.subscribe(room_dest(room), sub_id="s", ack="auto")
            [frame] = await c.publish(room_dest(room), {"content": "x"})
            check_message_frame(frame, "s", room)


async def test_stomp_11_ack_uses_message_id(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            await c.connect(login, passcode, accept_version="1.0,1.1")
            assert c.version == "1.1"
            await c.subscribe(room_dest(room), sub_id="s", ack="client")
            [frame] = await c.publish(room_dest(room), {"content": "x"})
            mid = frame.get("message-id")
            assert mid
            assert await c.request("ACK", {"message-id": mid, "subscription": "s"}) == []
            assert await c.request("NACK", {"message-id": mid, "subscription": "s"}) == []
            await c.send_frame("ACK", {"subscription": "s", "receipt": "a"})
            await c.expect_error(
                "Missing header", '"ACK" must include the "message-id" header', receipt_id="a"
            )


# --- transactions ------------------------------------------------------------------------


async def test_transaction_commit_delivers_at_commit(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 1) as sender, stomp_user(server, 2, "http") as sub:
            await sub.subscribe(room_dest(room))
            assert await sender.request("BEGIN", {"transaction": "tx1"}) == []
            for content in ("in tx 1", "in tx 2"):
                await sender.publish(
                    room_dest(room), {"content": content}, headers={"transaction": "tx1"}
                )
            # Not yet: a message outside the transaction overtakes them.
            await sender.publish(room_dest(room), {"content": "outside"})
            _, body = await sub.expect_message("new_message")
            assert body["message"]["content"] == "outside"
            assert [m["content"] for m in await http_history(server, 1, room)] == ["outside"]
            assert await sender.request("COMMIT", {"transaction": "tx1"}) == []
            # The COMMIT's RECEIPT came after both were stored.
            assert [m["content"] for m in await http_history(server, 1, room)] == [
                "outside",
                "in tx 1",
                "in tx 2",
            ]
            for content in ("in tx 1", "in tx 2"):
                _, body = await sub.expect_message("new_message")
                assert body["message"]["content"] == content


async def test_transaction_abort_discards(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 1) as sender, stomp_user(server, 2, "ws") as sub:
            await sub.subscribe(room_dest(room))
            assert await sender.request("BEGIN", {"transaction": "t"}) == []
            await sender.publish(
                room_dest(room), {"content": "never"}, headers={"transaction": "t"}
            )
            assert await sender.request("ABORT", {"transaction": "t"}) == []
            await sender.publish(room_dest(room), {"content": "after abort"})
            _, body = await sub.expect_message("new_message")
            assert body["message"]["content"] == "after abort"
            # The name can be used again once the transaction is over.
            assert await sender.request("BEGIN", {"transaction": "t"}) == []
            await sender.publish(
                room_dest(room), {"content": "again"}, headers={"transaction": "t"}
            )
            assert await sender.request("COMMIT", {"transaction": "t"}) == []
            _, body = await sub.expect_message("new_message")
            assert body["message"]["content"] == "again"
        assert [m["content"] for m in await http_history(server, 1, room)] == [
            "after abort",
            "again",
        ]


async def test_two_transactions_at_once(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with stomp_user(server, 1, rooms=[room]) as c:
            for tx in ("a", "b"):
                assert await c.request("BEGIN", {"transaction": tx}) == []
            await c.publish(room_dest(room), {"content": "a1"}, headers={"transaction": "a"})
            await c.publish(room_dest(room), {"content": "b1"}, headers={"transaction": "b"})
            await c.publish(room_dest(room), {"content": "a2"}, headers={"transaction": "a"})
            frames = await c.request("COMMIT", {"transaction": "b"})
            assert [orjson.loads(f.body)["message"]["content"] for f in frames] == ["b1"]
            frames = await c.request("COMMIT", {"transaction": "a"})
            assert [orjson.loads(f.body)["message"]["content"] for f in frames] == ["a1", "a2"]


# --- receipts and DISCONNECT -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_every_frame_gets_its_receipt(server: Server, kind: Kind) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with stomp_user(server, 1, kind) as c:
            assert (
                await c.request(
                    "SUBSCRIBE",
                    {"destination": room_dest(room), "id": "s", "ack": "client-individual"},
                )
                == []
            )
            [frame] = await c.publish(room_dest(room), {"content": "x"})
            for command, headers in [
                ("ACK", {"id": frame.get("ack") or ""}),
                ("NACK", {"id": frame.get("ack") or ""}),
                ("BEGIN", {"transaction": "t"}),
                ("ACK", {"id": frame.get("ack") or "", "transaction": "t"}),
                ("COMMIT", {"transaction": "t"}),
                ("BEGIN", {"transaction": "u"}),
                ("ABORT", {"transaction": "u"}),
                ("UNSUBSCRIBE", {"id": "s"}),
            ]:
                assert await c.request(command, headers) == [], command
            # Receipt ids are echoed verbatim, escapes included.
            await c.send_frame("BEGIN", {"transaction": "v", "receipt": "a:b\\c\nd"})
            got = await c.next_frame()
            assert (got.command, got.get("receipt-id")) == ("RECEIPT", "a:b\\c\nd")
            await c.disconnect()  # RECEIPT, then the close


async def test_disconnect_without_receipt_closes_and_goes_offline(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as watcher:
            async with stomp_user(server, 1, "ws") as c:
                await c.send_frame("DISCONNECT")
                await c.expect_closed()
            for status in ("online", "offline"):
                _, event = await watcher.expect_message("user_status_changed")
                assert (event["userId"], event["status"]) == (1, status)
