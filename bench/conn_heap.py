"""Python heap per subscribed STOMP-over-WebSocket connection, in one process.

    PYTHONPATH=CHECKOUT python bench/conn_heap.py CHECKOUT [N] [--where]

Starts chatd from CHECKOUT (a checkout of any revision) in-process, connects N clients
(default 300) over STOMP on the dedicated WebSocket listener, each subscribed to one room,
and prints tracemalloc's growth per connection after the first 20 (server and client
heaps together: the client's share is the same for every revision, so differences are
chatd's), and the files that allocate most per connection. Exact and repeatable, unlike
RSS on a busy machine; it does not see what the kernel keeps for each socket.

`--where` says which lines of chatd keep it: each allocation still alive is put on the
innermost frame of CHECKOUT's chatd/ on its traceback (40 frames deep), so what trio,
wsproto or the interpreter allocate under a chatd call (a suspended coroutine's frame, a
task, a cancel scope) counts for the chatd line that called them, and the allocating
line is shown beside it. Its total is a little different from the one without it
(tracemalloc keeps the deeper tracebacks): compare totals taken the same way.
"""

from __future__ import annotations

import gc
import linecache
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

import trio
from trio_websocket import connect_websocket

WHERE = "--where" in sys.argv
ARGS = [a for a in sys.argv[1:] if a != "--where"]
CHECKOUT = str(Path(ARGS[0]).resolve())
sys.path.insert(0, CHECKOUT)
N = int(ARGS[1]) if len(ARGS) > 1 else 300
WARM = 20

from chatd import config as config_mod  # noqa: E402
from chatd.server import serve  # noqa: E402


def _config(tmp: Path) -> config_mod.Config:
    raw: dict[str, dict[str, object]] = {
        "http": {"listen": ["127.0.0.1:0"]},
        "store": {"path": str(tmp / "chatd.db")},
        "auth": {"jwt_secret": "x" * 40},
        "stomp": {"websocket_listen": ["127.0.0.1:0"], "tcp_listen": ["127.0.0.1:0"]},
        "metrics": {"listen": []},
        "server": {"max_connections": 0, "max_connections_per_address": 0},
    }
    try:
        return config_mod.from_mapping(raw, env={})
    except config_mod.ConfigError:  # a revision without connection limits
        del raw["server"]
        return config_mod.from_mapping(raw, env={})


async def main() -> None:
    cfg = _config(Path(tempfile.mkdtemp()))
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, cfg)
        state = running.state
        room = await state.service.create_room("r", False, list(range(1, N + 1)))
        port = running.stomp_ws_port
        async with trio.open_nursery() as clients:

            async def connect(user_id: int) -> None:
                user = state.auth.verify(state.auth.mint(user_id, f"u{user_id}"))
                login, passcode = state.stomp_logins.issue(user)
                ws = await connect_websocket(
                    clients, "127.0.0.1", port, "/ws", use_ssl=False, subprotocols=["v12.stomp"]
                )
                await ws.send_message(
                    f"CONNECT\naccept-version:1.2\nlogin:{login}\npasscode:{passcode}\n\n\0"
                )
                await ws.get_message()
                dest = f"/exchange/chat.direct/room.{room.id}"
                await ws.send_message(f"SUBSCRIBE\nid:0\ndestination:{dest}\nreceipt:r\n\n\0")
                await ws.get_message()

            for user_id in range(1, WARM + 1):
                await connect(user_id)
            gc.collect()
            tracemalloc.start(40 if WHERE else 1)
            base = tracemalloc.get_traced_memory()[0]
            for user_id in range(WARM + 1, N + 1):
                await connect(user_id)
            gc.collect()
            per = (tracemalloc.get_traced_memory()[0] - base) / (N - WARM)
            print(f"{ARGS[0]}: {per:,.0f} B of Python heap per connection")
            snapshot = tracemalloc.take_snapshot()
            if WHERE:
                _print_where(snapshot)
            else:
                for stat in snapshot.statistics("filename")[:15]:
                    where = "/".join(stat.traceback[0].filename.split("/")[-2:])
                    print(f"  {stat.size / (N - WARM):7,.0f} B  {where}")
            clients.cancel_scope.cancel()  # measured: no orderly goodbyes
        running.shutdown()


def _line(filename: str, lineno: int) -> str:
    return linecache.getline(filename, lineno).strip()


def _print_where(snapshot: tracemalloc.Snapshot) -> None:
    """Bytes per connection by the innermost chatd line on each allocation's traceback."""
    ours = CHECKOUT + "/chatd/"
    by_line: Counter[str] = Counter()
    for stat in snapshot.statistics("traceback"):
        frames = list(stat.traceback)  # oldest first
        inner = frames[-1]
        mine = next((f for f in reversed(frames) if f.filename.startswith(ours)), None)
        key = "(no chatd frame)"
        if mine is not None:
            path = mine.filename[len(ours) :]
            key = f"{path}:{mine.lineno}  {_line(mine.filename, mine.lineno)}"
        if mine is not inner:
            where = "/".join(inner.filename.split("/")[-2:])
            key += f"\n          <- {where}:{inner.lineno}  {_line(inner.filename, inner.lineno)}"
        by_line[key] += stat.size
    for key, size in by_line.most_common(40):
        print(f"  {size / (N - WARM):7,.0f} B  {key}")


trio.run(main)
