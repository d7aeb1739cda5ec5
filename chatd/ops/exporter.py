"""Prometheus `GET /metrics`: a collector read at scrape time and a small private listener.

The hot path only bumps plain integers in `chatd.ops.metrics.Metrics` and the hub; this
module turns them into Prometheus families when a scrape arrives, so counting costs
nothing between scrapes. The listener is its own tiny h11 server on `[metrics] listen`,
never the public `[http]` one, so /metrics can be kept on loopback or a private network
however public the API is.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import h11
import trio

from chatd.config import parse_listen
from chatd.ops import exposition
from chatd.ops.exposition import Family, counter, gauge, histogram
from chatd.ops.metrics import COMMIT_BUCKETS

if TYPE_CHECKING:
    from chatd.state import ServerState

log = logging.getLogger("chatd.metrics")

METRICS_PATH = "/metrics"
# A scraper that sends nothing for this long is dropped (seconds).
IDLE_TIMEOUT = 60.0
# Scrapers are few; anything beyond this many at once is refused at accept.
MAX_CONNECTIONS = 32
MAX_REQUEST_BYTES = 16 * 1024

# Every series a dashboard expects, exported as 0 before the first connection of its kind.
_CONNECTION_KINDS = (("chat", "websocket"), ("stomp", "websocket"), ("stomp", "tcp"))


class Collector:
    """Everything one scrape exposes: the server's counters, read when Prometheus scrapes,
    then the process and Python families."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        # Read once, as prometheus_client's collectors did: neither changes while we run.
        self.boot_time = exposition.boot_time()
        self.python_info = exposition.python_info()

    def collect(self) -> list[Family]:
        return [
            *chatd_families(self.state),
            *exposition.process_families(self.boot_time),
            self.python_info,
            *exposition.gc_families(),
        ]


def chatd_families(state: ServerState) -> list[Family]:
    m = state.metrics

    conns = gauge("chatd_connections", "Authenticated client connections open now")
    counts: Counter[tuple[str, str]] = Counter({k: 0 for k in _CONNECTION_KINDS})
    for s in state.hub.all_sessions():
        # /chat is WebSocket only; STOMP sessions say which transport carries them.
        counts[(s.protocol, getattr(s, "kind", "websocket"))] += 1
    for (protocol, transport), n in sorted(counts.items()):
        conns.add(n, {"protocol": protocol, "transport": transport})

    ready = state.ready and not state.closing.is_set()
    return [
        conns,
        gauge("chatd_rooms", "Rooms that exist", len(state.rooms)),
        gauge("chatd_ready", "1 while serving, 0 when shutting down", ready),
        counter("chatd_messages_received", "Chat messages received", m.messages_received),
        counter("chatd_messages_stored", "Chat messages committed", m.messages_stored),
        counter(
            "chatd_duplicates_suppressed",
            "Retried messages answered from the store instead of stored twice",
            m.duplicates_suppressed,
        ),
        counter("chatd_deliveries", "Events handed to connections' outboxes", state.hub.deliveries),
        counter(
            "chatd_slow_consumer_disconnects",
            "Connections cut off because their outbox filled",
            m.slow_consumer_disconnects,
        ),
        counter("chatd_tickets_issued", "/chat tickets issued", m.tickets_issued),
        _labelled("chatd_tickets_rejected", "/chat tickets refused", "reason", m.tickets_rejected),
        _labelled("chatd_auth_failures", "Refused authentications", "reason", m.auth_failures),
        _labelled(
            "chatd_rate_limited", "Requests refused by a rate limit", "route", m.rate_limited
        ),
        _commit_histogram(m.commit_buckets, m.commit_count, m.commit_sum),
        counter(
            "chatd_store_committed_operations",
            "Store operations committed (many share one transaction)",
            m.commit_ops,
        ),
    ]


def _labelled(name: str, doc: str, label: str, values: Counter[str]) -> Family:
    fam = counter(name, doc)
    # Copy first: another thread or task may add a key while we iterate.
    for key, n in sorted(dict(values).items()):
        fam.add(n, {label: key})
    return fam


def _commit_histogram(per_bucket: list[int], count: int, total: float) -> Family:
    # Metrics keeps one count per bucket (cheap on the writer thread); Prometheus buckets
    # are cumulative, and +Inf is every observation.
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(COMMIT_BUCKETS, list(per_bucket), strict=True):
        running += n
        buckets.append((_le(bound), running))
    # The writer thread may have counted a commit between our reads; keep the series
    # monotonic rather than exact for that one scrape.
    buckets.append(("+Inf", max(count, running)))
    return histogram(
        "chatd_store_commit_seconds",
        "Time to commit one store transaction (group commit)",
        buckets,
        total,
    )


def _le(bound: float) -> str:
    return repr(float(bound))


# --- the listener --------------------------------------------------------------------------


async def serve_metrics(
    state: ServerState,
    address: str,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics on one `[metrics] listen` entry until cancelled."""
    collector = Collector(state)
    if address.startswith("fd://"):
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=int(address[5:])))
        sock.listen(128)
        listeners = [trio.SocketListener(sock)]
    else:
        host, port = parse_listen(address)
        listeners = await trio.open_tcp_listeners(port, host=host)
    name = listeners[0].socket.getsockname()
    task_status.started((name[0], name[1]))
    active = _Gate(MAX_CONNECTIONS)
    await trio.serve_listeners(partial(_connection, collector, active), listeners)


class _Gate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


async def _connection(collector: Collector, gate: _Gate, stream: trio.SocketStream) -> None:
    """Never raises: a broken scrape is the scraper's problem, not the server's."""
    if gate.open >= gate.limit:
        await trio.aclose_forcefully(stream)
        return
    gate.open += 1
    try:
        await _serve_http(collector, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    except Exception:
        log.exception("metrics connection failed")
    finally:
        gate.open -= 1
        await trio.aclose_forcefully(stream)


async def _serve_http(collector: Collector, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    while True:
        request = None
        with trio.move_on_after(IDLE_TIMEOUT):
            try:
                request = await _read_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await _respond(conn, stream, status, b"bad request\n", close=True)
                return
        if request is None:
            return
        status, body, ctype = _route(collector, request)
        await _respond(conn, stream, status, body, ctype, head=request.method == b"HEAD")
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The next request once its (ignored) body has been read; None when the peer left."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(MAX_REQUEST_BYTES))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _route(collector: Collector, request: h11.Request) -> tuple[int, bytes, str]:
    path = request.target.split(b"?", 1)[0]
    if path != METRICS_PATH.encode():
        return 404, b"not found; try /metrics\n", "text/plain; charset=utf-8"
    if request.method not in (b"GET", b"HEAD"):
        return 405, b"method not allowed\n", "text/plain; charset=utf-8"
    accept = ""
    for name, value in request.headers:
        if name == b"accept":
            accept = value.decode("latin-1")
    body, ctype = exposition.render(collector.collect(), accept)
    return 200, body, ctype


async def _respond(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    ctype: str = "text/plain; charset=utf-8",
    *,
    head: bool = False,
    close: bool = False,
) -> None:
    headers = [("content-type", ctype), ("content-length", str(len(body)))]
    if close:
        headers.append(("connection", "close"))
    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    if not head:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
