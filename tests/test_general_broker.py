"""The general broker: pure unit tests with a recording peer, then one over real sockets."""

from __future__ import annotations

import pytest
import trio

from chatd.stomp import CLOSED, NEED_DATA, Frame, FrameReader, FrameWriter
from chatd.stomp.general_broker import BrokerError, GeneralBroker, parse_destination, topic_matches


class Peer:
    def __init__(self, version: str = "1.2") -> None:
        self.writer = FrameWriter(version)
        self.frames: list[Frame] = []

    def push_frame(self, data: bytes) -> None:
        reader = FrameReader()
        reader.receive_data(data)
        ev = reader.next_event()
        assert isinstance(ev, Frame)
        self.frames.append(ev)

    def bodies(self) -> list[bytes]:
        return [f.body for f in self.frames]


ALL = ["/queue/*", "/topic/*", "/exchange/*"]


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "anything.at.all", True),
        ("*.b", "a.b", True),
        ("*.b", "b", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.x.y.z", True),
        ("a.#.z", "a.x.y", False),
    ],
)
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_parse_destination() -> None:
    assert parse_destination("/queue/jobs") == ("queue", "jobs", "")
    assert parse_destination("/amq/queue/jobs") == ("queue", "jobs", "")
    assert parse_destination("/topic/a.b") == ("exchange", "amq.topic", "a.b")
    assert parse_destination("/exchange/logs/x.y") == ("exchange", "logs", "x.y")
    for bad in ("/queue/", "/topic/", "/exchange/", "/elsewhere/x"):
        with pytest.raises(BrokerError):
            parse_destination(bad)


def test_allow_list_refuses_other_destinations() -> None:
    broker = GeneralBroker(["/queue/jobs"])
    with pytest.raises(BrokerError, match="Access refused"):
        broker.subscribe(Peer(), "s", "/queue/other", "auto", 0)
    with pytest.raises(BrokerError, match="Access refused"):
        broker.publish("/topic/x", (), b"")


def test_queue_holds_until_a_consumer_comes_and_round_robins() -> None:
    broker = GeneralBroker(ALL)
    for i in range(4):
        broker.publish("/queue/jobs", (), f"m{i}".encode())
    a, b = Peer(), Peer()
    broker.subscribe(a, "s", "/queue/jobs", "client-individual", 1)
    broker.subscribe(b, "s", "/queue/jobs", "client-individual", 1)
    assert a.bodies() == [b"m0"]
    assert b.bodies() == [b"m1"]
    broker.settle(a, a.frames[0].get("ack") or "", None, ack=True, requeue=True)
    assert a.bodies() == [b"m0", b"m2"]


def test_nack_requeues_with_redelivered_and_requeue_false_drops() -> None:
    broker = GeneralBroker(ALL)
    peer = Peer()
    broker.subscribe(peer, "s", "/queue/q", "client-individual", 1)
    broker.publish("/queue/q", (("x-trace", "7"),), b"one")
    broker.publish("/queue/q", (), b"two")
    first = peer.frames[0]
    assert first.get("redelivered") == "false" and first.get("x-trace") == "7"
    broker.settle(peer, first.get("ack") or "", None, ack=False, requeue=True)
    again = peer.frames[1]
    assert again.body == b"one" and again.get("redelivered") == "true"
    broker.settle(peer, again.get("ack") or "", None, ack=False, requeue=False)
    assert peer.bodies() == [b"one", b"one", b"two"]


def test_client_mode_ack_is_cumulative() -> None:
    broker = GeneralBroker(ALL)
    peer = Peer()
    consumer = broker.subscribe(peer, "s", "/queue/q", "client", 0)
    for i in range(3):
        broker.publish("/queue/q", (), str(i).encode())
    broker.settle(peer, peer.frames[1].get("ack") or "", "s", ack=True, requeue=True)
    assert list(consumer.unacked) == [peer.frames[2].get("ack")]


