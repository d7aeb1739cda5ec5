"""Three chatd nodes in this process, each a real server on its own ports, sharing a
private PostgreSQL database (tests/pg_instance.py) and a fresh vhost on a private
RabbitMQ (tests/rabbitmq_instance.py): a cluster as an operator runs one, but on one
machine. `start_cluster(3)` returns the nodes once every one is on the bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from .conftest import Server, make_config, serve_in

# Short enough that a dead node's users go offline within a test's patience.
HEARTBEAT = 0.25
NODE_TIMEOUT = 1.5

StartCluster = Callable[..., Any]


async def until(condition: Callable[[], bool]) -> None:
    """Until the nodes, in this process, reach `condition` (the caller's fail_after
    bounds it)."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked(0.005)


def cluster_sections(dsn: str, url: str, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, dict[str, Any]] = {
        "store": {"backend": "postgresql", "dsn": dsn},
        "bus": {
            "backend": "rabbitmq",
            "url": url,
            "node_name": name,
            "heartbeat_seconds": HEARTBEAT,
            "node_timeout_seconds": NODE_TIMEOUT,
        },
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return merged


@pytest.fixture
async def start_cluster(
    tmp_path: Path, pg_dsn: str, rabbit_url: str
) -> AsyncIterator[StartCluster]:
    """`await start_cluster(n, **sections)`: n nodes, each with its own directory (as on
    its own machine), all on the bus when it returns. `await start_node(name)` on the
    returned list's `.add` starts one more."""
    async with trio.open_nursery() as nursery:
        started: list[Server] = []

        async def start_node(name: str, **sections: dict[str, Any]) -> Server:
            home = tmp_path / name
            home.mkdir(exist_ok=True)
            cfg = make_config(home, **cluster_sections(pg_dsn, rabbit_url, name, **sections))
            server = await serve_in(nursery, cfg)
            started.append(server)
            with trio.fail_after(30):
                await server.state.cluster.wait_joined()
            return server

        async def start(n: int, **sections: dict[str, Any]) -> list[Server]:
            nodes = [await start_node(f"n{i + 1}", **sections) for i in range(n)]
            # Every node knows every other (their hellos crossed): a change made through
            # one node is then applied by all before its request is answered.
            with trio.fail_after(30):
                for node in nodes:
                    await node.state.cluster.presence.wait_nodes(n - 1)
            return nodes

        start.node = start_node  # type: ignore[attr-defined]
        start.dsn = pg_dsn  # type: ignore[attr-defined]
        start.url = rabbit_url  # type: ignore[attr-defined]
        yield start
        for server in started:
            server.running.shutdown()
