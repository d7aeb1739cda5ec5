"""Whatever becomes of pytest, the private services it started die with it (tests/reaper.py):
a child Python starts a private PostgreSQL or RabbitMQ through the fixtures' own code
(tests/pg_instance.py, tests/rabbitmq_instance.py), then its whole process group is
SIGKILLed, as a CI timeout or Ctrl-\\ would; within a few seconds none of the service's
processes is left, not even the watchdog, its ports refuse and its directory is gone.
After a normal stop the watchdog exits and touches nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import pg_instance, rabbitmq_instance
from .reaper import Reaper
from .services import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
GONE_WITHIN = 20.0  # seconds; it takes well under one, but the machine is busy

# The children: started as `python -c SCRIPT+_STARTED OUT ARGS`, they write what the test
# needs to know into OUT, then wait to be killed (or for EOF, should the test itself be gone).
_STARTED = """
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as out:
    json.dump({"root": str(root), "ports": ports}, out)
os.replace(tmp, sys.argv[1])
sys.stdin.read()
"""

# ARGS: MODULE CLASS. Starts the service as its fixture does.
SERVICE = """
import json, os, sys
from importlib import import_module
module = import_module(f"tests.{sys.argv[2]}")
instance = getattr(module, sys.argv[3])(module._bindir())
instance.start()
root = instance.root
ports = [getattr(instance, name) for name in ("port", "stomp_port", "amqp_port", "epmd_port")
         if hasattr(instance, name)]
"""

# ARGS: ROOT. A process in ROOT that, like a service, outlives the child that started it
# and is left every descriptor the child could give it (close_fds=False).
SLEEPER = """
import json, os, subprocess, sys
from pathlib import Path
from tests.reaper import Reaper
root = Path(sys.argv[2])
reaper = Reaper(root)
subprocess.Popen(["sleep", "600"], cwd=root, stdin=subprocess.DEVNULL, close_fds=False,
                 start_new_session=True)
ports = []
"""

Pid = tuple[int, str]  # a pid and its start time: a pid alone may be reused


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: Pid) -> bool:
    fields = _stat(pid[0])
    return fields is not None and fields[0] != "Z" and fields[19] == pid[1]


def _belonging(root: Path) -> dict[Pid, str]:
    """Every live process whose command line, environment or working directory names
    `root`: the service's, and anything that watches it."""
    found: dict[Pid, str] = {}
    needle = str(root).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        environ, cwd = b"", ""
        try:
            cmdline = (proc / "cmdline").read_bytes()
            with contextlib.suppress(OSError):  # another user's, when not root
                environ, cwd = (proc / "environ").read_bytes(), os.readlink(proc / "cwd")
        except OSError:
            continue
        fields = _stat(int(proc.name))
        if fields is None or fields[0] == "Z":
            continue
        if needle in cmdline or needle in environ or cwd == str(root) or cwd.startswith(f"{root}/"):
            found[int(proc.name), fields[19]] = cmdline.replace(b"\0", b" ").decode().strip()
    return found


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def _leftovers(root: Path, pids: dict[Pid, str], ports: list[int]) -> list[str]:
    left = [f"{pid[0]} {cmd}" for pid, cmd in pids.items() if _alive(pid)]
    left += [f"{pid[0]} {cmd}" for pid, cmd in _belonging(root).items() if pid not in pids]
    left += [f"port {port} still listens" for port in ports if _listening(port)]
    if root.exists():
        left.append(f"{root} still exists")
    return left


def _kill(pids: dict[Pid, str]) -> None:
    """The test's own cleanup, should it fail: a postmaster first gets SIGQUIT (it then
    frees its shared memory), everything else SIGKILL."""
    for pid, cmd in pids.items():
        if " -D " in cmd and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid[0], signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while any(" -D " in cmd and _alive(pid) for pid, cmd in pids.items()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling /proc: not our children
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid[0], signal.SIGKILL)


@contextlib.contextmanager
def _child(script: str, args: list[str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The child Python, in a process group of its own; killed (its group) in the end."""
    out = str(tmp_path / "started.json")
    with open(tmp_path / "child.err", "wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", script + _STARTED, out, *args],
            cwd=REPO, stdin=subprocess.PIPE, stdout=err, stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        yield child
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
        assert child.stdin is not None
        child.stdin.close()


def _started(child: subprocess.Popen[bytes], tmp_path: Path, timeout: float) -> dict[str, Any]:
    out = tmp_path / "started.json"
    deadline = time.monotonic() + timeout
    while not out.exists():
        if child.poll() is not None:
            err = (tmp_path / "child.err").read_text(errors="replace")[-3000:]
            pytest.fail(f"the child exited with {child.returncode}: {err}")
        if time.monotonic() > deadline:
            pytest.fail("the child did not start the service in time")
        time.sleep(0.1)  # polling a file another process writes
    info: dict[str, Any] = json.loads(out.read_text())
    return info


def _killed_child_leaves_nothing(
    script: str, args: list[str], service: str, tmp_path: Path, start_timeout: float
) -> None:
    pids: dict[Pid, str] = {}
    root: Path | None = None
    with _child(script, args, tmp_path) as child:
        try:
            info = _started(child, tmp_path, start_timeout)
            root = Path(info["root"])
            ports: list[int] = info["ports"]
            pids = _belonging(root)
            assert service in " ".join(pids.values()), pids
            assert "reaper.py" in " ".join(pids.values()), pids

            os.killpg(child.pid, signal.SIGKILL)  # pytest's fate: no cleanup runs
            child.wait(10)
            killed = time.monotonic()
            while left := _leftovers(root, pids, ports):
                if time.monotonic() - killed > GONE_WITHIN:
                    pytest.fail(f"left {GONE_WITHIN} s after the kill: {left}")
                time.sleep(0.05)  # polling /proc: not our children
            print(f"{service}: all gone {time.monotonic() - killed:.2f} s after the kill")
        finally:
            if root is not None:
                _kill(pids | _belonging(root))
                shutil.rmtree(root, ignore_errors=True)


def test_a_killed_owner_leaves_nothing_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "service").mkdir()
    args = [str(tmp_path / "service")]
    _killed_child_leaves_nothing(SLEEPER, args, "sleep 600", tmp_path, 30)


def test_a_disarmed_watchdog_exits_and_touches_nothing(tmp_path: Path) -> None:
    root = tmp_path / "service"
    root.mkdir()
    reaper = Reaper(root)
    sleeper = subprocess.Popen(["sleep", "600"], cwd=root, stdin=subprocess.DEVNULL)
    try:
        reaper.disarm()
        assert reaper.process.returncode == 0
        assert sleeper.poll() is None and root.exists()
    finally:
        sleeper.kill()
        sleeper.wait(10)
        reaper.disarm()


def test_a_killed_pytest_leaves_no_postgresql_behind(tmp_path: Path) -> None:
    reason = pg_instance.unavailable_reason()
    if reason is not None:
        skip_or_fail("PostgreSQL", reason)
    args = ["pg_instance", "PgInstance"]
    _killed_child_leaves_nothing(SERVICE, args, "postgres", tmp_path, 120)


def test_a_killed_pytest_leaves_no_rabbitmq_behind(tmp_path: Path) -> None:
    reason = rabbitmq_instance.unavailable_reason()
    if reason is not None:
        skip_or_fail("RabbitMQ", reason)
    args = ["rabbitmq_instance", "RabbitInstance"]
    _killed_child_leaves_nothing(SERVICE, args, "beam.smp", tmp_path, 300)
