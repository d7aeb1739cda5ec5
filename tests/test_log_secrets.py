"""No token, ticket or passcode reaches the logs, even at debug level: a real chatd
subprocess goes through every way a secret enters it (good and bad), then its whole
stderr is searched for them."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from chatd import config as config_mod
from chatd.auth import Authenticator

from .chatd_proc import SECRET, ChatdProcess, chatd_argv, child_env, run_chatd, write_config

TIMEOUT = 40


async def _stomp_exchange(port: int, frames: list[bytes], until: bytes) -> bytes:
    """Send STOMP frames over TCP; read until a frame with command `until` arrives."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for f in frames:
            await stream.send_all(f)
        got = b""
        while (until + b"\n") not in got:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            got += chunk
        return got


def _frame(command: str, body: str = "", **headers: str) -> bytes:
    lines = [command] + [f"{k.replace('_', '-')}:{v}" for k, v in headers.items()]
    return ("\n".join(lines) + "\n\n" + body + "\0").encode()


@pytest.mark.parametrize("fmt", ["plain", "json"])
async def test_no_secret_in_debug_logs(tmp_path: Path, fmt: str) -> None:
    config = write_config(
        tmp_path / "chatd.toml", tmp_path, log={"level": "debug", "format": fmt}
    )
    auth = Authenticator(config_mod.load(config, env={}).auth, SECRET)
    admin = auth.mint(9000, "admin", admin=True)
    alice = auth.mint(1, "alice")
    forged = jwt.encode({"sub": "1", "username": "alice", "exp": 2**31}, "x" * 40, "HS256")
    secrets: dict[str, str] = {"jwt secret": SECRET, "admin": admin, "alice": alice}
    secrets["forged"] = forged

    with trio.fail_after(TIMEOUT):
        async with run_chatd(chatd_argv(config), child_env()) as chatd:
            await _exercise(chatd, admin, alice, forged, secrets)
            chatd.send_signal(signal.SIGTERM)
            assert await chatd.wait_exit() == 0

    log = chatd.stderr
    assert "DEBUG" in log or '"level": "debug"' in log  # debug really was on
    for what, value in secrets.items():
        assert value not in log, f"the {what} reached the log"
        # A JWT's signature alone is as bad as the whole token.
        if value.count(".") == 2:
            assert value.rsplit(".", 1)[1] not in log, f"the {what}'s signature reached the log"


async def _exercise(
    chatd: ChatdProcess, admin: str, alice: str, forged: str, secrets: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=chatd.base, timeout=10) as http:
        room = await http.post(
            "/admin/rooms",
            json={"name": "secrets", "members": [1, 2]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert room.status_code == 201
        room_id = room.json()["id"]

        assert (await http.post("/chat/ticket", headers={"accessToken": forged})).status_code == 401
        bearer = {"Authorization": f"Bearer {forged}"}
        assert (await http.get("/chat/rooms", headers=bearer)).status_code == 401

        resp = await http.post("/chat/ticket", headers={"accessToken": alice})
        ticket = resp.json()["ticket"]
        secrets["ticket"] = ticket

        connect = await http.post("/chat-ws/connect", headers={"Authorization": f"Bearer {alice}"})
        info = connect.json()["connectionInfo"]
        login, passcode = info["username"], info["password"]
        secrets["passcode"] = passcode

    # /chat with the ticket: a message round trip, then the used ticket again.
    ws_url = f"ws://127.0.0.1:{chatd.http_port}/chat?ticket={ticket}"
    async with open_websocket_url(ws_url) as ws:
        await ws.send_message(json.dumps({"roomId": room_id, "content": "hello"}))
        assert json.loads(await ws.get_message())["content"] == "hello"
    async with open_websocket_url(ws_url) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.get_message()

    # STOMP over TCP: the issued login, a SEND, and two refused logins.
    dest = f"/exchange/chat.direct/room.{room_id}"
    got = await _stomp_exchange(
        chatd.stomp_tcp_port,
        [
            _frame("CONNECT", accept_version="1.2", host="/", login=login, passcode=passcode),
            _frame("SUBSCRIBE", id="0", destination=dest),
            _frame("SEND", json.dumps({"content": "via stomp"}), destination=dest, receipt="r1"),
            _frame("DISCONNECT", receipt="bye"),
        ],
        until=b"RECEIPT",
    )
    assert got.startswith(b"CONNECTED\n"), got
    wrong = passcode[:-4] + ("AAAA" if not passcode.endswith("AAAA") else "BBBB")
    secrets["wrong passcode"] = wrong
    for bad in (wrong, forged):
        got = await _stomp_exchange(
            chatd.stomp_tcp_port,
            [_frame("CONNECT", accept_version="1.2", host="/", login=login, passcode=bad)],
            until=b"ERROR",
        )
        assert got.startswith(b"ERROR\n"), got

    # STOMP over WebSocket with the same passcode.
    async with open_websocket_url(
        f"ws://127.0.0.1:{chatd.stomp_ws_port}/ws", subprotocols=["v12.stomp"]
    ) as ws:
        await ws.send_message(
            _frame("CONNECT", accept_version="1.2", host="/", login=login, passcode=passcode)
        )
        reply = await ws.get_message()
        reply_bytes = reply.encode() if isinstance(reply, str) else reply
        assert reply_bytes.startswith(b"CONNECTED\n")
