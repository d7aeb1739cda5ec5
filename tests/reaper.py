"""Whatever becomes of pytest, the private services it started (tests/pg_instance.py,
tests/rabbitmq_instance.py) die with it, and their directories are removed.

A fixture's teardown does not run when pytest is killed (SIGKILL, a CI timeout, Ctrl-\\),
and the services run in sessions of their own (pg_ctl daemonizes the postmaster; beam and
epmd are started with start_new_session): nothing else would ever stop them, and they would
hold memory and ports for good, under the next benchmark.

`Reaper(root)`, made with the directory a service runs in, starts a watchdog: this file as
a script, in a session of its own so that what kills pytest's process group does not kill
it too. Its stdin is the read end of a pipe whose write end only pytest holds, so the pipe
reaches EOF when pytest is gone, however it died. The watchdog then kills every process
whose working directory is `root` or inside it (PostgreSQL's processes run in their data
directory, RabbitMQ's in the directory its fixture starts them in, and neither changes it),
removes `root` and exits. After a normal stop, `disarm()` tells it to exit doing nothing
and waits until it has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_STAND_DOWN = b"x"  # any byte before EOF: the fixture stopped the service itself
_ROOT = "CHATD_TEST_REAPER_ROOT"


class Reaper:
    def __init__(self, root: Path) -> None:
        self.root = root
        # os.pipe's ends are close-on-exec (PEP 446) and subprocess closes every other
        # descriptor anyway: neither the services nor another watchdog inherit the write
        # end, which would keep the pipe from ever reaching EOF.
        read_end, self._write_end = os.pipe()
        try:
            self.process = subprocess.Popen(
                # -I: none of the tests' modules, nor PYTHON* variables, in its way. `root`
                # in its environment, not on its command line: it is no process of the
                # service, which tests look for by command lines that name its directory.
                [sys.executable, "-I", __file__], env={_ROOT: str(root)},
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd="/", start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def disarm(self, timeout: float = 10.0) -> None:
        """Once the service is stopped: the watchdog exits without touching anything."""
        if self._write_end < 0:
            return
        with contextlib.suppress(BrokenPipeError):  # it is gone already
            os.write(self._write_end, _STAND_DOWN)
        os.close(self._write_end)
        self._write_end = -1
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def _running_in(root: Path) -> list[int]:
    """The live processes whose working directory is `root` or inside it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd == str(root) or cwd.startswith(f"{root}/")):
            found.append(int(proc.name))
    return found


def _is_postmaster(pid: int) -> bool:
    """A postmaster's pid is the first line of postmaster.pid, in its working directory."""
    pidfile = Path("/proc") / str(pid) / "cwd" / "postmaster.pid"
    with contextlib.suppress(OSError, IndexError):
        return pidfile.read_text().split()[0] == str(pid)
    return False


def reap(root: Path, patience: float = 5.0) -> None:
    """Kills every process running in `root`, then removes it. A postmaster first gets
    SIGQUIT, PostgreSQL's immediate shutdown: it ends its backends and frees its shared
    memory, which SIGKILL would leave behind. After `patience` seconds, or at once when
    there is no postmaster (RabbitMQ's beam and epmd), SIGKILL for whatever is left."""
    postmasters = [pid for pid in _running_in(root) if _is_postmaster(pid)]
    for pid in postmasters:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + patience
    while set(postmasters) & set(_running_in(root)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc: not our children
    deadline = time.monotonic() + patience
    while (left := _running_in(root)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    shutil.rmtree(root, ignore_errors=True)


def _watch(root: Path) -> None:
    # Blocks until the fixture stands the watchdog down, or pytest is gone (EOF).
    if os.read(0, 1) == b"":
        reap(root)


if __name__ == "__main__":
    _watch(Path(os.environ[_ROOT]))
