"""The names chatd's STOMP speaks, each spelt once: protocol versions, their WebSocket
subprotocols, and the destination prefixes of the chat and of the general broker.

Clients (the STOMP guide's, stompjs, RabbitMQ's own) hard-code these strings, so a typo
in one copy would be a silent incompatibility; every module imports them from here.
"""

import fnmatch
from collections.abc import Iterable
from typing import Final

__all__ = [
    "AMQ_QUEUE_PREFIX",
    "CHAT_EXCHANGE",
    "CHAT_EXCHANGE_NAME",
    "DESTINATION_TYPES",
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
    "destination_error",
    "exchange_configured",
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
CHAT_EXCHANGE_NAME: Final = "chat.direct"
CHAT_EXCHANGE: Final = EXCHANGE_PREFIX + CHAT_EXCHANGE_NAME + "/"
ROOM_PREFIX: Final = CHAT_EXCHANGE + "room."
USER_PREFIX: Final = CHAT_EXCHANGE + "user."

# The general broker's destinations, as RabbitMQ's STOMP plugin names them.
QUEUE_PREFIX: Final = "/queue/"
AMQ_QUEUE_PREFIX: Final = "/amq/queue/"
TOPIC_PREFIX: Final = "/topic/"
#: Every kind of destination chatd knows, as RabbitMQ lists its own in "Unknown destination".
DESTINATION_TYPES: Final = (EXCHANGE_PREFIX, TOPIC_PREFIX, QUEUE_PREFIX, AMQ_QUEUE_PREFIX)
_TYPE_NAMES: Final = {"exchange": "exchange", "queue": "queue", "topic": "topic"}


def room_destination(room_id: int) -> str:
    """The destination a client subscribes and sends to for a chat room."""
    return f"{ROOM_PREFIX}{room_id}"


def user_destination(user_id: int) -> str:
    """The destination of a user's own queue (membership events)."""
    return f"{USER_PREFIX}{user_id}"


def destination_error(destination: str) -> tuple[str, str] | None:
    """The ERROR (message, detail) for a destination of no known type, or not well
    formed for its type, in RabbitMQ's words (its STOMP plugin parses destinations the
    same way); None for a well-formed one. `/queue/NAME`, `/amq/queue/NAME` and
    `/topic/KEY` take one non-empty segment, `/exchange/NAME[/KEY]` one or two."""
    parts = destination.split("/")
    if len(parts) < 2 or parts[0]:
        return _unknown(destination)
    kind, rest = parts[1], parts[2:]
    if kind == "amq" and rest[:1] == ["queue"]:
        kind, rest = "amqqueue", rest[1:]
    elif kind not in _TYPE_NAMES:
        return _unknown(destination)
    if kind == "exchange":
        well_formed = 1 <= len(rest) <= 2 and rest[0] != ""
    else:
        well_formed = len(rest) == 1 and rest[0] != ""
    if well_formed:
        return None
    shown = "/" + "/".join(rest) if rest else ""
    return "Invalid destination", f"'{shown}' is not a valid {kind} destination"


def _unknown(destination: str) -> tuple[str, str]:
    return (
        "Unknown destination",
        f"'{destination}' is not a valid destination.\n"
        f"Valid destination types are: {', '.join(DESTINATION_TYPES)}.",
    )


def exchange_configured(name: str, patterns: Iterable[str]) -> bool:
    """Whether the exchange `name` exists for the general broker: some pattern of
    `[stomp] broker_destinations` can name a destination of it (`/exchange/NAME/...`, or
    a pattern covering every exchange). chatd makes no exchange on the fly."""
    prefixed = f"{EXCHANGE_PREFIX}{name}/"
    for pattern in patterns:
        if pattern.startswith(EXCHANGE_PREFIX):
            if fnmatch.fnmatchcase(name, pattern[len(EXCHANGE_PREFIX) :].partition("/")[0]):
                return True
        elif fnmatch.fnmatchcase(prefixed, pattern):
            return True
    return False
