"""`bench/run.py abuse`: issue 12's attacks 1-6, one after another, against a chatd that
run.py started with its shipped limits, while an honest client sends and receives.

Per attack it reports the server's RSS before, its peak during the attack, the growth,
what the attacker achieved, and the honest client's send -> delivered latency (p50, p99,
max) and whether it was refused or cut off.

The attacker runs in run.py's process (trio, raw sockets, trio-websocket), every socket
bound to a loopback address of its own (127.0.0.2, and 127.0.0.3 and up for the
server-wide flood), so that [server] max_connections_per_address counts it apart from the
honest client on 127.0.0.1: the per-address limit would otherwise refuse the honest
client as the attacker's neighbour, which is what it is for, not what is measured here.
The honest client is a process of its own (`python bench/abuse.py honest SPEC`), so the
attacker's work does not sit in its event loop; both share core 1, the server has core 0.

Needs trio and trio-websocket (chatd's test venv: run it with .venv/bin/python).
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio_websocket

DEST = "/exchange/chat.direct/room.{}"
ATTACKER = "127.0.0.2"
HONEST_USER = 1
PUBLISHERS = range(101, 111)  # attack 2: make the room busy
NON_READERS = range(201, 206)  # attack 2: /chat sockets that never read
SUBSCRIBER = 301  # attack 5
HOARDERS = range(401, 411)  # attacks 3 and 4, members of the attacker's room
MiB = 1024 * 1024


# --- small clients ------------------------------------------------------------------------


def stomp_frame(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = command + "\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n"
    return head.encode() + body + b"\0"


async def raw_connect(
    host: str, port: int, src: str, rcvbuf: int | None = None
) -> trio.SocketStream:
    """A TCP connection from the loopback address `src`. `rcvbuf` shrinks the receive
    buffer before connecting (the window is fixed then), so a client that never reads
    stops the server's writes after a few KB rather than after megabytes of kernel
    buffer."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.bind((src, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def read_head(stream: trio.SocketStream, limit: int = 65536) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            break
    return buf


async def http_request(
    host: str, port: int, src: str, method: str, path: str, headers: dict[str, str],
    body: bytes = b"",
) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP/1.1 request on a connection of its own: (status, body)."""
    stream = await raw_connect(host, port, src)
    async with stream:
        hdrs = {"Host": f"{host}:{port}", "Connection": "close", **headers}
        if body or method == "POST":
            hdrs["Content-Length"] = str(len(body))
        req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        await stream.send_all(req.encode() + b"\r\n" + body)
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, rest


def peer_closed(stream: trio.SocketStream) -> bool:
    """Whether the peer has closed, without reading what it sent (POLLRDHUP): the
    non-reading attackers notice being cut off and come back."""
    p = select.poll()
    p.register(stream.socket.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(p.poll(0))


async def ws_handshake_raw(stream: trio.SocketStream, host: str, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await stream.send_all(req.encode())
    return await read_head(stream)


async def stomp_ws(
    nursery: trio.Nursery, host: str, port: int, src: str
) -> trio_websocket.WebSocketConnection:
    stream = await raw_connect(host, port, src)
    return await trio_websocket.wrap_client_stream(
        nursery, stream, host, "/ws", subprotocols=["v12.stomp"],
        max_message_size=64 * MiB,
    )  # fmt: skip


class StompTcp:
    """STOMP over a TCP connection: frames out, frames in (command, headers, body)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def send(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        await self.stream.send_all(stomp_frame(command, headers, body))

    async def receive(self) -> tuple[str, dict[str, str], bytes] | None:
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\0")
            if end >= 0:
                raw, self.buf = self.buf[:end], self.buf[end + 1 :]
                head, _, body = raw.partition(b"\n\n")
                lines = head.decode(errors="replace").split("\n")
                hdrs = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
                return lines[0], hdrs, body
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buf += chunk


async def stomp_login(host: str, port: int, src: str, user: int, token: str) -> StompTcp:
    c = StompTcp(await raw_connect(host, port, src))
    await c.send("CONNECT", {"accept-version": "1.2", "host": "/", "login": f"user{user}",
                             "passcode": token, "heart-beat": "0,0"})  # fmt: skip
    got = await c.receive()
    if got is None or got[0] != "CONNECTED":
        raise ConnectionError(f"CONNECT refused: {got!r:.200}")
    return c


# --- the attacks ----------------------------------------------------------------------------


@dataclass
class Ctx:
    host: str
    http_port: int
    ws_port: int
    tcp_port: int
    tokens: dict[int, str]
    busy_room: int
    attacker_room: int
    max_connections: int
    stats: dict[str, Any] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


async def forever(ctx: Ctx, name: str, fn: Callable[[], Awaitable[None]], pause: float) -> None:
    """Run one attacker's cycle again and again: each cycle ends when the server cuts it
    off, and the attacker comes back."""
    while True:
        try:
            await fn()
        except* Exception as group:  # an attacker takes any failure as a cue to come back
            # (except*: at the deadline, errors arrive in a group with trio's Cancelled,
            # which must go on up.)
            exc: BaseException = group
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]  # what went wrong, not the nurseries that carried it
            ctx.count(f"{name}: {type(exc).__name__}")
        await trio.sleep(pause)


