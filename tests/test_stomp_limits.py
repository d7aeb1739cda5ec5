"""The bounds one STOMP client meets, over real sockets: the small frame before login (TCP
and WebSocket), connections not yet logged in, subscriptions (how many, and one message
once per destination however many subscribe to it), transactions (bytes held, time open),
and numbers in headers. Each limit reached is an ERROR frame (or WebSocket close 1009) the
client can read, never memory held, and the server and the other clients carry on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from chatd import config as config_mod

from .conftest import Server, StartServer
from .stomp_client import (
    Kind,
    assert_carries_on,
    chatws_connect,
    issue_login,
    make_room,
    open_stomp,
    room_dest,
    stomp_user,
)

BROKER = {"broker_enabled": True, "broker_destinations": ["/queue/*", "/topic/*"]}


async def until(condition: Callable[[], bool]) -> None:
    """Until the server, in this process, reaches `condition`: each round lets every other
    task run until all are blocked (the caller's fail_after bounds it), never a sleep."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked()


async def started(start_server: StartServer, **stomp: Any) -> tuple[Server, int]:
    server = await start_server(stomp=stomp)
    return server, await make_room(server, [1, 2], name="limits")


# --- 1. before the login is accepted ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "ws", "http"])
async def test_a_frame_before_login_is_bounded_by_max_connect_frame_bytes(
    start_server: StartServer, kind: Kind
) -> None:
    server, room = await started(start_server, max_connect_frame_bytes=1024, **BROKER)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with open_stomp(server, kind, binary=True) as c:
                # A CONNECT that never ends (no blank line, no NUL), over the limit but
                # within the WebSocket message limit (1024 + 1024).
                await c.send_raw(b"CONNECT\naccept-version:1.2\nlogin:" + b"x" * 1500)
                await c.expect_error(
                    "Frame too large", "Frame exceeds the maximum frame size of 1024 bytes"
                )
            await assert_carries_on(server, room, bystander)


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_a_websocket_message_before_login_is_bounded_too(
    start_server: StartServer, kind: Kind
) -> None:
    """The WebSocket layer holds a whole message before STOMP reads it: before login it
    takes no more than the pre-login frame size plus 1024 bytes (close 1009)."""
    server, room = await started(start_server, max_connect_frame_bytes=1024)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with open_stomp(server, kind, binary=True) as c:
                await c.send_raw(b"CONNECT\naccept-version:1.2\nlogin:" + b"x" * 3000)
                await c.expect_closed()
                assert c.ws.closed is not None and c.ws.closed.code == 1009
            await assert_carries_on(server, room, bystander, kind=kind)


@pytest.mark.parametrize("kind", ["tcp", "ws", "http"])
async def test_after_login_frames_up_to_max_frame_bytes_pass(
    start_server: StartServer, kind: Kind
) -> None:
    server, _ = await started(start_server, max_connect_frame_bytes=1024, **BROKER)
    body = b"b" * 30000
    with trio.fail_after(10):
        async with stomp_user(server, 2, kind) as consumer, stomp_user(server, 1, kind) as c:
            await consumer.subscribe("/queue/big", "q")
            await c.publish("/queue/big", body)
            frame = await consumer.next_frame()
            assert frame.command == "MESSAGE" and frame.body == body


async def test_a_connect_with_a_jwt_passcode_fits_the_default(start_server: StartServer) -> None:
    server, room = await started(start_server)
    # Claims make the token about 2 KB, as an identity provider's may be.
    token = server.token(1, email="a" * 900 + "@example.org", profile_image="p" * 900)
    assert len(token) > 2000
    with trio.fail_after(10):
        async with open_stomp(server, "ws") as c:
            await c.connect("user1", token)
            await c.subscribe(room_dest(room))


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_connections_not_logged_in_are_bounded(start_server: StartServer, kind: Kind) -> None:
    server, room = await started(start_server, max_unauthenticated_connections=2)
    unconnected = server.state.unconnected
    with trio.fail_after(10):
        async with (
            stomp_user(server, 2, rooms=[room]) as bystander,  # logged in: not counted
            open_stomp(server, "tcp") as a,
            open_stomp(server, "http") as b,
        ):
            await until(lambda: len(unconnected) == 2)
            async with open_stomp(server, kind) as c:
                await c.expect_error(
                    "Too many connections",
                    "node limit (2) of connections not yet logged in is reached; try again later",
                )
            # The two waiting ones were not disturbed: one logs in, and frees a place.
            login, passcode = await issue_login(server, 1)
            await a.connect(login, passcode)
            assert len(unconnected) == 1
            await assert_carries_on(server, room, bystander)
            await b.connect(login, passcode)
            await b.subscribe(room_dest(room))


# --- 5. subscriptions ------------------------------------------------------------------------


async def test_many_subscriptions_to_one_room_deliver_each_message_once(
    start_server: StartServer,
) -> None:
    """One connection cannot multiply a room's messages: 200 SUBSCRIBEs to the room are
    all taken (the STOMP guide's joinRoom() subscribes to rooms already subscribed), and
    five messages are five frames, under the newest subscription."""
    server, room = await started(start_server)
    dest = room_dest(room)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1, rooms=[room]) as c:
                for i in range(200):
                    await c.send_frame("SUBSCRIBE", {"destination": dest, "id": f"d{i}"})
                await c.subscribe(dest, "newest")
                frames = []
                for n in range(5):
                    frames += await c.publish(dest, {"content": f"m{n}"})
                assert [f.get("subscription") for f in frames] == ["newest"] * 5
            seen: list[str] = []
            while len(seen) < 5:
                _, body = await bystander.expect_message()
                if body["type"] == "new_message":  # not the presence events
                    seen.append(body["message"]["content"])
            assert seen == [f"m{n}" for n in range(5)]
            await assert_carries_on(server, room, bystander)


