"""STOMP connection set-up over real sockets: version and heart-beat negotiation, the
CONNECTED frame, logins (issued, JWT, guest, expiry, revocation), heart-beats in real
time, and the WebSocket handshake (subprotocols, Origin, text and binary messages)."""

from __future__ import annotations

import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from chatd.stomp import HeartBeat

from .conftest import Server, StartServer
from .stomp_client import (
    KINDS,
    Kind,
    assert_carries_on,
    chatws_connect,
    issue_login,
    make_room,
    next_event_of,
    open_stomp,
    post_json,
    room_dest,
    stomp_user,
    user_dest,
    ws_url,
)

# --- versions and the CONNECTED frame ---------------------------------------------------


@pytest.mark.parametrize(
    ("accept_version", "expected"),
    [
        (None, "1.0"),
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.2", "1.2"),
        ("1.0,1.1", "1.1"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.2,1.0", "1.2"),
        ("1.1, 1.2", "1.2"),
        ("1.1,2.0", "1.1"),
        ("0.9,1.0", "1.0"),
    ],
)
async def test_version_negotiation(
    server: Server, accept_version: str | None, expected: str
) -> None:
    with trio.fail_after(10):
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            frame = await c.connect(login, passcode, accept_version=accept_version)
            assert frame.get("version") == expected
            # The session works in that version: a receipt round trip.
            assert await c.request("SUBSCRIBE", {"destination": user_dest(1), "id": "u"}) == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
async def test_connected_frame(server: Server, kind: Kind, command: str) -> None:
    with trio.fail_after(10):
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server, kind) as c:
            frame = await c.connect(login, passcode, command=command, heart_beat="0,0")
            assert [name for name, _ in frame.headers] == [
                "version",
                "heart-beat",
                "server",
                "session",
            ]
            assert frame.get("version") == "1.2"
            assert frame.get("heart-beat") == "0,0"
            assert frame.get("server") == "chatd/0.1"
            session = frame.get("session") or ""
            assert session.startswith("session-") and len(session) > len("session-") + 8
            assert frame.body == b""
        async with open_stomp(server, kind) as c:
            again = await c.connect(login, passcode)
            assert again.get("session") != session


@pytest.mark.parametrize(
    ("client", "answer"),
    [
        (None, "0,0"),
        ("0,0", "0,0"),
        ("4000,4000", "4000,4000"),  # stompjs's default, the guide's values
        ("10000,10000", "10000,10000"),
        ("100,100", "1000,1000"),  # the server floors both directions at 1000 ms
        ("0,5000", "5000,0"),  # the client only wants to receive: the server sends
        ("3000,0", "0,3000"),  # the client only sends: the server listens
        ("1000,2500", "2500,1000"),
        ("1, 1", "1000,1000"),
    ],
)
async def test_heart_beat_answer(server: Server, client: str | None, answer: str) -> None:
    """The server's CONNECTED `heart-beat` answers the client's: it sends as often as the
    client wants to receive and wants beats as often as the client offers them."""
    with trio.fail_after(10):
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            frame = await c.connect(login, passcode, heart_beat=client)
            assert frame.get("heart-beat") == answer


@pytest.mark.parametrize(
    ("client", "answer"),
    [("100,100", "100,100"), ("50,4000", "4000,100"), ("0,0", "0,0"), ("0,10", "100,0")],
)
async def test_heart_beat_floor_is_configurable(
    start_server: StartServer, client: str, answer: str
) -> None:
    """[stomp] heartbeat_min_ms is the floor of both directions."""
    with trio.fail_after(10):
        server = await start_server(stomp={"heartbeat_min_ms": 100})
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            frame = await c.connect(login, passcode, heart_beat=client)
            assert frame.get("heart-beat") == answer


# --- logins -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_issued_login_works_and_is_reusable(server: Server, kind: Kind) -> None:
    """stompjs reconnects with the same connectHeaders: the pair works again, and for two
    connections at once."""
    with trio.fail_after(10):
        room = await make_room(server, [1])
        login, passcode = await issue_login(server, 1)
        assert login == "chatd-user-1"
        async with open_stomp(server, kind) as a:
            await a.connect(login, passcode)
            async with open_stomp(server, kind) as b:
                await b.connect(login, passcode)
                await b.subscribe(room_dest(room))
            await a.disconnect()
        async with open_stomp(server, kind) as c:
            await c.connect(login, passcode)
            await c.subscribe(room_dest(room))
            [own] = await c.publish(room_dest(room), {"content": "again"})
            assert own.command == "MESSAGE"