async def attack_preauth(ctx: Ctx, nursery: trio.Nursery) -> None:
    """1. 100 anonymous STOMP connections (50 over TCP, 50 over WebSocket), each sending a
    4 MiB CONNECT with no NUL, again as soon as it is closed."""
    head = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:x\npasscode:"
    chunk = b"A" * 65536

    async def tcp() -> None:
        stream = await raw_connect(ctx.host, ctx.tcp_port, ATTACKER)
        async with stream:
            ctx.count("tcp connections")
            await stream.send_all(head)
            for _ in range(64):  # 4 MiB, never a NUL
                await stream.send_all(chunk)
            ctx.count("tcp CONNECTs sent whole")
            while await stream.receive_some(65536):
                pass

    async def ws() -> None:
        async with trio.open_nursery() as n:
            conn = await stomp_ws(n, ctx.host, ctx.ws_port, ATTACKER)
            ctx.count("ws connections")
            try:
                await conn.send_message(head + chunk * 64)
                ctx.count("ws CONNECTs sent whole")
                await conn.get_message()
            finally:
                ctx.stats.setdefault("ws close codes", set()).add(
                    conn.closed.code if conn.closed else None
                )
                await conn.aclose()
                n.cancel_scope.cancel()

    for _ in range(50):
        nursery.start_soon(forever, ctx, "tcp", tcp, 0.05)
        nursery.start_soon(forever, ctx, "ws", ws, 0.05)


async def attack_nonreaders(ctx: Ctx, nursery: trio.Nursery) -> None:
    """2. Five /chat sockets that never read, in a room that ten publishers keep busy
    (3,500-character messages, 15 a second each, under the per-user rate limit)."""

    async def publisher(user: int) -> None:
        c = await stomp_login(ctx.host, ctx.tcp_port, ATTACKER, user, ctx.tokens[user])
        body = json.dumps({"content": "x" * 3500}).encode()
        async with c.stream:
            while True:
                await c.send("SEND", {"destination": DEST.format(ctx.busy_room),
                                      "content-type": "application/json"}, body)  # fmt: skip
                ctx.count("busy-room messages sent")
                await trio.sleep(1 / 15)

    async def non_reader(user: int) -> None:
        status, body = await http_request(
            ctx.host, ctx.http_port, ATTACKER, "POST", "/chat/ticket",
            {"accessToken": ctx.tokens[user], "Content-Type": "application/json"}, b"{}",
        )  # fmt: skip
        if status != 200:
            ctx.count(f"ticket HTTP {status}")
            await trio.sleep(1)
            return
        ticket = json.loads(body)["ticket"]
        stream = await raw_connect(ctx.host, ctx.http_port, ATTACKER, rcvbuf=4096)
        async with stream:
            head = await ws_handshake_raw(stream, ctx.host, f"/chat?ticket={ticket}")
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                ctx.count("non-reader handshakes refused")
                return
            ctx.count("non-reader sockets opened")
            # Never reads. A 4008 close queues behind the unread bytes, so it may never
            # be seen here: the server's RSS is what tells whether the bound held.
            while not peer_closed(stream):
                await trio.sleep(0.2)
            ctx.count("non-reader sockets cut off by the server")

    for u in PUBLISHERS:
        nursery.start_soon(forever, ctx, "publisher", lambda u=u: publisher(u), 0.5)
    for u in NON_READERS:
        nursery.start_soon(forever, ctx, "non-reader", lambda u=u: non_reader(u), 0.1)


