"""systemd's daemon protocols, implemented directly: sd_notify and sd_listen_fds.

sd_notify is one datagram of newline-separated `KEY=value` lines sent to the AF_UNIX
socket named by `$NOTIFY_SOCKET` (a leading "@" means a Linux abstract name). Outside
systemd the variable is unset and every call here is a cheap no-op, so the server calls
these helpers unconditionally. See sd_notify(3) and sd_listen_fds(3).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

import trio

log = logging.getLogger("chatd.systemd")

# sd_listen_fds(3): passed sockets start right after stdin, stdout and stderr.
LISTEN_FDS_START = 3
# How often the STATUS= line is refreshed (seconds); it is sent only when it changed.
STATUS_INTERVAL = 5.0


class Notifier:
    """Sends sd_notify datagrams to one socket; `address=None` makes every send a no-op."""

    def __init__(self, address: str | None) -> None:
        self.address: bytes | None = None
        if address:
            # The kernel wants the abstract namespace's leading NUL; systemd writes it "@".
            raw = os.fsencode(address)
            self.address = b"\0" + raw[1:] if raw.startswith(b"@") else raw
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram; False (never an exception) when it could not be sent."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: a full receive queue at the manager drops the
                # message, which is what sd_notify(3) does too.
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            log.debug("sd_notify to NOTIFY_SOCKET failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_default: Notifier | None = None


def notifier() -> Notifier:
    """The process-wide notifier, read from the environment on first use."""
    global _default
    if _default is None:
        _default = Notifier.from_env()
    return _default


def reset() -> None:
    """Forget the cached notifier (tests that change $NOTIFY_SOCKET)."""
    global _default
    if _default is not None:
        _default.close()
    _default = None


def _status_line(text: str) -> str:
    # A newline would start a new KEY=value line and so could forge another command.
    return "STATUS=" + text.replace("\n", " ")


def notify(*lines: str) -> bool:
    return notifier().notify(*lines)


def ready(status_text: str | None = None) -> bool:
    lines = ["READY=1"]
    if status_text is not None:
        lines.append(_status_line(status_text))
    return notify(*lines)


def status(text: str) -> bool:
    return notify(_status_line(text))


def stopping(status_text: str = "shutting down") -> bool:
    return notify("STOPPING=1", _status_line(status_text))


def reloading(status_text: str = "reloading configuration") -> bool:
    # systemd >= 253 (Type=notify-reload) wants the CLOCK_MONOTONIC time with RELOADING=1
    # to match it with the reload it asked for; older versions ignore the extra line.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", _status_line(status_text))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when not asked.

    Like sd_watchdog_enabled(3), a $WATCHDOG_PID naming another process means the
    watchdog is not ours (we were forked or exec'd by the service's real main process).
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


async def watchdog_loop(env: Mapping[str, str] | None = None) -> None:
    """Ping systemd's watchdog at half its timeout for as long as the event loop runs.

    The ping comes from a Trio task on purpose: a loop that is stuck (a blocking call,
    a busy task) misses it and systemd restarts the service.
    """
    interval = watchdog_interval(env)
    if interval is None or not notifier().enabled:
        return
    log.debug("watchdog: pinging every %.3f s", interval)
    while True:
        watchdog()
        await trio.sleep(interval)


async def status_loop(
    describe: Callable[[], str], sent: str | None = None, interval: float = STATUS_INTERVAL
) -> None:
    """Keep systemd's STATUS= (shown by `systemctl status`) up to date when it changes;
    `sent` is the line already sent (with READY=1)."""
    if not notifier().enabled:
        return
    last = sent
    while True:
        await trio.sleep(interval)
        text = describe()
        if text != last:
            status(text)
            last = text


def listen_fds(env: MutableMapping[str, str] | None = None, *, unset: bool = True) -> list[int]:
    """The sockets systemd passed us (socket activation), as fd numbers; [] when none.

    They are ours only when $LISTEN_PID is our pid. Like sd_listen_fds(3) with
    unset_environment=1 the variables are removed so a child process cannot take the
    sockets for its own, and the fds are made close-on-exec.
    """
    env = os.environ if env is None else env
    pid = env.get("LISTEN_PID", "")
    count = env.get("LISTEN_FDS", "")
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if not pid or not count or pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        log.warning("ignoring LISTEN_FDS=%r: not an integer", count)
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + max(n, 0)))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds
