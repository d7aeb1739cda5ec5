"""A node whose RabbitMQ refuses it (a wrong password, a vhost that does not exist): it
starts, serves its own clients, says why it is not ready on /readyz, and never repeats
the password (not in /readyz, the logs or /metrics). Private services; every wait has a
timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio

from chatd.cluster import bus

from .cluster import cluster_sections
from .conftest import make_config, serve_in
from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)
from .rabbitmq_instance import rabbit_instance, rabbit_url  # noqa: F401 (fixtures)

PASSWORD = "Wrong-Passw0rd-4711"


def with_parts(url: str, password: str | None = None, vhost: str | None = None) -> str:
    parts = urlsplit(url)
    user, _, rest = parts.netloc.partition(":")
    _, _, hostport = rest.partition("@")
    netloc = f"{user}:{password}@{hostport}" if password else parts.netloc
    return urlunsplit((parts.scheme, netloc, f"/{vhost}" if vhost else parts.path, "", ""))


@pytest.mark.parametrize(
    ("what", "change", "said"),
    [
        ("password", {"password": PASSWORD}, "refused the login"),
        ("vhost", {"vhost": "no-such-vhost"}, "refused the login"),
    ],
)
async def test_a_node_refused_by_rabbitmq_is_not_ready_and_says_why_without_the_password(
    what: str,
    change: dict[str, str],
    said: str,
    tmp_path: Path,
    pg_dsn: str,  # noqa: F811 (fixture)
    rabbit_url: str,  # noqa: F811 (fixture)
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = with_parts(rabbit_url, **change)
    secret = urlsplit(url).password
    assert secret
    refused = trio.Event()
    real_open = bus.Link.open

    async def open_and_say(*args: Any) -> Any:
        try:
            return await real_open(*args)
        except Exception:
            refused.set()
            raise

    monkeypatch.setattr(bus.Link, "open", open_and_say)
    cfg = make_config(tmp_path, **cluster_sections(pg_dsn, url, "n1"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await serve_in(nursery, cfg)
            await refused.wait()
            async with server.client() as http:
                ready = await http.get("/readyz")
            host, port = server.running.metrics[0]
            async with httpx.AsyncClient(timeout=10) as http:
                metrics = (await http.get(f"http://{host}:{port}/metrics")).text
            server.running.shutdown()
    assert ready.status_code == 503
    assert said in ready.json()["reason"], ready.text
    assert secret not in ready.text
    assert secret not in metrics
    assert "chatd_bus_connected 0.0" in metrics
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert said in logged
    assert secret not in logged and secret not in caplog.text


class _RefusedLink:
    """A connection RabbitMQ accepted, then ended with an ERROR before the node joined."""

    skipped = 0

    def __init__(self, error: str) -> None:
        self.error = error

    async def aclose(self) -> None:
        pass


class _NoStore:
    async def last_message_id(self) -> int:
        return 0


@pytest.mark.parametrize("error", ["access_refused", bus.wire.SLOT_TAKEN])
async def test_a_join_refused_again_and_again_backs_off_to_reconnect_max_seconds(
    error: str, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription RabbitMQ refuses every time (no permission on the slot's queue; every
    slot taken) must not make the node try ten times a second for as long as it lasts: the
    wait between tries doubles up to [bus] reconnect_max_seconds (a fake clock: exact)."""
    from chatd.config import BusConfig
    from chatd.hub import Hub
    from chatd.rooms import Rooms

    cfg = BusConfig(backend="rabbitmq", url="stomp://u:p@127.0.0.1:1/", reconnect_max_seconds=4)
    broker = bus.RabbitBroker(cfg, Hub(Rooms()), _NoStore())  # type: ignore[arg-type]
    tries: list[float] = []

    async def open_refused(*args: Any) -> _RefusedLink:
        return _RefusedLink(error)

    async def connected(link: Any, where: str, slot: int) -> str:
        tries.append(trio.current_time())
        return f"RabbitMQ sent an ERROR frame: {error}"

    monkeypatch.setattr(bus.Link, "open", open_refused)
    monkeypatch.setattr(broker, "_connected", connected)
    with trio.move_on_after(60):
        await broker._connect_forever()
    if error == bus.wire.SLOT_TAKEN:
        # Each slot asked for at once; after all of them in a row, a wait.
        rounds = [t for i, t in enumerate(tries) if i % bus.wire.SLOTS == 0]
        assert all(tries[i] == rounds[i // bus.wire.SLOTS] for i in range(len(tries) - 1))
        tries = rounds
    waits = [round(b - a, 6) for a, b in zip(tries, tries[1:], strict=False)]
    assert waits[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, 4.0], waits
    assert set(waits[6:]) == {4.0}, waits
    said = broker.unavailable() or ""
    assert ("slots is taken" in said) == (error == bus.wire.SLOT_TAKEN), said
