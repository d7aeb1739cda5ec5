"""Everything one running server shares, built once at start."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import trio

from chatd.auth import Authenticator, Revocations
from chatd.broker import Broker, MemoryBroker
from chatd.config import Config
from chatd.hub import Hub
from chatd.net import wire
from chatd.net.budget import ByteBudget
from chatd.net.connections import Connections
from chatd.ops.metrics import Metrics
from chatd.rooms import Rooms
from chatd.service import ChatService
from chatd.stomp.general_broker import GeneralBroker
from chatd.stomp.heartbeats import Heartbeats
from chatd.stomp.logins import StompLogins
from chatd.store.api import StoreAPI
from chatd.ticketws.tickets import SharedTicketBook, TicketBook, TicketStore


@dataclass(eq=False)
class ServerState:
    cfg: Config
    auth: Authenticator
    store: StoreAPI
    rooms: Rooms
    hub: Hub
    service: ChatService
    tickets: TicketBook | SharedTicketBook
    metrics: Metrics
    stomp_logins: StompLogins | None = None
    # The one list of revoked credentials, shared by the Authenticator, the STOMP logins
    # and the service (and kept in the store).
    revocations: Revocations = field(default_factory=Revocations)
    stomp_broker: GeneralBroker | None = None
    closing: trio.Event = field(default_factory=trio.Event)
    # STOMP connections that have not sent CONNECT yet: not in the hub, but shutdown
    # must still tell them.
    unconnected: set[Any] = field(default_factory=set)
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    ready: bool = False
    # In a cluster ([bus] backend = "rabbitmq"): the broker to the other nodes, which
    # `serve` runs; None on a single node.
    cluster: Any = None
    # Open connections on every public listener, in total and per client address.
    connections: Connections = field(default_factory=Connections)
    # The bytes of large HTTP responses (history pages) held at once ([http] max_response_bytes).
    response_budget: ByteBudget = field(default_factory=ByteBudget)

    def __post_init__(self) -> None:
        self._limit_connections(self.cfg)

    def _limit_connections(self, cfg: Config) -> None:
        server = cfg.server
        self.connections.configure(
            server.max_connections,
            server.max_connections_per_address,
            cfg.http.trusted_proxies,
            server.max_unauthenticated_per_address,
        )

    def apply_config(self, cfg: Config, auth: Authenticator) -> None:
        self.cfg = cfg
        self._limit_connections(cfg)
        auth.revocations = self.revocations
        self.auth = auth
        self.service.reconfigure(cfg)
        self.tickets.ttl = cfg.auth.ticket_ttl_seconds
        self.tickets.max_per_user = cfg.auth.max_tickets_per_user
        if self.stomp_logins is not None:
            self.stomp_logins.ttl = cfg.stomp.login_ttl_seconds

    @classmethod
    def build(cls, cfg: Config, auth: Authenticator, store: StoreAPI) -> ServerState:
        rooms = Rooms(store.load_rooms_sync())
        hub = Hub(rooms)
        metrics = Metrics()
        store.set_commit_observer(metrics.observe_commit)
        revocations = auth.revocations = Revocations(store.load_revocations_sync())
        broker: Broker
        if cfg.bus.backend == "rabbitmq":
            # Imported only then: a default server never loads the cluster's code.
            from chatd.cluster.bus import RabbitBroker
            from chatd.store.postgres import PgStore
            from chatd.store.postgres.queries import CLUSTER_BUS_KEY, CLUSTER_MARK

            # The nodes of one database are one cluster: they share its mark and the key
            # their frames are signed with.
            assert isinstance(store, PgStore)
            origin = store.shared_secret_sync(CLUSTER_MARK, secrets.token_hex(8))
            key = bytes.fromhex(store.shared_secret_sync(CLUSTER_BUS_KEY, secrets.token_hex(32)))
            cluster = RabbitBroker(cfg.bus, hub, store, origin=origin, key=key)
            broker = cluster
        else:
            cluster = None
            broker = MemoryBroker(hub)
        service = ChatService(
            cfg, store, rooms, hub, broker, metrics, revocations=revocations,
            resyncs=cluster is not None,
        )  # fmt: skip
        if cluster is not None:
            cluster.on_resync = service.resync
        store.set_hooks_scope(wire.corked if cluster is None else cluster.hooks_scope)
        general = (
            GeneralBroker(
                cfg.stomp.broker_destinations,
                cfg.stomp.broker_queue_max_messages,
                max_queues=cfg.stomp.broker_max_queues,
                max_bytes=cfg.stomp.broker_max_bytes,
                idle_seconds=cfg.stomp.broker_queue_idle_seconds,
                clock=trio.current_time,
            )
            if cfg.stomp.broker_enabled
            else None
        )
        tickets: TicketBook | SharedTicketBook
        if cluster is not None:
            # A ticket bought from one node is redeemed at whichever the load balancer
            # picks: the nodes share them through the store.
            shared: TicketStore = store  # type: ignore[assignment]
            tickets = SharedTicketBook(
                shared, cfg.auth.ticket_ttl_seconds, cfg.auth.max_tickets_per_user
            )
        else:
            tickets = TicketBook(
                cfg.auth.ticket_ttl_seconds, trio.current_time, cfg.auth.max_tickets_per_user
            )
        return cls(
            cfg,
            auth,
            store,
            rooms,
            hub,
            service,
            tickets,
            metrics,
            stomp_broker=general,
            revocations=revocations,
            cluster=cluster,
        )