async def test_a_broker_destination_subscribed_twice_delivers_once(
    start_server: StartServer,
) -> None:
    """The same rule for the general broker: a topic subscribed twice gets one copy, under
    the newest id; a queue's unacknowledged message goes to the newest subscription."""
    server, room = await started(start_server, **BROKER)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1) as c:
                await c.subscribe("/topic/t", "t1")
                await c.subscribe("/topic/t", "t2")
                frames = await c.publish("/topic/t", b"one")
                assert [(f.get("subscription"), f.body) for f in frames] == [("t2", b"one")]
                await c.unsubscribe("t2")
                frames = await c.publish("/topic/t", b"two")
                assert [(f.get("subscription"), f.body) for f in frames] == [("t1", b"two")]

                await c.subscribe("/queue/q", "q1", ack="client")
                [first] = await c.publish("/queue/q", b"work")
                assert (first.get("subscription"), first.get("redelivered")) == ("q1", "false")
                # q2 shadows q1: what q1 held unacknowledged goes back to the queue, to q2.
                [again] = await c.request("SUBSCRIBE", {"destination": "/queue/q", "id": "q2"})
                assert (again.command, again.get("subscription"), again.body) == (
                    "MESSAGE",
                    "q2",
                    b"work",
                )
                assert again.get("redelivered") == "true"
            await assert_carries_on(server, room, bystander)


async def test_subscriptions_per_connection_count_chat_and_broker_alike(
    start_server: StartServer,
) -> None:
    server, room = await started(start_server, max_subscriptions=3, **BROKER)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1, rooms=[room], user_queue=True) as c:
                await c.subscribe("/topic/a", "a")
                await c.send_frame("SUBSCRIBE", {"destination": "/topic/b", "id": "b"})
                await c.expect_error(
                    "Too many subscriptions",
                    "reached maximum (3) of subscriptions per connection",
                )
            await assert_carries_on(server, room, bystander)


async def test_what_chat_ws_connect_hands_out_always_fits(start_server: StartServer) -> None:
    """A user in more rooms than max_subscriptions may still hold one subscription per
    room and the user destination, and no more."""
    server, _ = await started(start_server, max_subscriptions=2)
    for i in range(4):
        await make_room(server, [1], name=f"mine {i}")
    elsewhere = await make_room(server, [2], name="not mine")
    info = await chatws_connect(server, 1)
    dests = [s["destination"] for s in info["subscriptions"]] + [info["userDestination"]]
    assert len(dests) == 6  # the shared room, four more, the user destination
    with trio.fail_after(10):
        async with open_stomp(server) as c:
            await c.connect(info["connectionInfo"]["username"], info["connectionInfo"]["password"])
            for i, dest in enumerate(dests):
                await c.subscribe(dest, f"s{i}")
            await c.send_frame("SUBSCRIBE", {"destination": room_dest(elsewhere), "id": "x"})
            await c.expect_error(
                "Too many subscriptions", "reached maximum (6) of subscriptions per connection"
            )


# --- 3. transactions -------------------------------------------------------------------------


