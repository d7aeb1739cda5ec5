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


def field_tokens(value: str) -> set[str]:
    """A header field that is a comma-separated list (Connection, Upgrade: RFC 9110
    section 5.6.1) as its lower-cased tokens; an Upgrade token's `/version` is dropped."""
    return {t.strip().lower().partition("/")[0] for t in value.split(",") if t.strip()}


def asks_websocket(head: bytes) -> bool:
    """Whether a GET request head (whole or cut short) has an Upgrade field that lists
    websocket. The Connection field's `upgrade` token, the version and the key are
    parse_request's to check, so that a handshake missing one gets the handshake's
    answer (426, 400), not an HTTP one."""
    if not head.startswith(b"GET "):
        return False
    end = head.find(b"\r\n\r\n")
    for line in (head if end < 0 else head[:end]).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if (
            sep
            and name.strip().lower() == b"upgrade"
            and "websocket" in field_tokens(value.decode("latin-1"))
        ):
            return True
    return False


def two_framings(head: bytes) -> bool:
    """Whether a request head has both a Content-Length and a Transfer-Encoding field: two
    ways to say where the body ends, which a proxy in front and the server may read
    differently (request smuggling)."""
    end = head.find(b"\r\n\r\n")
    lowered = (head if end < 0 else head[:end]).lower()
    if b"transfer-encoding" not in lowered or b"content-length" not in lowered:
        return False
    names = {line.partition(b":")[0].strip() for line in lowered.split(b"\r\n")[1:]}
    return b"transfer-encoding" in names and b"content-length" in names


def parse_request(data: bytes) -> Request | None:
    """Parse a complete upgrade request; None while the blank line has not arrived."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HANDSHAKE:
        if end >= 0 or len(data) > MAX_HANDSHAKE:
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
    if "transfer-encoding" in headers and "content-length" in headers:
        # Two framings at once: a proxy may read the one, the server the other.
        raise HandshakeError(400, "Content-Length and Transfer-Encoding together")
    if method != "GET":
        raise HandshakeError(405, "WebSocket handshakes use GET")
    upgrade = field_tokens(headers.get("upgrade", ""))
    connection = field_tokens(headers.get("connection", ""))
    if "websocket" not in upgrade or "upgrade" not in connection:
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


def close_code_allowed(code: int) -> bool:
    """Whether a peer may send `code` in a close frame (RFC 6455 section 7.4 and the IANA
    registry): the defined codes but 1004 (reserved) and 1005, 1006 and 1015 (never on
    the wire), the registered 1012-1014, and 3000-4999 (libraries and applications)."""
    if 3000 <= code <= 4999:
        return True
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006)


_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
_DATA = (OP_CONT, OP_TEXT, OP_BINARY)


class FrameParser:
    """Client-to-server frames in, whole messages and control frames out.

    A frame is checked as soon as its bytes prove it wrong, in the order RFC 6455 lays a
    frame out (and wsproto checks it: tests/test_wsproto_lite.py holds the two side by
    side): the header as its fields arrive, then a data frame's payload as it arrives,
    part by part (its place in a fragmented message, then its UTF-8 if it is text), and a
    control frame once whole. So a doomed message is never buffered to its end."""

    __slots__ = (
        "max_message",
        "_buf",
        "_parts",
        "_size",
        "_opcode",
        "_decoder",
        "_frame",
        "_fin",
        "_left",
        "_mask",
        "_seen",
        "_error",
    )

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode: int | None = None  # the data message being received, if any
        self._decoder: codecs.IncrementalDecoder | None = None  # its UTF-8 check, once split
        self._frame: int | None = None  # the opcode of the frame being received, if any
        self._fin = False
        self._left = 0  # its payload bytes still to come
        self._mask = b""
        self._seen = 0  # its payload bytes already taken
        self._error: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def events(self) -> list[Message | Ping | Close]:
        """What the bytes received so far hold. A protocol error is raised once the events
        before it have been returned (the next call), and on every call after: a
        message that came whole before the error is still the client's message."""
        if self._error is not None:
            raise self._error
        out: list[Message | Ping | Close] = []
        while True:
            try:
                ev = self._next()
            except ProtocolError as exc:
                self._error = exc
                if out:
                    return out
                raise
            if ev is None:
                return out
            if ev is not False:
                out.append(ev)

    def _header(self) -> bool:
        """Take the next frame's header if it has all arrived; raise on the first field
        that is wrong."""
        buf = self._buf
        if len(buf) < 2:
            return False
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        control = opcode in _CONTROL
        if not control and opcode not in _DATA:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if control and not fin:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
        length = b1 & 0x7F
        pos = 2
        if control and length > 125:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes")
        if length == 126:
            if len(buf) < 4:
                return False
            length = int.from_bytes(buf[2:4], "big")
            pos = 4
            if length < 126:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "length not in its shortest form")
        elif length == 127:
            if len(buf) < 10:
                return False
            length = int.from_bytes(buf[2:10], "big")
            pos = 10
            if length < 65536:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "length not in its shortest form")
            if length >> 63:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "length with its top bit set")
        if rsv:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extensions agreed)")
        if not b1 & 0x80:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if len(buf) < pos + 4:
            return False
        if not control and self._size + length > self.max_message:
            raise ProtocolError(CLOSE_TOO_BIG, f"message over {self.max_message} bytes")
        self._mask = bytes(buf[pos : pos + 4])
        del buf[: pos + 4]
        self._frame, self._fin, self._left, self._seen = opcode, bool(fin), length, 0
        return True

    def _next(self) -> Message | Ping | Close | None | Literal[False]:
        if self._frame is None and not self._header():
            return None
        opcode = self._frame
        buf = self._buf
        left = self._left
        if opcode in _CONTROL:
            if len(buf) < left:
                return None
            payload = _unmask(bytes(buf[:left]), self._mask)
            del buf[:left]
            self._frame = None
            if opcode == OP_PING:
                return Ping(payload)
            if opcode == OP_PONG:
                return False
            return _close(payload)
        if left and not buf:
            return None
        first = not self._seen
        if first:
            if opcode == OP_CONT:
                if self._opcode is None:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a start")
            elif self._opcode is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            else:
                self._opcode = opcode
        take = min(left, len(buf))
        mask = self._mask
        if self._seen & 3:
            turn = self._seen & 3
            mask = mask[turn:] + mask[:turn]
        payload = _unmask(bytes(buf[:take]), mask)
        del buf[:take]
        self._seen += take
        self._left = left = left - take
        self._size += take
        done = not left and self._fin
        if self._opcode == OP_TEXT and not (done and first and not self._parts):
            # Text split over reads or frames is checked part by part; a whole message
            # that came at once is checked once, below, without a decoder.
            if self._decoder is None:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
            try:
                self._decoder.decode(payload, done)
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
        self._parts.append(payload)
        if left:
            return False
        self._frame = None
        if not done:
            return False
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        text = self._opcode == OP_TEXT
        checked = self._decoder is not None
        self._parts, self._size, self._opcode, self._decoder = [], 0, None, None
        if text:
            if not checked:
                try:
                    codecs.decode(data, "utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
            return Message(data, True)
        return Message(data, False)


def _close(payload: bytes) -> Close:
    """A close frame's code and reason, checked (RFC 6455 sections 5.5.1 and 7.4)."""
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if not close_code_allowed(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"close code {code} not allowed")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return Close(code, reason)