async def test_jwt_as_passcode(server: Server) -> None:
    """A passcode that is itself a valid JWT logs in as the token's user, whatever the login."""
    with trio.fail_after(10):
        room = await make_room(server, [7])
        for login in ("anything", None):
            async with open_stomp(server, "http") as c:
                await c.connect(login, server.token(7, "seven"))
                await c.subscribe(room_dest(room))
                await c.subscribe(user_dest(7))
                [own] = await c.publish(room_dest(room), {"content": "by jwt"})
                msg = orjson.loads(own.body)["message"]
                assert msg["sender_id"] == 7 and msg["sender_name"] == "seven"
                await c.disconnect()


async def test_expired_issued_login_is_refused(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(stomp={"login_ttl_seconds": 0.8})
        # Passcodes expire by the wall clock (they outlive restarts); a fake one makes the
        # test independent of how long each request takes on a busy machine.
        now = [1_800_000_000.0]
        server.state.stomp_logins._clock = lambda: now[0]
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            await c.connect(login, passcode)  # fine while fresh
        now[0] += 0.8  # the pair's last instant has passed
        async with open_stomp(server) as c:
            await c.send_connect(login, passcode)
            await c.expect_error("Bad CONNECT", "Access refused for user 'chatd-user-1'")
        # A fresh pair from /chat-ws/connect works again.
        login2, passcode2 = await issue_login(server, 1)
        async with open_stomp(server) as c:
            await c.connect(login2, passcode2)


async def test_issued_login_survives_a_restart(start_server: StartServer) -> None:
    with trio.fail_after(10):
        first = await start_server()
        login, passcode = await issue_login(first, 1)
        await first.stop()
        second = await start_server()
        async with open_stomp(second) as c:
            await c.connect(login, passcode)


async def test_chatws_disconnect_revokes_and_closes_stomp_sessions(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        login, passcode = await issue_login(server, 1)
        async with stomp_user(server, 2, rooms=[room]) as watcher:
            async with open_stomp(server, "tcp") as tcp, open_stomp(server, "ws") as ws:
                await tcp.connect(login, passcode)
                await tcp.subscribe(room_dest(room))
                await ws.connect(login, passcode)
                _, online = await watcher.expect_message("user_status_changed")
                assert (online["userId"], online["status"]) == (1, "online")
                resp = await post_json(server, "/chat-ws/disconnect", 1)
                assert resp.status_code == 200
                assert resp.json() == {"status": "disconnected", "closedSessions": 2}
                for c in (tcp, ws):
                    await c.expect_error("Disconnected by request", "disconnected by request")
            # Presence: the user went offline once, when the last session ended.
            _, offline = await watcher.expect_message("user_status_changed")
            assert (offline["userId"], offline["status"]) == (1, "offline")
            # The old pair is refused from now on ...
            async with open_stomp(server) as c:
                await c.send_connect(login, passcode)
                await c.expect_error("Bad CONNECT", "Access refused for user 'chatd-user-1'")
            # ... while a pair issued afterwards works.
            async with stomp_user(server, 1, rooms=[room]):
                pass
            # The watcher (another user) was never disturbed.
            for status in ("online", "offline"):
                _, event = await watcher.expect_message("user_status_changed")
                assert (event["userId"], event["status"]) == (1, status)
            await assert_carries_on(server, room, watcher, user_id=1)


async def test_revocation_survives_a_restart(start_server: StartServer) -> None:
    with trio.fail_after(10):
        first = await start_server()
        login, passcode = await issue_login(first, 1)
        resp = await post_json(first, "/chat-ws/disconnect", 1)
        assert resp.status_code == 200
        await first.stop()
        second = await start_server()
        async with open_stomp(second) as c:
            await c.send_connect(login, passcode)
            await c.expect_error("Bad CONNECT", "Access refused for user 'chatd-user-1'")


async def test_chatws_disconnect_leaves_other_users_alone(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as other:
            resp = await post_json(server, "/chat-ws/disconnect", 1)
            assert resp.json() == {"status": "disconnected", "closedSessions": 0}
            await assert_carries_on(server, room, other, user_id=1)


async def test_guest_is_refused_by_default(server: Server) -> None:
    with trio.fail_after(10):
        async with open_stomp(server, "ws") as c:
            await c.send_connect("guest", "guest")
            await c.expect_error("Bad CONNECT", "Access refused for user 'guest'")


async def test_anonymous_guest_reads_public_rooms_only(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(stomp={"allow_anonymous": True})
        public = await make_room(server, [1], public=True, name="lobby")
        private = await make_room(server, [1], name="secret")
        async with stomp_user(server, 1) as member:
            async with open_stomp(server, "ws") as guest:
                await guest.connect("guest", "guest")
                await guest.subscribe(room_dest(public))
                await member.publish(room_dest(public), {"content": "welcome"})
                _, body = await next_event_of(guest, "new_message")
                assert body["message"]["content"] == "welcome"
                # A guest may not write, even to the public room.
                await guest.publish(
                    room_dest(public), {"content": "hi"}, receipt=False, headers={"receipt": "g"}
                )
                await guest.expect_error(
                    "Access refused",
                    f"you may not send to {room_dest(public)}",
                    receipt_id="g",
                )
            for dest, message, detail in [
                (
                    room_dest(private),
                    "Not found",
                    f"room {private} does not exist or you are not a member",
                ),
                (user_dest(1), "Access refused", f"you may not read {user_dest(1)}"),
                ("/topic/x", "Bad destination", "destination '/topic/x' is not available"),
            ]:
                async with open_stomp(server) as guest:
                    await guest.connect("guest", "guest")
                    await guest.send_frame(
                        "SUBSCRIBE", {"destination": dest, "id": "1", "receipt": "s"}
                    )
                    await guest.expect_error(message, detail, receipt_id="s")
            # Only guest/guest: a wrong guest passcode is still refused.
            async with open_stomp(server) as guest:
                await guest.send_connect("guest", "wrong")
                await guest.expect_error("Bad CONNECT", "Access refused for user 'guest'")
            # Nothing the guest did was stored, and the member carries on.
            await member.subscribe(room_dest(public))
            [own] = await member.publish(room_dest(public), {"content": "still here"})
            assert own.command == "MESSAGE"
        stored = await server.state.store.history(public, None, 10)
        assert [m.content for m in stored] == ["still here", "welcome"]


# --- heart-beats in real time --------------------------------------------------------------


async def test_server_sends_the_heart_beats_it_owes(start_server: StartServer) -> None:
    """The client wants a beat every 100 ms (the floor is lowered to allow it): the server
    keeps the connection from being silent for longer than that."""
    with trio.fail_after(10):
        server = await start_server(stomp={"heartbeat_min_ms": 100})
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            frame = await c.connect(login, passcode, heart_beat="0,100")
            assert frame.get("heart-beat") == "100,0"
            last = trio.current_time()
            for _ in range(3):
                event = await c.next_event()
                assert isinstance(event, HeartBeat), event
                now = trio.current_time()
                assert now - last <= 0.5, "a gap far longer than the agreed interval"
                last = now
            # Beats are only fillers: the session still works.
            assert await c.request("SUBSCRIBE", {"destination": user_dest(1), "id": "u"}) == []


async def test_default_floor_heart_beats(server: Server) -> None:
    """With the default 1000 ms floor a client asking for 100 ms gets a beat within about
    a second."""
    with trio.fail_after(10):
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            frame = await c.connect(login, passcode, heart_beat="0,100")
            assert frame.get("heart-beat") == "1000,0"
            start = trio.current_time()
            assert isinstance(await c.next_event(), HeartBeat)
            assert trio.current_time() - start <= 1.5


async def test_no_heart_beats_when_none_agreed(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c, stomp_user(server, 2) as other:
            await c.connect(login, passcode, heart_beat="0,0")
            await c.subscribe(room_dest(room))
            await other.publish(room_dest(room), {"content": "next"})
            _, body = await next_event_of(c, "new_message")
            assert c.heartbeats == 0 and body["message"]["content"] == "next"


@pytest.mark.parametrize("kind", ["tcp", "http"])
async def test_silent_client_is_dropped_after_interval_times_tolerance(
    start_server: StartServer, kind: Kind
) -> None:
    with trio.fail_after(10):
        server = await start_server(stomp={"heartbeat_min_ms": 100, "heartbeat_tolerance": 3.0})
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as watcher:
            login, passcode = await issue_login(server, 1)
            async with open_stomp(server, kind) as c:
                frame = await c.connect(login, passcode, heart_beat="100,0")
                assert frame.get("heart-beat") == "0,100"
                start = trio.current_time()
                # No ERROR frame (as RabbitMQ): the connection just ends, after 3 x 100 ms.
                await c.expect_closed()
                elapsed = trio.current_time() - start
                assert 0.25 <= elapsed <= 3.0, elapsed
            for status in ("online", "offline"):
                _, event = await watcher.expect_message("user_status_changed")
                assert (event["userId"], event["status"]) == (1, status)
            await assert_carries_on(server, room, watcher, user_id=1)


@pytest.mark.parametrize("kind", ["tcp", "http"])
async def test_a_client_that_beats_stays_connected(start_server: StartServer, kind: Kind) -> None:
    """Over WebSocket each beat is a one-byte message, as stompjs sends it."""
    with trio.fail_after(10):
        server = await start_server(stomp={"heartbeat_min_ms": 200, "heartbeat_tolerance": 2.0})
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server, kind) as c:
            frame = await c.connect(login, passcode, heart_beat="100,0")
            assert frame.get("heart-beat") == "0,200"
            deadline = trio.current_time() + 1.2  # three times the allowed silence
            while trio.current_time() < deadline:
                await c.heartbeat()
                await trio.sleep(0.05)
            assert await c.request("SUBSCRIBE", {"destination": user_dest(1), "id": "u"}) == []


# --- the WebSocket handshake ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ws", "http"])
@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["v10.stomp", "v11.stomp", "v12.stomp"], "v12.stomp"),
        (["v12.stomp", "v11.stomp", "v10.stomp"], "v12.stomp"),
        (["v10.stomp", "v11.stomp"], "v11.stomp"),
        (["v10.stomp"], "v10.stomp"),
        (["mqtt", "v11.stomp"], "v11.stomp"),
        (["mqtt"], None),
        ([], None),
        (None, None),
    ],
)
async def test_subprotocols(
    server: Server, kind: Kind, offered: list[str] | None, chosen: str | None
) -> None:
    with trio.fail_after(10):
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server, kind, subprotocols=offered) as c:
            assert c.ws.subprotocol == chosen
            await c.connect(login, passcode)
            assert await c.request("SUBSCRIBE", {"destination": user_dest(1), "id": "u"}) == []


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_origin_not_allowed_is_403_at_the_handshake(server: Server, kind: Kind) -> None:
    with trio.fail_after(10):
        with pytest.raises(ConnectionRejected) as info:
            async with open_stomp(server, kind, origin="http://evil.example"):
                pass
        assert info.value.status_code == 403
        assert info.value.body is not None and b"origin_not_allowed" in info.value.body
        assert server.state.metrics.auth_failures["origin"] == 1
        # An allowed Origin (and no Origin at all, as native apps send) is accepted.
        login, passcode = await issue_login(server, 1)
        for origin in ("http://allowed.example", None):
            async with open_stomp(server, kind, origin=origin) as c:
                await c.connect(login, passcode)


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_other_paths_are_404(server: Server, kind: Kind) -> None:
    with trio.fail_after(10):
        url = ws_url(server, kind).replace("/ws", "/stomp")
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url, subprotocols=["v12.stomp"]):
                pass
        assert info.value.status_code == 404


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_binary_messages_and_one_byte_heart_beats_are_accepted(
    server: Server, kind: Kind
) -> None:
    """Clients may send binary messages (and beats as lone one-byte messages); the server
    answers in TEXT messages, since its frames here are UTF-8."""
    with trio.fail_after(10):
        room = await make_room(server, [1])
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server, kind, binary=True) as c:
            await c.heartbeat()  # a beat before CONNECT is fine too
            await c.connect(login, passcode, heart_beat="4000,4000")
            await c.heartbeat()
            await c.subscribe(room_dest(room))
            await c.heartbeat()
            [own] = await c.publish(room_dest(room), {"content": "bin"})
            assert own.command == "MESSAGE"
            assert c.ws_kinds and set(c.ws_kinds) == {str}


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_frames_may_span_websocket_messages(server: Server, kind: Kind) -> None:
    """One STOMP frame per message is the norm, but split or batched frames still parse."""
    with trio.fail_after(10):
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server, kind) as c:
            await c.connect(login, passcode)
            frame = b"SUBSCRIBE\ndestination:" + user_dest(1).encode() + b"\nid:u\nreceipt:a\n\n\0"
            await c.send_raw(frame[:10])
            await c.send_raw(frame[10:])
            got = await c.next_frame()
            assert (got.command, got.get("receipt-id")) == ("RECEIPT", "a")
            two = b"UNSUBSCRIBE\nid:u\nreceipt:b\n\n\0" + b"BEGIN\ntransaction:t\nreceipt:c\n\n\0"
            await c.send_raw(two)
            for rid in ("b", "c"):
                got = await c.next_frame()
                assert (got.command, got.get("receipt-id")) == ("RECEIPT", rid)