async def attack_transaction(ctx: Ctx, nursery: trio.Nursery) -> None:
    """3. BEGIN, then SENDs of ~4 MiB in the transaction (150 of them, as in the issue)
    until the server refuses, again on a new connection; two connections at a time."""
    body = json.dumps({"content": "y" * (4 * MiB - 2048)}).encode()

    async def one(user: int) -> None:
        c = await stomp_login(ctx.host, ctx.tcp_port, ATTACKER, user, ctx.tokens[user])
        async with c.stream, trio.open_nursery() as n:

            async def reader() -> None:
                got = await c.receive()
                what = f"{got[0]} {got[1].get('message', '')}" if got else "closed"
                ctx.count(f"answer: {what}")
                n.cancel_scope.cancel()

            n.start_soon(reader)
            await c.send("BEGIN", {"transaction": "t1"})
            for _ in range(150):
                await c.send("SEND", {"destination": DEST.format(ctx.attacker_room),
                                      "transaction": "t1", "content-type": "application/json",
                                      "content-length": str(len(body))}, body)  # fmt: skip
                ctx.count("transaction SENDs written")
            await trio.sleep_forever()

    for u in list(HOARDERS)[:2]:
        nursery.start_soon(forever, ctx, "transaction", lambda u=u: one(u), 0.05)


async def attack_history(ctx: Ctx, nursery: trio.Nursery) -> None:
    """4. 100 requests for the largest history page (200 messages of 4,000 non-ASCII
    characters) on connections that never read, each made again when the server drops
    it."""
    path = f"/chat/rooms/{ctx.attacker_room}/messages?limit=200"

    async def one(user: int) -> None:
        stream = await raw_connect(ctx.host, ctx.http_port, ATTACKER, rcvbuf=4096)
        async with stream:
            req = (f"GET {path} HTTP/1.1\r\nHost: {ctx.host}\r\n"
                   f"accessToken: {ctx.tokens[user]}\r\n\r\n")  # fmt: skip
            await stream.send_all(req.encode())
            ctx.count("history requests sent")
            while not peer_closed(stream):
                await trio.sleep(0.2)
            ctx.count("history connections dropped by the server")

    hoarders = list(HOARDERS)
    for i in range(100):
        u = hoarders[i % len(hoarders)]
        nursery.start_soon(forever, ctx, "history", lambda u=u: one(u), 0.1)


async def attack_subscriptions(ctx: Ctx, nursery: trio.Nursery) -> None:
    """5. One connection sends 20,000 SUBSCRIBEs to the busy room (distinct ids), reading
    what it is sent; again when it is cut off."""

    async def one() -> None:
        c = await stomp_login(ctx.host, ctx.tcp_port, ATTACKER, SUBSCRIBER,
                              ctx.tokens[SUBSCRIBER])  # fmt: skip
        async with c.stream, trio.open_nursery() as n:

            async def reader() -> None:
                while True:
                    got = await c.receive()
                    if got is None:
                        ctx.count("subscriber cut off")
                        n.cancel_scope.cancel()
                        return
                    ctx.count(f"frames received: {got[0]}")

            n.start_soon(reader)
            dest = DEST.format(ctx.busy_room)
            for i in range(20_000):
                await c.send("SUBSCRIBE", {"id": str(i), "destination": dest})
                ctx.count("SUBSCRIBEs written")
            await trio.sleep_forever()

    nursery.start_soon(forever, ctx, "subscriber", one, 0.05)


def _flood(ctx: Ctx, nursery: trio.Nursery, sources: list[tuple[str, int]]) -> None:
    ports = [ctx.http_port, ctx.ws_port, ctx.tcp_port]

    async def slot(src: str, port: int) -> None:
        stream = await raw_connect(ctx.host, port, src)
        async with stream:
            ctx.count("connections opened")
            t0 = trio.current_time()
            # Idle: it holds its place until the server closes it (reading an answer,
            # a 503 or an ERROR, if it is refused).
            while await stream.receive_some(65536):
                pass
            ctx.count("closed within 1 s (refused)" if trio.current_time() - t0 < 1.0
                      else "closed later (timed out)")  # fmt: skip

    i = 0
    for src, n in sources:
        for _ in range(n):
            nursery.start_soon(forever, ctx, "flood", lambda s=src, p=ports[i % 3]: slot(s, p), 0.2)
            i += 1


