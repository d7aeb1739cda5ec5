"""What a route handler takes from the request it serves: the server's state, the caller
(from a JWT), the JSON body, integer query arguments; and ApiError, to refuse.

Both blueprints (chatd.http.api, chatd.http.chatws_api) use these, so the two APIs refuse
tokens and bodies alike.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import orjson
from quart import current_app, request

from chatd.auth import AuthError, Identity
from chatd.model import ClientError, User
from chatd.ops import logs
from chatd.state import ServerState
from chatd.validation import id_of_digits

log = logging.getLogger("chatd.http")

# The key of the server state in the app's `extensions`, Flask's place for what an app
# carries beside its config.
STATE_KEY = "chatd"


class ApiError(ClientError):
    """A refusal of the HTTP API's own: the app answers `{"error": code, "message": ...}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message, status)


def server_state() -> ServerState:
    return cast(ServerState, current_app.extensions[STATE_KEY])


def bearer_token() -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def client_address() -> str:
    """The caller for the logs: the peer or, from a trusted proxy, the client it forwarded."""
    chain = ",".join(request.headers.getlist("X-Forwarded-For")).split(",")
    return server_state().connections.client_address(request.remote_addr or "", chain)


def authenticate(allow_access_token: bool = True) -> User:
    """The caller, from `Authorization: Bearer` (or the `accessToken` header, which the
    ticket guide's clients send); 401 `unauthorized` otherwise."""
    return identify(allow_access_token).user


def identify(allow_access_token: bool = True) -> Identity:
    """As `authenticate`, with the token's `iat` and expiry (a ticket carries them)."""
    state = server_state()
    token = bearer_token()
    if token is None and allow_access_token:
        token = request.headers.get("accessToken")
    try:
        return state.auth.identify(token)
    except AuthError as exc:
        state.metrics.auth_failures[exc.reason] += 1
        # The reason only: the token itself never goes to the log.
        logs.refused(f"{request.method} {request.path}", exc.message, client_address())
        raise ApiError(401, "unauthorized", exc.message) from None


def admin() -> User:
    """An admin caller, by Bearer token only; 401 or 403 otherwise."""
    user = authenticate(allow_access_token=False)
    if not user.is_admin:
        raise ApiError(403, "forbidden", "an admin token is required")
    return user


async def json_body() -> dict[str, Any]:
    """The body as a JSON object, whatever its Content-Type; 400 `bad_json` if it is not one.
    Reading it is what enforces MAX_CONTENT_LENGTH (413) and BODY_TIMEOUT (408): a handler
    that never asks for the body is not refused for it."""
    try:
        body = orjson.loads(await request.get_data())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return body


def int_arg(name: str, default: int | None, minimum: int) -> int | None:
    """Query argument `name` as an integer of ASCII digits; 400 `bad_<name>` otherwise."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = id_of_digits(raw)
    if value is None or value < minimum:
        raise ApiError(400, f"bad_{name}", f"{name} must be an integer of at least {minimum}")
    return value
