"""What the private service fixtures (tests/pg_instance.py, tests/rabbitmq_instance.py) share."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import NoReturn

import pytest


def free_port() -> int:
    """A loopback port free right now; another process may take it before it is used."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_or_fail(service: str, reason: str) -> NoReturn:
    """Skip where the service is not installed; on CI (CI=true), where scripts/test
    installs it, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{service} tests must run on CI: {reason}")
    pytest.skip(reason)


def start_on_free_ports(
    start: Callable[[], None], choose_ports: Callable[[], None], attempts: int = 3
) -> None:
    """`start()`, choosing other ports and starting again when it fails (RuntimeError):
    another process of a busy machine may take a free port before the service binds it."""
    for attempt in range(attempts):
        try:
            start()
            return
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            choose_ports()
