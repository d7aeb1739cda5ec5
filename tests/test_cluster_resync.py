"""A node's resync (rooms and members reloaded from the store after a node joined the bus)
and the control messages that arrive while it reads: what they changed must survive the
reload. Private services (tests/pg_instance.py, tests/rabbitmq_instance.py); every wait
has a timeout."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from chatd.cluster import bus

from ._chat import admin_headers, chat, create_room, expect_close, recv_message, roundtrip
from .cluster import StartCluster, start_cluster  # noqa: F401 (fixture)
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import rabbit_instance, rabbit_url  # noqa: F401 (fixtures)
from .stomp_client import bearer, next_event_of, post_json, stomp_user


def held_off_the_bus(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[trio.Event, trio.Event, trio.Event]:
    """Once the node's link is closed it cannot get back on the bus until `back` is set;
    `retrying` says it tried, `resynced` that it reloaded from the store once back."""
    retrying, back, resynced = trio.Event(), trio.Event(), trio.Event()
    real_open = bus.Link.open

    async def gated_open(*args: Any) -> Any:
        retrying.set()
        await back.wait()
        return await real_open(*args)

    monkeypatch.setattr(bus.Link, "open", gated_open)
    real_resync = cluster.on_resync

    async def resync_and_say() -> None:
        after_return = back.is_set()  # not one left over from the start
        await real_resync()
        if after_return:
            resynced.set()

    cluster.on_resync = resync_and_say
    return retrying, back, resynced


async def test_a_room_created_while_a_node_reloads_rooms_is_kept_there(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        store = n2.state.store
        real_rooms = store.rooms
        read, go = trio.Event(), trio.Event()

        async def slow_rooms() -> Any:
            # The store's answer as of now, handed over only once the test says so: the
            # read of a busy database, during which the bus goes on.
            rows = await real_rooms()
            read.set()
            await go.wait()
            return rows

        store.rooms = slow_rooms
        try:
            async with stomp_user(n2, 2, user_queue=True) as watcher:
                n1.state.cluster.publish_control({"op": "resync"})  # as when a node joins
                await read.wait()
                room = await create_room(n1, [1, 2], name="new")
                # n2 applied room_created: what n1 published after it has come.
                _, joined = await next_event_of(watcher, "room_joined")
                assert joined["roomId"] == room
        finally:
            store.rooms = real_rooms
            go.set()
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            sent = await roundtrip(alice, room, "in the new room")
            assert n2.state.rooms.get(room) is not None
            assert await recv_message(bob) == sent


async def test_tokens_revoked_while_a_node_was_off_the_bus_are_refused_there_once_back(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An admin's throw-out with revokeTokens at n1 while n2 is off the bus: once back,
    n2 refuses the tokens and closes the user's sessions there."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        token = n2.token(2)
        cluster = n2.state.cluster
        retrying, back, resynced = held_off_the_bus(cluster, monkeypatch)
        async with chat(n2, 2) as on_n2:
            await cluster._link.aclose()
            await retrying.wait()
            # Meanwhile an admin at n1 throws the user out and revokes their tokens.
            async with n1.client() as http:
                resp = await http.post(
                    "/admin/users/2/disconnect", json={"revokeTokens": True},
                    headers=bearer(n1.admin_token()),
                )  # fmt: skip
            assert resp.status_code == 200, resp.text
            back.set()
            await resynced.wait()  # n2 is back on the bus and has reloaded from the store
            # Its session there, which the admin's disconnect did not reach, ends now.
            assert (await expect_close(on_n2)).code == 4003
        async with n2.client() as http:
            refused = await http.post("/chat/ticket", headers={"accessToken": token})
        assert refused.status_code == 401, refused.text


async def test_a_logout_while_a_node_was_off_the_bus_closes_the_sessions_it_would_have(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The user's own logout (`/chat-ws/disconnect`) at n1 while n2 is off the bus: once
    back, n2 closes the user's session opened before the logout, and keeps the one opened
    after it (the JWT stays good: the app may connect again at once)."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        cluster = n2.state.cluster
        retrying, back, resynced = held_off_the_bus(cluster, monkeypatch)
        async with chat(n2, 2) as before_logout:
            await cluster._link.aclose()
            await retrying.wait()
            out = await post_json(n1, "/chat-ws/disconnect", 2)
            assert out.status_code == 200, out.text
            async with chat(n2, 2) as after_logout:
                back.set()
                await resynced.wait()
                assert (await expect_close(before_logout)).code == 1000
                await roundtrip(after_logout, room, "logged in again")


async def test_control_messages_dropped_at_a_full_send_queue_are_made_good(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """A node's queue to RabbitMQ over max_pending_bytes (RabbitMQ blocking publishers, a
    slow link) drops frames, control messages included, while the connection stays up:
    no node rejoins, so no resync would come. Once frames pass again, the node that
    dropped one asks the others to reload."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        resynced = trio.Event()
        cluster2 = n2.state.cluster
        real_resync = cluster2.on_resync
        dropping = True

        async def resync_and_say() -> None:
            after = not dropping
            await real_resync()
            if after:
                resynced.set()

        cluster2.on_resync = resync_and_say
        link = n1.state.cluster._link
        bound = link.max_pending
        link.max_pending = 0  # full: every frame is dropped
        room = await create_room(n1, [1, 2], name="while full")
        assert n1.state.cluster.dropped > 0
        dropping = False
        link.max_pending = bound
        await resynced.wait()
        assert n2.state.rooms.get(room) is not None


