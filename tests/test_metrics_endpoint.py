"""GET /metrics on its own listener, in Prometheus text format, read at scrape time."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from chatd.exporter import _commit_histogram
from chatd.metrics import COMMIT_BUCKETS

from .conftest import Server

TIMEOUT = 30


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metrics_url(server: Server) -> str:
    host, port = server.running.metrics[0]
    return f"http://{host}:{port}/metrics"


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(metrics_url(server))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(resp.text)


def conn(protocol: str, transport: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("chatd_connections", (("protocol", protocol), ("transport", transport)))


async def test_metrics_count_what_happens(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        before = await scrape(server)
        assert before[conn("chat", "websocket")] == 0
        assert before[conn("stomp", "tcp")] == 0
        assert before[("chatd_messages_received_total", ())] == 0
        assert before[("chatd_ready", ())] == 1

        async with server.client() as http:
            room = await http.post(
                "/admin/rooms",
                json={"name": "metrics", "members": [1, 2]},
                headers={"Authorization": f"Bearer {server.admin_token()}"},
            )
            assert room.status_code == 201
            room_id = room.json()["id"]
            bad = await http.post("/chat/ticket", headers={"accessToken": "not-a-jwt"})
            assert bad.status_code == 401
            ticket = (
                await http.post("/chat/ticket", headers={"accessToken": server.token(1)})
            ).json()["ticket"]

        async with open_websocket_url(f"{server.ws_base}/chat?ticket=no-such-ticket") as ws:
            await _closed(ws)

        async with open_websocket_url(f"{server.ws_base}/chat?ticket={ticket}") as ws:
            await ws.send_message(json.dumps({"roomId": room_id, "content": "hello"}))
            echo = json.loads(await ws.get_message())
            assert echo["content"] == "hello"
            during = await scrape(server)
            assert during[conn("chat", "websocket")] == 1

        after = await scrape(server)
        assert after[("chatd_messages_received_total", ())] == 1
        assert after[("chatd_messages_stored_total", ())] == 1
        assert after[("chatd_deliveries_total", ())] >= 1
        assert after[("chatd_tickets_issued_total", ())] == 1
        assert sum(v for (n, _), v in after.items() if n == "chatd_tickets_rejected_total") == 1
        assert sum(v for (n, _), v in after.items() if n == "chatd_auth_failures_total") == 1
        assert after[("chatd_rooms", ())] == 1

        count = after[("chatd_store_commit_seconds_count", ())]
        assert count >= 1
        cumulative = [
            after[("chatd_store_commit_seconds_bucket", (("le", le),))]
            for le in [repr(float(b)) for b in COMMIT_BUCKETS] + ["+Inf"]
        ]
        assert cumulative == sorted(cumulative)
        assert cumulative[-1] == count
        # The process collector comes along (memory, CPU, open fds).
        assert after[("process_resident_memory_bytes", ())] > 0


async def _closed(ws: Any) -> None:
    from trio_websocket import ConnectionClosed

    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        return


async def test_metrics_are_not_on_the_public_listener(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            assert (await http.get("/metrics")).status_code == 404


async def test_metrics_listener_speaks_enough_http(server: Server) -> None:
    url = metrics_url(server)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(timeout=10) as http:
            # keep-alive: several scrapes on one connection
            for _ in range(3):
                assert (await http.get(url)).status_code == 200
            assert (await http.head(url)).status_code == 200
            assert (await http.get(url.replace("/metrics", "/"))).status_code == 404
            assert (await http.post(url)).status_code == 405
            om = await http.get(url, headers={"Accept": "application/openmetrics-text"})
            assert om.headers["content-type"].startswith("application/openmetrics-text")
            assert om.text.endswith("# EOF\n")

        host, port = server.running.metrics[0]
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"NONSENSE\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 ")

        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(url)).status_code == 200


def test_commit_histogram_is_cumulative() -> None:
    per_bucket = [0] * len(COMMIT_BUCKETS)
    per_bucket[0] = 2
    per_bucket[3] = 1
    fam = _commit_histogram(per_bucket, count=4, total=1.5)  # one commit above 1 s
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets["0.0005"] == 2
    assert buckets["0.001"] == 2
    assert buckets["0.005"] == 3
    assert buckets["1.0"] == 3
    assert buckets["+Inf"] == 4
    by_name = {s.name: s.value for s in fam.samples if not s.name.endswith("_bucket")}
    assert by_name["chatd_store_commit_seconds_count"] == 4
    assert by_name["chatd_store_commit_seconds_sum"] == 1.5
