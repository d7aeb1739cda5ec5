"""A cluster through failures (issue 16): a node killed with SIGKILL, RabbitMQ restarted,
PostgreSQL stopped. Private services (tests/pg_instance.py, tests/rabbitmq_instance.py);
the killed node is a real `chatd serve` process; every wait has a timeout."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

from chatd.model import Outgoing

from ._chat import chat, create_room, history, recv, recv_message, roundtrip, send
from .chatd_proc import chatd_argv, child_env, run_chatd, write_config
from .cluster import NODE_TIMEOUT, StartCluster, cluster_sections, start_cluster  # noqa: F401
from .conftest import SECRET
from .pg_instance import PgInstance, pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import RabbitInstance, rabbit_instance, rabbit_url  # noqa: F401
from .stomp_client import StompClient, next_event_of, stomp_user


async def status_of(watcher: StompClient, user_id: int) -> str:
    """The next presence change of `user_id` (others', and messages, pass by)."""
    while True:
        _, event = await next_event_of(watcher, "user_status_changed", skip=("new_message",))
        if event["userId"] == user_id:
            return str(event["status"])


async def test_a_node_killed_its_clients_resume_elsewhere_and_its_users_go_offline(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2, 3])
        sections = cluster_sections(start_cluster.dsn, start_cluster.url, "n3")
        sections["auth"] = {"jwt_secret": SECRET}
        config = write_config(tmp_path / "n3.toml", tmp_path, **sections)
        async with (
            stomp_user(n1, 3, rooms=[room]) as watcher,
            chat(n2, 2) as bob,
            run_chatd(chatd_argv(config), child_env()) as n3,
        ):
            await n3.wait_line(r"cluster: node n3 joined the bus")
            async with httpx.AsyncClient(base_url=n3.base, timeout=10) as http:
                got = await http.post("/chat/ticket", headers={"accessToken": n1.token(1)})
            ticket = got.json()["ticket"]
            url = f"ws://127.0.0.1:{n3.http_port}/chat?ticket={ticket}"
            async with open_websocket_url(url) as alice:
                assert await status_of(watcher, 1) == "online"
                acked = [await roundtrip(alice, room, f"via n3 #{i}") for i in range(5)]
                for msg in acked:
                    assert await recv_message(bob) == msg
                # One more sent, then the node dies before anyone can say anything.
                await send(alice, room, "maybe")
                n3.send_signal(signal.SIGKILL)
                await n3.wait_exit()
            # Presence corrected by the other nodes once n3 is silent for NODE_TIMEOUT.
            killed_at = trio.current_time()
            assert await status_of(watcher, 1) == "offline"
            assert trio.current_time() - killed_at < NODE_TIMEOUT + 5
            # Alice reconnects to n1 and resumes from the last message she saw: nothing
            # acknowledged is lost, and what bob sent meanwhile comes, in order.
            # "maybe" may have been committed before the kill: bob hears it first then.
            await send(bob, room, "while alice was away")
            from_bob = await recv_message(bob)
            if from_bob["content"] == "maybe":
                from_bob = await recv_message(bob)
            assert from_bob["content"] == "while alice was away", from_bob
            async with chat(n1, 1, since=acked[-1]["id"]) as again:
                resumed = [await recv_message(again)]
                if resumed[0]["content"] == "maybe":  # committed before the kill
                    resumed.append(await recv_message(again))
                assert resumed[-1] == from_bob
        stored = await history(n1, 1, room)
        assert [m for m in stored if m["content"].startswith("via n3")] == acked


async def test_rabbitmq_restarted_nodes_reconnect_and_deliver_what_they_missed_in_order(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    rabbit_instance: RabbitInstance,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(180):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            before = await roundtrip(alice, room, "before")
            assert await recv_message(bob) == before
            await trio.to_thread.run_sync(rabbit_instance.stop)
            # n1 stores and acknowledges while the bus is away; it says it is not ready.
            during = [await roundtrip(alice, room, f"during #{i}") for i in range(3)]
            async with n1.client() as http:
                ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["reason"].startswith("RabbitMQ at 127.0.0.1:")
            await trio.to_thread.run_sync(rabbit_instance.start)
            await n1.state.cluster.wait_joined()
            await n2.state.cluster.wait_joined()
            # Bob on n2 gets what he missed, from the store, in order, then what follows.
            assert [await recv_message(bob) for _ in during] == during
            after = await roundtrip(alice, room, "after")
            assert await recv_message(bob) == after
            async with n1.client() as http:
                assert (await http.get("/readyz")).status_code == 200


async def test_postgresql_stopped_sends_are_refused_and_the_cluster_recovers_by_itself(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
    pg_instance: PgInstance,  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(120):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            await trio.to_thread.run_sync(pg_instance.stop)
            try:
                await send(alice, room, "while down")
                reply = await recv(alice)
                assert (reply["type"], reply["code"]) == ("error", "store_unavailable"), reply
                async with n1.client() as http:
                    ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["reason"].startswith("PostgreSQL:")
                # Tickets live in the store too: another node refuses them the same way.
                async with n2.client() as http:
                    ticket = await http.post("/chat/ticket", headers={"accessToken": n2.token(2)})
                assert ticket.status_code == 503
                assert ticket.json()["error"] == "store_unavailable"
            finally:
                await trio.to_thread.run_sync(pg_instance.start)
            back = await roundtrip(alice, room, "back")
            assert await recv_message(bob) == back


async def test_a_message_committed_but_never_published_reaches_everyone_without_a_next_one(
    start_cluster: StartCluster,  # noqa: F811 (fixture)
) -> None:
    """As a node killed between its commit and its hooks, or a commit answered as failed
    (the connection cut during COMMIT) though it was applied, which the client's retry
    then finds stored: the message is in the store and on no bus. Nothing chains behind
    it until the room's next message, yet every node delivers it by itself, the
    committing node included (its hooks did not run either). (A reload still running
    from the nodes' start may read it first; the sequencer's own test of the idle check,
    which does it otherwise, fails without it.)"""
    with trio.fail_after(60):
        n1, n2 = await start_cluster(2)
        room = await create_room(n1, [1, 2])
        async with chat(n1, 1) as alice, chat(n2, 2) as bob:
            first = await roundtrip(alice, room, "first")
            assert await recv_message(bob) == first
            ((orphan, _),) = await n1.state.store.append_messages(
                1, "alice", None, [Outgoing(room, "committed, never published")], 60.0
            )
            for reader in (alice, bob):
                got = await recv_message(reader)
                assert (got["id"], got["content"]) == (orphan.id, "committed, never published")
            after = await roundtrip(alice, room, "after")
            assert await recv_message(bob) == after
