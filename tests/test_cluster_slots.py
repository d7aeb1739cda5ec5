"""Slots on the bus (chatd/cluster/wire.py): each node holds one, as a queue at RabbitMQ
exclusive to its connection and bound to every other slot's key, so a frame reaches every
node but the one that sent it, and RabbitMQ itself refuses a slot to a second node. Private
services (tests/pg_instance.py, tests/rabbitmq_instance.py); every wait has a timeout."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from chatd.cluster import wire
from chatd.cluster.link import Link
from chatd.config import parse_bus_url
from chatd.stomp import Frame

from ._chat import chat, create_room, recv_message, roundtrip
from .cluster import StartCluster, cluster_sections, start_cluster, until  # noqa: F401 (fixture)
from .conftest import make_config, serve_in
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import RabbitInstance, rabbit_instance, rabbit_url  # noqa: F401


def slot_of(name: str) -> int:
    """The slot a node named `name` asks for first."""
    return zlib.crc32(name.encode()) % wire.SLOTS


@asynccontextmanager
async def holding(url: str, slots: list[int]) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """Connections to RabbitMQ that hold `slots`' queues, as a node's would (another node,
    or one RabbitMQ has not yet seen die); yields a function that lets one go."""
    links: dict[int, Link] = {}
    async with trio.open_nursery() as nursery:
        for slot in slots:
            link = links[slot] = await Link.open(parse_bus_url(url), 1 << 20)
            nursery.start_soon(link.run, lambda frames: None)
            await link.subscribe(
                wire.subscriptions("chatd", slot), "held", 0, wire.queue("chatd", slot)
            )

        async def release(slot: int) -> None:
            await links.pop(slot).aclose()

        try:
            yield release
        finally:
            for link in links.values():
                await link.aclose()
            nursery.cancel_scope.cancel()


async def test_each_node_holds_a_slot_of_its_own_and_hears_every_node_but_itself(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    rabbit_instance: RabbitInstance,  # noqa: F811 (fixture)
) -> None:
    """At RabbitMQ: one queue per node, exclusive to its connection, bound on amq.direct to
    every slot's key but its own. On the nodes: frames come from the others only (the
    heartbeats every node sends four times a second would come back to their sender
    otherwise), and a message crosses every way."""
    with trio.fail_after(90):
        nodes = await start_cluster(3)
        slots = [n.state.cluster.slot for n in nodes]
        assert None not in slots and len(set(slots)) == 3, slots
        vhost = parse_bus_url(start_cluster.url).vhost  # type: ignore[attr-defined]
        queues = await trio.to_thread.run_sync(
            rabbit_instance.ctl, "list_queues", "-p", vhost, "name", "exclusive"
        )
        bindings = await trio.to_thread.run_sync(
            rabbit_instance.ctl, "list_bindings", "-p", vhost, "source_name",
            "destination_name", "routing_key",
        )  # fmt: skip
        for slot in slots:
            assert f"chatd.slot.{slot}\ttrue" in queues.splitlines(), queues
            bound = {
                line.split("\t")[2]
                for line in bindings.splitlines()
                if line.startswith(f"amq.direct\tchatd.slot.{slot}\t")
            }
            assert bound == {f"chatd.{k}" for k in range(wire.SLOTS) if k != slot}, bindings

        heard: list[list[str]] = [[] for _ in nodes]
        for i, node in enumerate(nodes):
            cluster = node.state.cluster
            real = cluster._on_frame

            def on_frame(frame: Frame, real: Any = real, got: list[str] = heard[i]) -> None:
                got.append(wire.sender(frame).node)
                real(frame)

            cluster._on_frame = on_frame  # type: ignore[method-assign]
        room = await create_room(nodes[0], [1, 2, 3])
        async with chat(nodes[0], 1) as a, chat(nodes[1], 2) as b, chat(nodes[2], 3) as c:
            for sender, receivers in ((a, (b, c)), (b, (a, c)), (c, (a, b))):
                sent = await roundtrip(sender, room, "to the others")
                for receiver in receivers:
                    assert await recv_message(receiver) == sent
        # Each node has sent several heartbeats meanwhile, and heard the others'.
        await until(lambda: all(len(got) >= 8 for got in heard))
        for node, got in zip(nodes, heard, strict=True):
            others = {n.state.cluster.node for n in nodes} - {node.state.cluster.node}
            assert set(got) == others, (node.state.cluster.node, set(got))


async def test_a_node_whose_slot_is_held_takes_the_next_and_the_cluster_works(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """The slot a node asks for first is still held (by a node RabbitMQ has not seen die,
    say): RabbitMQ refuses it, and the node asks for the next one at once."""
    with trio.fail_after(90):
        url = start_cluster.url  # type: ignore[attr-defined]
        first = slot_of("n1")
        async with holding(url, [first]):
            nodes = await start_cluster(2)
            assert nodes[0].state.cluster.slot == (first + 1) % wire.SLOTS
            room = await create_room(nodes[0], [1, 2])
            async with chat(nodes[0], 1) as alice, chat(nodes[1], 2) as bob:
                sent = await roundtrip(alice, room, "from the next slot")
                assert await recv_message(bob) == sent
                sent = await roundtrip(bob, room, "to the next slot")
                assert await recv_message(alice) == sent


async def test_with_every_slot_held_a_node_is_not_ready_says_why_and_joins_once_one_is_free(
    tmp_path: Path,
    pg_dsn: str,  # noqa: F811 (fixture)
    rabbit_url: str,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(120):
        async with holding(rabbit_url, list(range(wire.SLOTS))) as release:
            cfg = make_config(tmp_path, **cluster_sections(pg_dsn, rabbit_url, "n1"))
            async with trio.open_nursery() as nursery:
                server = await serve_in(nursery, cfg)
                cluster = server.state.cluster
                await until(lambda: "slots" in (cluster.unavailable() or ""))
                async with server.client() as http:
                    ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert f"every one of the {wire.SLOTS} slots" in ready.json()["reason"]
                await release(7)
                await cluster.wait_joined()
                assert cluster.slot == 7
                async with server.client() as http:
                    assert (await http.get("/readyz")).status_code == 200
                server.running.shutdown()
