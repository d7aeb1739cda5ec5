"""A cluster of three nodes on a private PostgreSQL and RabbitMQ, with real clients on
both protocols: what must hold across nodes (issue 16). Every wait has a timeout."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from ._chat import (
    add_member,
    chat,
    chat_url,
    create_room,
    expect_close,
    history,
    new_ticket,
    recv_message,
    remove_member,
    roundtrip,
    send,
)
from .cluster import StartCluster, start_cluster  # noqa: F401 (fixture)
from .conftest import Server
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import rabbit_instance, rabbit_url  # noqa: F401 (fixtures)
from .stomp_client import (
    bearer,
    issue_login,
    next_event_of,
    open_stomp,
    post_json,
    room_dest,
    stomp_user,
)

BARRIER_USER = 999


async def http_send(node: Server, user_id: int, room: int, content: str) -> Any:
    """POST /chat-ws/send-message as the STOMP guide's app does."""
    return await post_json(
        node, "/chat-ws/send-message", user_id, {"roomId": room, "message": {"content": content}}
    )


async def barrier(src: Server, dst: Server) -> None:
    """Returns once `dst` has applied everything `src` published before the call: a
    message `src` stores reaches a client on `dst` after them (one publisher's traffic
    keeps its order on the bus)."""
    rooms = [r.id for r in src.state.rooms.all() if r.name == "barrier"]
    room = rooms[0] if rooms else await create_room(src, [BARRIER_USER], name="barrier")
    async with chat(dst, BARRIER_USER) as ws:
        reply = await http_send(src, BARRIER_USER, room, "barrier")
        assert reply.status_code == 200, reply.text
        while (await recv_message(ws))["content"] != "barrier":
            pass


