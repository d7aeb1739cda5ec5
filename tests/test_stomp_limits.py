"""The bounds one STOMP client meets, over real sockets: the small frame before login (TCP
and WebSocket), connections not yet logged in, subscriptions (how many, each destination
once), transactions (bytes held, time open), and numbers in headers. Each limit reached is
an ERROR frame (or WebSocket close 1009) the client can read, never memory held, and the
server and the other clients carry on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from .conftest import Server, StartServer
from .stomp_client import (
    assert_carries_on,
    make_room,
    open_stomp,
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
