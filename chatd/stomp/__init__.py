"""Pure, sans-I/O STOMP 1.0/1.1/1.2 frame codec (h11/wsproto style).

Typical use by a transport::

    reader = FrameReader()
    writer = FrameWriter()
    reader.receive_data(chunk)          # b"" on EOF
    while (event := reader.next_event()) is not NEED_DATA:
        if event is CLOSED: ...
        elif isinstance(event, HeartBeat): ...
        else: handle(event)             # a Frame

After negotiating the version from CONNECT/STOMP, assign ``reader.version``
and ``writer.version``.
"""

from ._codec import FrameReader, FrameTemplate, FrameWriter
from ._errors import LocalProtocolError, RemoteProtocolError, StompError
from ._frames import (
    CLIENT_COMMANDS,
    CLOSED,
    COMMANDS,
    NEED_DATA,
    SERVER_COMMANDS,
    SUPPORTED_VERSIONS,
    Event,
    Frame,
    HeartBeat,
    Sentinel,
)

__all__ = [
    "CLIENT_COMMANDS",
    "CLOSED",
    "COMMANDS",
    "NEED_DATA",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "Event",
    "Frame",
    "FrameReader",
    "FrameTemplate",
    "FrameWriter",
    "HeartBeat",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Sentinel",
    "StompError",
]
