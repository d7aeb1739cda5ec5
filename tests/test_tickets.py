"""Ticket rules with an injected clock: single use, expiry, reasons, sweep, per-user cap."""

from __future__ import annotations

import re
import uuid

import pytest

from chatd.model import User
from chatd.ticketws.tickets import TicketBook, TicketError, TooManyTickets

ALICE = User(1, "alice")
BOB = User(2, "bob")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(ttl: float = 30.0, cap: int = 32) -> tuple[TicketBook, Clock]:
    clock = Clock()
    return TicketBook(ttl, clock, cap), clock


def reason(tickets: TicketBook, ticket: str) -> str:
    with pytest.raises(TicketError) as info:
        tickets.redeem(ticket)
    return info.value.reason


def test_ticket_is_a_uuid4_bound_to_its_user() -> None:
    tickets, _ = book()
    a, b = tickets.issue(ALICE), tickets.issue(BOB)
    for t in (a, b):
        assert re.fullmatch(r"[0-9a-f-]{36}", t)
        assert uuid.UUID(t).version == 4
    assert a != b
    assert tickets.redeem(b) is BOB
    assert tickets.redeem(a) is ALICE


def test_single_use() -> None:
    tickets, clock = book()
    t = tickets.issue(ALICE)
    assert tickets.redeem(t) == ALICE
    assert reason(tickets, t) == "used"
    clock.now += 29
    assert reason(tickets, t) == "used"


def test_unknown() -> None:
    tickets, _ = book()
    tickets.issue(ALICE)
    assert reason(tickets, str(uuid.uuid4())) == "unknown"
    assert reason(tickets, "") == "unknown"


def test_expiry_at_exactly_the_ttl() -> None:
    tickets, clock = book(ttl=30)
    early, late = tickets.issue(ALICE), tickets.issue(ALICE)
    clock.now += 29.999
    assert tickets.redeem(early) == ALICE
    clock.now += 0.001
    assert reason(tickets, late) == "expired"
    # An expired ticket is forgotten once seen; a retry finds nothing.
    assert reason(tickets, late) == "unknown"


def test_sweep_forgets_expired_tickets_used_or_not() -> None:
    tickets, clock = book(ttl=10)
    used, unused = tickets.issue(ALICE), tickets.issue(BOB)
    tickets.redeem(used)
    clock.now += 5
    young = tickets.issue(ALICE)
    assert tickets.sweep() == 0
    assert len(tickets) == 3
    clock.now += 5
    assert tickets.sweep() == 2
    assert len(tickets) == 1
    assert reason(tickets, used) == "unknown"
    assert reason(tickets, unused) == "unknown"
    assert tickets.redeem(young) == ALICE
    clock.now += 10
    assert tickets.sweep() == 1
    assert len(tickets) == 0


def test_per_user_cap_on_unused_tickets() -> None:
    tickets, clock = book(ttl=30, cap=2)
    first = tickets.issue(ALICE)
    tickets.issue(ALICE)
    with pytest.raises(TooManyTickets):
        tickets.issue(ALICE)
    # Another user is not affected.
    tickets.issue(BOB)
    tickets.issue(BOB)
    # Using a ticket frees its slot (the cap is on unused tickets) ...
    tickets.redeem(first)
    third = tickets.issue(ALICE)
    with pytest.raises(TooManyTickets):
        tickets.issue(ALICE)
    # ... and so does expiry: issue() sweeps before refusing.
    clock.now += 30
    tickets.issue(ALICE)
    tickets.issue(ALICE)
    assert reason(tickets, third) == "unknown"


def test_reconnecting_often_never_hits_the_cap() -> None:
    tickets, clock = book(ttl=30, cap=3)
    for _ in range(100):
        tickets.redeem(tickets.issue(ALICE))
        clock.now += 0.1
    # Used tickets are remembered until they expire, then swept.
    assert len(tickets) == 100
    clock.now += 30
    assert tickets.sweep() == 100
    assert len(tickets) == 0


def test_expired_unused_ticket_gives_its_slot_back_when_redeemed() -> None:
    tickets, clock = book(ttl=1, cap=1)
    t = tickets.issue(ALICE)
    clock.now += 1
    assert reason(tickets, t) == "expired"
    tickets.issue(ALICE)


def test_ttl_change_applies_to_new_tickets() -> None:
    tickets, clock = book(ttl=30)
    old = tickets.issue(ALICE)
    tickets.ttl = 5
    new = tickets.issue(ALICE)
    clock.now += 5
    assert reason(tickets, new) == "expired"
    assert tickets.redeem(old) == ALICE
