"""The general broker: pure unit tests with a recording peer, then one over real sockets."""

from __future__ import annotations

import pytest
import trio

from chatd.config import ConfigError, from_mapping
from chatd.stomp import CLOSED, NEED_DATA, Frame, FrameReader, FrameWriter
from chatd.stomp.general_broker import BrokerError, GeneralBroker, parse_destination, topic_matches


class Peer:
    """A connection as the broker sees it: it takes `room` messages (None: any number),
    and its socket takes them at once unless `stuck`."""

    def __init__(self, version: str = "1.2", room: int | None = None) -> None:
        self.writer = FrameWriter(version)
        self.frames: list[Frame] = []
        self.room = room
        self.stuck = False
        self.offered = 0
        self.written = 0
        self.cuts = 0

    def can_take(self) -> bool:
        return self.room is None or self.room > 0

    def deliver(self, frame: bytes) -> int | None:
        if not self.can_take():
            return None
        if self.room is not None:
            self.room -= 1
        reader = FrameReader()
        reader.receive_data(frame)
        ev = reader.next_event()
        assert isinstance(ev, Frame)
        self.frames.append(ev)
        self.offered += len(frame)
        if not self.stuck:
            self.written = self.offered
        return self.offered

    def bytes_written(self) -> int:
        return self.written

    def cut(self) -> None:
        self.cuts += 1

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


# --- flow: a queue hands a consumer only what its connection can take (issue 13) --------


def test_a_consumer_gets_what_its_connection_can_take_and_the_rest_on_resume() -> None:
    broker = GeneralBroker(ALL)
    for i in range(5):
        broker.publish("/queue/q", (), str(i).encode())
    peer = Peer(room=2)
    broker.subscribe(peer, "s", "/queue/q", "auto", 0)
    assert peer.bodies() == [b"0", b"1"] and peer.cuts == 0
    peer.room = 10
    broker.resume(peer)
    assert peer.bodies() == [b"0", b"1", b"2", b"3", b"4"]
    assert broker.bytes == 0  # all written: nothing held


def test_a_blocked_consumer_is_passed_over_for_one_with_room() -> None:
    broker = GeneralBroker(ALL)
    full, free = Peer(room=0), Peer()
    broker.subscribe(full, "s", "/queue/q", "client-individual", 0)
    broker.subscribe(free, "s", "/queue/q", "client-individual", 0)
    for i in range(3):
        broker.publish("/queue/q", (), str(i).encode())
    assert full.bodies() == [] and free.bodies() == [b"0", b"1", b"2"]


def test_auto_deliveries_the_socket_never_took_go_back_when_the_connection_ends() -> None:
    broker = GeneralBroker(ALL)
    stuck = Peer()
    broker.subscribe(stuck, "s", "/queue/q", "auto", 0)
    broker.publish("/queue/q", (), b"written")
    stuck.stuck = True
    broker.publish("/queue/q", (), b"queued-1")
    broker.publish("/queue/q", (), b"queued-2")
    assert stuck.bodies() == [b"written", b"queued-1", b"queued-2"]
    broker.peer_gone(stuck)
    other = Peer()
    broker.subscribe(other, "s", "/queue/q", "auto", 0)
    assert other.bodies() == [b"queued-1", b"queued-2"]
    assert [f.get("redelivered") for f in other.frames] == ["true", "true"]
    assert broker.bytes == 0


def test_a_topic_subscriber_whose_queue_fills_is_cut_and_the_publisher_carries_on() -> None:
    broker = GeneralBroker(ALL, max_messages=2)
    stopped, reading = Peer(room=0), Peer()
    broker.subscribe(stopped, "s", "/topic/t", "auto", 0)
    broker.subscribe(reading, "s", "/topic/t", "auto", 0)
    for i in range(4):
        assert broker.publish("/topic/t", (), str(i).encode()) >= 1
    assert stopped.cuts >= 1
    assert reading.bodies() == [b"0", b"1", b"2", b"3"]
    broker.peer_gone(stopped)
    assert broker.bytes == 0


# --- bounds (issue 13) ------------------------------------------------------------------


def test_named_queues_are_bounded_in_number() -> None:
    broker = GeneralBroker(ALL, max_queues=2)
    broker.publish("/queue/a", (), b"")
    broker.subscribe(Peer(), "s", "/queue/b", "auto", 0)
    with pytest.raises(BrokerError, match="Too many queues"):
        broker.publish("/queue/c", (), b"")
    with pytest.raises(BrokerError, match="Too many queues"):
        broker.subscribe(Peer(), "s", "/queue/c", "auto", 0)
    broker.publish("/queue/a", (), b"still fine")
    # Topic subscriptions' private queues do not count.
    broker.subscribe(Peer(), "s", "/topic/x", "auto", 0)
    assert broker.queue_count == 2


