"""Where the general broker meets the same condition as RabbitMQ, it answers as RabbitMQ
does (issue 13 point 3): an exchange nobody configured does not exist, and an ACK names its
message by id whatever its `subscription` header says. The ERROR texts of the chat
destinations and of the conversation are in test_stomp_errors and tests/stomp."""

from __future__ import annotations

import trio

from .conftest import StartServer
from .stomp_client import assert_carries_on, issue_login, make_room, open_stomp, stomp_user

BROKER = {"broker_enabled": True, "broker_destinations": ["/queue/*", "/exchange/events/*"]}


async def test_an_exchange_exists_only_when_configured(start_server: StartServer) -> None:
    server = await start_server(stomp=BROKER)
    room = await make_room(server, [1, 2])
    with trio.fail_after(10):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1) as c:
                await c.subscribe("/exchange/events/a", "e")
                [message] = await c.publish("/exchange/events/a", b"hello")
                assert (message.get("subscription"), message.body) == ("e", b"hello")
                await c.send_frame(
                    "SUBSCRIBE", {"destination": "/exchange/other/a", "id": "o", "receipt": "r"}
                )
                await c.expect_error(
                    "not_found", "NOT_FOUND - no exchange 'other' in vhost '/'", receipt_id="r"
                )
            async with stomp_user(server, 1) as c:
                await c.publish("/exchange/other/a", b"x", receipt=False)
                await c.expect_error("not_found", "NOT_FOUND - no exchange 'other' in vhost '/'")
            await assert_carries_on(server, room, bystander)


async def test_an_ack_whose_subscription_names_none_settles_by_message_id(
    start_server: StartServer,
) -> None:
    """STOMP 1.1: the ACK's `subscription` names no subscription, its `message-id` a
    message this connection holds: RabbitMQ ignores the header, and so does chatd. With
    prefetch-count 1 the next message comes only once the first is settled."""
    server = await start_server(stomp=BROKER)
    login, passcode = await issue_login(server, 1)
    with trio.fail_after(10):
        async with open_stomp(server) as c:
            await c.connect(login, passcode, accept_version="1.1")
            assert (
                await c.request(
                    "SUBSCRIBE",
                    {
                        "destination": "/queue/jobs",
                        "id": "s1",
                        "ack": "client-individual",
                        "prefetch-count": "1",
                    },
                )
                == []
            )
            frames = await c.publish("/queue/jobs", b"one")
            frames += await c.publish("/queue/jobs", b"two")
            assert [f.body for f in frames] == [b"one"]  # the second waits for the ACK
            first = frames[0]
            before = await c.request(
                "ACK", {"message-id": first.get("message-id"), "subscription": "nope"}
            )
            second = before[0] if before else await c.next_frame()
            assert (second.command, second.body) == ("MESSAGE", b"two")
            assert second.get("redelivered") == "false"