async def test_a_transaction_is_bounded_in_bytes_when_each_send_arrives(
    start_server: StartServer,
) -> None:
    server, room = await started(start_server, max_transaction_bytes=20000)
    content = "x" * 3000
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1) as c:
                assert await c.request("BEGIN", {"transaction": "t"}) == []
                for n in range(1, 20):
                    headers = {"destination": room_dest(room), "transaction": "t"}
                    body = b'{"content":"%s"}' % content.encode()
                    await c.send_frame("SEND", {**headers, "receipt": f"s{n}"}, body)
                    frame = await c.next_frame()
                    if frame.command == "ERROR":
                        break
                    assert frame.command == "RECEIPT" and frame.get("receipt-id") == f"s{n}"
                assert frame.command == "ERROR", "20 SENDs of 3 KB held in 20,000 bytes"
                assert 4 <= n <= 7, n  # about 3,300 bytes each as held
                assert frame.get("message") == "Transaction too large"
                assert frame.get("receipt-id") == f"s{n}"
                assert frame.body.decode().startswith(
                    "the open transactions of a connection may hold at most 20000 bytes; "
                    "SEND to transaction 't' would hold "
                )
                await c.expect_closed()
            await assert_carries_on(server, room, bystander)
    # Nothing of the transaction was stored.
    stored = await server.state.store.history(room, None, 50)
    assert [m.content.startswith("carry on") for m in stored] == [True]


async def test_a_transaction_open_too_long_ends_the_session(start_server: StartServer) -> None:
    server, room = await started(start_server, transaction_timeout_seconds=0.5)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1) as c:
                assert await c.request("BEGIN", {"transaction": "slow"}) == []
                tx = {"transaction": "slow"}
                await c.publish(room_dest(room), {"content": "held"}, receipt=False, headers=tx)
                # Whether the timer fires first or the SEND arrives late, the same ERROR.
                await c.expect_error(
                    "Transaction timed out", "transaction 'slow' was open longer than 0.5 seconds"
                )
            await assert_carries_on(server, room, bystander)
    stored = await server.state.store.history(room, None, 50)
    assert [m.content for m in stored if m.content == "held"] == []


# --- 10. numbers in headers --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "١", "-1", "+1", " 1", "65536", "9" * 5000])
async def test_a_bad_prefetch_count_is_an_error_frame(
    start_server: StartServer, value: str
) -> None:
    server, room = await started(start_server, **BROKER)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1) as c:
                await c.send_frame(
                    "SUBSCRIBE",
                    {"destination": "/queue/q", "id": "q", "prefetch-count": value},
                )
                await c.expect_error(
                    "Bad prefetch-count",
                    f"prefetch-count must be a whole number from 0 to 65535: {value[:40]!r}",
                )
            await assert_carries_on(server, room, bystander)


async def test_a_prefetch_count_still_limits_unacknowledged_messages(
    start_server: StartServer,
) -> None:
    server, _ = await started(start_server, **BROKER)
    with trio.fail_after(10):
        async with stomp_user(server, 1) as producer, stomp_user(server, 2) as consumer:
            assert (
                await consumer.request(
                    "SUBSCRIBE",
                    {
                        "destination": "/queue/p",
                        "id": "p",
                        "ack": "client-individual",
                        "prefetch-count": "0001",
                    },
                )
                == []
            )
            for body in (b"one", b"two"):
                await producer.publish("/queue/p", body)
            first = await consumer.next_frame()
            assert first.body == b"one"
            # Both were published (the producer's RECEIPTs came): the second waits for
            # the ACK of the first, and comes with it.
            assert await consumer.request("BEGIN", {"transaction": "x"}) == []
            [second] = await consumer.request("ACK", {"id": first.get("ack") or ""})
            assert second.command == "MESSAGE" and second.body == b"two"


@pytest.mark.parametrize("value", ["²,0", "0,²", "١,١", "1" * 5000 + ",0", "1,1,"])
async def test_a_bad_heart_beat_before_login_is_an_error_frame(
    start_server: StartServer, value: str
) -> None:
    server, room = await started(start_server)
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with open_stomp(server) as c:
                await c.send_frame("CONNECT", {"accept-version": "1.2", "heart-beat": value})
                await c.expect_error(
                    "Invalid heart-beat header", f"heart-beat must be 'cx,cy', got {value!r}"
                )
            await assert_carries_on(server, room, bystander)


# --- config: every limit is a key, validated ---------------------------------------------------

LIMIT_KEYS = [
    "max_connect_frame_bytes",
    "max_unauthenticated_connections",
    "max_subscriptions",
    "max_transaction_bytes",
    "transaction_timeout_seconds",
]


@pytest.mark.parametrize("key", LIMIT_KEYS)
@pytest.mark.parametrize("value", [0, -1, "many"])
def test_limits_are_validated_config_keys(key: str, value: object) -> None:
    with pytest.raises(config_mod.ConfigError, match=f"stomp.{key}: expected"):
        config_mod.from_mapping({"stomp": {key: value}}, env={})
    env = {f"CHATD_STOMP_{key.upper()}": "7"}
    assert getattr(config_mod.from_mapping({}, env=env).stomp, key) == 7
