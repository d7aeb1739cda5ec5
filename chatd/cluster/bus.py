"""The cluster's broker: publications, control messages and presence between nodes over
RabbitMQ (`[bus] backend = "rabbitmq"`).

Every publication goes to the bus and is delivered here at once (chat messages through
the sequencer, so in the one order the store committed them). Publications leave in
batches (`chatd.cluster.wire`): what is published while a frame is being made ready
goes in it; a frame leaves at once after a quiet spell, and at most every
`[bus] batch_ms` under load, so a busy node sends a few hundred frames a second however
many messages it publishes. Each node hears all of its cluster's traffic but its own on
one queue, its slot's (`chatd.cluster.wire`: exclusive to its connection, deleted with
it, bound to every other slot's key on amq.direct), and decodes only what a session here
wants: each part's description says its room or user, and `Hub.wants_room` /
`wants_topic` say whether anyone here listens. One queue per node rather than one
binding per room keeps RabbitMQ's work flat however many rooms there are, and a
node's traffic in one order (a control message before the publications that follow it).
Its own frames never come back: a node delivers what it publishes here at once.

When the connection to RabbitMQ ends, the node keeps serving its own sessions, says so
on /readyz, and reconnects with backoff; once back it reloads rooms from the store
(control messages it missed), asks the others for their users (presence), and reads from
the store the messages committed meanwhile, in order. Publications that could not be
sent are not queued past `max_pending_bytes`: the other nodes find the gap in the
message chain, or hear our newest id in our heartbeat, and read the store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from chatd import events
from chatd.broker import Control
from chatd.cluster import wire
from chatd.cluster.link import Link
from chatd.cluster.presence import ClusterPresence
from chatd.cluster.sequencer import Sequencer
from chatd.config import BusConfig, parse_bus_url
from chatd.hub import Hub
from chatd.model import Event
from chatd.net.wire import corked
from chatd.ops.logs import RateLimitedLog
from chatd.stomp import Frame
from chatd.store.api import StoreAPI

log = logging.getLogger("chatd.cluster")

_FILL_PAGE = 1000
# Nodes whose newest frame number is kept (each run of a node is one): many more than a
# cluster has, so a node's entry goes only long after it stopped.
_MAX_SENDERS = 4096
# A signed frame is taken only this close to its sending time (seconds, either way: the
# nodes' clocks are assumed within a few seconds of each other, as NTP keeps them).
FRAME_MAX_AGE = 60.0
# RabbitMQ routes a frame only to the queues bound when it is published, so none signed
# before this node subscribed can reach it honestly: one signed more than this (the
# clocks' allowance) before that is a recording, replayed to a node that has not heard
# its node yet (it just started or reconnected), and is not taken.
CLOCK_SKEW = 5.0
_RETRY = 1.0
# How long `ask` waits for the answers of nodes that are alive but slow (or just died).
ASK_WAIT = 2.0

_Item = tuple[int, "Event | wire.Arrival"]


async def _nothing() -> None:
    pass


def _sender_of(item: _Item) -> str:
    payload = item[1]
    return f"node {payload.node}" if isinstance(payload, wire.Arrival) else "this node"


class RabbitBroker:
    def __init__(
        self,
        cfg: BusConfig,
        hub: Hub,
        store: StoreAPI,
        clock: Callable[[], float] = trio.current_time,
        origin: str = "",
        key: bytes = b"",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        # This cluster's mark (kept in its database): what another cluster on the same
        # vhost and [bus] name publishes is dropped, not delivered to users here.
        self.origin = origin
        # This cluster's bus key (in its database): frames are signed with it, and frames
        # not signed with it are not taken (chatd.cluster.wire).
        self.key = key
        self._wall_clock = wall_clock
        self._frame_number = 0
        # The newest frame number taken from each node: a frame is taken once. Only a
        # signed frame adds a node; the oldest entries go first past _MAX_SENDERS.
        self._numbers: dict[str, int] = {}
        self._joined_at = -math.inf  # our clock when this connection subscribed
        self._address = parse_bus_url(cfg.url)
        self.name = cfg.node_name or f"{socket.gethostname()}-{os.getpid()}"
        # On the bus, the name and this run's own mark: a node that restarts is a new
        # node to the others (what they knew of the old one expires with it), and two
        # nodes given the same name are told apart and reported.
        self.node = f"{self.name}#{secrets.token_hex(3)}"
        # The slot this node holds on the bus (chatd.cluster.wire), None while off it. A
        # node asks first for the one its name gives, so a restart usually finds it free
        # again; one held by another node, it asks for the next.
        self.slot: int | None = None
        self._next_slot = zlib.crc32(self.name.encode()) % wire.SLOTS
        self._slots_refused = 0  # slots refused in a row
        self._hub = hub
        self._store = store
        self._clock = clock
        self._link: Link | None = None
        self.presence = ClusterPresence(self.publish_control, clock, cfg.node_timeout_seconds)
        self.on_control: Callable[[Control], Any] = lambda message: None
        # Reloads what control messages change (ChatService.resync), after missing some.
        self.on_resync: Callable[[], Awaitable[None]] = _nothing
        self.sequencer: Sequencer[_Item] = Sequencer(
            self._deliver_message, self._fill, store.last_message_id, source=_sender_of
        )
        self._why_not: str | None = "not connected to RabbitMQ yet"
        self._lost_log = RateLimitedLog(log, 60.0, clock)
        self._bad_log = RateLimitedLog(log, 60.0, clock)
        self._foreign_log = RateLimitedLog(log, 60.0, clock)
        self._forged_log = RateLimitedLog(log, 60.0, clock)
        self._resync_wanted = trio.Event()
        self._joined = trio.Event()
        self._asked: dict[str, tuple[set[str], list[Any], trio.Event]] = {}
        self._asks = 0
        self.published = 0  # publications handed to RabbitMQ
        self.frames = 0  # the frames that carried them
        self._parts: list[wire.Part] = []  # publications for the next frame
        self._parts_bytes = 0
        self._parts_waiting = trio.Event()
        self._batch_window = cfg.batch_ms / 1000
        self._sent_at = -math.inf  # when the last frame left by the batch window's rule
        self._batching = 0  # `batched()` blocks open
        # A batch the link's queue can take whole, however low max_pending_bytes is set:
        # a frame past that bound is dropped with every publication in it.
        self._max_frame_bytes = min(wire.MAX_FRAME_BYTES, cfg.max_pending_bytes // 4)
        self.received = 0
        self.foreign = 0  # frames of another cluster under our name, dropped
        self.forged = 0  # frames with our mark but not our key's signature, or replayed
        self.stale = 0  # signed frames older (or newer) than FRAME_MAX_AGE, dropped
        self.broken = 0  # frames with our mark that could not be read, dropped
        self._skipped_before = 0  # frames past the link's limits, on links now closed
        self.missed = 0  # frames of other nodes that never came (numbers skipped)
        self._heard_since_join: set[str] = set()  # nodes whose frame numbers are compared
        self.dropped = 0  # publications that could not be handed to RabbitMQ
        self._lost_control = False  # a control message was dropped since the last resync
        self._presence_wanted = False  # a frame was lost: ask every node for its users
        self._gone = False  # said bye: nothing more leaves (see aclose)

    def unavailable(self) -> str | None:
        return self._why_not

    @property
    def oversized(self) -> int:
        """Frames from RabbitMQ passed over for their size (chatd.cluster.link)."""
        link = self._link
        return self._skipped_before + (link.skipped if link is not None else 0)

    async def wait_joined(self) -> None:
        """Returns once this node is on the bus (subscribed: it hears every publication
        made from then on)."""
        await self._joined.wait()

    # --- publishing -------------------------------------------------------------------

    def publish_room(self, room_id: int, event: Event) -> None:
        self._send(wire.event_part(f"room.{room_id}", event))
        if event.prev_id is not None and event.message_id is not None:
            # A chat message from PostgreSQL: in commit order (see the sequencer).
            self.sequencer.offer(event.message_id, event.prev_id, (room_id, event))
        else:
            self.sequencer.after((room_id, event))

    def publish_user(self, user_id: int, event: Event) -> None:
        self._send(wire.event_part(f"user.{user_id}", event))
        self._hub.deliver_user(user_id, event)

    def publish_control(self, message: Control) -> None:
        self._send(wire.control_part(message))

    async def ask(self, message: Control) -> list[Any]:
        self._asks += 1
        request = f"{self.node}/{self._asks}"
        waiting = set(self.presence.nodes())
        answers: list[Any] = []
        done = trio.Event()
        self._asked[request] = (waiting, answers, done)
        try:
            self.publish_control({**message, "ask": request})
            if waiting:
                with trio.move_on_after(ASK_WAIT):
                    await done.wait()
        finally:
            del self._asked[request]
        return answers

    def _answered(self, sender: str, message: dict[str, Any]) -> None:
        asked = self._asked.get(str(message.get("ask")))
        if asked is None:
            return  # too late, or for another node
        waiting, answers, done = asked
        answers.append(message.get("answer"))
        waiting.discard(sender)
        if not waiting:
            done.set()

    def _send(self, part: wire.Part) -> None:
        if self._gone:
            return
        if self._link is None:
            self._lost([part])
            return
        self._parts.append(part)
        self._parts_bytes += part.size
        if len(self._parts) >= wire.MAX_FRAME_PARTS or self._parts_bytes >= self._max_frame_bytes:
            self._send_frame()
        elif not self._batching:  # else `hooks_scope` sends them
            self._parts_waiting.set()

    @contextlib.contextmanager
    def hooks_scope(self) -> Iterator[None]:
        """Where a commit's hooks run (ServerState.build): corked, as on a single node
        (one write per connection for what they deliver here), and what they publish
        leaves in one frame at the end: at once when the batch window is open, with no
        task to wake for it and before the local writes, else by `_frames` when it
        opens."""
        with corked():
            self._batching += 1
            try:
                yield
            finally:
                self._batching -= 1
                if not self._batching and self._parts:
                    if trio.current_time() >= self._sent_at + self._batch_window:
                        self._send_due()
                    else:
                        self._parts_waiting.set()

    def _send_due(self) -> None:
        self._sent_at = trio.current_time()
        self._send_frame()

    def _send_frame(self) -> None:
        parts, self._parts, self._parts_bytes = self._parts, [], 0
        if not parts:
            return
        link = self._link
        self._frame_number += 1
        frame = wire.batch_frame(
            self._cfg.name, self.node, parts, self.origin, self.key, self._frame_number,
            int(self._wall_clock() * 1000), self.slot or 0,
        )  # fmt: skip
        if link is not None and link.send(frame):
            self.published += len(parts)
            self.frames += 1
        else:
            # The number goes to the next frame: the others take a skipped one for frames
            # lost on the way and reload, while this node makes good what it knows it lost.
            self._frame_number -= 1
            self._lost(parts)

    def _lost(self, parts: list[wire.Part]) -> None:
        self.dropped += len(parts)
        # A lost message is read from the store by the others (the chain's gap); a lost
        # control message is made good by a resync and a hello (`_heartbeat`).
        self._lost_control = self._lost_control or any(p.control for p in parts)

    async def _frames(self) -> None:
        """For the node's life: sends what was published. A frame leaves as soon as this
        task runs (after the task that published, so a commit's publications share one)
        and no sooner than the batch window after the one before it."""
        while True:
            await self._parts_waiting.wait()
            due = self._sent_at + self._batch_window
            if due > trio.current_time():
                await trio.sleep_until(due)
            # Reset only now: what came during the wait leaves in this frame, and must not
            # wake the task for an empty turn that would push the next frame a window on.
            self._parts_waiting = trio.Event()
            if self._parts:  # else a `batched()` block sent them meanwhile
                self._send_due()

    # --- arriving ---------------------------------------------------------------------

    def _on_frames(self, frames: list[Frame]) -> None:
        # Corked as a commit's hooks are: what one read brought leaves each connection
        # here in one write, not one write per frame.
        with corked():
            for frame in frames:
                try:
                    self._on_frame(frame)
                except Exception:
                    # Whatever one frame makes go wrong must not end the node's bus task
                    # (and with it the server).
                    log.exception("cluster: a frame from the bus could not be handled")

    def _on_frame(self, frame: Frame) -> None:
        try:
            sent = wire.sender(frame)
        except wire.BadFrame as exc:
            self._bad_log.warning("cluster: dropped a frame from the bus: %s", exc)
            return
        node = sent.node
        if node == self.node:
            return
        if sent.origin != self.origin:
            self.foreign += 1
            self._foreign_log.warning(
                "cluster: frames from another cluster (node %s, another database) come"
                " under the [bus] name %s on this vhost; dropped. Give each cluster its"
                " own [bus] name",
                node,
                self._cfg.name,
            )
            return
        if not wire.authentic(frame, sent, self.key) or sent.number <= self._numbers.get(node, 0):
            # Someone else allowed to publish on the vhost, who read the mark: nothing of
            # it is taken, not even a reload.
            self.forged += 1
            self._forged_log.warning(
                "cluster: dropped a frame under this cluster's mark that no node of it"
                " signed, or sent again (as from node %s): something else publishes on the"
                " vhost",
                node,
            )
            return
        sent_at, now = sent.sent_at / 1000, self._wall_clock()
        if abs(now - sent_at) > FRAME_MAX_AGE or sent_at < self._joined_at - CLOCK_SKEW:
            # Signed, but long ago (or ahead of our clock), or before we subscribed: a
            # recording sent again to a node that had not heard that node yet, or a
            # delivery stalled that long, or clocks far apart. Not taken as it is. From
            # a node heard before, the next of its frames: what it carried is reloaded
            # from the store, once (its number is taken). From one never heard, a
            # recording: this node reloaded when it joined, after anything such a frame
            # could say, and a reload for each replay would be anyone's to ask for.
            self.stale += 1
            heard = self._numbers.get(node)
            self._forged_log.warning(
                "cluster: dropped a frame of node %s sent %.0f s from now by its clock,"
                " %.0f s from when this node joined the bus%s",
                node,
                sent_at - now,
                sent_at - self._joined_at,
                "; reloading rooms (are the nodes' clocks in sync?)" if heard is not None else "",
            )
            if heard is not None:
                self._numbers[node] = sent.number
                self._lost_frame()
            return
        last = self._numbers.pop(node, None)
        self._numbers[node] = sent.number
        if len(self._numbers) > _MAX_SENDERS:
            oldest = next(iter(self._numbers))
            del self._numbers[oldest]
            self._heard_since_join.discard(oldest)
        if node in self._heard_since_join and last is not None and sent.number != last + 1:
            # Frames of that node's lost on the way: this node's queue at RabbitMQ was
            # full and dropped its oldest, or that node's own send queue was. Messages
            # show as a gap in the chain; what control messages and presence changes
            # they carried is made good as for any frame lost.
            self.missed += sent.number - last - 1
            self._lost_frame()
        else:
            self._heard_since_join.add(node)  # (bounded: a subset of `_numbers`' keys)
        if node.rpartition("#")[0] == self.name:
            self._bad_log.warning(
                "cluster: another node on the bus is also named %s; give each its own"
                " [bus] node_name",
                self.name,
            )
        try:
            parts = wire.arrivals(frame, node)
        except wire.BadFrame as exc:
            # Ours, but broken: the control messages it carried (rooms, members, invites)
            # are lost with it, so reload what they change, as after a lost bus. (The
            # resync loop spaces reloads, however many such frames come.)
            self.broken += 1
            self._bad_log.warning(
                "cluster: dropped a frame from node %s: %s; reloading rooms", node, exc
            )
            self._lost_frame()
            return
        for got in parts:
            self._on_part(got)

    def _on_part(self, got: wire.Arrival) -> None:
        try:
            self.received += 1
            topic = got.topic
            if topic == wire.CONTROL:
                try:
                    message = wire.control_of(got)
                except wire.BadFrame:
                    self._lost_frame()  # a control message lost: as a broken frame
                    raise
                self._on_control(got.node, message)
            elif topic.startswith("room."):
                room_id = int(topic[5:])
                if got.prev_id is not None and got.message_id is not None:
                    self.sequencer.offer(got.message_id, got.prev_id, (room_id, got))
                elif self._hub.wants_room(room_id):
                    self.sequencer.after((room_id, got))
            elif topic.startswith("user.") and self._hub.wants_topic(topic):
                self._hub.deliver_user(int(topic[5:]), wire.event_of(got))
        except (wire.BadFrame, ValueError, KeyError, TypeError) as exc:
            self._bad_log.warning("cluster: dropped a publication from the bus: %s", exc)
        except Exception:
            # Whatever a frame makes go wrong here must not end the node's bus task (and
            # with it the server).
            log.exception("cluster: a publication from the bus could not be handled")

    def _lost_frame(self) -> None:
        """What a frame of ours we could not take may have carried is made good: rooms and
        members reloaded from the store, and every node's users asked for again (presence
        travels as changes: one lost would stand until that node's next hello)."""
        self._presence_wanted = True
        self._resync_wanted.set()

    def _on_control(self, sender: str, message: dict[str, Any]) -> None:
        if self.presence.received(sender, message):
            last = message.get("last")
            if isinstance(last, int):
                self.sequencer.catch_up(last, f"node {sender}")
            return
        if message["op"] == "resync":
            self._resync_wanted.set()
            return
        if message["op"] == "answer":
            self._answered(sender, message)
            return
        try:
            answer = self.on_control(message)
        except Exception:
            log.exception("cluster: control message %r from %s failed", message["op"], sender)
            answer = None
            self._resync_wanted.set()  # half applied, perhaps: memory as the store has it
        if "ask" in message:
            self.publish_control({"op": "answer", "ask": message["ask"], "answer": answer})

    def _deliver_message(self, item: _Item) -> None:
        room_id, payload = item
        if isinstance(payload, wire.Arrival):
            if not self._hub.wants_room(room_id):
                return
            payload = wire.event_of(payload)
        self._hub.deliver_room(room_id, payload)

    async def _fill(self, after: int, upto: int) -> list[tuple[int, _Item]]:
        """The messages committed with `after < id <= upto` in rooms someone here hears."""
        rooms = [r.id for r in self._hub.rooms.all() if self._hub.wants_room(r.id)]
        got: list[tuple[int, _Item]] = []
        since = after
        while rooms and since < upto:
            page = await self._store.messages_since(rooms, since, _FILL_PAGE)
            for msg in page:
                if msg.id > upto:
                    return got
                if msg.deleted_at is None:
                    got.append((msg.id, (msg.room_id, events.new_message(msg))))
            if len(page) < _FILL_PAGE:
                break
            since = page[-1].id
        return got

    # --- running ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """For the node's life: keeps the connection to RabbitMQ, the heartbeat, the
        sequencer's gap filling and resyncs."""
        self.sequencer.start_at(await self._store.last_message_id())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sequencer.run)
            nursery.start_soon(self._heartbeat)
            nursery.start_soon(self._resyncs)
            nursery.start_soon(self._frames)
            task_status.started()
            await self._connect_forever()

    async def _connect_forever(self) -> None:
        where = f"{self._address.host}:{self._address.port} (vhost {self._address.vhost})"
        backoff = 0.1
        while True:
            try:
                link = await Link.open(self._address, self._cfg.max_pending_bytes)
            except Exception as exc:
                self._slots_refused = 0
                self._why_not = f"RabbitMQ at {where}: {exc}"
                self._lost_log.warning("cluster: %s; retrying", self._why_not)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self._cfg.reconnect_max_seconds)
                continue
            slot = self._next_slot
            try:
                why = await self._connected(link, where, slot)
            finally:
                joined = self._joined.is_set()
                self._link = None
                self.slot = None
                self._skipped_before += link.skipped
                if joined:  # else whoever waits for it waits on
                    self._joined = trio.Event()
                await link.aclose()
            if link.error == wire.SLOT_TAKEN:
                # That slot's queue is held by another node's connection (or was declared
                # by something else): the next slot, at once, until every slot was
                # refused in a row.
                self._next_slot = (slot + 1) % wire.SLOTS
                self._slots_refused += 1
                if self._slots_refused < wire.SLOTS:
                    log.info("cluster: slot %d is taken; asking for %d", slot, self._next_slot)
                    continue
                first = wire.queue(self._cfg.name, 0)
                why = (
                    f"every one of the {wire.SLOTS} slots is taken: by other nodes (a cluster"
                    f" has at most {wire.SLOTS}), or by queues named {first} and so on that"
                    " something else declared on the vhost"
                )
            self._slots_refused = 0
            self._why_not = f"RabbitMQ at {where}: {why}"
            if joined:
                self._lost_log.warning("cluster: lost the bus: %s; reconnecting", why)
            else:
                self._lost_log.warning("cluster: cannot join the bus: %s; retrying", why)
            # At once after a connection that served; growing while none is let join (a
            # refused subscription, every slot taken), not ten attempts a second.
            backoff = 0.1 if joined else min(backoff * 2, self._cfg.reconnect_max_seconds)
            await trio.sleep(backoff)

    async def _connected(self, link: Link, where: str, slot: int) -> str:
        why = "closed"
        async with trio.open_nursery() as nursery:

            async def running() -> None:
                nonlocal why
                why = await link.run(self._on_frames)
                nursery.cancel_scope.cancel()

            nursery.start_soon(running)
            try:
                self._joined_at = self._wall_clock()
                # Numbers before this join are not compared: what was missed meanwhile
                # is reloaded for the join itself.
                self._heard_since_join.clear()
                name = self._cfg.name
                await link.subscribe(
                    wire.subscriptions(name, slot), "chatd", self._cfg.max_pending_bytes,
                    wire.queue(name, slot),
                )  # fmt: skip
            except trio.TooSlowError:
                why = "no receipt for the subscription"
                nursery.cancel_scope.cancel()
                return why
            self.slot = slot
            self._link = link
            self._why_not = None
            self._joined.set()
            self._lost_log.reset()
            log.info("cluster: node %s joined the bus at %s (slot %d)", self.name, where, slot)
            self._lost_control = False
            self.presence.joined()
            # What this node missed while away: control messages (the rooms, reloaded)
            # and messages (read from the store, in order); the others reload too, for
            # what they may have missed of ours.
            self.publish_control({"op": "resync"})
            self._resync_wanted.set()
        return why

    async def _resyncs(self) -> None:
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted = trio.Event()
            if self._presence_wanted and self._link is not None:
                self._presence_wanted = False
                self.presence.joined()  # every node answers with its users
            try:
                await self.on_resync()
                self.sequencer.catch_up(await self._store.last_message_id())
            except Exception as exc:
                log.warning("cluster: cannot reload from the store yet: %s", exc)
                self._resync_wanted.set()
            # At most one reload a second, however often asked (a flood of broken frames
            # or of "resync" messages): each reads every room from the store. Asked
            # meanwhile, it comes once the second is over.
            await trio.sleep(_RETRY)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self._cfg.heartbeat_seconds)
            if self._lost_control and self._link is not None:
                # Dropped while connected (the send queue was full): the others reload
                # rooms and members and hear our users again. Dropped again, it is
                # tried again at the next heartbeat.
                self._lost_control = False
                self.publish_control({"op": "resync"})
                self.presence.joined()
            self.presence.tick({"last": self.sequencer.last})

    async def aclose(self) -> None:
        """Tell the others this node is going, so they forget its users at once."""
        link = self._link
        if link is None:
            self._gone = True
            return
        self.presence.leaving()
        self._send_frame()
        # Until the nursery ends, frames still arrive: a snapshot answering a hello, or an
        # alive, after the bye would make the others take this node for alive again (its
        # users online, their asks waiting for its answer) until node_timeout_seconds.
        self._gone = True
        with trio.move_on_after(1.0):
            await link.flushed()