async def test_connect_response_subscriptions_work_as_the_guide_uses_them(server: Server) -> None:
    """The React Native flow: POST /chat-ws/connect, then CONNECT with its connectionInfo
    (login, passcode, host = vhost) and subscribe to every listed destination."""
    with trio.fail_after(10):
        rooms = [await make_room(server, [1, 2], name=f"r{i}") for i in range(3)]
        info = await chatws_connect(server, 1)
        ci = info["connectionInfo"]
        async with open_stomp(server, "ws") as c, stomp_user(server, 2) as other:
            await c.connect(
                ci["username"], ci["password"], host=ci["vhost"], heart_beat="4000,4000"
            )
            for sub in info["subscriptions"]:
                await c.subscribe(sub["destination"])
            await c.subscribe(info["userDestination"])
            for room in rooms:
                await other.publish(room_dest(room), {"content": f"to {room}"})
                _, body = await next_event_of(c, "new_message")
                assert body["message"]["content"] == f"to {room}"


async def test_connect_response_vhost_is_one_the_server_accepts(
    start_server: StartServer,
) -> None:
    """With [stomp] vhosts set, /chat-ws/connect hands out one the server accepts, so the
    guide's client (host = connectionInfo.vhost) gets in."""
    with trio.fail_after(10):
        server = await start_server(stomp={"vhosts": ["chat"]})
        ci = (await chatws_connect(server, 1))["connectionInfo"]
        assert ci["vhost"] == "chat"
        async with open_stomp(server) as c:
            await c.connect(ci["username"], ci["password"], host=ci["vhost"])


