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