def test_all_queues_together_are_bounded_in_bytes() -> None:
    broker = GeneralBroker(ALL, max_bytes=10_000)
    broker.publish("/queue/a", (), b"x" * 4000)
    broker.publish("/queue/b", (), b"x" * 4000)
    with pytest.raises(BrokerError, match="Queue full") as info:
        broker.publish("/queue/a", (), b"x" * 4000)
    assert "10000 bytes" in info.value.detail
    # Unacknowledged messages still count; acknowledged ones free their bytes.
    peer = Peer()
    broker.subscribe(peer, "s", "/queue/a", "client", 0)
    with pytest.raises(BrokerError, match="Queue full"):
        broker.publish("/queue/a", (), b"x" * 4000)
    broker.settle(peer, peer.frames[0].get("ack") or "", "s", ack=True, requeue=True)
    broker.publish("/queue/a", (), b"x" * 4000)
    # A SEND refused for want of bytes leaves no new queue behind.
    with pytest.raises(BrokerError, match="Queue full"):
        broker.publish("/queue/c", (), b"x" * 4000)
    assert broker.queue_count == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_empty_queue_with_no_consumer_is_dropped_after_the_idle_time() -> None:
    clock = Clock()
    broker = GeneralBroker(ALL, max_queues=2, idle_seconds=60, clock=clock)
    broker.publish("/queue/kept", (), b"waits")  # holds a message: never idle
    peer = Peer()
    consumer = broker.subscribe(peer, "s", "/queue/idle", "client-individual", 0)
    broker.publish("/queue/idle", (), b"m")
    clock.now += 100  # a queue with a consumer is not idle
    with pytest.raises(BrokerError, match="Too many queues"):
        broker.publish("/queue/new", (), b"")
    broker.unsubscribe(consumer)  # its unacknowledged message goes back: still not empty
    clock.now += 100
    with pytest.raises(BrokerError, match="Too many queues"):
        broker.publish("/queue/new", (), b"")
    taker = Peer()
    broker.unsubscribe(broker.subscribe(taker, "s", "/queue/idle", "auto", 0))
    assert taker.bodies() == [b"m"]
    clock.now += 59.9  # empty with no consumer since then, not yet for 60 s
    with pytest.raises(BrokerError, match="Too many queues"):
        broker.publish("/queue/new", (), b"")
    clock.now += 0.1
    broker.publish("/queue/new", (), b"")
    assert broker.queue_count == 2
    # The queue that held a message all along is still there with it.
    reader = Peer()
    broker.subscribe(reader, "s", "/queue/kept", "auto", 0)
    assert reader.bodies() == [b"waits"]


async def test_queue_bounds_over_tcp_refuse_the_sender_only(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(
        stomp={
            "broker_enabled": True,
            "broker_destinations": ["/queue/*"],
            "broker_max_queues": 1,
            "broker_max_bytes": 20_000,
        }
    )
    with trio.fail_after(10):
        keeper = await stomp(server, 1)
        await keeper.send("SEND", b"x" * 12_000, destination="/queue/a", receipt="1")
        assert (await keeper.frame()).get("receipt-id") == "1"
        for dest, body, message in (
            ("/queue/b", b"new queue", "Too many queues"),
            ("/queue/a", b"x" * 12_000, "Queue full"),
        ):
            other = await stomp(server, 2)
            await other.send("SEND", body, destination=dest, receipt="2")
            err = await other.frame()
            assert err.command == "ERROR" and err.get("message") == message, err
            with pytest.raises(EOFError):
                await other.frame()
        # The server and the queue's other users carry on.
        await keeper.send("SUBSCRIBE", id="s", destination="/queue/a")
        msg = await keeper.frame()
        assert msg.command == "MESSAGE" and msg.body == b"x" * 12_000
        await keeper.send("SEND", b"fits now", destination="/queue/a", receipt="3")
        frames = [await keeper.frame(), await keeper.frame()]
        assert {f.command for f in frames} == {"MESSAGE", "RECEIPT"}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("broker_max_queues", 0, "expected a number greater than 0"),
        ("broker_max_bytes", -1, "expected a number greater than 0"),
        ("broker_max_bytes", 1.5, "expected an integer"),
        ("broker_queue_idle_seconds", 0, "expected a number greater than 0"),
        ("broker_queue_idle_seconds", "soon", "expected a number"),
    ],
)
def test_broker_bounds_are_validated(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"stomp.{key}: {expected}"):
        from_mapping({"stomp": {key: value}})
    cfg = from_mapping({"stomp": {key: 7}}).stomp
    assert getattr(cfg, key) == 7
