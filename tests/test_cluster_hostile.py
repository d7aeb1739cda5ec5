"""What a node does with frames on the bus that no chatd node of this cluster sent: another
application publishing to amq.topic under the cluster's name, or a node of another cluster
given the same [bus] name. It drops them and keeps serving. Frames with this cluster's
mark that lie (ids never committed) or are broken do not stop it either. Private services
(tests/pg_instance.py, tests/rabbitmq_instance.py); every wait has a timeout."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from chatd import events
from chatd.cluster import wire
from chatd.cluster.link import Link
from chatd.config import parse_bus_url
from chatd.model import StoredMessage
from chatd.stomp import Frame

from ._chat import chat, create_room, recv_message, roundtrip
from .cluster import StartCluster, start_cluster  # noqa: F401 (fixture)
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import rabbit_instance, rabbit_url  # noqa: F401 (fixtures)


async def publish_raw(url: str, *frames: Frame) -> None:
    """Publish `frames` on the bus as a client of RabbitMQ that is not a chatd node, and
    return once RabbitMQ has them (a receipt on a subscription sent after them)."""
    link = await Link.open(parse_bus_url(url), 1 << 26)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run, lambda frame: None)
            for frame in frames:
                assert link.send(frame)
            await link.subscribe("/topic/outsider.nothing", "outsider")
            nursery.cancel_scope.cancel()
    finally:
        await link.aclose()


async def test_a_frame_the_codec_refuses_does_not_stop_the_node(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        destination = wire.destination("chatd")
        long_header = Frame("SEND", (("destination", destination), ("x-note", "x" * 20_000)), b"{}")
        many_headers = Frame(
            "SEND",
            (("destination", destination), *((f"x-h{i}", "v") for i in range(1200))),
            b"{}",
        )
        await publish_raw(start_cluster.url, long_header, many_headers)  # type: ignore[attr-defined]
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            sent = await roundtrip(alice, room, "still here")
            assert await recv_message(bob) == sent
        with trio.fail_after(30):
            await n2.state.cluster.wait_joined()


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
            await publish_raw(start_cluster.url, frame)  # type: ignore[attr-defined]
            sent = await roundtrip(alice, room, "ours again")
            assert await recv_message(bob) == sent


async def test_a_batch_with_our_mark_but_a_broken_body_is_dropped_and_the_next_one_delivered(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """Someone on the vhost who knows the cluster's mark (it is not a secret: the bus is
    trusted) publishes frames whose parts do not add up: each is dropped whole, and the
    node goes on delivering what the other nodes publish."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        mark = n2.state.cluster.origin
        headers = (("destination", wire.destination("chatd")), (wire.HEADER, f"{mark} x#1"))
        broken = [
            Frame("SEND", headers, b"room.1 new_message - - - - 99\nshort"),
            Frame("SEND", headers, b"no newline at all"),
            Frame("SEND", headers, b"control control - - - - 2\n{}"),  # JSON, but no op
        ]
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            await publish_raw(start_cluster.url, *broken)  # type: ignore[attr-defined]
            sent = await roundtrip(alice, room, "after the broken ones")
            assert await recv_message(bob) == sent


# --- frames with our mark that lie, or are broken -------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    """Until the nodes, in this process, reach `condition` (the caller's fail_after
    bounds it)."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked(0.005)


async def test_ids_claimed_past_the_stores_newest_do_not_stop_a_node_delivering(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """A message with a huge id, then a heartbeat saying a huge id was delivered, both
    with the cluster's mark. Believed, either would make every real message look
    delivered already on the node that heard it: it would deliver no chat again."""
    with trio.fail_after(90):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        mark = n2.state.cluster.origin
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
                wire.batch_frame("chatd", "liar#1", [part], mark),
            )
            # Checked against the store (or, believed, this node's newest id).
            await until(lambda: sequencer.refuted >= 1 or sequencer.last >= huge)
            assert sequencer.last < huge
            sent = [await roundtrip(alice, room, f"after the message {i}") for i in range(3)]
            assert [await recv_message(bob) for _ in sent] == sent

            alive = wire.control_part({"op": "alive", "last": 2 * huge})
            await publish_raw(
                start_cluster.url,  # type: ignore[attr-defined]
                wire.batch_frame("chatd", "liar#1", [alive], mark),
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
            frame = wire.batch_frame("chatd", "n9#abcdef", [part], mark)
            return Frame(frame.command, frame.headers, frame.body + b"!")  # a byte too many

        await publish_raw(start_cluster.url, broken("another-mark"))  # type: ignore[attr-defined]
        await until(lambda: cluster.foreign >= 1)
        assert cluster.broken == 0  # not taken for ours: no reload

        await publish_raw(start_cluster.url, broken(cluster.origin))  # type: ignore[attr-defined]
        await until(lambda: n2.state.rooms.get(room) is not None)
        await until(lambda: n1.state.rooms.get(room) is not None)
        assert cluster.broken == 1
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            sent = await roundtrip(alice, room, "in the room the broken frame announced")
            assert await recv_message(bob) == sent
