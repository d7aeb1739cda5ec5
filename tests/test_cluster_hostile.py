"""What a node does with frames on the bus that no chatd node of this cluster sent: another
application publishing to amq.direct under the cluster's name, or a node of another cluster
given the same [bus] name. It drops them and keeps serving. Frames with this cluster's
mark that lie (ids never committed) or are broken do not stop it either. Private services
(tests/pg_instance.py, tests/rabbitmq_instance.py); every wait has a timeout."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
import trio.testing

from chatd import events
from chatd.cluster import wire
from chatd.cluster.link import Link
from chatd.config import parse_bus_url
from chatd.model import StoredMessage
from chatd.stomp import Frame

from ._chat import chat, create_room, recv_message, roundtrip
from .cluster import StartCluster, start_cluster, until  # noqa: F401 (fixture)
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import RabbitInstance, rabbit_instance, rabbit_url  # noqa: F401


def now_ms() -> int:
    """A frame's sending time, as a node stamps it."""
    return int(time.time() * 1000)


def free_slot(nodes: Sequence[Any]) -> int:
    """A slot none of `nodes` holds: a frame sent to its key reaches every one of them."""
    held = {n.state.cluster.slot for n in nodes}
    assert None not in held  # every node on the bus
    return next(k for k in range(wire.SLOTS) if k not in held)


async def publish_raw(url: str, *frames: Frame, nodes: Sequence[Any]) -> None:
    """Publish `frames` on the bus as a client of RabbitMQ that is not a chatd node, to a
    slot's key that every one of `nodes` hears, and return once RabbitMQ has them (a
    receipt on a subscription sent after them)."""
    destination = wire.destination("chatd", free_slot(nodes))
    link = await Link.open(parse_bus_url(url), 1 << 26)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run, lambda frame: None)
            for frame in frames:
                headers = [h for h in frame.headers if h[0] != "destination"]
                assert link.send(
                    Frame("SEND", (("destination", destination), *headers), frame.body)
                )
            await link.subscribe("/topic/outsider.nothing", "outsider")
            nursery.cancel_scope.cancel()
    finally:
        await link.aclose()


