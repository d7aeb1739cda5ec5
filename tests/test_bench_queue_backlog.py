"""`bench/run.py queue-backlog` still works: a tiny run against a chatd it starts itself.
No timing is asserted; only that each phase reports its figures and the drains got every
message once (the scenario itself exits on a message twice or missing)."""

from __future__ import annotations

import json
import subprocess
import sys

from .test_bench_smoke import BENCH, ROOT, TIMEOUT, _chatd


def test_queue_backlog_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "queue-backlog", "--messages", "3000",
         "--size", "200", "--json", "--chatd", _chatd()],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["scenario"] == "queue-backlog"
    phases = res["phases"]
    assert [p["phase"] for p in phases] == [
        "publish", "drain, 1 consumer", "publish", "drain, 3 consumers"
    ]  # fmt: skip
    for p in phases:
        assert p["messages"] == 3000 and p["msg_per_s"] > 0 and p["rss_peak_mb"] > 0, p
    assert phases[1]["per_consumer"] == [3000]
    shares = phases[3]["per_consumer"]
    assert sum(shares) == 3000 and len(shares) == 3, shares
