"""Prometheus `GET /metrics`: a collector read at scrape time, served on a private listener.

The hot path only bumps plain integers in `chatd.ops.metrics.Metrics` and the hub; this
module turns them into Prometheus families when a scrape arrives, so counting costs
nothing between scrapes. /metrics is a small ASGI app of its own, served by hypercorn
(chatd.net.asgi_server, as the API is) on `[metrics] listen`, never on the public `[http]`
listener, so it can be kept on loopback or a private network however public the API is.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig

from chatd.net.asgi_server import ServeHttp, serve_asgi
from chatd.ops import exposition
from chatd.ops.exposition import Family, counter, gauge, histogram
from chatd.ops.metrics import COMMIT_BUCKETS

if TYPE_CHECKING:
    from chatd.state import ServerState

log = logging.getLogger("chatd.metrics")

METRICS_PATH = "/metrics"
# A scraper that sends nothing for this long in the middle of a request is dropped (s).
IDLE_TIMEOUT = 60
# Between requests, hypercorn keeps a connection this long (s). Short on purpose: hypercorn
# only notices a scraper's close when this runs out, so until then a connection the
# scraper closed still holds one of MAX_CONNECTIONS (and a descriptor).
KEEP_ALIVE_TIMEOUT = 5.0
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
        *_cluster_families(state),
    ]


def _cluster_families(state: ServerState) -> list[Family]:
    """A cluster node's view of the bus; nothing on a single node."""
    bus = state.cluster
    if bus is None:
        return []
    seq = bus.sequencer
    return [
        gauge("chatd_bus_connected", "1 while this node is on the bus", bus.unavailable() is None),
        gauge("chatd_bus_nodes", "Other nodes heard from and alive", len(bus.presence.nodes())),
        counter("chatd_bus_published", "Publications handed to RabbitMQ", bus.published),
        counter("chatd_bus_frames", "Frames that carried them (batches)", bus.frames),
        counter("chatd_bus_received", "Publications from other nodes", bus.received),
        counter(
            "chatd_bus_dropped",
            "Publications not handed to RabbitMQ (away, or past bus.max_pending_bytes)",
            bus.dropped,
        ),
        counter(
            "chatd_bus_foreign",
            "Frames of another cluster under this cluster's [bus] name, dropped",
            bus.foreign,
        ),
        counter(
            "chatd_bus_forged",
            "Frames under this cluster's mark not signed with its key, or sent again, dropped",
            bus.forged,
        ),
        counter(
            "chatd_bus_missed",
            "Frames of other nodes that never came (a reload follows)",
            bus.missed,
        ),
        counter(
            "chatd_bus_oversized",
            "Frames from RabbitMQ past this node's size limits (not chatd's), passed over",
            bus.oversized,
        ),
        counter(
            "chatd_bus_stale",
            "Signed frames older or newer than the bus's time window, dropped"
            " (a reload follows one of a node heard before)",
            bus.stale,
        ),
        counter(
            "chatd_bus_gaps",
            "Chat messages that came before the one committed ahead of them",
            seq.gaps,
        ),
        counter(
            "chatd_bus_filled",
            "Chat messages read from the store because the bus did not bring them",
            seq.filled,
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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TEXT = b"text/plain; charset=utf-8"


class MetricsApp:
    """The ASGI app of the metrics listener: `GET`/`HEAD /metrics`, and 404 or 405 for
    anything else. A plain ASGI callable: a framework would cost more memory than the
    route it serves."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "websocket":
            await send({"type": "websocket.close"})  # hypercorn answers it with a 403
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, send: Send) -> None:
        status, body, ctype = self.route(scope)
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        # hypercorn leaves the body out of a HEAD answer; the length stays the GET's.
        await send({"type": "http.response.body", "body": body})

    def route(self, scope: Scope) -> tuple[int, bytes, bytes]:
        if scope["path"] != METRICS_PATH:
            return 404, b"not found; try /metrics\n", _TEXT
        if scope["method"] not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", _TEXT
        accept = ""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
        body, ctype = exposition.render(self.collector.collect(), accept)
        return 200, body, ctype.encode("latin-1")


def hypercorn_config(graceful_timeout: float) -> HypercornConfig:
    hc = HypercornConfig()
    hc.accesslog = None
    hc.errorlog = log
    hc.graceful_timeout = graceful_timeout
    hc.include_server_header = False
    hc.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    hc.read_timeout = IDLE_TIMEOUT
    hc.h11_max_incomplete_size = MAX_REQUEST_BYTES
    return hc


async def serve_metrics(
    state: ServerState,
    listeners: Sequence[trio.SocketListener],
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics on the `[metrics] listen` listeners until `stop` is set, then let
    a scrape in progress finish within `[server] shutdown_grace_seconds`."""
    open_now = 0

    async def gate(stream: trio.SocketStream, serve_http: ServeHttp) -> None:
        nonlocal open_now
        if open_now >= MAX_CONNECTIONS:
            await trio.aclose_forcefully(stream)
            return
        open_now += 1
        try:
            await serve_http(stream)
        finally:
            open_now -= 1

    app = MetricsApp(Collector(state))
    hc = hypercorn_config(state.cfg.server.shutdown_grace_seconds)
    await serve_asgi(app, hc, listeners, stop, on_connection=gate, task_status=task_status)
