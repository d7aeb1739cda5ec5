"""Single-use WebSocket tickets: short-lived, bound to a user. `TicketBook` keeps them in
memory (one node); `SharedTicketBook` in the store every node of a cluster shares, so a
ticket bought from one node is good once, at any node.

A ticket carries the identity of the token it was traded for, with that token's `iat` and
expiry: the `/chat` session it opens ends when the token would have, and an admin's
revocation of the user's tokens refuses the tickets they bought too."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from chatd.auth import Identity
from chatd.model import ClientError, User


class TicketError(ClientError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, f"ticket {reason}", 401)
        self.reason = reason  # "unknown", "used" or "expired"


class TooManyTickets(ClientError):
    def __init__(self, user_id: int) -> None:
        super().__init__("too_many_tickets", "too many unused tickets; use one", 429)
        self.user_id = user_id


@dataclass(slots=True)
class _Ticket:
    identity: Identity
    expires_at: float  # the ticket's own expiry, by the book's clock
    used: bool = False


class TicketBook:
    """Tickets are uuid4 strings. A redeemed ticket is remembered until it would have
    expired, so a replay is told apart from a ticket that never existed. The per-user
    cap counts unused tickets only: redeeming one frees its slot."""

    def __init__(self, ttl: float, clock: Callable[[], float], max_per_user: int = 32) -> None:
        self.ttl = ttl
        self.max_per_user = max_per_user
        self._clock = clock
        self._tickets: dict[str, _Ticket] = {}
        self._per_user: dict[int, int] = {}  # unused tickets by user

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, user: User | Identity) -> str:
        """A ticket for `user`; an Identity (the token's `iat` and expiry) rides along."""
        identity = user if isinstance(user, Identity) else Identity(user, None, math.inf)
        user_id = identity.user.id
        if self._per_user.get(user_id, 0) >= self.max_per_user:
            self.sweep()
            if self._per_user.get(user_id, 0) >= self.max_per_user:
                raise TooManyTickets(user_id)
        ticket = str(uuid.uuid4())
        self._tickets[ticket] = _Ticket(identity, self._clock() + self.ttl)
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        return ticket

    async def issue_async(self, user: User | Identity) -> str:
        return self.issue(user)

    async def claim_async(self, ticket: str) -> Identity:
        return self.claim(ticket)

    async def sweep_async(self) -> int:
        return self.sweep()

    def redeem(self, ticket: str) -> User:
        return self.claim(ticket).user

    def claim(self, ticket: str) -> Identity:
        """Use the ticket: the identity it was issued for, or TicketError."""
        entry = self._tickets.get(ticket)
        if entry is None:
            raise TicketError("unknown")
        if entry.used:
            raise TicketError("used")
        if self._clock() >= entry.expires_at:
            self._drop(ticket, entry)
            raise TicketError("expired")
        entry.used = True
        self._release(entry.identity.user.id)
        return entry.identity

    def sweep(self) -> int:
        now = self._clock()
        dead = [(t, e) for t, e in self._tickets.items() if now >= e.expires_at]
        for t, e in dead:
            self._drop(t, e)
        return len(dead)

    def _drop(self, ticket: str, entry: _Ticket) -> None:
        del self._tickets[ticket]
        if not entry.used:
            self._release(entry.identity.user.id)

    def _release(self, user_id: int) -> None:
        left = self._per_user[user_id] - 1
        if left:
            self._per_user[user_id] = left
        else:
            del self._per_user[user_id]


class TicketStore(Protocol):
    """What SharedTicketBook asks of the store (PostgreSQL's PgStore). Tickets are kept by
    a digest, never as themselves; times are Unix seconds."""

    async def issue_ticket(
        self, digest: bytes, user_id: int, identity: str, expires_at: float, max_unused: int
    ) -> bool:
        """False (nothing stored) when the user has `max_unused` unused tickets."""

    async def claim_ticket(self, digest: bytes, now: float) -> tuple[str, str | None]:
        """("ok", identity) once; then ("used", None); ("expired", None) or
        ("unknown", None)."""

    async def sweep_tickets(self, before: float) -> int: ...


def _identity_json(identity: Identity) -> str:
    valid = None if math.isinf(identity.valid_until) else identity.valid_until
    return orjson.dumps(
        {"user": dataclasses.asdict(identity.user), "iat": identity.issued_at, "until": valid}
    ).decode()


def _identity_of(text: str) -> Identity:
    raw: dict[str, Any] = orjson.loads(text)
    until = raw["until"]
    return Identity(User(**raw["user"]), raw["iat"], math.inf if until is None else until)


class SharedTicketBook:
    """Tickets in the store: issued by any node, redeemed once by any node (the store's
    update of one row decides). Expiry is by the wall clock, which the nodes share."""

    # Redeemed and expired tickets are kept this long past their expiry, so a late replay
    # is told "used" or "expired" rather than "unknown".
    KEEP = 60.0

    def __init__(
        self,
        store: TicketStore,
        ttl: float,
        max_per_user: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.ttl = ttl
        self.max_per_user = max_per_user
        self._clock = clock

    @staticmethod
    def _digest(ticket: str) -> bytes:
        return hashlib.sha256(ticket.encode()).digest()

    async def issue_async(self, user: User | Identity) -> str:
        identity = user if isinstance(user, Identity) else Identity(user, None, math.inf)
        ticket = str(uuid.uuid4())
        stored = await self._store.issue_ticket(
            self._digest(ticket),
            identity.user.id,
            _identity_json(identity),
            self._clock() + self.ttl,
            self.max_per_user,
        )
        if not stored:
            raise TooManyTickets(identity.user.id)
        return ticket

    async def claim_async(self, ticket: str) -> Identity:
        outcome, identity = await self._store.claim_ticket(self._digest(ticket), self._clock())
        if identity is None:
            raise TicketError(outcome)
        return _identity_of(identity)

    async def sweep_async(self) -> int:
        return await self._store.sweep_tickets(self._clock() - self.KEEP)
