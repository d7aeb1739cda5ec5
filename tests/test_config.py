"""Config loading: defaults, TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from chatd import config as config_mod
from chatd.config import ConfigError, from_mapping, load, parse_listen, to_toml

REPO = Path(__file__).resolve().parent.parent
SECRET = "s" * 32


def cfg_of(raw: dict[str, Any] | None = None, **env: str) -> config_mod.Config:
    return from_mapping(raw or {}, env=env)


def error_of(raw: dict[str, Any] | None = None, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        cfg_of(raw, **env)
    return str(info.value)


# --- defaults ------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = cfg_of()
    assert cfg.http.listen == ["127.0.0.1:5700"]
    assert cfg.store.path == "chatd.db"
    assert cfg.auth.jwt_secret == ""
    assert cfg.auth.algorithms == ["HS256"]
    assert cfg.auth.allowed_origins == []
    assert cfg.auth.user_id_claims == ["sub", "userId"]
    assert cfg.auth.ticket_ttl_seconds == 30.0
    assert cfg.chat.max_content_chars == 4000
    assert cfg.server.shutdown_grace_seconds == 10.0
    assert cfg.log.level == "info"
    assert load(None, env={}) == cfg
    assert load(None, env={}).source == "(defaults)"


def test_shipped_chatd_toml_documents_every_key_with_its_default() -> None:
    path = REPO / "chatd.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    for name, cls in config_mod.SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(raw[name]) == fields, f"[{name}] in chatd.toml differs from the code"
    assert set(raw) == set(config_mod.SECTIONS)
    cfg = load(path, env={})
    assert cfg == cfg_of()
    assert cfg.source == str(path)


def test_toml_values_and_int_to_float() -> None:
    cfg = cfg_of(
        {
            "http": {"listen": ["0.0.0.0:80", "[::1]:81", "fd://3"]},
            "auth": {"leeway_seconds": 5, "allowed_origins": ["https://a.example"]},
            "stomp": {"allow_anonymous": True},
            "chat": {"rate_per_second": 2},
        }
    )
    assert cfg.http.listen == ["0.0.0.0:80", "[::1]:81", "fd://3"]
    assert cfg.auth.leeway_seconds == 5.0 and isinstance(cfg.auth.leeway_seconds, float)
    assert cfg.auth.allowed_origins == ["https://a.example"]
    assert cfg.stomp.allow_anonymous is True
    assert cfg.chat.rate_per_second == 2.0


def test_config_is_frozen() -> None:
    cfg = cfg_of()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.http.listen = []  # type: ignore[misc]


# --- environment ---------------------------------------------------------------------------


def test_env_overrides_lists_bools_ints_floats_strings() -> None:
    cfg = cfg_of(
        {"http": {"listen": ["127.0.0.1:1"]}, "chat": {"rate_burst": 3}},
        CHATD_HTTP_LISTEN="0.0.0.0:5700, [::]:5701 ,",
        CHATD_AUTH_ALLOWED_ORIGINS="https://a.example,https://b.example",
        CHATD_STOMP_ALLOW_ANONYMOUS="yes",
        CHATD_CHAT_RATE_BURST=" 7 ",
        CHATD_CHAT_RATE_PER_SECOND="2.5",
        CHATD_AUTH_JWT_SECRET=SECRET,
        CHATD_LOG_FORMAT="json",
        CHATD_CONFIG="/ignored/here.toml",
    )
    assert cfg.http.listen == ["0.0.0.0:5700", "[::]:5701"]
    assert cfg.auth.allowed_origins == ["https://a.example", "https://b.example"]
    assert cfg.stomp.allow_anonymous is True
    assert cfg.chat.rate_burst == 7
    assert cfg.chat.rate_per_second == 2.5
    assert cfg.auth.jwt_secret == SECRET
    assert cfg.log.format == "json"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("ON", True), ("0", False), ("False", False), ("no", False)],
)
def test_env_bools(text: str, value: bool) -> None:
    assert cfg_of(CHATD_STOMP_ALLOW_ANONYMOUS=text).stomp.allow_anonymous is value


def test_env_empty_list() -> None:
    cfg = cfg_of(
        {"auth": {"allowed_origins": ["https://a.example"]}}, CHATD_AUTH_ALLOWED_ORIGINS=""
    )
    assert cfg.auth.allowed_origins == []


def test_load_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[chat]\nrate_burst = 3\n[store]\npath = "x.db"\n')
    monkeypatch.setenv("CHATD_CHAT_RATE_BURST", "9")
    cfg = load(path)
    assert cfg.chat.rate_burst == 9
    assert cfg.store.path == "x.db"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"CHATD_STOMP_ALLOW_ANONYMOUS": "maybe"},
            "CHATD_STOMP_ALLOW_ANONYMOUS: expected true or false",
        ),
        ({"CHATD_CHAT_RATE_BURST": "lots"}, "CHATD_CHAT_RATE_BURST: expected an integer"),
        ({"CHATD_CHAT_RATE_BURST": "2.5"}, "CHATD_CHAT_RATE_BURST: expected an integer"),
        ({"CHATD_CHAT_RATE_PER_SECOND": "fast"}, "CHATD_CHAT_RATE_PER_SECOND: expected a number"),
        ({"CHATD_CHAT_RATE_BURST": "0"}, "chat.rate_burst: expected a number greater than 0"),
        ({"CHATD_HTTP_LISTEN": "localhost"}, 'http.listen: expected "host:port"'),
    ],
)
def test_env_bad_values_name_the_variable_or_key(env: dict[str, str], expected: str) -> None:
    assert expected in error_of(**env)


@pytest.mark.parametrize(
    "name", ["CHATD_HTTP_LISTNE", "CHATD_NOPE_KEY", "CHATD_HTTP", "CHATD_", "CHATD_SOURCE_X"]
)
def test_unknown_chatd_env_var_is_an_error(name: str) -> None:
    assert error_of(**{name: "1"}) == f"unknown environment setting {name}"


def test_other_env_vars_are_ignored() -> None:
    cfg_of(HOME="/root", PATH="/bin", CHAT_HTTP_LISTEN="x", chatd_http_listne="x")


# --- errors from the file --------------------------------------------------------------------


def test_unknown_key_is_named() -> None:
    assert error_of({"http": {"listne": ["127.0.0.1:1"]}}) == "unknown key http.listne"
    assert error_of({"auth": {"jwt_secert": "x"}}) == "unknown key auth.jwt_secert"


def test_unknown_section_is_named() -> None:
    assert error_of({"htttp": {"listen": []}}) == "unknown section [htttp]"
    assert error_of({"source": {}}) == "unknown section [source]"


def test_section_must_be_a_table() -> None:
    assert error_of({"http": 5}) == "[http]: expected a table"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"chat": {"rate_burst": "10"}}, "chat.rate_burst: expected an integer, got '10'"),
        ({"chat": {"rate_burst": True}}, "chat.rate_burst: expected an integer"),
        ({"chat": {"rate_burst": 1.5}}, "chat.rate_burst: expected an integer"),
        ({"chat": {"rate_burst": 0}}, "chat.rate_burst: expected a number greater than 0"),
        ({"chat": {"rate_per_second": -1}}, "chat.rate_per_second: expected a number greater"),
        ({"chat": {"rate_per_second": "x"}}, "chat.rate_per_second: expected a number"),
        ({"auth": {"leeway_seconds": -0.5}}, "auth.leeway_seconds: expected a number of 0 or more"),
        ({"auth": {"leeway_seconds": False}}, "auth.leeway_seconds: expected a number"),
        ({"store": {"path": 5}}, "store.path: expected a string"),
        ({"stomp": {"allow_anonymous": "yes"}}, "stomp.allow_anonymous: expected true or false"),
        ({"http": {"listen": "127.0.0.1:5700"}}, "http.listen: expected a list of strings"),
        ({"http": {"listen": [5700]}}, "http.listen: expected a list of strings"),
        ({"http": {"listen": ["nohost"]}}, 'http.listen: expected "host:port"'),
        ({"http": {"listen": [":5700"]}}, 'http.listen: expected "host:port"'),
        ({"http": {"listen": ["h:port"]}}, 'http.listen: expected "host:port"'),
        ({"http": {"listen": ["h:70000"]}}, 'http.listen: expected "host:port"'),
        ({"http": {"listen": ["fd://x"]}}, "http.listen: expected fd://N"),
        ({"http": {"listen": []}}, "http.listen: expected at least one address"),
        ({"stomp": {"tcp_listen": ["bad"]}}, 'stomp.tcp_listen: expected "host:port"'),
        ({"log": {"level": "loud"}}, "log.level: expected one of debug, info, warning, error"),
        ({"log": {"format": "xml"}}, "log.format: expected one of plain, json"),
        ({"store": {"path": ""}}, "store.path: expected a file path"),
        ({"store": {"backend": "mysql"}}, "store.backend: expected one of sqlite, postgresql"),
        ({"store": {"backend": "postgresql"}}, "store.dsn: required with store.backend"),
        ({"auth": {"jwt_secret": "short"}}, "auth.jwt_secret: expected at least 32 characters"),
    ],
)
def test_bad_value_names_key_and_expectation(raw: dict[str, Any], expected: str) -> None:
    assert expected in error_of(raw)


# --- algorithms ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS1", "PS999", ""])
def test_algorithms_outside_the_allow_list_are_refused(alg: str) -> None:
    message = error_of({"auth": {"algorithms": [alg]}})
    assert message.startswith(f"auth.algorithms: {alg!r} is not allowed")
    assert "HS256" in message


def test_algorithms_rules() -> None:
    assert error_of({"auth": {"algorithms": []}}) == (
        "auth.algorithms: expected at least one algorithm"
    )
    assert "mix of HS* and RS*/ES*" in error_of({"auth": {"algorithms": ["HS256", "RS256"]}})
    assert error_of({"auth": {"algorithms": ["RS256"]}}) == (
        "auth.jwt_public_key_file: required for RS*/ES* algorithms (or auth.jwks_url)"
    )
    cfg = cfg_of({"auth": {"algorithms": ["RS256", "ES256"], "jwt_public_key_file": "k.pem"}})
    assert cfg.auth.algorithms == ["RS256", "ES256"]
    assert "'none' is not allowed" in error_of(CHATD_AUTH_ALGORITHMS="HS256,none")


def test_asymmetric_algorithms_need_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "_has_cryptography", lambda: False)
    assert error_of({"auth": {"algorithms": ["ES256"], "jwt_public_key_file": "k.pem"}}) == (
        "auth.algorithms: RS*/ES* need the 'cryptography' package;"
        " install chatd with: pip install 'chatd[asymmetric]'"
    )
    assert cfg_of({"auth": {"algorithms": ["HS512"]}}).auth.algorithms == ["HS512"]


# --- listen parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:5700", ("127.0.0.1", 5700)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:5700", ("::1", 5700)),
        ("[::]:1", ("::", 1)),
    ],
)
def test_parse_listen(text: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["5700", ":5700", "host:", "host:x", "host:-1", "host:65536"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


# --- files and output ---------------------------------------------------------------------------


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", env={})
    # An empty CHATD_CONFIG is "" → ".", a directory: one line, not a traceback.
    with pytest.raises(ConfigError, match="cannot be read"):
        load("", env={})
    with pytest.raises(ConfigError, match="cannot be read"):
        (tmp_path / "latin1.toml").write_bytes(b"# \xe9\n")
        load(tmp_path / "latin1.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[http\nlisten = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, env={})


def test_to_toml_round_trips_and_masks_the_secret() -> None:
    cfg = cfg_of({"chat": {"rate_burst": 5}, "auth": {"allowed_origins": ['https://"q"']}})
    assert from_mapping(tomllib.loads(to_toml(cfg)), env={}) == cfg
    secret = cfg_of({"auth": {"jwt_secret": SECRET}})
    text = to_toml(secret)
    assert SECRET not in text
    assert tomllib.loads(text)["auth"]["jwt_secret"] == "********"
    dsn = "postgresql://chatd:hunter2-pass@db.example/chatd"
    text = to_toml(cfg_of({"store": {"dsn": dsn}}))
    assert "hunter2" not in text
    assert tomllib.loads(text)["store"]["dsn"] == "********"


def test_relative_store_path_uses_state_directory(tmp_path: Path) -> None:
    cfg = cfg_of()
    assert config_mod.resolve_store_path(cfg, env={"STATE_DIRECTORY": f"{tmp_path}:/other"}) == (
        tmp_path / "chatd.db"
    )
    assert config_mod.resolve_store_path(cfg, env={}) == Path.cwd() / "chatd.db"
    absolute = cfg_of({"store": {"path": str(tmp_path / "a.db")}})
    assert config_mod.resolve_store_path(absolute, env={"STATE_DIRECTORY": "/x"}) == (
        tmp_path / "a.db"
    )


# --- [bus]: cluster mode ---------------------------------------------------------------------

_PG = {"backend": "postgresql", "dsn": "host=db dbname=chatd"}
_SECRET32 = "s" * 32


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"bus": {"backend": "kafka"}}, "bus.backend: expected one of memory, rabbitmq"),
        (
            {"bus": {"backend": "rabbitmq", "url": "amqp://h/"}, "store": _PG},
            "bus.url: expected stomp://user:password@host:port/vhost",
        ),
        (
            {"bus": {"backend": "rabbitmq", "url": "stomp://u:p@h:99999/"}, "store": _PG},
            "bus.url: the port is not a number",
        ),
        (
            {"bus": {"backend": "rabbitmq", "url": "stomp://u:p@h/"}},
            'set store.backend = "postgresql"',
        ),
        (
            {"bus": {"backend": "rabbitmq", "url": "stomp://u:p@h/"}, "store": _PG},
            "auth.jwt_secret: every node of a cluster must check tokens alike",
        ),
        (
            {
                "bus": {"backend": "rabbitmq", "url": "stomp://u:p@h/", "heartbeat_seconds": 5},
                "store": _PG,
                "auth": {"jwt_secret": _SECRET32},
            },
            "bus.node_timeout_seconds: expected more than twice bus.heartbeat_seconds",
        ),
        (
            {
                "bus": {"backend": "rabbitmq", "url": "stomp://u:p@h/", "name": "a.b"},
                "store": _PG,
                "auth": {"jwt_secret": _SECRET32},
            },
            "bus.name: expected letters, digits, - or _",
        ),
        (
            {
                "bus": {"backend": "rabbitmq", "url": "stomp://u:p@h/", "node_name": "a b"},
                "store": _PG,
                "auth": {"jwt_secret": _SECRET32},
            },
            "bus.node_name: expected letters, digits, ., - or _",
        ),
    ],
)
def test_bus_settings_are_checked(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw, env={})
    assert message in str(info.value)
    assert "p@h" not in str(info.value)  # the password is never repeated


def test_a_cluster_node_config_and_its_url_masked() -> None:
    cfg = from_mapping(
        {
            "bus": {"backend": "rabbitmq", "url": "stomp://chatd:hunter2@mq:61613/chat"},
            "store": _PG,
            "auth": {"jwt_secret": _SECRET32},
        },
        env={},
    )
    address = config_mod.parse_bus_url(cfg.bus.url)
    assert (address.host, address.port, address.login, address.vhost) == (
        "mq", 61613, "chatd", "chat",
    )  # fmt: skip
    assert address.passcode == "hunter2"
    assert "hunter2" not in to_toml(cfg)
    assert config_mod.parse_bus_url("stomp://mq").vhost == "/"
    assert config_mod.parse_bus_url("stomp://mq/%2F").vhost == "/"
