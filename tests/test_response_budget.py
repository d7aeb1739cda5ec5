"""History pages share one budget of bytes, `[http] max_response_bytes` (issue 12, point 4:
a hundred pages asked for and never read held 414 MB). Over real sockets: a page that
waits for a client who does not read holds its share until the write timeout drops it,
and others wait for theirs meanwhile; nothing is left held after any outcome. The
budget's waiting rule itself runs on trio's fake clock."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from chatd.net.budget import ByteBudget

from ._chat import bearer
from .conftest import Server, StartServer
from .test_limits_http import CONTENT, PAGE, fill_room, wait_for_open_connections


def budget_of(server: Server) -> ByteBudget:
    budget = server.state.response_budget
    assert isinstance(budget, ByteBudget)
    return budget


async def test_a_page_nobody_reads_holds_the_budget_until_it_is_dropped(
    start_server: StartServer,
) -> None:
    with trio.fail_after(120):
        server = await start_server(
            http={"write_timeout_seconds": 0.5, "max_body_bytes": 1 << 20,
                  "max_response_bytes": 1 << 20},
            chat={"rate_per_second": 100000, "rate_burst": 100000, "max_content_chars": 60000},
        )
        room = await fill_room(server)
        await wait_for_open_connections(server, 0)
        budget = budget_of(server)
        assert budget.used == 0
        token = server.token(1)

        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", server.running.http_port))
        async with trio.SocketStream(sock) as stalled:
            await stalled.send_all(
                f"GET /chat/rooms/{room}/messages?limit={PAGE} HTTP/1.1\r\nHost: x\r\n"
                f"accessToken: {token}\r\n\r\n".encode()
            )
            while budget.used == 0:  # the stalled page has taken the whole budget
                await trio.sleep(0.01)
            assert budget.used == 1 << 20
            # Another page waits for the share; it is served, whole, once the stalled
            # one is dropped by the write timeout.
            async with server.client() as http:
                assert (await http.get("/healthz")).status_code == 200  # no budget needed
                page = await http.get(f"/chat/rooms/{room}/messages?limit=20",
                                      headers=bearer(token))
            assert page.status_code == 200, page.text
            assert [m["content"] for m in page.json()["messages"]] == [CONTENT] * 20
        await wait_for_open_connections(server, 0)
        assert budget.used == 0


async def test_nothing_is_left_held_whatever_the_answer(server: Server) -> None:
    with trio.fail_after(30):
        budget = budget_of(server)
        room_url = "/chat/rooms/{}/messages"
        async with server.client() as http:
            rooms = (await http.post("/admin/rooms", json={"name": "r", "members": [1]},
                                     headers=bearer(server.admin_token()))).json()
            for path, status in [
                (room_url.format(rooms["id"]) + "?limit=5", 200),
                (room_url.format(424242), 404),
                (room_url.format(rooms["id"]) + "?limit=x", 400),
                (f"/admin/rooms/{rooms['id']}/messages", 200),
            ]:
                token = server.admin_token() if path.startswith("/admin") else server.token(1)
                for method in ("GET", "HEAD"):
                    resp = await http.request(method, path, headers=bearer(token))
                    assert resp.status_code == status, (method, path, resp.text)
        assert budget.used == 0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_the_budget_makes_pages_wait_then_gives_up(clock: trio.testing.MockClock) -> None:
    budget = ByteBudget()
    assert await budget.take(600, 1000, 5.0) == 600
    assert await budget.take(400, 1000, 5.0) == 400  # exactly full
    start = trio.current_time()
    assert await budget.take(1, 1000, 5.0) == 0  # nothing freed within the patience
    assert trio.current_time() - start == pytest.approx(5.0)

    async def free_later() -> None:
        await trio.sleep(2.0)
        budget.give_back(600)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(free_later)
        start = trio.current_time()
        assert await budget.take(500, 1000, 5.0) == 500
        assert trio.current_time() - start == pytest.approx(2.0)
    # A page larger than the whole budget goes alone, once nothing else is held.
    budget.give_back(900)
    assert budget.used == 0
    assert await budget.take(10_000, 1000, 5.0) == 1000
