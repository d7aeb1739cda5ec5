"""The names chatd's STOMP speaks, each spelt once: protocol versions, their WebSocket
subprotocols, and the destination prefixes of the chat and of the general broker.

Clients (the STOMP guide's, stompjs, RabbitMQ's own) hard-code these strings, so a typo
in one copy would be a silent incompatibility; every module imports them from here.
"""

from typing import Final

__all__ = [
    "AMQ_QUEUE_PREFIX",
    "CHAT_EXCHANGE",
    "EXCHANGE_PREFIX",
    "QUEUE_PREFIX",
    "ROOM_PREFIX",
    "SUBPROTOCOLS",
    "SUBPROTOCOL_OF",
    "TOPIC_PREFIX",
    "USER_PREFIX",
    "V10",
    "V11",
    "V12",
    "VERSIONS",
    "room_destination",
    "user_destination",
]

V10: Final = "1.0"
V11: Final = "1.1"
V12: Final = "1.2"
#: Every version chatd speaks, oldest first: negotiation picks the last one both know.
VERSIONS: Final = (V10, V11, V12)

#: RabbitMQ Web-STOMP's WebSocket subprotocol for each version.
SUBPROTOCOL_OF: Final = {V12: "v12.stomp", V11: "v11.stomp", V10: "v10.stomp"}
#: The subprotocols in the order the server prefers them: newest first.
SUBPROTOCOLS: Final = tuple(SUBPROTOCOL_OF[v] for v in reversed(VERSIONS))

# The chat: RabbitMQ's direct exchange that the STOMP guide's clients name.
EXCHANGE_PREFIX: Final = "/exchange/"
CHAT_EXCHANGE: Final = EXCHANGE_PREFIX + "chat.direct/"
ROOM_PREFIX: Final = CHAT_EXCHANGE + "room."
USER_PREFIX: Final = CHAT_EXCHANGE + "user."

# The general broker's destinations, as RabbitMQ's STOMP plugin names them.
QUEUE_PREFIX: Final = "/queue/"
AMQ_QUEUE_PREFIX: Final = "/amq/queue/"
TOPIC_PREFIX: Final = "/topic/"


def room_destination(room_id: int) -> str:
    """The destination a client subscribes and sends to for a chat room."""
    return f"{ROOM_PREFIX}{room_id}"


def user_destination(user_id: int) -> str:
    """The destination of a user's own queue (membership events)."""
    return f"{USER_PREFIX}{user_id}"
