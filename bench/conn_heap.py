"""Python heap per subscribed STOMP-over-WebSocket connection, in one process.

    PYTHONPATH=CHECKOUT python bench/conn_heap.py CHECKOUT [N]

Starts chatd from CHECKOUT (a checkout of any revision) in-process, connects N clients
(default 300) over STOMP on the dedicated WebSocket listener, each subscribed to one room,
and prints tracemalloc's growth per connection after the first 20 (server and client
heaps together: the client's share is the same for every revision, so differences are
chatd's), and the files that allocate most per connection. Exact and repeatable, unlike
RSS on a busy machine; it does not see what the kernel keeps for each socket.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import tracemalloc
from pathlib import Path

import trio
from trio_websocket import connect_websocket

sys.path.insert(0, sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
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
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for user_id in range(WARM + 1, N + 1):
                await connect(user_id)
            gc.collect()
            per = (tracemalloc.get_traced_memory()[0] - base) / (N - WARM)
            print(f"{sys.argv[1]}: {per:,.0f} B of Python heap per connection")
            for stat in tracemalloc.take_snapshot().statistics("filename")[:15]:
                where = "/".join(stat.traceback[0].filename.split("/")[-2:])
                print(f"  {stat.size / (N - WARM):7,.0f} B  {where}")
            clients.cancel_scope.cancel()  # measured: no orderly goodbyes
        running.shutdown()


trio.run(main)
