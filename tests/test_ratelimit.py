"""chatd.ratelimit: per-user token buckets, driven by a fake clock."""

from __future__ import annotations

import pytest

from chatd.ratelimit import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(rate: float = 2.0, burst: int = 5) -> tuple[RateLimiter, FakeTime]:
    t = FakeTime()
    return RateLimiter(rate, burst, t), t


def allowed(lim: RateLimiter, key: int, n: int) -> int:
    return sum(lim.allow(key) for _ in range(n))


def test_a_new_user_has_a_full_burst_then_is_refused() -> None:
    lim, _ = limiter(rate=2.0, burst=5)
    assert [lim.allow(1) for _ in range(7)] == [True] * 5 + [False] * 2


def test_tokens_come_back_at_the_rate() -> None:
    lim, t = limiter(rate=2.0, burst=5)
    assert allowed(lim, 1, 5) == 5
    t.now += 0.49  # not yet one token (2 a second)
    assert lim.allow(1) is False
    t.now += 0.01
    assert lim.allow(1) is True
    assert lim.allow(1) is False
    t.now += 1.5  # three tokens
    assert allowed(lim, 1, 10) == 3


def test_refill_stops_at_the_burst() -> None:
    lim, t = limiter(rate=2.0, burst=5)
    assert allowed(lim, 1, 5) == 5
    t.now += 3600
    assert allowed(lim, 1, 10) == 5


def test_a_refused_attempt_costs_nothing() -> None:
    lim, t = limiter(rate=1.0, burst=1)
    start = t.now
    assert lim.allow(1) is True
    for _ in range(100):
        t.now += 0.001
        assert lim.allow(1) is False
    t.now = start + 1.0  # one second since the allowed one, refused ones or not
    assert lim.allow(1) is True


def test_users_have_buckets_of_their_own() -> None:
    lim, t = limiter(rate=1.0, burst=3)
    assert allowed(lim, 1, 10) == 3
    assert allowed(lim, 2, 10) == 3
    t.now += 1.0
    assert allowed(lim, 1, 10) == 1
    assert allowed(lim, 3, 10) == 3
    assert allowed(lim, 2, 10) == 1


def test_cost_takes_several_tokens_at_once() -> None:
    lim, t = limiter(rate=1.0, burst=4)
    assert lim.allow(1, cost=3) is True
    assert lim.allow(1, cost=3) is False
    assert lim.allow(1, cost=1) is True
    t.now += 3
    assert lim.allow(1, cost=3) is True


def test_a_changed_rate_and_burst_apply_to_buckets_already_there() -> None:
    """ChatService.reconfigure (SIGHUP) sets them on the live limiter."""
    lim, t = limiter(rate=1.0, burst=2)
    assert allowed(lim, 1, 5) == 2
    lim.rate, lim.burst = 10.0, 20.0
    t.now += 1.0
    assert allowed(lim, 1, 50) == 10
    lim.burst = 1.0
    t.now += 100
    assert allowed(lim, 1, 5) == 1


def test_a_clock_going_backwards_grants_nothing() -> None:
    lim, t = limiter(rate=1.0, burst=2)
    assert allowed(lim, 1, 2) == 2
    t.now -= 50
    assert lim.allow(1) is False


@pytest.mark.parametrize("users", [10_001, 12_000])
def test_many_users_keep_their_limits_while_full_buckets_are_forgotten(users: int) -> None:
    """Past 10,000 buckets the full ones are dropped: a dropped bucket is a full one, so
    nobody gains or loses a token by it."""
    lim, t = limiter(rate=1.0, burst=2)
    for uid in range(users):
        assert lim.allow(uid)
    # Everyone has one token left; nobody has refilled, so nobody is forgotten.
    assert all(lim.allow(uid) for uid in range(users))
    assert not any(lim.allow(uid) for uid in range(users))
    t.now += 2.0
    assert all(lim.allow(uid) for uid in range(users))
    assert all(lim.allow(uid) for uid in range(users))
    assert not any(lim.allow(uid) for uid in range(users))


def test_memory_stays_bounded_by_the_users_sending_at_once() -> None:
    lim, t = limiter(rate=1.0, burst=2)
    for wave in range(5):
        for uid in range(15_000):
            lim.allow(wave * 100_000 + uid)
        t.now += 2.0  # every bucket so far is full again
    lim.allow(-1)
    assert len(lim._buckets) <= 2 * 15_000 + 1


def test_sweeps_are_rare_when_many_users_send_at_once() -> None:
    """With more than 10,000 buckets none of which is full, a sweep frees nothing; one on
    every call scanned every bucket for each message."""
    lim, _ = limiter(rate=1.0, burst=2)
    sweeps = 0
    sweep = lim._forget_full

    def counted(now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        sweep(now)

    lim._forget_full = counted  # type: ignore[method-assign]
    for uid in range(50_000):
        assert lim.allow(uid)
        assert sweeps <= 3, f"{sweeps} sweeps by user {uid}"  # at 10,001, 20,003, 40,007
    assert all(lim.allow(uid) for uid in range(50_000))
