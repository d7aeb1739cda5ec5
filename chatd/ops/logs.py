"""Logging to stderr, one line per event, plain or JSON. Secrets are masked on the way out.
`RateLimitedLog` keeps a condition that recurs many times a second to one line an interval."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable

# Defence in depth: code never logs these on purpose, but a library or a traceback might.
_SECRETS = [
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "<jwt>"),
    (re.compile(r"(?i)(ticket=)[^&\s\"']+"), r"\1<ticket>"),
    (re.compile(r"(?i)(passcode[\"':= ]+)[^\s\"',}]+"), r"\1<passcode>"),
    (
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\b"),
        "<uuid>",
    ),
]


def redact(text: str) -> str:
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)).replace("\n", " | ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, ensure_ascii=False))


def setup(level: str, fmt: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_chatd", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._chatd = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


class RateLimitedLog:
    """One condition (a failing disk, a checkpoint that cannot finish) logged at most once
    per `interval` seconds: the first occurrence at once, the repeats in between counted
    and named on the next line. A store refusing writes met every request with a warning,
    every 40 ms under load; a journal full of one line hides everything else, and a
    journald rate limit would then drop lines of other kinds too.

    One instance per condition; safe to share between threads. `clock` is injectable so
    that tests move time themselves."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next = -math.inf
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log `msg % args` unless a line was logged less than `interval` ago; True if it
        was logged."""
        with self._lock:
            now = self._clock()
            if now < self._next:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self.interval
        if suppressed:
            msg += " (%d more like this since the last such line)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def reset(self) -> int:
        """The condition is over: the next occurrence is logged at once. Returns how many
        repeats were not logged, for a line that says it is over."""
        with self._lock:
            suppressed, self._suppressed = self._suppressed, 0
            self._next = -math.inf
        return suppressed


class RefusalLog:
    """Refused clients, at info, so an operator can see why a page or an app fails: what
    was refused, why, and the client's address. A token bucket keeps a flood (a
    misconfigured origin behind a busy site, or someone trying tokens) from filling the
    journal: `burst` lines at once, then `rate` a second; the lines not logged are counted
    and named on the next one. Never given a token, a ticket or a passcode: callers pass
    the reason their check gave, and the origin (a browser's, not a secret).

    Safe to share between threads; `clock` is injectable so tests move time themselves."""

    MAX_FIELD = 200  # characters of a client-chosen value (an origin) shown in a line

    def __init__(
        self,
        logger: logging.Logger,
        rate: float = 1.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._at = clock()
        self._suppressed = 0

    def refused(self, what: str, reason: str, client: str) -> bool:
        """Log `refused WHAT from CLIENT: REASON` unless the bucket is empty; True if it
        was logged."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1:
                self._suppressed += 1
                return False
            self._tokens -= 1
            suppressed, self._suppressed = self._suppressed, 0
        msg = "refused %s from %s: %s"
        args: tuple[object, ...] = (what, _shown(client or "a local socket"), _shown(reason))
        if suppressed:
            msg += " (%d more refusals not logged before this one)"
            args = (*args, suppressed)
        self.logger.info(msg, *args)
        return True

    def reset(self) -> None:
        """A full bucket and nothing counted (a new server in the same process, a test)."""
        with self._lock:
            self._tokens = float(self.burst)
            self._at = self._clock()
            self._suppressed = 0


def _shown(text: str) -> str:
    # A client chose it: bounded, and quoted when it carries anything unprintable.
    if len(text) > RefusalLog.MAX_FIELD:
        text = text[: RefusalLog.MAX_FIELD] + "…"
    return text if text.isprintable() else repr(text)


# The one log of refusals every protocol and the HTTP API share: one budget for the lot,
# since a flood of one kind must not crowd the journal any more than a mix.
refusals = RefusalLog(logging.getLogger("chatd.refused"))


def refused(what: str, reason: str, client: str) -> None:
    """A client was refused: see `RefusalLog`."""
    refusals.refused(what, reason, client)


_connections = logging.getLogger("chatd.connections")


def connection_closed(
    protocol: str,
    transport: str,
    user_id: int | None,
    client: str,
    seconds: float,
    end: str,
) -> None:
    """One info line per connection that had a session, when it ends: who came, from
    where, for how long, and how it ended (`end`: the close code and reason, an ERROR's
    message, or what else ended it), so `journalctl -u chatd` shows who came and went.
    The `json` format carries each as its own field."""
    who = "anonymous" if not user_id else f"user {user_id}"
    client = _shown(client or "a local socket")
    end = _shown(end)
    _connections.info(
        "closed %s %s connection of %s from %s after %.1f s: %s",
        protocol, transport, who, client, seconds, end,
        extra={"fields": {
            "event": "connection_closed", "protocol": protocol, "transport": transport,
            "userId": user_id or None, "client": client, "seconds": round(seconds, 3),
            "end": end,
        }},
    )
