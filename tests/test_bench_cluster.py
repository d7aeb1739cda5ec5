"""`bench/run.py cluster` still works: a tiny run of one node against two, on a private
PostgreSQL and RabbitMQ the scenario starts itself. No timing is asserted; only that every
phase reports its figures and that every receiver got every message, in order. Skipped
without node, PostgreSQL or RabbitMQ (failed instead on CI, as the cluster tests are).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from . import pg_instance, rabbitmq_instance
from .services import skip_or_fail
from .test_bench_smoke import BENCH, ROOT, _chatd, _npm_ci

# A cold RabbitMQ start is about 10 s on a busy machine, each setup some 20 s more.
TIMEOUT = 400

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def test_cluster_smoke() -> None:
    for service, reason in (
        ("PostgreSQL", pg_instance.unavailable_reason()),
        ("RabbitMQ", rabbitmq_instance.unavailable_reason()),
    ):
        if reason is not None:
            skip_or_fail(service, reason)
    _npm_ci()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "cluster", "--setups", "memory,2",
         "--subscribers", "6", "--publishers", "2", "--messages", "40", "--window", "10",
         "--latency-rate", "50", "--latency-seconds", "1", "--latency-warmup", "0.5",
         "--latency-receivers", "2",
         "--store-publishers", "2", "--store-seconds", "1", "--workers", "1",
         "--json", "--chatd", _chatd()],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["scenario"] == "cluster"
    assert [(s["setup"], s["nodes"]) for s in res["setups"]] == [("memory", 1), ("2", 2)]
    for setup in res["setups"]:
        fanout, latency, store = (setup["phases"][p] for p in ("fanout", "latency", "store"))
        # 6 subscribers and 2 publishers (subscribed too) each get all 40 messages.
        assert fanout["received"] == fanout["expected"] == 8 * 40, fanout
        assert fanout["verify"]["receivers_complete"] == fanout["verify"]["receivers"] == 8
        for phase in (fanout, latency):
            assert phase["receivers_lost"] == 0 and phase["reordered"] == 0, phase["verify"]
            assert phase["verify"]["no_id"] == 0, phase["verify"]
            assert phase["errors"] == 0, phase["error_samples"]
            assert phase["chatd_cpu_us_per_delivery"] is not None
            assert len(phase["node_cpu_s"]) == len(phase["node_wakeups"]) == setup["nodes"]
        # Every message is checked; those of the warm-up are not timed.
        assert latency["received"] == latency["expected"] == 3 * latency["sent"], latency
        assert 0 < latency["latency_by_tag"]["far"]["count"] < 2 * latency["sent"]
        assert store["stored"] > 0 and store["stored_per_s"] > 0
