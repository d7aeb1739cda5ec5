"""Sans-I/O STOMP 1.0/1.1/1.2 frame reader and writer.

Wire grammar (STOMP 1.2, which 1.0 and 1.1 peers also satisfy)::

    frame  = command EOL *( header EOL ) EOL *OCTET NUL *( EOL )
    EOL    = [CR] LF
    header = name ":" value

Deliberate choices where the specifications leave room:

* CRLF is accepted as a line ending in every version, because the version is
  only known after the CONNECT frame has been parsed.
* A raw CR *inside* a header line (not directly before the LF) is kept
  literally instead of being rejected.
* A NUL byte in the command or header section is rejected: NUL terminates
  frames, so it almost always means a client forgot the blank line before the
  body, and many STOMP implementations split frames on NUL before parsing.
* The STOMP command is escaped like any other 1.1+ frame; only CONNECT and
  CONNECTED are exempt, exactly as the specification says.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import (
    CLOSED,
    COMMANDS,
    NEED_DATA,
    SUPPORTED_VERSIONS,
    Event,
    Frame,
    HeartBeat,
)
from ._names import V10, V11, V12
from ._numbers import parse_digits

__all__ = ["FrameReader", "FrameTemplate", "FrameWriter"]

_LF: Final = 0x0A
_CR: Final = 0x0D
_NUL: Final = 0x00

_COMMAND_BYTES: Final = frozenset(c.encode("ascii") for c in COMMANDS)
_MAX_COMMAND_LEN: Final = max(len(c) for c in COMMANDS)
# Kept unescaped in every version so that 1.0-only peers can still negotiate.
_UNESCAPED_COMMANDS: Final = frozenset({"CONNECT", "CONNECTED"})
# "Only the SEND, MESSAGE, and ERROR frames MAY have a body."
_BODY_COMMANDS: Final = frozenset({"SEND", "MESSAGE", "ERROR"})

_UNESCAPES: Final[dict[str, dict[str, str]]] = {
    V11: {"n": "\n", "c": ":", "\\": "\\"},
    V12: {"n": "\n", "c": ":", "\\": "\\", "r": "\r"},
}
# `.?` also matches at end of input, so a trailing lone backslash is reported.
_ESCAPE_RE: Final = re.compile(r"\\(.?)", re.DOTALL)
_ESCAPE_11: Final = str.maketrans({"\\": "\\\\", ":": "\\c", "\n": "\\n"})
_ESCAPE_12: Final = str.maketrans({"\\": "\\\\", ":": "\\c", "\n": "\\n", "\r": "\\r"})

_HEARTBEAT: Final = HeartBeat()
# A content-length of 20 significant digits is already far beyond any frame size.
_MAX_LENGTH_DIGITS: Final = 20

# Reader states.
_COMMAND: Final = 0
_HEADERS: Final = 1
_BODY: Final = 2
# Passing over a frame past the limits (`skip_oversized`): its header lines, then its body.
_SKIP_HEADERS: Final = 3
_SKIP_BODY: Final = 4
# Of a header line passed over, only this much is kept: enough for "content-length:", its
# digits (with some leading zeros) and a CR.
_SKIP_LINE_HEAD: Final = 64
_CONTENT_LENGTH: Final = b"content-length:"


class _Oversized(RemoteProtocolError):
    """A limit was reached: the frame is well formed so far, only too big."""


def _check_version(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported STOMP version {version!r}")
    return version


def _unescape(text: str, table: dict[str, str], version: str) -> str:
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        try:
            return table[match.group(1)]
        except KeyError:
            raise RemoteProtocolError(
                "Invalid header escape",
                f"Undefined escape sequence {match.group(0)!r} in header "
                f"{text!r}; STOMP {version} only defines " + ", ".join("\\" + k for k in table),
            ) from None

    return _ESCAPE_RE.sub(replace, text)


def _show_command(line: bytes) -> str:
    # Bounded so that the partial-line check and the complete-line check
    # produce the same message however the input was chunked.
    limit = _MAX_COMMAND_LEN + 1
    shown = line[:limit].decode("utf-8", "backslashreplace")
    if len(line) > limit:
        shown += "..."
    # In double quotes, as RabbitMQ shows a command; what is not printable escaped.
    inner = shown.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{inner}"'


class FrameReader:
    """Incremental STOMP frame parser.

    Feed bytes with :meth:`receive_data` (``b""`` means EOF), then call
    :meth:`next_event` until it returns :data:`NEED_DATA` (or :data:`CLOSED`).
    Each call does work proportional to the newly received bytes only.

    ``version`` selects the header escaping rules and may be changed between
    :meth:`next_event` calls; set it right after the CONNECT/STOMP frame has
    been returned and the version negotiated. CONNECT and CONNECTED frames
    are never unescaped, so the default (``"1.2"``) is safe before that.

    Limits: ``max_frame_size`` bounds the bytes of one frame up to (not
    including) its terminating NUL, ``max_headers`` the number of header lines
    and ``max_header_length`` the length of one header line without its EOL.
    A frame past them is an error, or, with ``skip_oversized``, passed over
    without being kept (a count in ``skipped``, why in ``skip_reason``) and the
    next one read: for a peer that relays what others wrote (a broker), where
    one outsider's frame must not end the connection. Passing over keeps no
    more than a line's first bytes, whatever the frame's size.
    """

    __slots__ = (
        "max_frame_size",
        "max_headers",
        "max_header_length",
        "_version",
        "_buf",
        "_scan",
        "_eof",
        "_error",
        "_state",
        "_command",
        "_raw_headers",
        "_headers",
        "_content_length",
        "_frame_size",
        "skip_oversized",
        "skipped",
        "skip_reason",
        "_skip_left",
        "_skip_line",
    )

    def __init__(
        self,
        max_frame_size: int = 4 * 1024 * 1024,
        max_headers: int = 100,
        max_header_length: int = 8192,
        version: str = V12,
        skip_oversized: bool = False,
    ) -> None:
        if max_frame_size < 1 or max_headers < 0 or max_header_length < 1:
            raise ValueError("limits must be positive")
        self.max_frame_size = max_frame_size
        self.max_headers = max_headers
        self.max_header_length = max_header_length
        self._version = _check_version(version)
        self._buf = bytearray()
        # Offset up to which the buffer is known not to contain the delimiter
        # we are looking for, so chunked input is never re-scanned.
        self._scan = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._state = _COMMAND
        self._command = ""
        self._raw_headers: list[tuple[str, str]] = []
        self._headers: tuple[tuple[str, str], ...] = ()
        self._content_length: int | None = None
        self._frame_size = 0
        self.skip_oversized = skip_oversized
        self.skipped = 0
        self.skip_reason = ""
        self._skip_left: int | None = None  # body bytes still to pass over, if known
        self._skip_line: bytes | None = None  # the head of a header line being passed over

    @property
    def version(self) -> str:
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        self._version = _check_version(value)

    @property
    def broken(self) -> bool:
        """True once a protocol error has been raised."""
        return self._error is not None

    def receive_data(self, data: bytes) -> None:
        """Append received bytes; ``b""`` signals EOF from the peer."""
        if self._error is not None:
            raise self._broken_error()
        if self._eof:
            if data:
                raise RuntimeError("receive_data() called after EOF")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event:
        """Return the next Frame/HeartBeat, or NEED_DATA/CLOSED.

        Raises :class:`RemoteProtocolError` on malformed input; afterwards
        the reader stays broken and every call raises again.
        """
        if self._error is not None:
            raise self._broken_error()
        try:
            while True:
                try:
                    if self._state == _COMMAND:
                        event = self._read_command()
                    elif self._state == _HEADERS:
                        event = self._read_header_line()
                    elif self._state == _BODY:
                        event = self._read_body()
                    elif self._state == _SKIP_HEADERS:
                        event = self._skip_headers()
                    else:
                        event = self._skip_body()
                except _Oversized as exc:
                    if not self.skip_oversized:
                        raise
                    self._start_skipping(exc)
                    continue
                if event is not None:
                    return event
        except RemoteProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            raise

    # -- internals ---------------------------------------------------------

    def _broken_error(self) -> RemoteProtocolError:
        assert self._error is not None
        return RemoteProtocolError(self._error.message, self._error.detail)

    def _need_data(self, where: str) -> Event:
        if self._eof:
            raise RemoteProtocolError(
                "Unexpected EOF", f"Connection closed in the middle of a frame ({where})"
            )
        return NEED_DATA

    def _too_large(self) -> RemoteProtocolError:
        return _Oversized(
            "Frame too large",
            f"Frame exceeds the maximum frame size of {self.max_frame_size} bytes",
        )

    def _line_too_long(self) -> RemoteProtocolError:
        return _Oversized(
            "Header line too long",
            f"A header line exceeds the maximum of {self.max_header_length} bytes",
        )

    def _read_command(self) -> Event | None:
        buf = self._buf
        if not buf:
            return CLOSED if self._eof else NEED_DATA
        if buf[0] == _LF:
            del buf[:1]
            return _HEARTBEAT
        idx = buf.find(b"\n", self._scan)
        if idx < 0:
            if len(buf) > _MAX_COMMAND_LEN + 2:
                raise self._unknown_command(bytes(buf))
            self._scan = len(buf)
            return self._need_data("reading the command")
        self._scan = 0
        end = idx - 1 if idx and buf[idx - 1] == _CR else idx
        if end == 0:
            del buf[: idx + 1]
            return _HEARTBEAT
        command = bytes(buf[:end])
        if command not in _COMMAND_BYTES:
            raise self._unknown_command(command)
        del buf[: idx + 1]
        self._command = command.decode("ascii")
        self._raw_headers = []
        self._frame_size = idx + 1
        if self._frame_size > self.max_frame_size:
            raise self._too_large()
        self._state = _HEADERS
        return None

    def _unknown_command(self, line: bytes) -> RemoteProtocolError:
        shown = _show_command(line.split(b"\n", 1)[0].removesuffix(b"\r"))
        # RabbitMQ's text (its parser takes any command; its processor refuses it so).
        return RemoteProtocolError("Bad command", f"Could not interpret command {shown}")

    def _read_headers_whole(self) -> bool:
        """The common case in one step: every header line has arrived and all are well
        formed. False (nothing consumed) sends the caller line by line, which also finds
        and reports any error exactly as it would for input split anywhere."""
        buf = self._buf
        limit = buf.find(_NUL)
        if limit < 0:
            limit = len(buf)
        if buf[:1] == b"\n" or buf[:2] == b"\r\n":
            return False  # no headers: the line reader is as quick
        lf = buf.find(b"\n\n", 0, limit)
        crlf = buf.find(b"\n\r\n", 0, limit)
        if crlf >= 0 and (lf < 0 or crlf < lf):
            end, consumed = crlf, crlf + 3
        elif lf >= 0:
            end, consumed = lf, lf + 2
        else:
            return False
        if self._frame_size + consumed > self.max_frame_size:
            return False
        block = bytes(buf[:end])
        if not block.isascii():
            return False  # lengths in bytes and UTF-8 checks: the line reader's job
        text = block.decode("ascii")
        lines = text.split("\n")
        if "\r" in text:
            lines = [line[:-1] if line[-1:] == "\r" else line for line in lines]
        if len(lines) > self.max_headers:
            return False
        max_len = self.max_header_length
        headers = []
        for line in lines:
            name, colon, value = line.partition(":")
            if not name or not colon or len(line) > max_len:
                return False
            headers.append((name, value))
        del buf[:consumed]
        self._scan = 0
        self._frame_size += consumed
        self._raw_headers = headers
        self._finish_headers(escaped="\\" in text)
        return True

    def _read_header_line(self) -> Event | None:
        buf = self._buf
        if not self._raw_headers and self._scan == 0 and self._read_headers_whole():
            return None
        idx = buf.find(b"\n", self._scan)
        if idx < 0:
            size = len(buf)
            # +1 leaves room for a CR that may turn out to belong to the EOL.
            if size > self.max_header_length + 1:
                raise self._line_too_long()
            if self._frame_size + size > self.max_frame_size:
                raise self._too_large()
            if buf.find(_NUL, self._scan) >= 0:
                raise _nul_in_headers()
            self._scan = size
            return self._need_data("reading headers")
        self._scan = 0
        end = idx - 1 if idx and buf[idx - 1] == _CR else idx
        if end > self.max_header_length:
            raise self._line_too_long()
        self._frame_size += idx + 1
        if self._frame_size > self.max_frame_size:
            raise self._too_large()
        if end == 0:
            del buf[: idx + 1]
            self._finish_headers()
            return None
        if len(self._raw_headers) >= self.max_headers:
            raise _Oversized(
                "Too many headers",
                f"Frame has more than the maximum of {self.max_headers} headers",
            )
        line = bytes(buf[:end])
        del buf[: idx + 1]
        if _NUL in line:
            raise _nul_in_headers()
        colon = line.find(b":")
        if colon < 0:
            raise RemoteProtocolError(
                "Malformed header", f"Header line without a colon: {_preview(line)}"
            )
        if colon == 0:
            raise RemoteProtocolError(
                "Malformed header", f"Header line with an empty name: {_preview(line)}"
            )
        try:
            name = line[:colon].decode("utf-8")
            value = line[colon + 1 :].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                "Invalid UTF-8", f"Header line is not valid UTF-8: {_preview(line)}"
            ) from None
        self._raw_headers.append((name, value))
        return None

    def _finish_headers(self, escaped: bool = True) -> None:
        # Unescaping happens here rather than per line so that a version
        # switch between next_event() calls applies to whole frames only.
        version = self._version
        if not escaped or version == V10 or self._command in _UNESCAPED_COMMANDS:
            headers = tuple(self._raw_headers)
        else:
            table = _UNESCAPES[version]
            headers = tuple(
                (_unescape(name, table, version), _unescape(value, table, version))
                for name, value in self._raw_headers
            )
        self._raw_headers = []
        self._headers = headers
        self._content_length = None
        for name, value in headers:
            if name == "content-length":
                length = parse_digits(value, _MAX_LENGTH_DIGITS)
                if length is None:
                    if value.isdigit() and value.isascii():
                        # A number far beyond any frame size: no frame to pass over.
                        too_large = self._too_large()
                        raise RemoteProtocolError(too_large.message, too_large.detail)
                    raise _invalid_length(value)
                self._content_length = length
                if self._frame_size + length > self.max_frame_size:
                    self._state = _BODY  # what is passed over, with `skip_oversized`
                    raise self._too_large()
                break
        self._state = _BODY

    def _read_body(self) -> Event | None:
        buf = self._buf
        length = self._content_length
        if length is not None:
            if len(buf) <= length:
                return self._need_data("reading the body")
            if buf[length] != _NUL:
                raise RemoteProtocolError(
                    "Content-length mismatch",
                    f"Expected a NUL byte after the {length}-byte body given by content-length",
                )
        else:
            length = buf.find(_NUL, self._scan)
            if length < 0:
                if self._frame_size + len(buf) > self.max_frame_size:
                    raise self._too_large()
                self._scan = len(buf)
                return self._need_data("reading the body")
            if self._frame_size + length > self.max_frame_size:
                raise self._too_large()
        body = bytes(buf[:length])
        del buf[: length + 1]
        self._scan = 0
        self._state = _COMMAND
        frame = Frame(self._command, self._headers, body)
        self._headers = ()
        return frame

    # -- passing over a frame past the limits (skip_oversized) --------------

    def _start_skipping(self, exc: RemoteProtocolError) -> None:
        self.skip_reason = exc.detail
        self._scan = 0
        if self._state == _BODY:
            # Headers read: the body is passed over by its content-length, or up to its NUL.
            self._skip_left = self._content_length
            self._state = _SKIP_BODY
            return
        # Among the header lines (the buffer starts at one): the first content-length
        # wins, whether read already or among those passed over.
        self._content_length = None
        for name, value in self._raw_headers:
            if name == "content-length":
                self._content_length = self._skipped_length(value)
                break
        self._raw_headers = []
        self._skip_line = None
        self._state = _SKIP_HEADERS

    def _skipped_length(self, value: str) -> int:
        length = parse_digits(value, _MAX_LENGTH_DIGITS)
        if length is None:
            raise _invalid_length(value)
        return length

    def _skip_headers(self) -> Event | None:
        buf = self._buf
        while True:
            head = self._skip_line or b""
            idx = buf.find(b"\n")
            if idx < 0:
                if buf.find(_NUL) >= 0:
                    raise _nul_in_headers()
                self._skip_line = head + bytes(buf[: _SKIP_LINE_HEAD + 1 - len(head)])
                buf.clear()
                return self._need_data("passing over headers")
            line = head + bytes(buf[: min(idx, _SKIP_LINE_HEAD + 1 - len(head))])
            if buf.find(_NUL, 0, idx) >= 0:
                raise _nul_in_headers()
            del buf[: idx + 1]
            self._skip_line = None
            if len(line) <= _SKIP_LINE_HEAD:
                line = line.removesuffix(b"\r")
            if not line:
                self._skip_left = self._content_length
                self._state = _SKIP_BODY
                return None
            if self._content_length is None and line.startswith(_CONTENT_LENGTH):
                if len(line) > _SKIP_LINE_HEAD:
                    raise RemoteProtocolError(
                        "Invalid content-length", "content-length is far too long a number"
                    )
                self._content_length = self._skipped_length(
                    line[len(_CONTENT_LENGTH) :].decode("ascii", "replace")
                )

    def _skip_body(self) -> Event | None:
        buf = self._buf
        left = self._skip_left
        if left is not None:
            taken = min(len(buf), left)
            del buf[:taken]
            self._skip_left = left = left - taken
            if left or not buf:
                return self._need_data("passing over a body")
            if buf[0] != _NUL:
                raise RemoteProtocolError(
                    "Content-length mismatch",
                    "Expected a NUL byte after the body given by content-length",
                )
            del buf[:1]
        else:
            end = buf.find(_NUL)
            if end < 0:
                buf.clear()
                return self._need_data("passing over a body")
            del buf[: end + 1]
        self.skipped += 1
        self._skip_left = self._content_length = None
        self._headers = ()
        self._scan = 0
        self._state = _COMMAND
        return None


def _invalid_length(value: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        "Invalid content-length",
        f"content-length must be a non-negative decimal integer, got {value[:40]!r}",
    )


def _nul_in_headers() -> RemoteProtocolError:
    return RemoteProtocolError(
        "Unexpected NUL in headers",
        "NUL byte before the end of the headers (missing blank line before the body?)",
    )


def _preview(line: bytes) -> str:
    return repr(line[:64].decode("utf-8", "backslashreplace"))


def _header_text(name: str, value: str, version: str, escape: bool) -> str:
    if not name:
        raise LocalProtocolError("Empty header name", "Header names must not be empty")
    if "\0" in name or "\0" in value:
        raise LocalProtocolError("Unencodable header", f"Header {name!r} contains a NUL character")
    if escape:
        if version == V12:
            return f"{name.translate(_ESCAPE_12)}:{value.translate(_ESCAPE_12)}\n"
        if "\r" not in name and "\r" not in value:
            return f"{name.translate(_ESCAPE_11)}:{value.translate(_ESCAPE_11)}\n"
        why = "STOMP 1.1 has no escape for CR"
    elif ":" in name or "\n" in name or "\r" in name or "\n" in value or "\r" in value:
        why = (
            f"headers are not escaped in STOMP {version}"
            if version == V10
            else "CONNECT/CONNECTED headers are never escaped"
        )
    else:
        return f"{name}:{value}\n"
    raise LocalProtocolError(
        "Unencodable header",
        f"Header {name!r}: {value!r} cannot be represented ({why})",
    )


def _encode_parts(frame: Frame, version: str) -> tuple[bytes, bytes, bool]:
    """Return (command line, headers + blank line + body + NUL, escaping?)."""
    command = frame.command
    if command not in COMMANDS:
        raise LocalProtocolError("Unknown command", f"Refusing to send unknown command {command!r}")
    body = frame.body
    if body and command not in _BODY_COMMANDS:
        raise LocalProtocolError("Body not allowed", f"{command} frames must not have a body")
    escape = version != V10 and command not in _UNESCAPED_COMMANDS
    lines: list[str] = []
    has_length = False
    for name, value in frame.headers:
        if name == "content-length" and not has_length:
            has_length = True
            if value != str(len(body)):
                raise LocalProtocolError(
                    "Content-length mismatch",
                    f"content-length header is {value!r} but the body has {len(body)} bytes",
                )
        lines.append(_header_text(name, value, version, escape))
    if body and not has_length:
        lines.append(f"content-length:{len(body)}\n")
    lines.append("\n")
    try:
        head = "".join(lines).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(
            "Unencodable header", f"Header text is not encodable as UTF-8: {exc}"
        ) from None
    return command.encode("ascii") + b"\n", head + body + b"\0", escape


@dataclass(frozen=True, slots=True)
class FrameTemplate:
    """A frame serialised once, with a slot for per-recipient headers.

    ``prefix`` is the command line and ``suffix`` is everything after it (the
    template frame's headers, the blank line, the body and the NUL), so::

        template.prefix + b"subscription:" + escaped(sub_id) + b"\\n" + template.suffix

    is a complete, valid frame. Per-recipient headers are placed *before* the
    shared ones, so they win under the "first occurrence wins" rule even if
    the template frame carries a header of the same name.

    Use :meth:`render` for convenience or, on the hottest path, cache
    :meth:`header_line` results (e.g. one per subscription) and join them with
    :meth:`assemble`. A template is tied to one protocol version: keep one per
    version when fanning out to peers that negotiated different versions.
    """

    prefix: bytes
    suffix: bytes
    version: str
    escape: bool

    def header_line(self, name: str, value: str) -> bytes:
        """Encode ``name:value\\n`` with this template's escaping rules."""
        if name == "content-length":
            raise LocalProtocolError(
                "Content-length not allowed",
                "content-length is computed from the template body",
            )
        try:
            return _header_text(name, value, self.version, self.escape).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(
                "Unencodable header", f"Header text is not encodable as UTF-8: {exc}"
            ) from None

    def render(self, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """The full frame with ``headers`` inserted after the command line."""
        return b"".join([self.prefix, *(self.header_line(n, v) for n, v in headers), self.suffix])

    def assemble(self, *header_lines: bytes) -> bytes:
        """Like :meth:`render` for lines already built by :meth:`header_line`."""
        return b"".join((self.prefix, *header_lines, self.suffix))


class FrameWriter:
    """Serialises frames for one peer.

    ``version`` selects escaping and may be reassigned after negotiation
    (CONNECTED is never escaped, so switch either before or after sending it).
    The writer emits LF line endings and adds ``content-length`` whenever the
    body is non-empty and the frame does not already carry one.
    """

    __slots__ = ("_version",)

    def __init__(self, version: str = V12) -> None:
        self._version = _check_version(version)

    @property
    def version(self) -> str:
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        self._version = _check_version(value)

    def send(self, frame: Frame) -> bytes:
        """Serialise ``frame``; raises :class:`LocalProtocolError` if invalid."""
        command_line, rest, _ = _encode_parts(frame, self._version)
        return command_line + rest

    def heartbeat(self) -> bytes:
        """Bytes of one heart-beat."""
        return b"\n"

    def template(self, frame: Frame) -> FrameTemplate:
        """Pre-serialise ``frame`` for fan-out; see :class:`FrameTemplate`."""
        command_line, rest, escape = _encode_parts(frame, self._version)
        return FrameTemplate(command_line, rest, self._version, escape)
