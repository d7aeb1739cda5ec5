"""A private PostgreSQL server for the tests: `initdb` into a temporary directory, started
with `pg_ctl` on a free loopback port with its socket directory beside its data, once per
test session, and stopped at its end. No system service, no fixed port. Should pytest be
killed instead, its watchdog (tests/reaper.py) stops it and removes its directory.

initdb and postgres refuse to run as root (CI runs as root): then they run as `nobody`,
owning the directory. Without PostgreSQL's binaries or psycopg the tests that need them
skip, saying why; on CI (CI=true, where scripts/test installs them) they fail instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .reaper import Reaper, reap
from .services import free_port, skip_or_fail, start_on_free_ports

# Debian's package puts them in /usr/lib/postgresql/VERSION/bin, off the PATH.
_DEBIAN = sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
_SEARCH = ("/usr/local/bin", *_DEBIAN)


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(d) for d in _SEARCH]
    for d in candidates:
        if all((d / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def unavailable_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[cluster]')"
    if _bindir() is None:
        return "PostgreSQL's binaries (initdb, pg_ctl) are not installed"
    return None


class PgInstance:
    USER = "chatd"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="chatd-pg-"))
        self.reaper = Reaper(self.root)
        self.data = self.root / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody")
            self._as = ["runuser", "-u", "nobody", "--"]
        self._names = itertools.count(1)
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", self.USER, "--auth=trust", "-E", "UTF8",
                "--no-sync", "--no-instructions",
            )  # fmt: skip
        except BaseException:
            self.remove()
            raise

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as, str(self.bindir / tool), *args],
            capture_output=True, text=True, timeout=120, cwd=self.root,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{tail}")

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.root / "log"), "-o", options)  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.USER} dbname={dbname}"

    def create_database(self) -> str:
        """A new, empty database; its DSN."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def terminate_connections(self, dsn: str) -> int:
        """Ends every other session on the database of `dsn`, as an administrator can."""
        import psycopg

        dbname = dsn.rsplit("dbname=", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            ).fetchall()
        return len(rows)

    def remove(self) -> None:
        """Once stopped: its directory and its watchdog go; whatever still runs in the
        directory (after a stop that failed) is killed first, while the watchdog still
        would, should pytest be killed meanwhile."""
        reap(self.root)
        self.reaper.disarm()


@pytest.fixture(scope="session")
def pg_instance() -> Iterator[PgInstance]:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail("PostgreSQL", reason)
    bindir = _bindir()
    assert bindir is not None
    instance = PgInstance(bindir)
    try:

        def choose_port() -> None:
            instance.port = free_port()

        start_on_free_ports(instance.start, choose_port)
        yield instance
    finally:
        # Stopped already when a test that stops it failed before starting it again.
        with contextlib.suppress(RuntimeError):
            instance.stop()
        instance.remove()


@pytest.fixture
def pg_dsn(pg_instance: PgInstance) -> str:
    """A fresh database on the session's server."""
    return pg_instance.create_database()