async def test_room_events_a_node_missed_off_the_bus_reach_its_users_once_back(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What an admin did at n1 while n2 was off the bus reached n2's memory at the reload,
    but the user events that came with it were lost with the control messages: user 2,
    watching its user destination at n2, is told of each once n2 is back (and of nothing
    twice: its reload finds the rest as it was)."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        kept = await create_room(n1, [1, 2], name="kept")
        leaving = await create_room(n1, [1, 2], name="leaving")
        gone = await create_room(n1, [1, 2], name="gone")
        private = await create_room(n1, [1], name="private")
        cluster = n2.state.cluster
        retrying, back, resynced = held_off_the_bus(cluster, monkeypatch)
        async with stomp_user(n2, 2, user_queue=True) as watcher:
            await cluster._link.aclose()
            await retrying.wait()
            headers = admin_headers(n1)
            async with n1.client() as http:
                for method, path, body in (
                    ("POST", "/admin/rooms", {"name": "new", "members": [1, 2], "public": False}),
                    ("PATCH", f"/admin/rooms/{kept}", {"name": "renamed"}),
                    ("DELETE", f"/admin/rooms/{leaving}/members/2", None),
                    ("DELETE", f"/admin/rooms/{gone}", None),
                    ("POST", f"/admin/rooms/{private}/invites", {"userId": 2}),
                ):
                    resp = await http.request(method, path, json=body, headers=headers)
                    assert resp.status_code in (200, 201), resp.text
                    if path == "/admin/rooms":
                        new = int(resp.json()["id"])
            back.set()
            await resynced.wait()
            got = []
            while len(got) < 5:
                _, event = await watcher.expect_message()
                if event["type"] != "user_status_changed":  # presence comes and goes
                    got.append((event["type"], event["roomId"]))
            assert sorted(got) == sorted([
                ("room_joined", new), ("room_updated", kept), ("room_removed", leaving),
                ("room_removed", gone), ("room_invited", private),
            ])  # fmt: skip
            # Nothing twice: the next room event it hears is the next one made.
            last = await create_room(n1, [1, 2], name="last")
            _, event = await next_event_of(watcher, "room_joined")
            assert event["roomId"] == last
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            sent = await roundtrip(alice, new, "in the room made while n2 was away")
            assert await recv_message(bob) == sent
