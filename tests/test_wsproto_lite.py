"""The small WebSocket layer: handshake and client frames, fed whole and byte by byte."""

from __future__ import annotations

import base64
import os

import pytest

from chatd.net import websocket as ws

KEY = base64.b64encode(b"0123456789abcdef").decode()


def request(*extra: str, method: str = "GET", version: str = "13", key: str = KEY) -> bytes:
    lines = [
        f"{method} /ws?x=1 HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_handshake_parses_and_answers() -> None:
    req = ws.parse_request(request("Sec-WebSocket-Protocol: v10.stomp, v12.stomp", "Origin: x"))
    assert req is not None
    assert req.path == "/ws?x=1"
    assert req.subprotocols == ("v10.stomp", "v12.stomp")
    assert req.headers["origin"] == "x"
    resp = ws.accept_response(req.key, "v12.stomp")
    # RFC 6455's worked example uses a different key; check the construction instead.
    assert b"101 Switching Protocols" in resp and b"Sec-WebSocket-Protocol: v12.stomp" in resp


def test_rfc_accept_value() -> None:
    resp = ws.accept_response("dGhlIHNhbXBsZSBub25jZQ==", None)
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in resp


def test_handshake_needs_the_blank_line() -> None:
    data = request()
    assert ws.parse_request(data[:-2]) is None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request(method="POST"), 405),
        (request(version="8"), 426),
        (request(key="short"), 400),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426),
        (b"nonsense\r\n\r\n", 400),
        (b"GET /ws HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET /ws HTTP/1.1\r\n" + b"X: " + b"a" * 20000, 431),
    ],
)
def test_bad_handshakes(data: bytes, status: int) -> None:
    with pytest.raises(ws.HandshakeError) as info:
        ws.parse_request(data)
    assert info.value.status == status


def feed_all(data: bytes, bytewise: bool, max_message: int = 1 << 20) -> list[object]:
    parser = ws.FrameParser(max_message)
    out: list[object] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        parser.receive_data(chunk)
        out.extend(parser.events())
    return out


@pytest.mark.parametrize("bytewise", [False, True])
def test_messages_control_frames_and_fragments(bytewise: bool) -> None:
    data = (
        client_frame(ws.OP_TEXT, "héllo".encode())
        + client_frame(ws.OP_BINARY, b"\x00\xff")
        + client_frame(ws.OP_TEXT, b"par", fin=False)
        + client_frame(ws.OP_PING, b"p")
        + client_frame(ws.OP_CONT, b"ts")
        + client_frame(ws.OP_PONG, b"")
        + client_frame(ws.OP_BINARY, b"x" * 70000)
        + client_frame(ws.OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")
    )
    assert feed_all(data, bytewise) == [
        ws.Message("héllo".encode(), True),
        ws.Message(b"\x00\xff", False),
        ws.Ping(b"p"),
        ws.Message(b"parts", True),
        ws.Message(b"x" * 70000, False),
        ws.Close(1000, "bye"),
    ]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(ws.OP_TEXT, b"x", mask=False), ws.CLOSE_PROTOCOL_ERROR),
        (bytes([0xC1, 0x80]) + b"\0\0\0\0", ws.CLOSE_PROTOCOL_ERROR),  # RSV1 set
        (client_frame(ws.OP_PING, b"x" * 126), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_PING, b"x", fin=False), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CONT, b"x"), ws.CLOSE_PROTOCOL_ERROR),
        (
            client_frame(ws.OP_TEXT, b"a", fin=False) + client_frame(ws.OP_TEXT, b"b"),
            ws.CLOSE_PROTOCOL_ERROR,
        ),
        (client_frame(0x3, b""), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CLOSE, b"\x03"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_TEXT, b"\xff\xfe"), ws.CLOSE_INVALID_DATA),
        (client_frame(ws.OP_BINARY, b"x" * 101), ws.CLOSE_TOO_BIG),
        (
            client_frame(ws.OP_TEXT, b"x" * 60, fin=False) + client_frame(ws.OP_CONT, b"y" * 60),
            ws.CLOSE_TOO_BIG,
        ),
    ],
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_protocol_errors_carry_a_close_code(data: bytes, code: int, bytewise: bool) -> None:
    with pytest.raises(ws.ProtocolError) as info:
        feed_all(data, bytewise, max_message=100)
    assert info.value.code == code


def test_server_frames() -> None:
    assert ws.encode_frame(ws.OP_TEXT, b"hi") == b"\x81\x02hi"
    assert ws.frame_header(ws.OP_BINARY, 300) == b"\x82\x7e\x01\x2c"
    assert ws.frame_header(ws.OP_TEXT, 70000)[:2] == b"\x81\x7f"
    assert ws.close_frame(1001, "bye") == b"\x88\x05\x03\xe9bye"


def test_a_close_frame_without_a_code_reads_as_no_status() -> None:
    assert feed_all(client_frame(ws.OP_CLOSE, b""), bytewise=False) == [
        ws.Close(ws.CLOSE_NO_STATUS, "")
    ]


def test_close_codes_are_the_documented_numbers() -> None:
    # Clients switch on these numbers (README, the /chat guide): the one definition must
    # not drift.
    assert {name: getattr(ws, name) for name in dir(ws) if name.startswith("CLOSE_")} == {
        "CLOSE_NORMAL": 1000,
        "CLOSE_GOING_AWAY": 1001,
        "CLOSE_PROTOCOL_ERROR": 1002,
        "CLOSE_UNSUPPORTED_DATA": 1003,
        "CLOSE_NO_STATUS": 1005,
        "CLOSE_INVALID_DATA": 1007,
        "CLOSE_POLICY_VIOLATION": 1008,
        "CLOSE_TOO_BIG": 1009,
        "CLOSE_SERVER_ERROR": 1011,
        "CLOSE_TRY_AGAIN_LATER": 1013,
        "CLOSE_TOKEN_EXPIRED": 4001,
        "CLOSE_DISCONNECTED_BY_ADMIN": 4003,
        "CLOSE_SLOW_CONSUMER": 4008,
    }
