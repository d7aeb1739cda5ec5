"""Prometheus `GET /metrics`: a collector read at scrape time and a small private listener.

The hot path only bumps plain integers in `chatd.metrics.Metrics` and the hub; this
module turns them into Prometheus families when a scrape arrives, so counting costs
nothing between scrapes. The listener is its own tiny h11 server on `[metrics] listen`,
never the public `[http]` one, so /metrics can be kept on loopback or a private network
however public the API is.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

import h11
import trio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .config import parse_listen
from .metrics import COMMIT_BUCKETS

if TYPE_CHECKING:
    from .state import ServerState

log = logging.getLogger("chatd.metrics")

METRICS_PATH = "/metrics"
# A scraper that sends nothing for this long is dropped (seconds).
IDLE_TIMEOUT = 60.0
# Scrapers are few; anything beyond this many at once is refused at accept.
MAX_CONNECTIONS = 32
MAX_REQUEST_BYTES = 16 * 1024

# Every series a dashboard expects, exported as 0 before the first connection of its kind.
_CONNECTION_KINDS = (("chat", "websocket"), ("stomp", "websocket"), ("stomp", "tcp"))


class ChatdCollector(Collector):
    """Reads the server's counters when Prometheus scrapes."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        m = state.metrics

        conns = GaugeMetricFamily(
            "chatd_connections",
            "Authenticated client connections open now",
            labels=["protocol", "transport"],
        )
        counts: Counter[tuple[str, str]] = Counter({k: 0 for k in _CONNECTION_KINDS})
        for s in state.hub.all_sessions():
            # /chat is WebSocket only; STOMP sessions say which transport carries them.
            counts[(s.protocol, getattr(s, "kind", "websocket"))] += 1
        for (protocol, transport), n in sorted(counts.items()):
            conns.add_metric([protocol, transport], n)
        yield conns

        yield GaugeMetricFamily("chatd_rooms", "Rooms that exist", value=len(state.rooms))
        ready = state.ready and not state.closing.is_set()
        yield GaugeMetricFamily("chatd_ready", "1 while serving, 0 when shutting down", value=ready)

        yield _counter("chatd_messages_received", "Chat messages received", m.messages_received)
        yield _counter("chatd_messages_stored", "Chat messages committed", m.messages_stored)
        yield _counter(
            "chatd_duplicates_suppressed",
            "Retried messages answered from the store instead of stored twice",
            m.duplicates_suppressed,
        )
        yield _counter(
            "chatd_deliveries", "Events handed to connections' outboxes", state.hub.deliveries
        )
        yield _counter(
            "chatd_slow_consumer_disconnects",
            "Connections cut off because their outbox filled",
            m.slow_consumer_disconnects,
        )
        yield _counter("chatd_tickets_issued", "/chat tickets issued", m.tickets_issued)
        yield _labelled(
            "chatd_tickets_rejected", "/chat tickets refused", "reason", m.tickets_rejected
        )
        yield _labelled("chatd_auth_failures", "Refused authentications", "reason", m.auth_failures)
        yield _labelled(
            "chatd_rate_limited", "Requests refused by a rate limit", "route", m.rate_limited
        )
        yield _commit_histogram(m.commit_buckets, m.commit_count, m.commit_sum)
        yield _counter(
            "chatd_store_committed_operations",
            "Store operations committed (many share one transaction)",
            m.commit_ops,
        )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, values: Counter[str]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    # Copy first: another thread or task may add a key while we iterate.
    for key, n in sorted(dict(values).items()):
        fam.add_metric([key], n)
    return fam


def _commit_histogram(per_bucket: list[int], count: int, total: float) -> HistogramMetricFamily:
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
    return HistogramMetricFamily(
        "chatd_store_commit_seconds",
        "Time to commit one store transaction (group commit)",
        buckets=buckets,
        sum_value=total,
    )


def _le(bound: float) -> str:
    return repr(float(bound))


class _ProcessCollector(ProcessCollector):
    """prometheus-client reads the boot time from /proc/stat, which systemd's
    ProcSubset=pid hides; without it every process_* series would silently vanish."""

    def _boot_time(self) -> float:
        try:
            return float(super()._boot_time())
        except OSError:
            return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def make_registry(state: ServerState) -> CollectorRegistry:
    """A registry of our own (not the global one), so several servers in one test process
    each report their own numbers."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ChatdCollector(state))
    _ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The exposition body and its content type (OpenMetrics when the scraper asks)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


# --- the listener --------------------------------------------------------------------------


async def serve_metrics(
    state: ServerState,
    address: str,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics on one `[metrics] listen` entry until cancelled."""
    registry = make_registry(state)
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
    await trio.serve_listeners(partial(_connection, registry, active), listeners)


class _Gate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


async def _connection(registry: CollectorRegistry, gate: _Gate, stream: trio.SocketStream) -> None:
    """Never raises: a broken scrape is the scraper's problem, not the server's."""
    if gate.open >= gate.limit:
        await trio.aclose_forcefully(stream)
        return
    gate.open += 1
    try:
        await _serve_http(registry, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    except Exception:
        log.exception("metrics connection failed")
    finally:
        gate.open -= 1
        await trio.aclose_forcefully(stream)


async def _serve_http(registry: CollectorRegistry, stream: trio.SocketStream) -> None:
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
        status, body, ctype = _route(registry, request)
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


def _route(registry: CollectorRegistry, request: h11.Request) -> tuple[int, bytes, str]:
    path = request.target.split(b"?", 1)[0]
    if path != METRICS_PATH.encode():
        return 404, b"not found; try /metrics\n", "text/plain; charset=utf-8"
    if request.method not in (b"GET", b"HEAD"):
        return 405, b"method not allowed\n", "text/plain; charset=utf-8"
    accept = ""
    for name, value in request.headers:
        if name == b"accept":
            accept = value.decode("latin-1")
    body, ctype = render(registry, accept)
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
