"""Who is online anywhere in the cluster.

Every node counts its own users (a user is here while they have a session here) and
tells the others on the bus when one comes or goes; it keeps what each other node said.
A user is online while any node has them. Each node works out the changes itself and
announces them to its own sessions only, so an announcement is made once per node and
never travels. A node says it is alive every `heartbeat` seconds; one not heard from for
`timeout` seconds is dead (killed, or cut off from the bus), and its users go offline
unless another node has them. A node that (re)joins asks the others for their users
(`hello`) and sends its own (`snapshot`), which also heals anything missed while away;
so does a node that hears another it did not know (taken for dead, it was only slow).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("chatd.cluster")


class _Node:
    __slots__ = ("users", "seen")

    def __init__(self, seen: float) -> None:
        self.users: set[int] = set()
        self.seen = seen


class ClusterPresence:
    """`publish(message)` sends a control message to the other nodes; `on_change(user,
    online)` announces a change here. `clock` is trio's (a fake one in tests)."""

    def __init__(
        self,
        publish: Callable[[dict[str, Any]], None],
        clock: Callable[[], float],
        timeout: float,
    ) -> None:
        self._publish = publish
        self._clock = clock
        self.timeout = timeout
        self.on_change: Callable[[int, bool], None] = lambda user_id, online: None
        self._local: set[int] = set()
        self._nodes: dict[str, _Node] = {}
        self._count: dict[int, int] = {}  # by user: nodes that have them, this one included
        self._changed = trio.Event()

    def is_online(self, user_id: int) -> bool:
        return user_id in self._count

    def nodes(self) -> list[str]:
        """The other nodes heard from and not yet taken for dead."""
        return sorted(self._nodes)

    # --- this node's users --------------------------------------------------------

    def local_up(self, user_id: int) -> None:
        if user_id in self._local:
            return
        self._local.add(user_id)
        self._publish({"op": "up", "user": user_id})
        self._add(user_id)

    def local_down(self, user_id: int) -> None:
        if user_id not in self._local:
            return
        self._local.discard(user_id)
        self._publish({"op": "down", "user": user_id})
        self._remove(user_id)

    # --- the bus --------------------------------------------------------------------

    def joined(self) -> None:
        """On (re)connecting to the bus: ask every node for its users, send ours."""
        self._publish({"op": "hello", "users": sorted(self._local)})

    def tick(self, extra: dict[str, Any] | None = None) -> None:
        """Every heartbeat: say this node is alive (with `extra`); bury the nodes that
        are not."""
        self._publish({"op": "alive", **(extra or {})})
        now = self._clock()
        for name, node in list(self._nodes.items()):
            if now - node.seen > self.timeout:
                log.warning(
                    "cluster: node %s not heard from for %.0f s; its %d users are offline"
                    " unless another node has them",
                    name,
                    now - node.seen,
                    len(node.users),
                )
                self._forget(name)

    def received(self, sender: str, message: dict[str, Any]) -> bool:
        """A presence message from another node; False when it is not one."""
        op = message.get("op")
        if op not in ("up", "down", "hello", "snapshot", "alive", "bye"):
            return False
        if op == "bye":
            self._forget(sender)
            return True
        node = self._nodes.get(sender)
        if node is None:
            node = self._nodes[sender] = _Node(self._clock())
            self._nodes_changed()
            log.info("cluster: node %s joined", sender)
            if op not in ("hello", "snapshot"):
                # A node heard without its hello: one taken for dead that was only slow
                # or stalled (its connection never ended, so it will not say hello
                # again), or this node is the one that was. Hello makes every node
                # send its users; without it the users of that node stayed offline here.
                self._publish({"op": "hello", "users": sorted(self._local)})
        node.seen = self._clock()
        user = message.get("user")
        if op == "up" and isinstance(user, int) and user not in node.users:
            node.users.add(user)
            self._add(user)
        elif op == "down" and isinstance(user, int) and user in node.users:
            node.users.discard(user)
            self._remove(user)
        elif op in ("hello", "snapshot"):
            users = message.get("users")
            if isinstance(users, list):
                self._replace(node, {u for u in users if isinstance(u, int)})
            if op == "hello":
                self._publish({"op": "snapshot", "users": sorted(self._local)})
        return True

    def leaving(self) -> None:
        """This node stops: the others forget its users at once, not after the timeout."""
        self._publish({"op": "bye"})

    # --- counting -------------------------------------------------------------------

    def _replace(self, node: _Node, users: set[int]) -> None:
        gone, came = node.users - users, users - node.users
        node.users = users
        for user_id in came:
            self._add(user_id)
        for user_id in gone:
            self._remove(user_id)

    def _forget(self, name: str) -> None:
        node = self._nodes.pop(name, None)
        if node is not None:
            self._nodes_changed()
            for user_id in node.users:
                self._remove(user_id)

    def _nodes_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_nodes(self, count: int) -> None:
        """Returns once `count` other nodes are known alive (tests, tools)."""
        while len(self._nodes) < count:
            await self._changed.wait()

    def _add(self, user_id: int) -> None:
        n = self._count.get(user_id, 0)
        self._count[user_id] = n + 1
        if n == 0:
            self.on_change(user_id, True)

    def _remove(self, user_id: int) -> None:
        n = self._count.get(user_id, 0)
        if n <= 1:
            self._count.pop(user_id, None)
            if n == 1:
                self.on_change(user_id, False)
        else:
            self._count[user_id] = n - 1
