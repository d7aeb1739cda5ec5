"""Start and stop a whole chatd: store, HTTP (with /chat and /ws), STOMP listeners."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig

from chatd import config as config_mod
from chatd.auth import Authenticator, load_or_create_secret, secret_path_for
from chatd.config import Config, resolve_store_path
from chatd.http.app import create_app
from chatd.jwks import JwksKeys
from chatd.net.front import serve_front
from chatd.net.handshake import WsHandler
from chatd.net.listeners import BoundListeners, address_of
from chatd.net.websocket import CLOSE_GOING_AWAY
from chatd.ops import logs, sdnotify
from chatd.ops.exporter import serve_metrics
from chatd.state import ServerState
from chatd.stomp.logins import StompLogins, stomp_key_path
from chatd.stomp.transports import serve_stomp_tcp, serve_stomp_websocket, serve_stomp_ws
from chatd.store import Store, StoreAPI
from chatd.store.errors import StoreError
from chatd.ticketws.session import serve_chat

log = logging.getLogger("chatd.server")

TICKET_SWEEP_SECONDS = 10.0


@dataclass(eq=False)
class Running:
    """What `serve` hands back through `task_status`: where it listens, and a way to stop."""

    state: ServerState
    http: list[tuple[str, int]] = field(default_factory=list)
    stomp_ws: list[tuple[str, int]] = field(default_factory=list)
    stomp_tcp: list[tuple[str, int]] = field(default_factory=list)
    metrics: list[tuple[str, int]] = field(default_factory=list)
    # True when the HTTP listeners came from systemd (socket activation).
    socket_activated: bool = False
    # The identity provider's keys ([auth] jwks_url), fetched by the server's own task and
    # kept across reloads; every Authenticator verifies with this one holder.
    jwks: JwksKeys = field(default_factory=JwksKeys)
    _stop: trio.Event = field(default_factory=trio.Event)

    @property
    def http_port(self) -> int:
        return self.http[0][1]

    @property
    def stomp_ws_port(self) -> int:
        return self.stomp_ws[0][1]

    @property
    def stomp_tcp_port(self) -> int:
        return self.stomp_tcp[0][1]

    def shutdown(self) -> None:
        self._stop.set()

    def status(self) -> str:
        """One line for systemd's STATUS= (`systemctl status chatd`)."""
        hub = self.state.hub
        return f"{hub.count('chat')} /chat, {hub.count('stomp')} STOMP connections"

    def reload(self, path: str | None) -> bool:
        """Re-read the config and apply what can change live; keep the old one on error."""
        state = self.state
        try:
            new = config_mod.load(path)
            auth = make_authenticator(new, create=True, jwks=self.jwks)
        except (config_mod.ConfigError, OSError, ValueError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        old = state.cfg
        if self.socket_activated:
            # The listeners are systemd's, whatever the file says.
            new = dataclasses.replace(
                new, http=dataclasses.replace(new.http, listen=old.http.listen)
            )
        new = with_public_url(new, self.stomp_ws, self.http)
        fixed = [
            f"{section}.{key}"
            for section, key in _RESTART_ONLY
            if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)
        ]
        if fixed:
            log.warning(
                "reload: these settings only change on restart: %s; restart chatd to apply them",
                ", ".join(fixed),
            )
        state.apply_config(new, auth)
        self.jwks.configure(new.auth.jwks_url, new.auth.jwks_refresh_seconds)
        logs.setup(new.log.level, new.log.format)
        log.info("reload: config applied from %s", new.source)
        return True


_RESTART_ONLY = [
    ("http", "listen"),
    ("store", "path"),
    ("store", "batch_max"),
    ("store", "durability"),
    ("store", "max_wal_bytes"),
    ("store", "backend"),
    ("store", "dsn"),
    ("stomp", "websocket_listen"),
    ("stomp", "tcp_listen"),
    ("metrics", "listen"),
]


def open_store(cfg: Config) -> StoreAPI:
    """The store `[store] backend` names. PostgreSQL's is imported only when chosen: a
    default server never loads psycopg."""
    if cfg.store.backend == "postgresql":
        from chatd.store.postgres import PgStore

        return PgStore(cfg.store.dsn, cfg.store.batch_max)
    return Store(
        resolve_store_path(cfg),
        cfg.store.batch_max,
        durability=cfg.store.durability,
        max_wal_bytes=cfg.store.max_wal_bytes,
    )