async def test_a_message_sent_to_any_node_reaches_every_subscriber_on_both_protocols(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(60):
        n1, n2, n3 = await start_cluster(3)
        room = await create_room(n1, [1, 2, 3])
        async with (
            chat(n1, 1) as alice,
            chat(n2, 2) as bob,
            stomp_user(n3, 3, "ws", rooms=[room]) as carol,
        ):
            sent = await roundtrip(alice, room, "from n1 over /chat")
            assert await recv_message(bob) == sent
            _, event = await next_event_of(carol, "new_message")
            assert event["message"]["id"] == sent["id"]
            assert event["message"]["content"] == "from n1 over /chat"

            reply = await http_send(n3, 3, room, "from n3 over HTTP")
            assert reply.status_code == 200, reply.text
            from_http = await recv_message(alice)
            assert from_http["content"] == "from n3 over HTTP"
            assert await recv_message(bob) == from_http
            _, event = await next_event_of(carol, "new_message")
            assert event["message"]["id"] == from_http["id"] > sent["id"]

            await carol.publish(room_dest(room), {"content": "from n3 over STOMP"})
            from_stomp = await recv_message(alice)
            assert from_stomp["content"] == "from n3 over STOMP"
            assert await recv_message(bob) == from_stomp
        # Stored once, the same history from every node.
        stored = [await history(node, 1, room) for node in (n1, n2, n3)]
        assert stored[0] == stored[1] == stored[2]
        assert [m["content"] for m in stored[0]] == [
            "from n1 over /chat",
            "from n3 over HTTP",
            "from n3 over STOMP",
        ]
        # Resume with `since` against another node.
        async with chat(n3, 2, since=sent["id"]) as resumed:
            assert [await recv_message(resumed) for _ in range(2)] == stored[0][1:]
        # Each node's view of the bus, for the operator.
        await barrier(n2, n1)
        await barrier(n3, n1)
        host, port = n1.running.metrics[0]
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://{host}:{port}/metrics")).text
        got = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert got["chatd_bus_connected"] == 1
        assert got["chatd_bus_nodes"] == 2
        assert got["chatd_bus_received_total"] > 0 and got["chatd_bus_published_total"] > 0
        assert 0 < got["chatd_bus_frames_total"] <= got["chatd_bus_published_total"]
        assert got["chatd_bus_dropped_total"] == 0
        assert got["chatd_bus_forged_total"] == 0  # every frame signed with the cluster's key
        assert got["chatd_bus_oversized_total"] == got["chatd_bus_missed_total"] == 0


async def test_concurrent_senders_on_every_node_every_client_sees_one_gapless_order(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    per_sender = 40
    with trio.fail_after(120):
        nodes = await start_cluster(3)
        room = await create_room(nodes[0], [1, 2, 3, 4, 5, 6])
        async with (
            chat(nodes[0], 4) as r1,
            chat(nodes[1], 5) as r2,
            stomp_user(nodes[2], 6, "tcp", rooms=[room]) as r3,
        ):
            async with trio.open_nursery() as senders:
                for i, node in enumerate(nodes):

                    async def sender(node: object = node, uid: int = i + 1) -> None:
                        async with chat(node, uid) as ws:  # type: ignore[arg-type]
                            for k in range(per_sender):
                                await send(ws, room, f"u{uid} #{k}")
                            for _ in range(per_sender):
                                await recv_message(ws)

                    senders.start_soon(sender)
            total = per_sender * 3
            seen1 = [(await recv_message(r1))["id"] for _ in range(total)]
            seen2 = [(await recv_message(r2))["id"] for _ in range(total)]
            seen3 = []
            for _ in range(total):
                _, event = await next_event_of(r3, "new_message")
                seen3.append(event["message"]["id"])
        stored = [m["id"] for m in await history(nodes[1], 1, room)]
        assert len(stored) == total
        assert seen1 == seen2 == seen3 == stored == sorted(stored)


async def test_rooms_and_memberships_changed_on_one_node_hold_at_once_on_the_others(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(60):
        n1, n2, n3 = await start_cluster(3)
        async with stomp_user(n2, 2, "tcp", user_queue=True) as bob:
            room = await create_room(n1, [1], name="made on n1")
            await add_member(n1, room, 2)
            _, joined = await next_event_of(bob, "room_joined")
            assert joined["roomId"] == room
            # n2 knows at once: bob's subscription there is allowed, and hears n3's sends.
            await bob.subscribe(room_dest(room))
            async with chat(n3, 1) as alice:
                sent = await roundtrip(alice, room, "hello bob")
                _, event = await next_event_of(bob, "new_message")
                assert event["message"]["id"] == sent["id"]
                # Removed on n3: bob's subscription on n2 ends, as on one node.
                await remove_member(n3, room, 2)
                _, removed = await next_event_of(bob, "room_removed")
                assert removed["roomId"] == room
                await roundtrip(alice, room, "bob is gone")
            refused = await http_send(n2, 2, room, "still here?")
            assert refused.status_code == 404
            # Renamed and deleted through another node: every node agrees.
            async with n2.client() as http:
                patched = await http.patch(
                    f"/admin/rooms/{room}", json={"name": "renamed"},
                    headers=bearer(n2.admin_token()),
                )  # fmt: skip
                assert patched.status_code == 200, patched.text
            # Within a bus round trip: what n2 published before reaches n1 and n3 first.
            await barrier(n2, n1)
            await barrier(n2, n3)
            assert n1.state.rooms.get(room).name == "renamed"
            assert n3.state.rooms.get(room).name == "renamed"
            async with n3.client() as http:
                deleted = await http.delete(
                    f"/admin/rooms/{room}", headers=bearer(n3.admin_token())
                )
                assert deleted.status_code in (200, 204), deleted.text
            await barrier(n3, n1)
            await barrier(n3, n2)
            assert n1.state.rooms.get(room) is None and n2.state.rooms.get(room) is None


async def test_a_ticket_from_one_node_is_good_once_at_any_node(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(60):
        n1, n2, n3 = await start_cluster(3)
        room = await create_room(n1, [1])
        ticket = await new_ticket(n1, 1)
        async with open_websocket_url(chat_url(n2, ticket)) as ws:
            await roundtrip(ws, room, "redeemed at n2")
        async with open_websocket_url(chat_url(n3, ticket)) as again:
            reason = await expect_close(again)
        assert (reason.code, reason.reason) == (1003, "ticket used")
        async with open_websocket_url(chat_url(n3, "no-such-ticket")) as unknown:
            assert (await expect_close(unknown)).code == 1003


async def test_stomp_logins_revocations_and_disconnects_hold_cluster_wide(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(60):
        n1, n2, n3 = await start_cluster(3)
        room = await create_room(n1, [1, 2])
        login, passcode = await issue_login(n1, 1)
        async with open_stomp(n2) as c:
            await c.connect(login, passcode)  # issued by n1, accepted by n2
            async with chat(n3, 1) as chat_session:
                # The user's own logout at n3: the /chat session on n3 and STOMP on n2 end,
                # and the answer counts both.
                out = await post_json(n3, "/chat-ws/disconnect", 1)
                assert out.status_code == 200
                assert out.json()["closedSessions"] == 2
                assert (await expect_close(chat_session)).code == 1000
            await c.expect_error("Disconnected by request", "disconnected by request")
        async with open_stomp(n1) as c:
            await c.send_connect(login, passcode)
            await c.expect_error("Bad CONNECT", f"Access refused for user '{login}'")
        # An admin's disconnect with revokeTokens at n1: sessions on n2 and n3 end, and
        # the tokens issued before are refused by every node.
        token = n2.token(2)
        async with chat(n2, 2) as on_n2, stomp_user(n3, 2, rooms=[room]) as on_n3:
            async with n1.client() as http:
                resp = await http.post(
                    "/admin/users/2/disconnect", json={"revokeTokens": True},
                    headers=bearer(n1.admin_token()),
                )  # fmt: skip
                assert resp.status_code == 200, resp.text
                assert resp.json()["closed"] == 2
            assert (await expect_close(on_n2)).code == 4003
            await on_n3.expect_error(
                "Disconnected by an administrator", "disconnected by an administrator"
            )
        async with n3.client() as http:
            refused = await http.post("/chat/ticket", headers={"accessToken": token})
        assert refused.status_code == 401


async def test_presence_typing_and_read_marks_hold_cluster_wide(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(60):
        n1, n2, n3 = await start_cluster(3)
        room = await create_room(n1, [1, 2, 3])
        async with stomp_user(n3, 3, rooms=[room]) as watcher:
            async with chat(n1, 1) as phone:
                _, online = await next_event_of(watcher, "user_status_changed", skip=())
                assert (online["userId"], online["status"]) == (1, "online")
                async with chat(n2, 1) as laptop:
                    await roundtrip(laptop, room, "from the laptop")
                    _, msg = await next_event_of(watcher, "new_message", skip=())
                    assert msg["message"]["content"] == "from the laptop"
                    await recv_message(phone)
                # The laptop's session closed; the phone's on n1 remains: still online.
                typing = await post_json(n1, "/chat-ws/typing-start", 1, {"roomId": room})
                assert typing.status_code == 200, typing.text
                _, typed = await next_event_of(watcher, "user_typing", skip=())
                assert (typed["userId"], typed["isTyping"]) == (1, True)
                read = await post_json(
                    n2, "/chat-ws/read", 1, {"roomId": room, "messageId": msg["message"]["id"]}
                )
                assert read.status_code == 200, read.text
                _, marked = await next_event_of(watcher, "message_read", skip=("user_typing",))
                assert marked["readerId"] == 1
            _, offline = await next_event_of(watcher, "user_status_changed", skip=("user_typing",))
            assert (offline["userId"], offline["status"]) == (1, "offline")


async def test_two_nodes_given_one_name_are_reported_and_still_hear_each_other(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(60):
        (first,) = await start_cluster(1)
        second = await start_cluster.node("n1")  # the operator copied the config as is
        room = await create_room(first, [1, 2])
        async with chat(first, 1) as alice, chat(second, 2) as bob:
            sent = await roundtrip(alice, room, "still delivered")
            assert await recv_message(bob) == sent
    assert any("also named n1" in r.getMessage() for r in caplog.records)
