"""Does chatd tolerate the sandbox systemd/chatd.service puts it in? A real chatd goes
through every protocol under the same kernel restriction the unit asks for:

- MemoryDenyWriteExecute=yes: run under prctl(PR_SET_MDWE), the kernel switch systemd
  itself uses for it where the kernel has one (Linux 6.3+).
- SystemCallFilter=@system-service ~@privileged @resources: run under strace and check
  every system call it made against the groups as this systemd defines them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import trio

from chatd import config as config_mod
from chatd.auth import Authenticator

from .chatd_proc import SECRET, chatd_argv, child_env, run_chatd, write_config
from .test_log_secrets import _exercise

TIMEOUT = 60

_MDWE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
sys.argv = ["chatd", *sys.argv[1:]]
from chatd.cli import main
sys.exit(main())
"""


def _mdwe_supported() -> bool:
    probe = "import ctypes; raise SystemExit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", probe], check=False, timeout=30).returncode == 0


async def _drive(argv: list[str], tmp_path: Path, config: Path) -> list[str]:
    """Start chatd from `argv`, use every protocol, reload, stop; its log lines."""
    auth = Authenticator(config_mod.load(config, env={}).auth, SECRET)
    admin = auth.mint(9000, "admin", admin=True)
    alice = auth.mint(1, "alice")
    forged = jwt.encode({"sub": "1", "username": "alice", "exp": 2**31}, "x" * 40, "HS256")
    with trio.fail_after(TIMEOUT):
        async with run_chatd(argv, child_env()) as chatd:
            await _exercise(chatd, admin, alice, forged, {})
            pid = _chatd_pid(chatd.proc.pid)
            mark = len(chatd.lines)
            os.kill(pid, signal.SIGHUP)
            await chatd.wait_line("reload: config applied", mark)
            os.kill(pid, signal.SIGTERM)
            assert await chatd.wait_exit() == 0
    assert not [line for line in chatd.lines if " ERROR " in line or "Traceback" in line]
    return chatd.lines


def _chatd_pid(pid: int) -> int:
    """chatd's pid: `pid` itself, or its only child when `pid` is strace."""
    exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    if exe != "strace":
        return pid
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


async def test_memory_deny_write_execute(tmp_path: Path) -> None:
    if not _mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    config = write_config(tmp_path / "chatd.toml", tmp_path)
    argv = [sys.executable, "-c", _MDWE, "serve", "--config", str(config)]
    await _drive(argv, tmp_path, config)


def _syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, timeout=60
    ).stdout
    groups: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif line.startswith("    ") and current and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def _expand(groups: dict[str, list[str]], name: str, seen: set[str] | None = None) -> set[str]:
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    out: set[str] = set()
    for item in groups.get(name, []):
        out |= _expand(groups, item, seen)
    return out


@pytest.mark.skipif(
    shutil.which("strace") is None or shutil.which("systemd-analyze") is None,
    reason="needs strace and systemd-analyze",
)
async def test_system_calls_fit_the_unit_filter(tmp_path: Path) -> None:
    config = write_config(tmp_path / "chatd.toml", tmp_path)
    trace = tmp_path / "trace"
    argv = ["strace", "-f", "-qq", "-o", str(trace), *chatd_argv(config)]
    await _drive(argv, tmp_path, config)

    # Only what chatd's own process made, from its exec on (not strace's start-up).
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if " execve(" in line and " = 0" in line)
    used = {m[1] for line in lines[start:] if (m := re.match(r"\d+ +(\w+)\(", line))}
    assert {"epoll_wait", "accept4", "sendto"} <= used  # the trace really saw the server

    groups = _syscall_groups()
    allowed = _expand(groups, "@system-service")
    denied = _expand(groups, "@privileged") | _expand(groups, "@resources")
    assert used - allowed == set()
    # SQLite fchown()s its journal files to the database's owner only when run as root;
    # the unit runs chatd as a dynamic user, so it never does there.
    tolerated = {"fchown"} if os.geteuid() == 0 else set()
    assert (used & denied) - tolerated == set()
