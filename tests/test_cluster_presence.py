"""Cluster-wide presence as one node sees it: online when a user's first session anywhere
opens, offline when their last one anywhere closes, or when the node that had it goes
silent. Three nodes are three ClusterPresence objects wired to each other by a list;
time is a fake clock."""

from __future__ import annotations

from typing import Any

from chatd.cluster.presence import ClusterPresence


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cluster:
    """Nodes whose publications reach every other node when `flush` is called (the bus)."""

    def __init__(self, names: list[str], clock: Clock, timeout: float = 8.0) -> None:
        self.queue: list[tuple[str, dict[str, Any]]] = []
        self.down: set[str] = set()  # nodes cut off: they neither send nor receive
        self.nodes: dict[str, ClusterPresence] = {}
        self.changes: dict[str, list[tuple[int, bool]]] = {}
        for name in names:
            node = ClusterPresence(
                lambda m, name=name: self.queue.append((name, m)), clock, timeout
            )
            self.changes[name] = []
            node.on_change = lambda u, online, name=name: self.changes[name].append((u, online))
            self.nodes[name] = node

    def flush(self) -> None:
        while self.queue:
            sender, message = self.queue.pop(0)
            if sender in self.down:
                continue
            for name, node in self.nodes.items():
                if name != sender and name not in self.down:
                    node.received(sender, message)

    def tick(self) -> None:
        for name, node in self.nodes.items():
            if name not in self.down:
                node.tick()
        self.flush()


def test_online_once_anywhere_offline_when_the_last_session_anywhere_closes() -> None:
    c = Cluster(["a", "b", "c"], Clock())
    a, b, cc = c.nodes["a"], c.nodes["b"], c.nodes["c"]
    a.local_up(7)
    c.flush()
    assert c.changes == {"a": [(7, True)], "b": [(7, True)], "c": [(7, True)]}
    b.local_up(7)  # a second session, on another node: nobody hears "online" again
    c.flush()
    assert all(ch == [(7, True)] for ch in c.changes.values())
    a.local_down(7)
    c.flush()
    assert all(ch == [(7, True)] for ch in c.changes.values())  # still on b
    b.local_down(7)
    c.flush()
    assert all(ch == [(7, True), (7, False)] for ch in c.changes.values())
    assert not cc.is_online(7)


def test_a_silent_node_is_buried_after_the_timeout_and_its_users_go_offline() -> None:
    clock = Clock()
    c = Cluster(["a", "b"], clock, timeout=8.0)
    a, b = c.nodes["a"], c.nodes["b"]
    a.local_up(1)
    a.local_up(2)
    b.local_up(2)
    c.tick()
    c.down.add("a")  # killed
    clock.now += 8.0
    c.tick()
    assert b.is_online(1)  # 8 s is not more than the timeout
    clock.now += 0.5
    c.tick()
    assert c.changes["b"] == [(2, True), (1, True), (1, False)]
    assert not b.is_online(1) and b.is_online(2)  # 2 has a session on b
    assert b.nodes() == []


def test_a_node_that_leaves_is_forgotten_at_once() -> None:
    c = Cluster(["a", "b"], Clock())
    c.nodes["a"].local_up(5)
    c.flush()
    c.nodes["a"].leaving()
    c.flush()
    assert c.changes["b"] == [(5, True), (5, False)]


def test_a_node_that_joins_or_comes_back_learns_and_tells_everything() -> None:
    clock = Clock()
    c = Cluster(["a", "b"], clock)
    a, b = c.nodes["a"], c.nodes["b"]
    a.local_up(1)
    c.down.add("b")  # b is away from the bus: misses a's news, its own are lost
    b.local_up(2)
    c.flush()
    assert not b.is_online(1) and not a.is_online(2)
    c.down.clear()
    b.joined()  # b reconnects: hello with its users; a answers with a snapshot
    c.flush()
    assert a.is_online(2) and b.is_online(1)
    # While b was away a's user 1 left; the snapshot on b's next hello corrects it.
    c.down.add("b")
    a.local_down(1)
    c.flush()
    assert b.is_online(1)
    c.down.clear()
    b.joined()
    c.flush()
    assert not b.is_online(1)
    assert c.changes["b"] == [(2, True), (1, True), (1, False)]


def test_other_messages_are_not_presence() -> None:
    c = Cluster(["a"], Clock())
    assert not c.nodes["a"].received("b", {"op": "member_added", "room": 1, "user": 2})
    assert c.nodes["a"].nodes() == []


def test_a_node_taken_for_dead_that_speaks_again_is_asked_for_its_users() -> None:
    """A node silent past the timeout without losing its connection (its loop stalled, the
    bus slow): once heard again, the others learn its users again, and it theirs."""
    clock = Clock()
    c = Cluster(["a", "b"], clock, timeout=8.0)
    a, b = c.nodes["a"], c.nodes["b"]
    a.local_up(1)
    b.local_up(2)
    c.tick()
    assert b.is_online(1) and a.is_online(2)
    c.down.add("a")  # a stalls: it neither hears nor speaks
    clock.now += 9.0
    c.tick()
    assert not b.is_online(1)
    c.down.clear()
    # a comes to: b's heartbeat reaches it late, and a buries b before reading it.
    b.tick()
    a.tick()
    c.flush()
    c.flush()
    assert b.is_online(1) and a.is_online(2)
    assert b.nodes() == ["a"] and a.nodes() == ["b"]