async def test_a_frame_past_the_links_limits_is_passed_over_and_no_node_leaves_the_bus(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """Anyone allowed to publish on the vhost sends a frame too big for a node's reader
    (more headers, or a longer one, than RabbitMQ ever writes for a chatd frame), with no
    mark and no key. RabbitMQ copies it to every node's queue; if a node ended its
    connection over it, one frame a second would keep the whole cluster off the bus (and
    not ready) and reloading rooms. Each node passes over it, counts it, and stays."""
    with trio.fail_after(90):
        nodes = await start_cluster(3)
        room = await create_room(nodes[0], [1, 2])
        links = [n.state.cluster._link for n in nodes]
        assert all(links)
        destination = wire.destination("chatd", free_slot(nodes))
        long_header = Frame(
            "SEND", (("destination", destination), ("x-note", "x" * (1 << 20 | 1))), b"{}"
        )
        many_headers = Frame(
            "SEND",
            (("destination", destination), *((f"x-h{i}", "v") for i in range(1200))),
            b"{}",
        )
        await publish_raw(start_cluster.url, long_header, many_headers, nodes=nodes)  # type: ignore[attr-defined]
        await until(lambda: all(n.state.cluster.oversized == 2 for n in nodes))
        assert [n.state.cluster._link for n in nodes] == links  # nobody reconnected
        assert all(n.state.cluster.unavailable() is None for n in nodes)
        async with chat(nodes[0], 1) as alice, chat(nodes[2], 2) as bob:
            sent = await roundtrip(alice, room, "still here")
            assert await recv_message(bob) == sent


async def test_another_clusters_frames_under_the_same_name_are_not_delivered_here(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """Two deployments (say staging and production, each its own database) on one vhost,
    both with the default [bus] name: each hears the other's frames. A message of the
    other's, with the other's ids, must reach no one here and stop nothing here."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            first = await roundtrip(alice, room, "ours")
            assert await recv_message(bob) == first
            theirs = StoredMessage(
                10**12, room, 1, "someone else", None, "not for you", "TEXT",
                "2026-01-01T00:00:00Z", prev_id=first["id"],
            )  # fmt: skip
            event = events.new_message(theirs)
            part = wire.event_part(f"room.{room}", event)
            frame = wire.batch_frame("chatd", "staging-1#abcdef", [part], "another-mark")
            await publish_raw(start_cluster.url, frame, nodes=[n1, n2])  # type: ignore[attr-defined]
            sent = await roundtrip(alice, room, "ours again")
            assert await recv_message(bob) == sent


async def test_a_batch_with_our_mark_but_a_broken_body_is_dropped_and_the_next_one_delivered(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """A node with a bug (signed with the cluster's key, so taken for one of ours)
    publishes frames whose parts do not add up: each is dropped whole, and the node goes
    on delivering what the other nodes publish."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        cluster = n2.state.cluster
        bodies = [
            b"room.1 new_message - - - - 99\nshort",
            b"no newline at all",
            b"control control - - - - 2\n{}",  # JSON, but no op
        ]
        broken = [
            wire.signed_frame("chatd", "x#1", body, cluster.origin, cluster.key, i + 1, now_ms())
            for i, body in enumerate(bodies)
        ]
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            await publish_raw(start_cluster.url, *broken, nodes=[n1, n2])  # type: ignore[attr-defined]
            sent = await roundtrip(alice, room, "after the broken ones")
            assert await recv_message(bob) == sent


# --- frames with our mark that lie, or are broken -------------------------------------


async def test_ids_claimed_past_the_stores_newest_do_not_stop_a_node_delivering(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """A message with a huge id, then a heartbeat saying a huge id was delivered, both
    with the cluster's mark. Believed, either would make every real message look
    delivered already on the node that heard it: it would deliver no chat again."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        # A node of ours with a bug: signed with the cluster's key.
        mark, key = n2.state.cluster.origin, n2.state.cluster.key
        sequencer = n2.state.cluster.sequencer
        huge = 10**15
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            first = await roundtrip(alice, room, "before")
            assert await recv_message(bob) == first
            forged = StoredMessage(
                huge, room, 1, "alice", None, "forged", "TEXT", "2026-01-01T00:00:00Z",
                prev_id=0,
            )  # fmt: skip
            part = wire.event_part(f"room.{room}", events.new_message(forged))
            await publish_raw(
                start_cluster.url,  # type: ignore[attr-defined]
                wire.batch_frame("chatd", "liar#1", [part], mark, key, 1, now_ms()),
                nodes=[n1, n2],
            )
            # Checked against the store (or, believed, this node's newest id).
            await until(lambda: sequencer.refuted >= 1 or sequencer.last >= huge)
            assert sequencer.last < huge
            sent = [await roundtrip(alice, room, f"after the message {i}") for i in range(3)]
            assert [await recv_message(bob) for _ in sent] == sent

            alive = wire.control_part({"op": "alive", "last": 2 * huge})
            await publish_raw(
                start_cluster.url,  # type: ignore[attr-defined]
                wire.batch_frame("chatd", "liar#1", [alive], mark, key, 2, now_ms()),
                nodes=[n1, n2],
            )
            await until(lambda: sequencer.refuted >= 2 or sequencer.last >= huge)
            assert sequencer.last < huge
            sent = [await roundtrip(alice, room, f"after the heartbeat {i}") for i in range(3)]
            assert [await recv_message(bob) for _ in sent] == sent


async def test_a_broken_frame_with_our_mark_makes_the_node_reload_rooms(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """The control messages in a frame that cannot be read are lost with it (here the
    room it announced): the node reloads rooms from the store, as after a lost bus. A
    broken frame of another cluster is only dropped."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        cluster = n2.state.cluster
        # Stored, but announced only in the frame that breaks.
        room = await n1.state.store.create_room("meanwhile", False, [1, 2])
        state = {"id": room, "name": "meanwhile", "public": False, "members": [1, 2]}
        part = wire.control_part({"op": "room_created", "room": {**state, "invited": []}})

        def broken(mark: str) -> Frame:
            body = wire.batch_frame("chatd", "n9#abcdef", [part]).body + b"!"  # a byte too many
            return wire.signed_frame("chatd", "n9#abcdef", body, mark, cluster.key, 1, now_ms())

        await publish_raw(start_cluster.url, broken("another-mark"), nodes=[n1, n2])  # type: ignore[attr-defined]
        await until(lambda: cluster.foreign >= 1)
        assert cluster.broken == 0  # not taken for ours: no reload

        await publish_raw(start_cluster.url, broken(cluster.origin), nodes=[n1, n2])  # type: ignore[attr-defined]
        await until(lambda: n2.state.rooms.get(room) is not None)
        await until(lambda: n1.state.rooms.get(room) is not None)
        assert cluster.broken == 1
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            sent = await roundtrip(alice, room, "in the room the broken frame announced")
            assert await recv_message(bob) == sent


# --- frames under our mark that no node of ours signed ------------------------------------


async def frames_on_the_bus(url: str, during: Callable[[], Awaitable[object]]) -> list[Frame]:
    """The frames RabbitMQ delivers on the cluster's keys (every slot's) while `during`
    runs, as any client allowed on the vhost can read them."""
    got: list[Frame] = []
    link = await Link.open(parse_bus_url(url), 1 << 26)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run, got.extend)
            await link.subscribe(wire.subscriptions("chatd"), "eavesdropper")
            await during()
            # Its own receipt comes after everything published before it.
            await link.subscribe("/topic/outsider.nothing", "after")
            nursery.cancel_scope.cancel()
    finally:
        await link.aclose()
    return got


async def test_frames_under_our_mark_without_our_key_or_sent_again_are_not_taken(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """Someone allowed on the vhost reads the cluster's mark off its frames (it is on
    every one) and publishes under it: a chat message that chains exactly onto the
    node's newest (which the sequencer's fast path would pass) and a room the store does
    not have, signed with a key of their own; then a genuine frame they recorded, sent
    again. None of it is taken, each is counted, and the nodes go on."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        cluster, sequencer = n2.state.cluster, n2.state.cluster.sequencer
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            recorded: list[object] = []

            async def send_one() -> None:
                recorded.append(await roundtrip(alice, room, "recorded"))
                assert await recv_message(bob) == recorded[0]

            heard = await frames_on_the_bus(start_cluster.url, send_one)  # type: ignore[attr-defined]
            genuine = [f for f in heard if b"recorded" in f.body]
            assert genuine
            mark = wire.sender(genuine[0]).origin
            assert mark == cluster.origin
            # As RabbitMQ delivered it, published again.
            replay = Frame("SEND", ((wire.HEADER, genuine[0].get(wire.HEADER) or ""),),
                           genuine[0].body)  # fmt: skip

            forged = StoredMessage(
                sequencer.last + 1000, room, 1, "alice", None, "forged", "TEXT",
                "2026-01-01T00:00:00Z", prev_id=sequencer.last,
            )  # fmt: skip
            parts = [
                wire.event_part(f"room.{room}", events.new_message(forged)),
                wire.control_part({"op": "room_created", "room": {
                    "id": 10**9, "name": "forged", "public": True, "members": [2],
                    "invited": [],
                }}),
            ]  # fmt: skip
            last, forged_before = sequencer.last, cluster.forged
            unreadable = Frame(
                "SEND", ((wire.HEADER, f"{mark} n7#abcdef 2 {now_ms()} " + "é" * 32),), b"x\n"
            )
            await publish_raw(
                start_cluster.url,  # type: ignore[attr-defined]
                wire.batch_frame("chatd", "n7#abcdef", parts, mark, b"not the key", 1, now_ms()),
                unreadable,  # once, this one ended every node's bus task, and the server
                replay,
                nodes=[n1, n2],
            )
            await until(lambda: cluster.forged >= forged_before + 2)
            assert sequencer.last == last
            assert n2.state.rooms.get(10**9) is None
            sent = await roundtrip(alice, room, "after")
            assert await recv_message(bob) == sent
            assert sequencer.refuted == 0


async def test_each_nodes_queue_at_rabbitmq_is_bounded_in_bytes(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    rabbit_instance: RabbitInstance,  # noqa: F811 (fixture)
) -> None:
    """A node too slow to read (or a flood from the vhost) must not fill RabbitMQ's
    memory: at its alarm RabbitMQ blocks every publisher, the other nodes too. Each
    node's queue keeps at most [bus] max_pending_bytes, dropping its oldest frames (the
    node then finds their numbers skipped, and reloads)."""
    with trio.fail_after(60):
        await start_cluster(2, bus={"max_pending_bytes": 1 << 20})
        vhost = parse_bus_url(start_cluster.url).vhost  # type: ignore[attr-defined]
        listed = await trio.to_thread.run_sync(
            rabbit_instance.ctl, "list_queues", "-p", vhost, "name", "arguments"
        )
    queues = [line for line in listed.splitlines() if line.startswith("chatd.slot.")]
    assert len(queues) == 2, listed
    assert all('{"x-max-length-bytes",1048576}' in line for line in queues), listed