async def test_crlf_line_ends_and_repeated_headers(server: Server) -> None:
    """CRLF line ends are accepted, and of a repeated header the first one wins."""
    with trio.fail_after(10):
        mine = await make_room(server, [1])
        also_mine = await make_room(server, [1])
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            await c.send_raw(
                b"CONNECT\r\naccept-version:1.2\r\nhost:/\r\nlogin:%s\r\npasscode:%s\r\n\r\n\0"
                % (login.encode(), passcode.encode())
            )
            frame = await c.next_frame()
            assert frame.command == "CONNECTED" and frame.get("version") == "1.2"
            await c.send_raw(
                b"SUBSCRIBE\r\ndestination:%s\r\ndestination:%s\r\nid:s\r\nid:t\r\n"
                b"receipt:r1\r\nreceipt:r2\r\n\r\n\0"
                % (room_dest(mine).encode(), user_dest(2).encode())
            )
            frame = await c.next_frame()
            assert (frame.command, frame.get("receipt-id")) == ("RECEIPT", "r1")
            body = b'{"content":"first wins"}'
            await c.send_raw(
                b"SEND\r\ndestination:%s\r\ndestination:%s\r\ncontent-length:%d\r\n"
                b"content-length:1\r\nreceipt:r3\r\n\r\n%s\0"
                % (room_dest(mine).encode(), room_dest(also_mine).encode(), len(body), body)
            )
            frame = await c.next_frame()
            assert frame.command == "MESSAGE" and frame.get("subscription") == "s"
            assert orjson.loads(frame.body)["message"]["content"] == "first wins"
            frame = await c.next_frame()
            assert (frame.command, frame.get("receipt-id")) == ("RECEIPT", "r3")
        assert [m.content for m in await server.state.store.history(mine, None, 5)] == [
            "first wins"
        ]
        assert await server.state.store.history(also_mine, None, 5) == []
