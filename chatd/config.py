"""Configuration: frozen dataclasses loaded from TOML, overridable from the environment.

Every key has a default, so an empty file is a valid config. An unknown key or a value
of the wrong shape is a `ConfigError` naming the key; the CLI turns it into exit status 2
before anything binds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
import re
import tomllib
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatd import toml_writer

ENV_PREFIX = "CHATD_"


class ConfigError(Exception):
    """A config file or environment value is wrong; the message names the key."""


def _listen(default: list[str]) -> Any:
    return field(default_factory=lambda: list(default), metadata={"check": "listen"})


def _pos(default: int | float) -> Any:
    return field(default=default, metadata={"check": "positive"})


def _nonneg(default: int | float) -> Any:
    return field(default=default, metadata={"check": "nonnegative"})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: list[str] = _listen(["127.0.0.1:5700"])
    max_body_bytes: int = _pos(65536)
    cors_max_age_seconds: int = _nonneg(600)
    write_timeout_seconds: float = _pos(10.0)
    max_response_bytes: int = _pos(16 * 1024 * 1024)
    trusted_proxies: list[str] = field(
        default_factory=lambda: ["127.0.0.1", "::1"], metadata={"check": "networks"}
    )
    web_client: bool = True


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str = "chatd.db"
    batch_max: int = _pos(512)
    durability: str = _choice("normal", "normal", "full")
    max_wal_bytes: int = _pos(1024 * 1024 * 1024)
    backend: str = _choice("sqlite", "sqlite", "postgresql")
    # A libpq connection string or URI; used (and required) with backend "postgresql".
    dsn: str = ""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    jwks_url: str = ""
    jwks_refresh_seconds: float = _pos(300.0)
    algorithms: list[str] = field(default_factory=lambda: ["HS256"])
    issuer: str = ""
    audience: str = ""
    leeway_seconds: float = _nonneg(30.0)
    allowed_origins: list[str] = field(default_factory=list)
    user_id_claims: list[str] = field(default_factory=lambda: ["sub", "userId"])
    username_claim: str = "username"
    profile_image_claim: str = "profileImage"
    email_claim: str = "email"
    user_type_claim: str = "userType"
    admin_claim: str = "role"
    admin_value: str = "admin"
    ticket_ttl_seconds: float = _pos(30.0)
    max_tickets_per_user: int = _pos(32)


@dataclass(frozen=True, slots=True)
class ChatConfig:
    max_content_chars: int = _pos(4000)
    max_frame_bytes: int = _pos(65536)
    rate_per_second: float = _pos(20.0)
    rate_burst: int = _pos(40)
    outbox_messages: int = _pos(1024)
    outbox_bytes: int = _pos(4 * 1024 * 1024)
    idempotency_window_seconds: float = _pos(600.0)
    resume_max_messages: int = _pos(1000)
    history_max_limit: int = _pos(200)
    typing_timeout_seconds: float = _pos(5.0)
    ping_interval_seconds: float = _nonneg(30.0)


@dataclass(frozen=True, slots=True)
class StompConfig:
    websocket_listen: list[str] = _listen(["127.0.0.1:15674"])
    tcp_listen: list[str] = _listen(["127.0.0.1:61613"])
    # Empty: derived from the first websocket_listen entry as bound (chatd.server).
    public_url: str = ""
    vhosts: list[str] = field(default_factory=list)
    max_frame_bytes: int = _pos(4 * 1024 * 1024)
    max_connect_frame_bytes: int = _pos(8192)
    max_unauthenticated_connections: int = _pos(1000)
    max_headers: int = _pos(100)
    max_header_bytes: int = _pos(8192)
    max_subscriptions: int = _pos(256)
    max_transaction_bytes: int = _pos(8 * 1024 * 1024)
    transaction_timeout_seconds: float = _pos(60.0)
    heartbeat_min_ms: int = _pos(1000)
    heartbeat_tolerance: float = _pos(2.0)
    login_ttl_seconds: float = _pos(86400.0)
    allow_anonymous: bool = False
    broker_enabled: bool = False
    broker_destinations: list[str] = field(default_factory=list)
    broker_queue_max_messages: int = _pos(10000)
    broker_max_queues: int = _pos(1000)
    broker_max_bytes: int = _pos(64 * 1024 * 1024)
    broker_queue_idle_seconds: float = _pos(600.0)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    shutdown_grace_seconds: float = _pos(10.0)
    max_connections: int = _nonneg(8192)
    max_connections_per_address: int = _nonneg(256)
    # Connections from one address not yet logged in (no request head yet; STOMP: no
    # login yet), every listener together (chatd.net.connections).
    max_unauthenticated_per_address: int = _nonneg(16)


@dataclass(frozen=True, slots=True)
class BusConfig:
    # "memory": this process alone (the default). "rabbitmq": the bus between the nodes of
    # a cluster (chatd.cluster), reached with STOMP at `url`; needs store.backend
    # "postgresql", which every node shares.
    backend: str = _choice("memory", "memory", "rabbitmq")
    # stomp://user:password@host:port/vhost (RabbitMQ's STOMP plugin). Never logged.
    url: str = ""
    # The prefix of this cluster's routing keys on amq.direct and of its nodes' queues:
    # nodes with the same name form one cluster, so two clusters can share a vhost.
    name: str = "chatd"
    # This node's name in logs and on the bus; empty: host name and process id.
    node_name: str = ""
    # Every node says it is alive this often; a node not heard from for node_timeout
    # seconds is taken for dead, and its users' presence corrected.
    heartbeat_seconds: float = _pos(2.0)
    node_timeout_seconds: float = _pos(8.0)
    # Bytes of publications queued for RabbitMQ (the broker slow or away) before the node
    # stops queueing and lets the others catch up from the store when it is back.
    max_pending_bytes: int = _pos(16 * 1024 * 1024)
    reconnect_max_seconds: float = _pos(10.0)
    # A node's publications leave in frames at most this often (milliseconds; the first
    # after a quiet spell at once): RabbitMQ's cost is per frame, not per message.
    batch_ms: float = _nonneg(2.0)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _choice("info", "debug", "info", "warning", "error")
    format: str = _choice("plain", "plain", "json")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # Prometheus /metrics gets its own listener so it can stay private however public
    # [http] is; an empty list turns it off.
    listen: list[str] = _listen(["127.0.0.1:9464"])


@dataclass(frozen=True, slots=True)
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    stomp: StompConfig = field(default_factory=StompConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = field(default="", metadata={"internal": True}, compare=False)


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if not f.metadata.get("internal")
}


def parse_listen(value: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into its parts; raises ValueError."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


def _coerce(key: str, value: Any, hint: Any, from_env: bool) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover


def _check(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    check = meta.get("check")
    if check == "positive" and not value > 0:
        raise ConfigError(f"{key}: expected a number greater than 0, got {value!r}")
    if check == "nonnegative" and not value >= 0:
        raise ConfigError(f"{key}: expected a number of 0 or more, got {value!r}")
    if check == "listen":
        for item in value:
            if item.startswith("fd://"):
                if not item[5:].isdigit():
                    raise ConfigError(f"{key}: expected fd://N, got {item!r}")
                continue
            try:
                parse_listen(item)
            except ValueError as exc:
                raise ConfigError(f'{key}: expected "host:port" entries, {exc}') from None
    if check == "networks":
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ConfigError(
                    f"{key}: expected IP addresses or CIDR networks, got {item!r}"
                ) from None
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")


_ALLOWED_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"}


def _has_cryptography() -> bool:
    # Looked up, not imported: pyjwt loads cryptography's OpenSSL bindings (about 10 MB
    # of RSS) whenever the package is installed, so the default install leaves it out.
    return importlib.util.find_spec("cryptography") is not None


def _validate(cfg: Config) -> None:
    algs = cfg.auth.algorithms
    if not algs:
        raise ConfigError("auth.algorithms: expected at least one algorithm")
    for alg in algs:
        if alg not in _ALLOWED_ALGORITHMS:
            raise ConfigError(
                f"auth.algorithms: {alg!r} is not allowed; expected some of "
                + ", ".join(sorted(_ALLOWED_ALGORITHMS))
            )
    symmetric = any(a.startswith("HS") for a in algs)
    asymmetric = any(not a.startswith("HS") for a in algs)
    if symmetric and asymmetric:
        raise ConfigError("auth.algorithms: mix of HS* and RS*/ES* is not allowed")
    auth = cfg.auth
    if auth.jwks_url:
        if auth.jwt_public_key_file:
            raise ConfigError("auth.jwks_url: set it or auth.jwt_public_key_file, not both")
        if not auth.jwks_url.startswith(("https://", "http://")):
            raise ConfigError(f"auth.jwks_url: expected an https:// URL, got {auth.jwks_url!r}")
        if not asymmetric:
            raise ConfigError(
                "auth.algorithms: a JWKS holds public keys; set the provider's, e.g. [\"RS256\"]"
            )
    if asymmetric and not (auth.jwt_public_key_file or auth.jwks_url):
        raise ConfigError(
            "auth.jwt_public_key_file: required for RS*/ES* algorithms (or auth.jwks_url)"
        )
    if asymmetric and not _has_cryptography():
        raise ConfigError(
            "auth.algorithms: RS*/ES* need the 'cryptography' package;"
            " install chatd with: pip install 'chatd[asymmetric]'"
        )
    if cfg.auth.jwt_secret and len(cfg.auth.jwt_secret) < 32:
        raise ConfigError("auth.jwt_secret: expected at least 32 characters")
    if not cfg.store.path:
        raise ConfigError("store.path: expected a file path")
    if cfg.store.backend == "postgresql":
        if not cfg.store.dsn.strip():
            raise ConfigError("store.dsn: required with store.backend = \"postgresql\"")
        if importlib.util.find_spec("psycopg") is None:
            raise ConfigError(
                "store.backend: \"postgresql\" needs the 'psycopg' package;"
                " install chatd with: pip install 'chatd[cluster]'"
            )
    if not cfg.http.listen:
        raise ConfigError("http.listen: expected at least one address")
    _validate_bus(cfg)


def _validate_bus(cfg: Config) -> None:
    bus = cfg.bus
    if bus.backend == "memory":
        return
    try:
        parse_bus_url(bus.url)
    except ValueError as exc:
        raise ConfigError(f"bus.url: {exc}") from None
    if cfg.store.backend != "postgresql":
        raise ConfigError(
            "bus.backend: \"rabbitmq\" joins a cluster, whose nodes share one store;"
            " set store.backend = \"postgresql\""
        )
    auth = cfg.auth
    if not (auth.jwt_secret or auth.jwt_public_key_file or auth.jwks_url):
        raise ConfigError(
            "auth.jwt_secret: every node of a cluster must check tokens alike; set the same"
            " jwt_secret (or jwt_public_key_file, or jwks_url) on each"
        )
    if bus.node_timeout_seconds <= bus.heartbeat_seconds * 2:
        raise ConfigError(
            "bus.node_timeout_seconds: expected more than twice bus.heartbeat_seconds"
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", bus.name):
        raise ConfigError(f"bus.name: expected letters, digits, - or _, got {bus.name!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", bus.node_name):
        raise ConfigError(
            f"bus.node_name: expected letters, digits, ., - or _, got {bus.node_name!r}"
        )


@dataclass(frozen=True, slots=True)
class BusAddress:
    host: str
    port: int
    login: str
    passcode: str
    vhost: str


def parse_bus_url(url: str) -> BusAddress:
    """`stomp://user:password@host:port/vhost`; raises ValueError saying what is wrong
    (never repeating the password)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme != "stomp":
        raise ValueError("expected stomp://user:password@host:port/vhost")
    try:
        port = parts.port or 61613
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("expected a host, as in stomp://user:password@host:port/vhost")
    path = urllib.parse.unquote(parts.path)
    vhost = path[1:] if len(path) > 1 else "/"
    return BusAddress(
        parts.hostname,
        port,
        urllib.parse.unquote(parts.username or "guest"),
        urllib.parse.unquote(parts.password or "guest"),
        vhost,
    )


