"""GET /metrics on its own listener, in Prometheus text format, read at scrape time."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from chatd.ops import exporter, exposition
from chatd.ops.exporter import _commit_histogram
from chatd.ops.metrics import COMMIT_BUCKETS

from .conftest import Server, StartServer

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


# Every family the exporter served when it was built on prometheus_client 0.26: name as both
# reference parsers give it, TYPE, HELP, and the label names its samples carry.
FAMILIES: dict[str, tuple[str, str, set[tuple[str, ...]]]] = {
    "chatd_connections": (
        "gauge",
        "Authenticated client connections open now",
        {("protocol", "transport")},
    ),
    "chatd_rooms": ("gauge", "Rooms that exist", {()}),
    "chatd_ready": ("gauge", "1 while serving, 0 when shutting down", {()}),
    "chatd_messages_received": ("counter", "Chat messages received", {()}),
    "chatd_messages_stored": ("counter", "Chat messages committed", {()}),
    "chatd_duplicates_suppressed": (
        "counter",
        "Retried messages answered from the store instead of stored twice",
        {()},
    ),
    "chatd_deliveries": ("counter", "Events handed to connections' outboxes", {()}),
    "chatd_slow_consumer_disconnects": (
        "counter",
        "Connections cut off because their outbox filled",
        {()},
    ),
    "chatd_tickets_issued": ("counter", "/chat tickets issued", {()}),
    "chatd_tickets_rejected": ("counter", "/chat tickets refused", {("reason",)}),
    "chatd_auth_failures": ("counter", "Refused authentications", {("reason",)}),
    "chatd_rate_limited": ("counter", "Requests refused by a rate limit", {("route",)}),
    "chatd_store_commit_seconds": (
        "histogram",
        "Time to commit one store transaction (group commit)",
        {(), ("le",)},
    ),
    "chatd_store_committed_operations": (
        "counter",
        "Store operations committed (many share one transaction)",
        {()},
    ),
    "process_virtual_memory_bytes": ("gauge", "Virtual memory size in bytes.", {()}),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes.", {()}),
    "process_start_time_seconds": (
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        {()},
    ),
    "process_cpu_seconds": ("counter", "Total user and system CPU time spent in seconds.", {()}),
    "process_open_fds": ("gauge", "Number of open file descriptors.", {()}),
    "process_max_fds": ("gauge", "Maximum number of open file descriptors.", {()}),
    "python_info": (
        "gauge",
        "Python platform information",
        {("implementation", "major", "minor", "patchlevel", "version")},
    ),
    "python_gc_objects_collected": ("counter", "Objects collected during gc", {("generation",)}),
    "python_gc_objects_uncollectable": (
        "counter",
        "Uncollectable objects found during GC",
        {("generation",)},
    ),
    "python_gc_collections": (
        "counter",
        "Number of times this generation was collected",
        {("generation",)},
    ),
}

# What Prometheus 2.x sends; 3.x differs only in adding escaping= parameters.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


async def scrape_both(server: Server) -> tuple[str, str]:
    """The text format and the OpenMetrics bodies, their content types checked."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = await http.get(metrics_url(server))
        om = await http.get(metrics_url(server), headers={"Accept": PROMETHEUS_ACCEPT})
    assert text.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert om.headers["content-type"] == (
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    return text.text, om.text


async def test_both_formats_parse_and_keep_every_family(server: Server) -> None:
    # Labelled counters show no samples until something happens; give each one.
    m = server.state.metrics
    m.tickets_rejected["unknown"] += 1
    m.auth_failures["malformed"] += 1
    m.rate_limited["chat"] += 1
    with trio.fail_after(TIMEOUT):
        text, om = await scrape_both(server)

    for parse, body in ((text_string_to_metric_families, text), (openmetrics_families, om)):
        fams = list(parse(body))
        got = {
            f.name: (f.type, f.documentation, {tuple(sorted(s.labels)) for s in f.samples})
            for f in fams
        }
        assert got == FAMILIES
        info = next(f for f in fams if f.name == "python_info").samples[0]
        assert info.labels["version"] == platform.python_version()
        assert info.value == 1

    # Counters: the text format names the family after its `_total` samples, OpenMetrics not.
    assert "# TYPE chatd_messages_stored_total counter\nchatd_messages_stored_total 0.0\n" in text
    assert "# TYPE chatd_messages_stored counter\nchatd_messages_stored_total 0.0\n" in om
    assert 'chatd_store_commit_seconds_bucket{le="+Inf"} 0.0\n' in text
    assert not text.endswith("# EOF\n")
    assert om.endswith("# EOF\n")


async def test_label_values_are_escaped(server: Server) -> None:
    tricky = 'say "hi" \\ bye\nnext line'
    server.state.metrics.rate_limited[tricky] += 1
    with trio.fail_after(TIMEOUT):
        text, om = await scrape_both(server)
    line = 'chatd_rate_limited_total{route="say \\"hi\\" \\\\ bye\\nnext line"} 1.0\n'
    assert line in text
    assert line in om
    for parse, body in ((text_string_to_metric_families, text), (openmetrics_families, om)):
        fam = next(f for f in parse(body) if f.name == "chatd_rate_limited")
        assert [(s.labels, s.value) for s in fam.samples] == [({"route": tricky}, 1)]


def test_help_text_is_escaped_as_each_format_wants() -> None:
    fam = exposition.gauge("x", 'a "quoted" \\ and\nsecond line', 1)
    text = exposition.render_text([fam]).decode()
    om = exposition.render_openmetrics([fam]).decode()
    # The 0.0.4 text format leaves double quotes alone in HELP; OpenMetrics escapes them.
    assert text.startswith('# HELP x a "quoted" \\\\ and\\nsecond line\n')
    assert om.startswith('# HELP x a \\"quoted\\" \\\\ and\\nsecond line\n')
    assert [f.documentation for f in text_string_to_metric_families(text)] == [fam.help]
    assert [f.documentation for f in openmetrics_families(om)] == [fam.help]


def _process_start_from_proc() -> float:
    with open("/proc/stat", "rb") as stat:
        btime = next(float(line.split()[1]) for line in stat if line.startswith(b"btime "))
    with open("/proc/self/stat", "rb") as f:
        ticks = float(f.read().split(b")")[-1].split()[19])
    return btime + ticks / os.sysconf("SC_CLK_TCK")


async def test_process_series_survive_a_hidden_proc_stat(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd's ProcSubset=pid leaves no /proc/stat, where the boot time is read from.
    monkeypatch.setattr(exposition, "PROC_STAT", str(tmp_path / "no-proc-stat"))
    server = await start_server()
    with trio.fail_after(TIMEOUT):
        after = await scrape(server)
    for name in (
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
    ):
        assert after[(name, ())] > 0, name
    # The boot clock stands in for btime: the same start time to within a second or two.
    assert abs(after[("process_start_time_seconds", ())] - _process_start_from_proc()) < 5


# --- the listener's bounds and its part in a graceful shutdown ----------------------------


async def _scrape_raw(stream: trio.SocketStream, *, last: bool = False) -> bytes:
    """One scrape on a raw connection, read to the end of the answer: its status line, or
    b"" when the server closed the connection instead. `last` asks the server to close the
    connection after answering."""
    close = b"Connection: close\r\n" if last else b""
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n")
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            assert chunk, "closed in the middle of an answer"
            body += chunk
    except trio.BrokenResourceError:  # a reset is a refusal too
        return b""
    return head.split(b"\r\n", 1)[0]


async def test_scrapers_beyond_the_limit_are_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter, "MAX_CONNECTIONS", 2)
    host, port = server.running.metrics[0]
    with trio.fail_after(TIMEOUT):
        first = await trio.open_tcp_stream(host, port)
        second = await trio.open_tcp_stream(host, port)
        async with first, second:
            # Both answered, and kept alive: two connections are open at the server.
            assert (await _scrape_raw(first)).startswith(b"HTTP/1.1 200")
            assert (await _scrape_raw(second)).startswith(b"HTTP/1.1 200")
            third = await trio.open_tcp_stream(host, port)
            async with third:
                assert await _scrape_raw(third) == b""
            # The server closes `first` after this answer, and its place is free again.
            # (A close by the scraper would hold it until the keep-alive timeout ran out:
            # hypercorn notices a peer's close only then.)
            assert (await _scrape_raw(first, last=True)).startswith(b"HTTP/1.1 200")
            await trio.testing.wait_all_tasks_blocked()
            again = await trio.open_tcp_stream(host, port)
            async with again:
                assert (await _scrape_raw(again)).startswith(b"HTTP/1.1 200")


async def test_metrics_answer_while_the_server_drains_then_stop(
    start_server: StartServer,
) -> None:
    server = await start_server(server={"shutdown_grace_seconds": 25.0})
    url = metrics_url(server)
    with trio.fail_after(TIMEOUT):
        # A request head that never ends holds the main listener's drain open.
        holder = await trio.open_tcp_stream("127.0.0.1", server.running.http_port)
        async with holder:
            await holder.send_all(b"GET /chat?ticket=x HTTP/1.1\r\nHost: x\r\n")
            await trio.testing.wait_all_tasks_blocked()  # accepted and reading
            server.running.shutdown()
            await server.state.closing.wait()
            async with httpx.AsyncClient(timeout=10) as http:
                during = await http.get(url)
            assert during.status_code == 200
            assert samples(during.text)[("chatd_ready", ())] == 0
        # The held connection is gone, the drain ends, and /metrics stops with the rest.
        await server.stopped.wait()
        host, port = server.running.metrics[0]
        with pytest.raises(OSError):
            await trio.open_tcp_stream(host, port)
