"""A `/chat` client that sees its socket open hears every message committed from then on:
the ticket is claimed and the session opened in the service before the handshake is
answered. (In a cluster the claim is a PostgreSQL round trip: a node that answered first
missed what another client sent meanwhile; tests/test_cluster_hostile.py hung on it.)"""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import open_websocket_url

from ._chat import chat, chat_url, create_room, new_ticket, recv_message, roundtrip
from .conftest import Server


async def test_the_session_is_heard_before_the_client_sees_the_socket_open(
    server: Server,
) -> None:
    with trio.fail_after(30):
        room = await create_room(server, [1, 2])
        tickets: Any = server.state.tickets
        claim = tickets.claim_async
        client_open = trio.Event()
        opened_during_claim: list[bool] = []

        async def slow_claim(ticket: str) -> Any:
            # A client that sees the socket open while its ticket is being claimed would
            # set this; a server that answers only afterwards never lets it.
            with trio.move_on_after(1):
                await client_open.wait()
            opened_during_claim.append(client_open.is_set())
            return await claim(ticket)

        ticket = await new_ticket(server, 2)
        async with chat(server, 1) as alice:
            tickets.claim_async = slow_claim  # bob's claim
            async with open_websocket_url(chat_url(server, ticket, None)) as bob:
                client_open.set()
                # At once, before anything else: the first message after "open".
                sent = await roundtrip(alice, room, "right after bob's socket opened")
                with trio.fail_after(10):
                    assert await recv_message(bob) == sent
        assert opened_during_claim == [False]
