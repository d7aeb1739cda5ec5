"""A node's resync (rooms and members reloaded from the store after a node joined the bus)
and the control messages that arrive while it reads: what they changed must survive the
reload. Private services (tests/pg_instance.py, tests/rabbitmq_instance.py); every wait
has a timeout."""

from __future__ import annotations

from typing import Any

import trio

from ._chat import chat, create_room, recv_message, roundtrip
from .cluster import StartCluster, start_cluster  # noqa: F401 (fixture)
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import rabbit_instance, rabbit_url  # noqa: F401 (fixtures)
from .stomp_client import next_event_of, stomp_user


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
