"""The private RabbitMQ node of the cluster tests (tests/rabbitmq_instance.py): it speaks
STOMP on loopback, keeps its data and ports across a restart, recovers from SIGKILL, and
leaves no process behind when stopped."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from .rabbitmq_instance import (  # noqa: F401 (fixtures)
    RabbitInstance,
    RawStomp,
    own_rabbit,
    rabbit_instance,
    rabbit_url,
)

_ids = itertools.count(1)


def _connect(instance: RabbitInstance, vhost: str = "/", timeout: float = 10.0) -> RawStomp:
    client = RawStomp(instance.stomp_port, timeout)
    client.connect(instance.USER, instance.PASSWORD, vhost)
    return client


def _expect(client: RawStomp, command: str, **headers: str) -> tuple[dict[str, str], bytes]:
    got, got_headers, body = client.receive()
    assert (got, got_headers | headers) == (command, got_headers), (got, got_headers, body)
    return got_headers, body


def _subscribe(client: RawStomp, destination: str, **headers: str) -> str:
    sid = f"s{next(_ids)}"
    client.send("SUBSCRIBE", {"destination": destination, "id": sid, "receipt": sid, **headers})
    _expect(client, "RECEIPT", **{"receipt-id": sid})
    return sid


def _send(client: RawStomp, destination: str, body: bytes, **headers: str) -> None:
    receipt = f"r{next(_ids)}"
    client.send("SEND", {"destination": destination, "receipt": receipt, **headers}, body)
    _expect(client, "RECEIPT", **{"receipt-id": receipt})


def _vhost(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_stomp_topic_round_trip(rabbit_instance: RabbitInstance, rabbit_url: str) -> None:  # noqa: F811
    port = rabbit_instance.stomp_port
    assert rabbit_url.startswith(f"stomp://chatd:{rabbit_instance.PASSWORD}@127.0.0.1:{port}/t")
    assert rabbit_instance.url() == f"stomp://chatd:{rabbit_instance.PASSWORD}@127.0.0.1:{port}/"
    with (
        _connect(rabbit_instance, _vhost(rabbit_url)) as sub,
        _connect(rabbit_instance, _vhost(rabbit_url)) as pub,
    ):
        sid = _subscribe(sub, "/exchange/amq.topic/x.y")
        _send(pub, "/exchange/amq.topic/x.y", b"hello")
        headers, body = _expect(sub, "MESSAGE", subscription=sid)
        # RabbitMQ names amq.topic's deliveries by the /topic/ prefix.
        assert (headers["destination"], body) == ("/topic/x.y", b"hello")


def test_a_vhost_is_its_own_world(rabbit_instance: RabbitInstance, rabbit_url: str) -> None:  # noqa: F811
    vhost = _vhost(rabbit_url)
    with (
        _connect(rabbit_instance) as other,
        _connect(rabbit_instance) as other_pub,
        _connect(rabbit_instance, vhost) as mine,
        _connect(rabbit_instance, vhost) as mine_pub,
    ):
        _subscribe(other, "/exchange/amq.topic/x.y")
        sid = _subscribe(mine, "/exchange/amq.topic/x.y")
        _send(other_pub, "/exchange/amq.topic/x.y", b"elsewhere")
        assert _expect(other, "MESSAGE")[1] == b"elsewhere"
        _send(mine_pub, "/exchange/amq.topic/x.y", b"here")
        assert _expect(mine, "MESSAGE", subscription=sid)[1] == b"here"


def test_wrong_password_is_refused(rabbit_instance: RabbitInstance) -> None:  # noqa: F811
    with RawStomp(rabbit_instance.stomp_port) as client, pytest.raises(RuntimeError, match="ERROR"):
        client.connect(rabbit_instance.USER, "not-the-password")


def test_restart_keeps_ports_and_durable_data(
    rabbit_instance: RabbitInstance,  # noqa: F811
    rabbit_url: str,  # noqa: F811
) -> None:
    vhost = _vhost(rabbit_url)
    with _connect(rabbit_instance, vhost) as client:
        _send(client, "/queue/kept", b"persistent", persistent="true")
    ports = (rabbit_instance.stomp_port, rabbit_instance.amqp_port)
    rabbit_instance.restart()
    assert (rabbit_instance.stomp_port, rabbit_instance.amqp_port) == ports
    with _connect(rabbit_instance, vhost) as client:
        _subscribe(client, "/queue/kept")
        assert _expect(client, "MESSAGE")[1] == b"persistent"


def _leftovers(instance: RabbitInstance) -> list[str]:
    """Every process whose command line names the node's directory or its epmd, besides
    those `processes()` finds by their environment."""
    found = [f"{pid} {cmd}" for pid, cmd in instance.processes().items()]
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(instance.root) in cmdline or f"-port {instance.epmd_port} " in cmdline:
            found.append(f"{proc.name} {cmdline}")
    return found


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_kill_then_stop_leaves_nothing_behind(own_rabbit: RabbitInstance) -> None:  # noqa: F811
    commands = " ".join(own_rabbit.processes().values())
    assert "beam.smp" in commands and "epmd" in commands
    with _connect(own_rabbit) as client:
        _send(client, "/queue/kept", b"before the crash", persistent="true")

    own_rabbit.kill()
    assert _refused(own_rabbit.stomp_port)
    assert [cmd for cmd in own_rabbit.processes().values() if "beam" in cmd] == []

    own_rabbit.start()  # recovers from the crash, on the same data
    # After a crash the node recovers its queues and message store from an unclean
    # shutdown, which on a busy machine can take longer than the 10 s a read is given
    # elsewhere. Whether the message sent just before the SIGKILL survives is RabbitMQ's
    # business, not this fixture's (a graceful restart keeps durable data: the test
    # above; chatd keeps nothing in RabbitMQ): twice in CI it did not come back within
    # 60 s. What the fixture promises is a node that starts again after a crash and
    # works: the queue takes and gives a message, after the old one if that survived.
    with _connect(own_rabbit, timeout=60) as client:
        _subscribe(client, "/queue/kept")
        client.send("SEND", {"destination": "/queue/kept", "receipt": "after"}, b"after the crash")
        bodies, receipted = [], False
        while not (receipted and b"after the crash" in bodies):
            command, headers, body = client.receive()
            assert command in ("MESSAGE", "RECEIPT"), (command, headers, body)
            receipted = receipted or command == "RECEIPT"
            if command == "MESSAGE":
                bodies.append(body)
        assert bodies in ([b"after the crash"], [b"before the crash", b"after the crash"])

    own_rabbit.stop()
    assert _leftovers(own_rabbit) == []
    assert _refused(own_rabbit.stomp_port) and _refused(own_rabbit.epmd_port)