# Keys whose values may hold a secret, masked whole when the config is shown.
_SECRET_KEYS = {("auth", "jwt_secret"), ("store", "dsn"), ("bus", "url")}


def _build_section(name: str, cls: type, raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}")
    values: dict[str, Any] = {}
    for fname, f in known.items():
        key = f"{name}.{fname}"
        env_name = f"{ENV_PREFIX}{name.upper()}_{fname.upper()}"
        if env_name in env:
            values[fname] = _coerce(env_name, env[env_name], hints[fname], from_env=True)
        elif fname in raw:
            values[fname] = _coerce(key, raw[fname], hints[fname], from_env=False)
        else:
            continue
        _check(key, values[fname], f.metadata)
    return cls(**values)


def _check_env_names(env: Mapping[str, str]) -> None:
    for env_name in env:
        if not env_name.startswith(ENV_PREFIX) or env_name == "CHATD_CONFIG":
            continue
        rest = env_name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        cls = SECTIONS.get(section)
        if cls is None or key not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"unknown environment setting {env_name}")


def from_mapping(
    raw: Mapping[str, Any], env: Mapping[str, str] | None = None, source: str = ""
) -> Config:
    env = {} if env is None else env
    _check_env_names(env)
    for section, body in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}]: expected a table")
    sections = {
        name: _build_section(name, cls, raw.get(name, {}), env) for name, cls in SECTIONS.items()
    }
    cfg = Config(**sections, source=source)
    _validate(cfg)
    return cfg


def load(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Load a TOML file (or only defaults when `path` is None) and apply the environment."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            # An empty CHATD_CONFIG names "."; a file of the wrong owner or bytes.
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        source = str(p)
    return from_mapping(raw, env, source)


def to_toml(cfg: Config) -> str:
    """The effective config as TOML, with secrets masked."""
    doc: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        values = doc[name] = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            # A DSN may carry a password: masked whole, as parsing it to mask only that
            # would be one more libpq parser to keep right.
            if (name, f.name) in _SECRET_KEYS and value:
                value = "********"
            values[f.name] = value
    return toml_writer.dumps(doc)


def resolve_store_path(cfg: Config, env: Mapping[str, str] | None = None) -> Path:
    """A relative store path lives in systemd's $STATE_DIRECTORY when set, else the cwd."""
    env = os.environ if env is None else env
    p = Path(cfg.store.path).expanduser()
    if not p.is_absolute():
        base = env.get("STATE_DIRECTORY", "").split(":")[0]
        p = Path(base) / p if base else Path.cwd() / p
    return p
