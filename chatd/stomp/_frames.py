"""Value types exchanged with the codec: frames, heart-beats and sentinels."""

import enum
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ._names import VERSIONS

__all__ = [
    "CLIENT_COMMANDS",
    "CLOSED",
    "COMMANDS",
    "NEED_DATA",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "Event",
    "Frame",
    "HeartBeat",
    "Sentinel",
]

CLIENT_COMMANDS: Final = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
SERVER_COMMANDS: Final = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
COMMANDS: Final = CLIENT_COMMANDS | SERVER_COMMANDS

#: Protocol versions understood by the reader and the writer.
SUPPORTED_VERSIONS: Final = VERSIONS


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame.

    ``headers`` keeps wire order and repeated names exactly as received; use
    :meth:`get` / :meth:`header_dict` for STOMP 1.2 "first occurrence wins"
    lookups.  Header names and values are the *decoded* (unescaped) strings.
    """

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first header called ``name``, else ``default``."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def header_dict(self) -> dict[str, str]:
        """Headers as a dict; for repeated names the first occurrence wins."""
        # Iterating in reverse lets earlier entries overwrite later ones.
        return dict(reversed(self.headers))


@dataclass(frozen=True, slots=True)
class HeartBeat:
    """A lone EOL received between frames (STOMP 1.1+ heart-beat)."""


class Sentinel(enum.Enum):
    """Non-frame results of :meth:`FrameReader.next_event`."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


#: More bytes are needed before another event can be produced.
NEED_DATA: Final = Sentinel.NEED_DATA
#: The peer closed the stream cleanly (EOF between frames).
CLOSED: Final = Sentinel.CLOSED

Event: TypeAlias = Frame | HeartBeat | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]