async def attack_flood_one(ctx: Ctx, nursery: trio.Nursery) -> None:
    """6a. 2,000 idle connections from one address, spread over the HTTP, STOMP
    WebSocket and STOMP TCP listeners, each opened again when closed."""
    _flood(ctx, nursery, [(ATTACKER, 2000)])


async def attack_flood_total(ctx: Ctx, nursery: trio.Nursery) -> None:
    """6b. max_connections + 1,000 idle connections, 250 from each of 127.0.0.3 and up
    (under the per-address limit), each opened again when closed."""
    want = ctx.max_connections + 1000
    sources = [(f"127.0.0.{3 + k}", min(250, want - 250 * k)) for k in range((want + 249) // 250)]
    _flood(ctx, nursery, sources)


ATTACKS: list[tuple[str, str, Callable[[Ctx, trio.Nursery], Awaitable[None]]]] = [
    ("1", "pre-login CONNECT of 4 MiB, no NUL, 100 connections", attack_preauth),
    ("2", "5 non-reading /chat sockets in a busy room", attack_nonreaders),
    ("3", "BEGIN + 150 SENDs of 4 MiB, 2 connections", attack_transaction),
    ("4", "100 history pages (200 x 4,000 chars) never read", attack_history),
    ("5", "20,000 SUBSCRIBEs to one room on one connection", attack_subscriptions),
    ("6a", "2,000 idle connections from one address", attack_flood_one),
    ("6b", "max_connections + 1,000 idle connections, 250 per address", attack_flood_total),
]


async def run_attack(ctx: Ctx, fn: Callable[[Ctx, trio.Nursery], Awaitable[None]],
                     seconds: float) -> None:  # fmt: skip
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            await fn(ctx, nursery)
            await trio.sleep_forever()


async def prefill_history(ctx: Ctx) -> None:
    """The attacker's room gets 200 messages of 4,000 non-ASCII characters: the largest
    history page there is (JSON escapes each as \\uXXXX: ~4.8 MB a page)."""
    body = json.dumps({"content": "語" * 4000}).encode()
    async with trio.open_nursery() as n:
        for u in HOARDERS:

            async def fill(u: int = u) -> None:
                c = await stomp_login(ctx.host, ctx.tcp_port, ATTACKER, u, ctx.tokens[u])
                async with c.stream:
                    for i in range(20):  # within the per-user burst (40)
                        hdrs = {"destination": DEST.format(ctx.attacker_room),
                                "content-type": "application/json"}  # fmt: skip
                        if i == 19:
                            hdrs["receipt"] = "done"
                        await c.send("SEND", hdrs, body)
                    while (got := await c.receive()) is not None and got[0] != "RECEIPT":
                        pass

            n.start_soon(fill)


# --- RSS sampling ----------------------------------------------------------------------------


class RssSampler:
    """The server's VmRSS every 20 ms on a thread of its own (the attacker's event loop
    may be too busy to sample)."""

    def __init__(self, rss_kb: Callable[[int], int], pid: int) -> None:
        self.rss_kb, self.pid = rss_kb, pid
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.rss_kb(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# --- the orchestration -------------------------------------------------------------------------


def run(args: Any, srv: Any, bench: Any, max_connections: int) -> dict[str, Any]:
    """Every attack in turn against the running chatd `srv`, whose [server]
    max_connections is `max_connections`; returns the figures. `bench` is run.py (its
    admin API, tokens and /proc readers)."""
    create_rooms, mint, rss_kb, log = bench.create_rooms, bench.mint, bench.rss_kb, bench.log
    http = srv.http_url.removeprefix("http://")
    host, http_port = http.rsplit(":", 1)
    ws_port = int(srv.ws_url.removeprefix("ws://").split("/")[0].rsplit(":", 1)[1])
    if not srv.stomp_tcp:
        raise SystemExit("bench abuse: chatd's ready line names no STOMP TCP listener")
    tcp = int(srv.stomp_tcp.rsplit(":", 1)[1])
    attackers = [*PUBLISHERS, *NON_READERS, SUBSCRIBER]
    busy, mine = create_rooms(srv, [[HONEST_USER, *attackers], list(HOARDERS)])
    tokens = {u: mint(srv, u) for u in [HONEST_USER, *attackers, *HOARDERS]}
    ctx = Ctx(host=host, http_port=int(http_port), ws_port=ws_port, tcp_port=tcp,
              tokens=tokens, busy_room=busy, attacker_room=mine,
              max_connections=max_connections)  # fmt: skip
    log("abuse: filling the attacker's room with 200 messages of 4,000 characters")
    trio.run(prefill_history, ctx)
    status, page = trio.run(
        http_request, host, int(http_port), ATTACKER, "GET",
        f"/chat/rooms/{mine}/messages?limit=200", {"accessToken": tokens[HOARDERS[0]]},
    )  # fmt: skip
    log(f"abuse: one history page is {len(page) / MiB:.1f} MiB (HTTP {status})")

    spec = {"host": host, "ws_port": ws_port, "http_port": int(http_port), "room": busy,
            "token": tokens[HONEST_USER], "user": HONEST_USER,
            "rate": args.honest_rate}  # fmt: skip
    # The honest client shares core 1 with the attacker; SCHED_FIFO (chrt, as root) lets
    # it run whenever it has work, so its latency is the server's, not the attacker's
    # Python hogging the core.
    rt = ["chrt", "-f", "10"] if os.geteuid() == 0 and shutil.which("chrt") else []
    if not rt:
        log("abuse: no chrt as root: the honest client competes with the attacker for core 1")
    honest = subprocess.Popen(
        [*rt, sys.executable, __file__, "honest", json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert honest.stdin is not None and honest.stdout is not None
    first = json.loads(honest.stdout.readline())
    if not first.get("ready"):
        raise SystemExit(f"bench abuse: the honest client did not start: {first}")

    def phase(name: str) -> None:
        assert honest.stdin is not None
        honest.stdin.write(f"phase {name}\n")
        honest.stdin.flush()

    def report() -> dict[str, Any]:
        assert honest.stdin is not None and honest.stdout is not None
        honest.stdin.write("report\n")
        honest.stdin.flush()
        return json.loads(honest.stdout.readline())

    only = set(args.attacks.split(",")) if args.attacks else None
    rows: list[dict[str, Any]] = []
    try:
        plan = [("0", "none (the honest client alone)", None), *ATTACKS]
        for aid, what, fn in plan:
            if only and aid not in only and aid != "0":
                continue
            time.sleep(args.settle)
            before = rss_kb(srv.pid)
            ctx.stats = {}
            phase(aid)
            log(f"abuse: attack {aid}: {what} for {args.attack_seconds:.0f} s "
                f"(RSS before {before / 1024:.1f} MB)")  # fmt: skip
            procs0, cpu0, t0 = bench.process_cpu_snapshot(), bench.cpu_seconds(srv.pid), time.time()
            with RssSampler(rss_kb, srv.pid) as sampler:
                if fn is None:
                    time.sleep(args.attack_seconds)
                else:
                    trio.run(run_attack, ctx, fn, args.attack_seconds)
                wall = time.time() - t0
                server_cpu = bench.cpu_seconds(srv.pid) - cpu0
                # Other people's processes on this shared machine, during the attack.
                noise, top = bench.interference(
                    procs0, bench.process_cpu_snapshot(), {os.getpid(), srv.pid, honest.pid}
                )
                h = report()
            after = rss_kb(srv.pid)
            if srv.proc is not None and srv.proc.poll() is not None:
                raise SystemExit(f"bench abuse: chatd exited during attack {aid}")
            stats = {k: (sorted(map(str, v)) if isinstance(v, set) else v)
                     for k, v in ctx.stats.items()}  # fmt: skip
            row = {
                "attack": aid, "what": what,
                "rss_before_mb": round(before / 1024, 1),
                "rss_peak_mb": round(sampler.peak / 1024, 1),
                "rss_growth_mb": round((sampler.peak - before) / 1024, 1),
                "rss_after_mb": round(after / 1024, 1),
                "seconds": round(wall, 1),
                "server_cpu_pct": round(100 * server_cpu / wall, 1),
                "noise_cpu_pct": round(100 * noise / wall, 1), "noise_top": top,
                "honest": h, "attacker": stats,
            }  # fmt: skip
            log(f"abuse: attack {aid}: RSS {row['rss_before_mb']} -> peak "
                f"{row['rss_peak_mb']} MB; honest p99 {h['p99_ms']} ms, refused "
                f"{h['refused']}; server CPU {row['server_cpu_pct']} %, others' CPU "
                f"{row['noise_cpu_pct']} % {top}; attacker {stats}")  # fmt: skip
            log(f"abuse: attack {aid}: the honest client's worst latency in each second (ms): "
                f"{h.get('worst_by_second_ms')}")
            rows.append(row)
    finally:
        if honest.poll() is None:
            honest.stdin.write("quit\n")
            honest.stdin.flush()
            try:
                honest.wait(timeout=10)
            except subprocess.TimeoutExpired:
                honest.kill()
    return {"attacks": rows}


def markdown(rows: list[dict[str, Any]], rss_target: float, p99_target: float) -> str:
    out = [
        "| # | attack | RSS before (MB) | peak (MB) | growth (MB) | honest p50 / p99 / max (ms)"
        " | honest sent / delivered / missing after 5 s | honest refused or cut off"
        " | server CPU % | others' CPU % | met? |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        h = r["honest"]
        refused = "; ".join(" ".join(x.split()) for x in h["refusals"]) if h["refusals"] else "no"
        ok = (r["rss_growth_mb"] <= rss_target and h["p99_ms"] is not None
              and h["p99_ms"] <= p99_target and not h["refusals"] and not h["missing"])  # fmt: skip
        out.append(
            f"| {r['attack']} | {r['what']} | {r['rss_before_mb']} | {r['rss_peak_mb']} | "
            f"{r['rss_growth_mb']} | {h['p50_ms']} / {h['p99_ms']} / {h['max_ms']} | "
            f"{h['sent']} / {h['delivered']} / {h['missing']} | {refused} | "
            f"{r['server_cpu_pct']} | {r['noise_cpu_pct']} | {'yes' if ok else '**no**'} |"
        )
    return "\n".join(out)


# --- the honest client (a process of its own) --------------------------------------------------


async def honest_main(spec: dict[str, Any]) -> None:
    """Sends to the busy room at `rate`/s over STOMP on a WebSocket from 127.0.0.1 and
    times each message from SEND to its MESSAGE. Every 5 s it also proves a new
    connection is let in (a STOMP login, and an HTTP request). Commands on stdin:
    `phase NAME` starts a new set of figures, `report` prints the current one."""
    host, room, token = spec["host"], spec["room"], spec["token"]
    marker = re.compile(rb"hon\|(\d+)\|(\d+)\|")
    st: dict[str, Any] = {}

    pending: dict[int, int] = {}  # seq -> monotonic ns sent, until delivered

    def reset() -> None:
        st.update(lat=[], sent=0, delivered=0, refusals=[], probes=0, t0=trio.current_time(),
                  t0_ns=time.monotonic_ns(), worst={})

    reset()
    stdin = trio.lowlevel.FdStream(os.dup(0))
    connected = trio.Event()
    conn_box: dict[str, trio_websocket.WebSocketConnection] = {}

    def emit(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    async def login() -> trio_websocket.WebSocketConnection:
        conn = await trio_websocket.connect_websocket(
            nursery, host, spec["ws_port"], "/ws", use_ssl=False, subprotocols=["v12.stomp"]
        )
        await conn.send_message(stomp_frame("CONNECT", {
            "accept-version": "1.2", "host": "/", "login": f"user{spec['user']}",
            "passcode": token, "heart-beat": "0,0"}).decode())  # fmt: skip
        got = await conn.get_message()
        text = got.encode() if isinstance(got, str) else got
        if not text.startswith(b"CONNECTED"):
            await conn.aclose()
            raise ConnectionError(text[:200].decode(errors="replace"))
        return conn

    async def session() -> None:
        """The honest client's connection; when the server ends it, noted and made again."""
        while True:
            try:
                conn = await login()
                sub = {"id": "0", "destination": DEST.format(room), "receipt": "s"}
                await conn.send_message(stomp_frame("SUBSCRIBE", sub).decode())
                conn_box["c"] = conn
                connected.set()
                while True:
                    msg = await conn.get_message()
                    now = time.monotonic_ns()
                    data = msg.encode() if isinstance(msg, str) else msg
                    if data.startswith(b"ERROR"):
                        st["refusals"].append("ERROR " + data[:120].decode(errors="replace"))
                    for m in marker.finditer(data):
                        if pending.pop(int(m.group(1)), None) is not None:
                            sent_ns = int(m.group(2))
                            ms = (now - sent_ns) / 1e6
                            st["lat"].append(ms)
                            st["delivered"] += 1
                            # The worst latency of each second of the phase, by send time:
                            # when in the attack the server stalled.
                            second = max(0, (sent_ns - st["t0_ns"]) // 1_000_000_000)
                            st["worst"][second] = max(st["worst"].get(second, 0.0), ms)
            except (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError,
                    OSError, ConnectionError) as exc:  # fmt: skip
                conn_box.pop("c", None)
                st["refusals"].append(f"session ended: {type(exc).__name__} {exc}"[:160])
                await trio.sleep(0.5)

    async def sender() -> None:
        await connected.wait()
        seq = 0
        interval = 1 / spec["rate"]
        nxt = trio.current_time()
        while True:
            # Steady: a send that comes late is not made up for with a burst.
            nxt = max(nxt + interval, trio.current_time())
            await trio.sleep_until(nxt)
            conn = conn_box.get("c")
            if conn is None:
                continue
            seq += 1
            t = time.monotonic_ns()
            pending[seq] = t
            body = json.dumps({"content": f"hon|{seq}|{t}|"}).encode()
            try:
                await conn.send_message(stomp_frame("SEND", {
                    "destination": DEST.format(room),
                    "content-type": "application/json"}, body).decode())  # fmt: skip
                st["sent"] += 1
            except trio_websocket.ConnectionClosed:
                pass

    async def prober() -> None:
        while True:
            await trio.sleep(5)
            st["probes"] += 1
            try:
                with trio.fail_after(5):
                    conn = await login()
                    await conn.aclose()
                    status, _ = await http_request(
                        host, spec["http_port"], "127.0.0.1", "GET", "/chat/rooms",
                        {"accessToken": token},
                    )  # fmt: skip
                    if status != 200:
                        st["refusals"].append(f"new HTTP request: {status}")
            except (trio.TooSlowError, trio_websocket.ConnectionClosed,
                    trio_websocket.HandshakeError, OSError, ConnectionError) as exc:  # fmt: skip
                st["refusals"].append(f"new connection: {type(exc).__name__} {exc}"[:160])

    async def control() -> None:
        buf = b""
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                nursery.cancel_scope.cancel()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode().split()
                if not cmd:
                    continue
                if cmd[0] == "phase":
                    reset()
                elif cmd[0] == "report":
                    # What was sent in the phase is waited for (5 s at most); what is
                    # still missing counts with its age, a lower bound of its latency.
                    with trio.move_on_after(5):
                        while pending:
                            await trio.sleep(0.05)
                    now = time.monotonic_ns()
                    missing = len(pending)
                    lat = sorted(st["lat"] + [(now - t) / 1e6 for t in pending.values()])
                    pending.clear()

                    def q(p: float, lat: list[float] = lat) -> float | None:
                        if not lat:
                            return None
                        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1)

                    emit({"seconds": round(trio.current_time() - st["t0"], 1),
                          "sent": st["sent"], "delivered": st["delivered"], "missing": missing,
                          "p50_ms": round(statistics.median(lat), 1) if lat else None,
                          "p99_ms": q(0.99), "max_ms": round(lat[-1], 1) if lat else None,
                          "worst_by_second_ms": [round(st["worst"].get(i, -1), 1) for i in
                                                 range(1 + max(st["worst"], default=-1))],
                          "probes": st["probes"], "refusals": sorted(set(st["refusals"])),
                          "refused": bool(st["refusals"])})  # fmt: skip
                elif cmd[0] == "quit":
                    nursery.cancel_scope.cancel()
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session)
        with trio.fail_after(30):
            await connected.wait()
        emit({"ready": True})
        nursery.start_soon(sender)
        nursery.start_soon(prober)
        nursery.start_soon(control)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "honest":
        trio.run(honest_main, json.loads(sys.argv[2]))
    else:
        raise SystemExit("run it through bench/run.py abuse")
