"""What a node does with frames on the bus that no chatd node of this cluster sent: another
application publishing to amq.topic under the cluster's name, or a node of another cluster
given the same [bus] name. It drops them and keeps serving. Private services
(tests/pg_instance.py, tests/rabbitmq_instance.py); every wait has a timeout."""

from __future__ import annotations

import trio

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