class MissingSecret(ValueError):
    """No JWT secret where the server keeps it: a command other than `serve` never makes
    one, since a secret it made would sign tokens the running server refuses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"no JWT secret at {path}; `chatd serve` writes it there on its first start"
            " when [auth] jwt_secret is empty. Start the server first, or run this command"
            " as the service does: the same [store] path, and STATE_DIRECTORY when that"
            " path is relative (/var/lib/chatd under the shipped unit)"
        )


def make_authenticator(
    cfg: Config, *, create: bool = False, jwks: JwksKeys | None = None
) -> Authenticator:
    """The server's Authenticator. The secret file is the one the service uses (the store
    path resolved as the server resolves it); only the server passes `create`."""
    secret = cfg.auth.jwt_secret or None
    if secret is None and not (cfg.auth.jwt_public_key_file or cfg.auth.jwks_url):
        path = secret_path_for(resolve_store_path(cfg))
        if create:
            secret = _server_secret(path, "a JWT secret")
        else:
            try:
                secret = path.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                raise MissingSecret(path) from None
    return Authenticator(cfg.auth, secret, jwks=jwks)


def _stomp_login_key(cfg: Config, store: StoreAPI) -> str:
    """The key that signs issued STOMP logins. On PostgreSQL it is kept in the database,
    so every node of a cluster accepts the logins any of them issued; on SQLite in a
    file beside the database."""
    if cfg.store.backend == "postgresql":
        from chatd.store.postgres import PgStore
        from chatd.store.postgres.queries import STOMP_LOGIN_KEY

        assert isinstance(store, PgStore)
        return store.shared_secret_sync(STOMP_LOGIN_KEY, secrets.token_urlsafe(32))
    return _server_secret(stomp_key_path(resolve_store_path(cfg)), "the STOMP login key")


def _server_secret(path: Path, what: str) -> str:
    existed = path.exists()
    value = load_or_create_secret(path)
    if not existed:
        # The path, never the value: an operator looking for the file that signs tokens.
        log.info("generated %s in %s", what, path)
    return value


_WILDCARDS = {"0.0.0.0", "::", ""}


def with_public_url(
    cfg: Config, stomp_ws: list[tuple[str, int]], http: list[tuple[str, int]]
) -> Config:
    """`cfg` with [stomp] public_url as configured or, left empty, derived: /ws on the
    first STOMP WebSocket listener as bound (port 0 and fd://N resolved), else on the
    first HTTP listener, which serves /ws too."""
    if cfg.stomp.public_url:
        return cfg
    url = ""
    for host, port in [*stomp_ws, *http]:
        if not port:  # a Unix socket: no URL a client could use
            continue
        if host in _WILDCARDS:
            # Every address: which one clients reach is not for chatd to guess.
            log.warning(
                "[stomp] public_url is unset and STOMP listens on all addresses (%s:%d):"
                " /chat-ws/connect hands out ws://localhost:%d/ws; set public_url to the"
                " URL clients reach",
                host,
                port,
                port,
            )
            host = "localhost"
        url = f"ws://[{host}]:{port}/ws" if ":" in host else f"ws://{host}:{port}/ws"
        break
    log.info("[stomp] public_url unset: /chat-ws/connect hands out stompUrl %s", url or "-")
    return dataclasses.replace(cfg, stomp=dataclasses.replace(cfg.stomp, public_url=url))


def hypercorn_config(cfg: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.accesslog = None  # access lines would carry `?ticket=` query strings
    hc.errorlog = logging.getLogger("chatd.http.server")
    hc.graceful_timeout = cfg.server.shutdown_grace_seconds
    hc.include_server_header = False
    return hc


async def _sweep_tickets(state: ServerState) -> None:
    while True:
        await trio.sleep(TICKET_SWEEP_SECONDS)
        try:
            await state.tickets.sweep_async()
        except StoreError as exc:  # a cluster's tickets are in the store
            log.warning("tickets: cannot sweep expired tickets: %s", exc)


async def _keepalive(state: ServerState) -> None:
    """One task pings every quiet /chat connection, instead of a timer per connection."""
    while True:
        interval = state.cfg.chat.ping_interval_seconds
        if not interval:
            await trio.sleep(60)
            continue
        await trio.sleep(interval)
        now = trio.current_time()
        for session in state.hub.all_sessions():
            if session.protocol == "chat":
                try:
                    session.ws.keepalive(now, interval)  # type: ignore[attr-defined]
                except Exception:  # one connection's fault must not stop the pings
                    log.exception("keepalive failed for a /chat connection")


async def _serve_http(
    state: ServerState,
    listeners: list[trio.SocketListener],
    stop: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    routes: dict[str, WsHandler] = {
        "/chat": partial(serve_chat, state),
        "/ws": partial(serve_stomp_ws, state),
    }
    try:
        await serve_front(
            create_app(state),
            hypercorn_config(state.cfg),
            routes,
            listeners,
            stop,
            connections=state.connections,
            write_timeout=lambda: state.cfg.http.write_timeout_seconds,
            task_status=task_status,
        )
    finally:
        done.set()


async def _serve_metrics(
    state: ServerState,
    listeners: list[trio.SocketListener],
    stop: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await serve_metrics(state, listeners, stop, task_status=task_status)
    finally:
        done.set()


async def _serve_stomp(
    state: ServerState,
    bound: BoundListeners,
    scope: trio.CancelScope,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            if bound.stomp_websocket:
                await nursery.start(
                    serve_stomp_websocket, state, bound.stomp_websocket, handler_nursery
                )
            if bound.stomp_tcp:
                await nursery.start(serve_stomp_tcp, state, bound.stomp_tcp, handler_nursery)
            task_status.started()


def _addrs(addrs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{h}:{p}" for h, p in addrs) or "-"


def _activated_http(cfg: Config, inherited: list[int]) -> list[str]:
    """The sockets systemd passed that the HTTP listener takes: every one that no other
    listener names as `fd://N` in the config."""
    others = {*cfg.stomp.websocket_listen, *cfg.stomp.tcp_listen, *cfg.metrics.listen}
    return [f"fd://{fd}" for fd in inherited if f"fd://{fd}" not in others]


async def serve(
    cfg: Config,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until `Running.shutdown()` is called, then shut down gracefully."""
    activated = _activated_http(cfg, sdnotify.listen_fds())
    if activated:
        # Socket activation (systemd/chatd.socket): systemd holds the HTTP listeners, so
        # connections wait in their backlog across restarts instead of being refused.
        cfg = dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, listen=activated))
    if log.isEnabledFor(logging.DEBUG):
        # to_toml masks the JWT secret.
        log.debug("effective config from %s: %s", cfg.source, config_mod.to_toml(cfg))
    # Every listener is bound before any state is touched: a port that is taken (often by
    # a chatd already running on the same database) fails here, database and secrets
    # untouched, with a ListenError naming the listener and the address.
    bound = await BoundListeners.open(
        cfg.http.listen, cfg.stomp.websocket_listen, cfg.stomp.tcp_listen, cfg.metrics.listen
    )
    cfg = with_public_url(
        cfg,
        [address_of(lst) for lst in bound.stomp_websocket],
        [address_of(lst) for lst in bound.http],
    )
    try:
        jwks = JwksKeys(cfg.auth.jwks_url, cfg.auth.jwks_refresh_seconds)
        auth = make_authenticator(cfg, create=True, jwks=jwks)
        store = open_store(cfg)
    except BaseException:
        bound.close()
        raise
    try:
        state = ServerState.build(cfg, auth, store)
        state.stomp_logins = StompLogins(
            _stomp_login_key(cfg, store).encode(),
            cfg.stomp.login_ttl_seconds,
            revocations=state.revocations,
        )
        running = Running(state, socket_activated=bool(activated), jwks=jwks)
        http_stop = trio.Event()
        listen_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.service.expire_typing)
            nursery.start_soon(state.service.expiry.run)
            nursery.start_soon(_sweep_tickets, state)
            nursery.start_soon(_keepalive, state)
            nursery.start_soon(state.heartbeats.run)
            nursery.start_soon(jwks.run)
            nursery.start_soon(sdnotify.watchdog_loop)
            if state.cluster is not None:
                await nursery.start(state.cluster.run)
            http_done = trio.Event()
            running.http = [address_of(lst) for lst in bound.http]
            running.stomp_ws = [address_of(lst) for lst in bound.stomp_websocket]
            running.stomp_tcp = [address_of(lst) for lst in bound.stomp_tcp]
            running.metrics = [address_of(lst) for lst in bound.metrics]
            await nursery.start(_serve_http, state, bound.http, http_stop, http_done)
            await nursery.start(_serve_stomp, state, bound, listen_scope, nursery)
            metrics_stop, metrics_done = trio.Event(), trio.Event()
            if bound.metrics:
                await nursery.start(
                    _serve_metrics, state, bound.metrics, metrics_stop, metrics_done
                )
            else:
                metrics_done.set()
            state.ready = True
            log.info(
                "ready: http %s; stomp websocket %s; stomp tcp %s; metrics %s; %d rooms",
                _addrs(running.http),
                _addrs(running.stomp_ws),
                _addrs(running.stomp_tcp),
                _addrs(running.metrics),
                len(state.rooms),
            )
            status = running.status()
            sdnotify.ready(status)
            nursery.start_soon(sdnotify.status_loop, running.status, status)
            task_status.started(running)
            await running._stop.wait()

            log.info("shutting down")
            sdnotify.stopping()
            state.ready = False
            state.closing.set()
            http_stop.set()
            listen_scope.cancel()
            state.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
            for session in list(state.unconnected):
                session.close(CLOSE_GOING_AWAY, "server shutting down")
            deadline = trio.current_time() + cfg.server.shutdown_grace_seconds
            with trio.move_on_at(deadline):
                await state.hub.wait_empty()
                await http_done.wait()
            # /metrics answers while the sessions drain (chatd_ready says 0), then stops
            # as the API did: no new scrapes, the one in progress within the same grace.
            metrics_stop.set()
            with trio.move_on_at(deadline):
                await metrics_done.wait()
            if state.cluster is not None:
                await state.cluster.aclose()
            nursery.cancel_scope.cancel()
    finally:
        bound.close()
        with trio.CancelScope(shield=True):
            await store.aclose()
        log.info("stopped")
