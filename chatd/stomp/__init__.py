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

The conversation (``_conversation``) is the protocol's state machine on top of the
codec: CONNECT, versions, heart-beats, receipts, transactions, in one table.

The names chatd's STOMP speaks (versions, subprotocols, destination prefixes) live in
``_names`` and are re-exported here; ``_numbers`` reads every number on the wire.
"""

from ._codec import FrameReader, FrameTemplate, FrameWriter
from ._conversation import (
    ACK_MODES,
    SERVER_NAME,
    TRANSITIONS,
    Ack,
    ConnectRequest,
    Conversation,
    ConversationEvent,
    Disconnect,
    Receipt,
    Refuse,
    Send,
    State,
    Subscribe,
    Take,
    Unsubscribe,
    parse_heart_beat,
    parse_prefetch_count,
)
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
from ._names import (
    AMQ_QUEUE_PREFIX,
    CHAT_EXCHANGE,
    CHAT_EXCHANGE_NAME,
    EXCHANGE_PREFIX,
    QUEUE_PREFIX,
    ROOM_PREFIX,
    SUBPROTOCOL_OF,
    SUBPROTOCOLS,
    TOPIC_PREFIX,
    USER_PREFIX,
    V10,
    V11,
    V12,
    VERSIONS,
    destination_error,
    exchange_configured,
    room_destination,
    user_destination,
)
from ._numbers import parse_digits

__all__ = [
    "ACK_MODES",
    "AMQ_QUEUE_PREFIX",
    "CHAT_EXCHANGE",
    "CHAT_EXCHANGE_NAME",
    "CLIENT_COMMANDS",
    "CLOSED",
    "COMMANDS",
    "EXCHANGE_PREFIX",
    "NEED_DATA",
    "QUEUE_PREFIX",
    "ROOM_PREFIX",
    "SERVER_COMMANDS",
    "SERVER_NAME",
    "SUBPROTOCOLS",
    "SUBPROTOCOL_OF",
    "SUPPORTED_VERSIONS",
    "TOPIC_PREFIX",
    "TRANSITIONS",
    "USER_PREFIX",
    "V10",
    "V11",
    "V12",
    "VERSIONS",
    "Ack",
    "ConnectRequest",
    "Conversation",
    "ConversationEvent",
    "Disconnect",
    "Event",
    "Frame",
    "FrameReader",
    "FrameTemplate",
    "FrameWriter",
    "HeartBeat",
    "LocalProtocolError",
    "Receipt",
    "Refuse",
    "RemoteProtocolError",
    "Send",
    "Sentinel",
    "State",
    "StompError",
    "Subscribe",
    "Take",
    "Unsubscribe",
    "destination_error",
    "exchange_configured",
    "parse_digits",
    "parse_heart_beat",
    "parse_prefetch_count",
    "room_destination",
    "user_destination",
]
