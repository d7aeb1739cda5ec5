"""A small sans-I/O WebSocket server protocol (RFC 6455): the opening handshake and frames.

Why not wsproto: on a fan-out path the server writes the same payload to thousands of
sockets, and server frames are unmasked, so a frame is just a 2-10 byte header before the
payload. Building it here costs a fraction of an event object per message. Client frames
are parsed with the same care wsproto takes: masking required, control frames short and
unfragmented, text valid UTF-8, a size limit on whole messages.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
from dataclasses import dataclass
from typing import Literal

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Every WebSocket close code chatd sends or reads, defined here only (RFC 6455 section
# 7.4.1; 4000-4999 are the application's own). What each means to a /chat client is in
# chatd.ticketws.session; STOMP clients learn why from an ERROR frame instead.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # shutting down, or a peer that stopped answering pings
CLOSE_PROTOCOL_ERROR = 1002  # /chat: also a missing ticket, bad query, refused Origin
CLOSE_UNSUPPORTED_DATA = 1003  # /chat: a ticket that is unknown, used or expired
CLOSE_NO_STATUS = 1005  # never sent: a close frame that carried no code
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOKEN_EXPIRED = 4001  # the token that opened the session expired (plus leeway)
CLOSE_DISCONNECTED_BY_ADMIN = 4003  # POST /admin/users/{id}/disconnect
CLOSE_SLOW_CONSUMER = 4008  # the connection's outbox filled up

MAX_HANDSHAKE = 16384


class HandshakeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    key: str
    subprotocols: tuple[str, ...]


def parse_request(data: bytes) -> Request | None:
    """Parse a complete upgrade request; None while the blank line has not arrived."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HANDSHAKE:
            raise HandshakeError(431, "request headers too large")
        return None
    try:
        lines = data[:end].decode("latin-1").split("\r\n")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise HandshakeError(400, "bad request") from None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HandshakeError(400, "bad request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(400, "bad header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if method != "GET":
        raise HandshakeError(405, "WebSocket handshakes use GET")
    upgrade = headers.get("upgrade", "").lower()
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if upgrade != "websocket" or "upgrade" not in connection:
        raise HandshakeError(426, "this endpoint speaks WebSocket only")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(426, "WebSocket version 13 required")
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HandshakeError(400, "bad Sec-WebSocket-Key") from None
    protos = tuple(
        p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()
    )
    return Request(target, headers, key, protos)


def accept_response(key: str, subprotocol: str | None) -> bytes:
    digest = base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest())
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + digest,
    ]
    if subprotocol:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def reject_response(status: int, body: bytes) -> bytes:
    reasons = {
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        426: "Upgrade Required",
        431: "Request Header Fields Too Large",
        503: "Service Unavailable",
    }
    head = (
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def frame_header(opcode: int, length: int) -> bytes:
    """The header of one final, unmasked server frame."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    return frame_header(opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:120])


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: far faster in CPython than a loop over bytes.
    n = len(payload)
    if not n:
        return b""
    repeated = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little"
    )


@dataclass(frozen=True, slots=True)
class Message:
    """A whole message. Text messages are checked to be UTF-8 but stay bytes: both
    protocols parse bytes, so decoding here would only be undone."""

    data: bytes
    text: bool = True


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


class FrameParser:
    """Client-to-server frames in, whole messages and control frames out."""

    __slots__ = ("max_message", "_buf", "_parts", "_size", "_opcode")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode: int | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def events(self) -> list[Message | Ping | Close]:
        out: list[Message | Ping | Close] = []
        while True:
            ev = self._next()
            if ev is None:
                return out
            if ev is not False:
                out.append(ev)

    def _next(self) -> Message | Ping | Close | None | Literal[False]:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, length = b1 & 0x80, b1 & 0x7F
        if rsv:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extensions agreed)")
        if not masked:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = int.from_bytes(buf[2:4], "big")
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = int.from_bytes(buf[2:10], "big")
            pos = 10
        control = opcode >= 0x8
        if control and (length > 125 or not fin):
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "bad control frame")
        if not control and self._size + length > self.max_message:
            raise ProtocolError(CLOSE_TOO_BIG, f"message over {self.max_message} bytes")
        if len(buf) < pos + 4 + length:
            return None
        mask = bytes(buf[pos : pos + 4])
        payload = _unmask(bytes(buf[pos + 4 : pos + 4 + length]), mask)
        del buf[: pos + 4 + length]

        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return False
        if opcode == OP_CLOSE:
            if len(payload) == 1:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "bad close payload")
            code = int.from_bytes(payload[:2], "big") if payload else CLOSE_NO_STATUS
            return Close(code, payload[2:].decode("utf-8", "replace"))
        if opcode == OP_CONT:
            if self._opcode is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a start")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            self._opcode = opcode
        else:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        self._parts.append(payload)
        self._size += length
        if not fin:
            return False
        data = b"".join(self._parts)
        first = self._opcode
        self._parts, self._size, self._opcode = [], 0, None
        if first == OP_TEXT:
            try:
                codecs.decode(data, "utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
            return Message(data, True)
        return Message(data, False)