def test_unacked_messages_go_back_when_the_consumer_leaves() -> None:
    broker = GeneralBroker(ALL)
    gone, stays = Peer(), Peer()
    broker.subscribe(gone, "s", "/queue/q", "client-individual", 0)
    broker.publish("/queue/q", (), b"held")
    assert gone.bodies() == [b"held"]
    broker.peer_gone(gone)
    broker.subscribe(stays, "s", "/queue/q", "auto", 0)
    assert stays.bodies() == [b"held"]
    assert stays.frames[0].get("redelivered") == "true"


def test_topic_fans_out_to_matching_subscribers_only_while_subscribed() -> None:
    broker = GeneralBroker(ALL)
    star, exact, other = Peer(), Peer(), Peer()
    broker.subscribe(star, "s", "/topic/news.*", "auto", 0)
    c = broker.subscribe(exact, "s", "/topic/news.eu", "auto", 0)
    broker.subscribe(other, "s", "/topic/sport.#", "auto", 0)
    broker.publish("/topic/news.eu", (), b"hello")
    assert star.bodies() == [b"hello"] and exact.bodies() == [b"hello"] and other.bodies() == []
    broker.unsubscribe(c)
    broker.publish("/topic/news.eu", (), b"again")
    assert exact.bodies() == [b"hello"] and star.bodies() == [b"hello", b"again"]
    assert broker.publish("/topic/nobody.listens", (), b"x") == 0


def test_named_exchange_routes_by_key() -> None:
    broker = GeneralBroker(ALL)
    peer = Peer()
    broker.subscribe(peer, "s", "/exchange/logs/error.*", "auto", 0)
    broker.publish("/exchange/logs/error.disk", (), b"e")
    broker.publish("/exchange/logs/info.disk", (), b"i")
    broker.publish("/exchange/other/error.disk", (), b"o")
    assert peer.bodies() == [b"e"]


def test_full_queue_refuses_send() -> None:
    broker = GeneralBroker(ALL, max_messages=2)
    broker.publish("/queue/q", (), b"1")
    broker.publish("/queue/q", (), b"2")
    with pytest.raises(BrokerError, match="Queue full"):
        broker.publish("/queue/q", (), b"3")


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader()
        self.writer = FrameWriter()

    async def send(self, command: str, body: bytes = b"", **headers: str) -> None:
        hs = tuple((k.replace("_", "-"), v) for k, v in headers.items())
        await self.stream.send_all(self.writer.send(Frame(command, hs, body)))

    async def frame(self) -> Frame:
        while True:
            ev = self.reader.next_event()
            if isinstance(ev, Frame):
                return ev
            if ev is CLOSED:
                raise EOFError
            if ev is NEED_DATA:
                self.reader.receive_data(await self.stream.receive_some(65536))


async def stomp(server, user_id: int) -> Client:  # type: ignore[no-untyped-def]
    stream = await trio.open_tcp_stream("127.0.0.1", server.running.stomp_tcp_port)
    c = Client(stream)
    await c.send("CONNECT", accept_version="1.2", login="x", passcode=server.token(user_id))
    assert (await c.frame()).command == "CONNECTED"
    return c


async def test_broker_over_tcp_with_transaction_and_custom_headers(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(
        stomp={"broker_enabled": True, "broker_destinations": ["/queue/work"]}
    )
    with trio.fail_after(10):
        producer, consumer = await stomp(server, 1), await stomp(server, 2)
        await consumer.send("SUBSCRIBE", id="s", destination="/queue/work", receipt="sub")
        assert (await consumer.frame()).get("receipt-id") == "sub"
        await producer.send("BEGIN", transaction="t")
        await producer.send(
            "SEND", b"job", destination="/queue/work", transaction="t", x_priority="high"
        )
        await producer.send("COMMIT", transaction="t", receipt="c")
        assert (await producer.frame()).get("receipt-id") == "c"
        msg = await consumer.frame()
        assert msg.command == "MESSAGE" and msg.body == b"job"
        assert msg.get("x-priority") == "high" and msg.get("subscription") == "s"
        await producer.send("SEND", b"x", destination="/queue/forbidden")
        err = await producer.frame()
        assert err.command == "ERROR" and err.get("message") == "Access refused"
        # The refused producer's connection is closed; the consumer carries on.
        other = await stomp(server, 3)
        await other.send("SEND", b"next", destination="/queue/work")
        assert (await consumer.frame()).body == b"next"
