"""The benchmark still works: a tiny run of bench/run.py against a chatd it starts itself.

No timing is asserted (a benchmark is a program that prints figures, not a test that fails
on a slow machine): only that the JSON has the figures and that nothing was lost. Installs
the load generator's npm packages (`npm ci` in bench/) when bench/node_modules is missing;
skipped only when `node` is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TIMEOUT = 120

FIGURES = {
    "deliveries_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "server_cpu_us_per_delivery",
    "rss_per_conn_idle_kb",
    "rss_per_conn_subscribed_kb",
    "idle_rss_start_mb",
    "start_to_ready_ms",
    "messages_stored_per_s",
    "messages_lost",
}

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def _npm_ci() -> None:
    if (BENCH / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not; cannot install bench/"
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=BENCH,
        check=True,
        timeout=600,
    )


def _chatd() -> str:
    beside = Path(sys.executable).parent / "chatd"
    found = str(beside) if beside.exists() else shutil.which("chatd")
    assert found, "no chatd executable beside this Python or on PATH"
    return found


def _run(*args: str) -> dict:
    _npm_ci()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), *args, "--json", "--chatd", _chatd()],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(res: dict, transport: str, deliveries: int) -> None:
    assert res["target"] == "chatd"
    assert res["transport"] == transport
    figures = res["figures"]
    missing = FIGURES - figures.keys()
    assert not missing, f"figures missing from the JSON: {missing}"
    assert figures["deliveries_expected"] == deliveries
    assert figures["deliveries_received"] == deliveries
    assert figures["messages_lost"] == 0
    assert figures["messages_stored"] == 50
    assert res["load"]["errors"] == 0, res["load"]["error_samples"]
    for key in ("latency_p50_ms", "latency_p99_ms", "deliveries_per_s", "start_to_ready_ms"):
        assert figures[key] is not None and figures[key] > 0, key


def test_stomp_fanout_smoke() -> None:
    res = _run("fanout", "--subscribers", "5", "--messages", "50", "--workers", "2")
    # 5 subscribers and the publisher (subscribed too) each get all 50 messages.
    _check(res, "stomp-ws", 6 * 50)


def test_chat_fanout_smoke() -> None:
    res = _run(
        "fanout", "--transport", "chat", "--subscribers", "5", "--messages", "50", "--workers", "2"
    )
    _check(res, "chat", 6 * 50)


def test_chatd_rev_runs_the_revision_not_the_working_tree() -> None:
    # Run from the repository, as a user does: `python -m chatd` would put the working
    # tree's chatd first on sys.path; run.py must run the exported revision and says so.
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    _npm_ci()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "fanout", "--subscribers", "2", "--messages",
         "50", "--workers", "1", "--json", "--chatd-rev", "HEAD", "--python", sys.executable],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["server_version"] == f"git {rev}"
    _check(res, "stomp-ws", 3 * 50)
