"""`bench/run.py cluster`: one chatd node against two and three, side by side (issue 16).

    .venv/bin/python bench/run.py cluster [--setups memory,1,2,3] [--subscribers 1000]
        [--messages 1000] [--publishers 6] [--paced-rate 50] [--latency-rate 1000]
        [--latency-receivers 20]
        [--store-publishers 48] [--rt] [--chatd-rev REV] [--json]

Starts one private PostgreSQL and one private RabbitMQ (tests/pg_instance.py and
tests/rabbitmq_instance.py: temporary directories, free loopback ports, stopped at the end),
then for each setup a fresh database and vhost and that many `chatd serve` processes, each
with its own config and state directory (bench/run.py's start_chatd), every one with
`[store] backend = "postgresql"`, `[bus] backend = "rabbitmq"` and the same JWT secret.
The setup `memory` is one node on the same PostgreSQL with the in-memory bus: the single
node the bus's cost is measured against. Four phases on each setup, each with the load
generator (bench/loadgen, STOMP over WebSocket, every client on its own node):

1. fanout: one room of --subscribers subscribers dealt round-robin over the nodes, and
   --publishers publishers (dealt the same way, subscribed too) sending --messages
   between them flat out (a window of --window each). Deliveries/s, and every receiver
   checks it got every publisher's messages in sequence, with stored ids only growing.
   Flat out, the load generator sets the pace (its core is 86-92 % busy), so how many
   messages each write to a subscriber carries, and with it chatd's CPU per delivery,
   moves from run to run by as much as the bus costs (x0.7-x2.2 of one node, 2026-12-01).
2. paced: the same room of --subscribers subscribers dealt over every node, and one
   publisher on node 1 at --paced-rate msg/s for --paced-seconds (after the warm-up):
   every setup does the same work at the same pace, so its server CPU per delivery is
   what the bus costs; the target's figure (the bus adds at most 20 %). Checked like
   fanout.
3. latency: one publisher on node 1 at --latency-rate msg/s for --latency-seconds, and
   --latency-receivers receivers on the other nodes (on node 1 itself with one node):
   p50/p99/max send -> delivered at the far receivers, after --latency-warmup seconds at
   the same rate (checked, not timed). Checked like fanout.
4. store: --store-publishers publishers, each in a room of its own, dealt over the nodes,
   each keeping --store-window SENDs waiting for their RECEIPT (sent after the commit):
   messages stored/s, counted in PostgreSQL.

Server CPU is utime+stime over each phase's measured window, summed over every chatd
process (its bus client included), and shown apart for RabbitMQ (every process of the
private node) and PostgreSQL (the postmaster and its backends). chatd's nodes run on
--server-core, RabbitMQ, PostgreSQL and the load generator on --load-core: on a 2-core
machine the nodes share one core, so more nodes cannot deliver more; what the figures
show is what the bus costs. chatd is run from bench/.runtime/cluster, a venv made on first
use with `pip install -e '.[cluster]'` (psycopg).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLUSTER_RUNTIME = BENCH / ".runtime" / "cluster"
LATENCY_USER_BASE = 500_000  # latency receivers' user ids
TARGET_P99_MS = 15.0
STALL_SECONDS = 600  # the load generator's longest silence between checkpoints
TARGET_BUS_CPU = 1.20  # at most 20 % more server CPU per delivery than one node
# The phases whose receivers check every delivery (the store phase counts rows instead).
DELIVERING = ("fanout", "paced", "latency")
PHASES = (*DELIVERING, "store")


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--setups",
        default="sqlite,memory,1,2,3",
        help="comma-separated: N nodes on the RabbitMQ bus, `memory` (one node on "
        "PostgreSQL, in-memory bus: the baseline of the CPU ratios) or `sqlite` "
        "(chatd's default single node: SQLite, in-memory bus)",
    )
    p.add_argument("--phases", default="fanout,paced,latency,store")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument(
        "--publishers",
        type=int,
        default=6,
        help="fanout: publishers in the room (divisible by 1, 2 and 3: same share per node)",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=1000,
        help="fanout: messages in all (split over the publishers); "
        "deliveries = messages x (subscribers + publishers)",
    )
    p.add_argument(
        "--window", type=int, default=100, help="fanout: messages in flight per publisher"
    )
    p.add_argument(
        "--paced-rate", type=float, default=50.0,
        help="paced: messages/s into the room of --subscribers (deliveries/s = rate x"
        " (subscribers + 1))",
    )  # fmt: skip
    p.add_argument("--paced-seconds", type=float, default=10.0)
    p.add_argument(
        "--paced-spread", choices=("all", "one"), default="all",
        help="paced: the subscribers dealt over every node (the target's figure), or all"
        " on node 2 (the publisher on node 1): the bus's hop without the deliveries split"
        " over processes",
    )  # fmt: skip
    p.add_argument("--latency-rate", type=float, default=1000.0)
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--latency-receivers", type=int, default=20)
    p.add_argument(
        "--latency-warmup", type=float, default=3.0,
        help="latency: seconds at the paced rate before the timed --latency-seconds (sent,"
        " checked, not timed: the load generator's JIT warms up; 0 times them all)",
    )  # fmt: skip
    p.add_argument("--store-publishers", type=int, default=48)
    p.add_argument("--store-window", type=int, default=20)
    p.add_argument("--store-seconds", type=float, default=10.0)
    p.add_argument("--size", type=int, default=100, help="message content length")
    p.add_argument("--workers", type=int, default=4, help="load generator processes")
    p.add_argument("--heartbeat", default="10000,10000")
    p.add_argument(
        "--rt",
        action="store_true",
        help="chatd's nodes under chrt -f 10, the load generator, RabbitMQ and PostgreSQL "
        "at nice -15 (root): on a shared machine, the figures are theirs more than the "
        "neighbours'",
    )
    p.add_argument("--chatd", help="chatd executable (default bench/.runtime/cluster's)")
    p.add_argument("--chatd-rev", help="run the chatd package as committed at this revision")
    p.add_argument(
        "--python", help="with --chatd-rev: the Python to run it (default bench/.runtime/cluster's)"
    )
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument(
        "--load-core",
        type=int,
        default=1,
        help="the load generator's, RabbitMQ's and PostgreSQL's core",
    )
    p.add_argument("--wait-quiet", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the nodes' state dirs and logs")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--out", help="append the JSON result to this file")
    args = p.parse_args(argv)
    args.setup_list = [s.strip() for s in args.setups.split(",") if s.strip()]
    for s in args.setup_list:
        if s not in ("memory", "sqlite") and not (s.isdigit() and int(s) >= 1):
            p.error(f"--setups: {s!r} is not `memory`, `sqlite` or a number of nodes")
    args.phase_list = [s.strip() for s in args.phases.split(",") if s.strip()]
    if unknown := set(args.phase_list) - set(PHASES):
        p.error(f"--phases: unknown {sorted(unknown)}")
    # What bench/run.py's start_chatd reads.
    args.scenario = "cluster"
    args.durability = None
    args.outbox = 65536
    return args


# --- the services ----------------------------------------------------------------------


def cluster_runtime() -> Path:
    """bench/run.py's runtime venv, with chatd's `cluster` extra (psycopg)."""
    stamp_file = CLUSTER_RUNTIME / "pyproject.stamp"
    wanted = (ROOT / "pyproject.toml").read_bytes()
    python = CLUSTER_RUNTIME / "bin" / "python"
    if python.exists() and stamp_file.exists() and stamp_file.read_bytes() == wanted:
        return CLUSTER_RUNTIME
    log(f"making the runtime venv {CLUSTER_RUNTIME} (pip install -e '{ROOT}[cluster]')")
    shutil.rmtree(CLUSTER_RUNTIME, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(CLUSTER_RUNTIME)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[cluster]"],
                   check=True)  # fmt: skip
    stamp_file.write_bytes(wanted)
    return CLUSTER_RUNTIME


def quiet(cmd: list[str]) -> None:
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


# --rt: the load generator, RabbitMQ and PostgreSQL get this nice value, not SCHED_FIFO as
# chatd's nodes do. Under SCHED_FIFO on one core, a Node worker froze at 100 % CPU with no
# system call for minutes (every thread runnable: a spin-wait, as V8's parallel GC does, on
# a thread that cannot run while the spinner holds the core), starving the machine.
RT_NICE = -15


def pin_all(pids: list[int], core: int, rt: bool, run: ModuleType) -> None:
    """Every thread of these processes on `core`, and with `rt` at nice RT_NICE (their
    later children, PostgreSQL's backends, inherit both)."""
    for pid in pids:
        if core >= 0 and core in run.ALLOWED_CORES and shutil.which("taskset"):
            quiet(["taskset", "-a", "-p", "-c", str(core), str(pid)])
        if rt:
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    # setpriority(PRIO_PROCESS) sets one thread's nice value: every one.
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, int(task), RT_NICE)


def children_of(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def kill_tree(pid: int) -> None:
    """SIGKILL to `pid` and its descendants (the load generator's driver and workers)."""
    log(f"the load generator (pid {pid}) went silent; killing it")
    for p in reversed(children_of(pid)):
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def cpu_of(pids: list[int], run: ModuleType) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):  # ended meanwhile
            total += run.cpu_seconds(pid)
    return total


def context_switches(pid: int) -> int:
    """Voluntary context switches of every thread of `pid`: how often it slept and was
    woken (its event loop waiting for the next event, its threads for work)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    return total


def _benchmark_rabbit(module: ModuleType) -> type:
    """The tests' private node, with one scheduler that sleeps when idle, as
    bench/rabbitmq.sh starts RabbitMQ for the other scenarios: by default each of Erlang's
    schedulers spins a while before sleeping: CPU that is not work, taken from the load
    generator and PostgreSQL on their shared core."""

    class BenchRabbit(module.RabbitInstance):  # type: ignore[name-defined]
        def env(self) -> dict[str, str]:
            env = super().env()
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += (
                " +S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
            )
            return env

    return BenchRabbit


class Services:
    """The private PostgreSQL and RabbitMQ of the run."""

    def __init__(self, args: argparse.Namespace, run: ModuleType) -> None:
        from tests import pg_instance, rabbitmq_instance

        for why in (pg_instance.unavailable_reason(), rabbitmq_instance.unavailable_reason()):
            if why is not None:
                raise SystemExit(f"bench: cluster needs PostgreSQL and RabbitMQ: {why}")
        self.run = run
        bindir = pg_instance._bindir()
        assert bindir is not None
        self.pg = pg_instance.PgInstance(bindir)
        self.rabbit = _benchmark_rabbit(rabbitmq_instance)(rabbitmq_instance._bindir())
        self.pg_started = self.rabbit_started = False
        t0 = time.time()
        self.pg.start()
        self.pg_started = True
        log(f"PostgreSQL on port {self.pg.port} in {time.time() - t0:.1f} s")
        t0 = time.time()
        self.rabbit.start()
        self.rabbit_started = True
        log(f"RabbitMQ (STOMP port {self.rabbit.stomp_port}) in {time.time() - t0:.1f} s")
        pin_all(self.pg_pids() + self.rabbit_pids(), args.load_core, args.rt, run)

    def pg_pids(self) -> list[int]:
        pidfile = self.pg.data / "postmaster.pid"
        return children_of(int(pidfile.read_text().split()[0]))

    def rabbit_pids(self) -> list[int]:
        return sorted(self.rabbit.processes())

    def rabbit_version(self) -> str:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        return out.stdout.strip() or "?"

    def stored(self, dsn: str) -> int:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM messages").fetchone()
            return int(row[0]) if row else 0

    def close(self) -> None:
        if self.rabbit_started:
            self.rabbit.stop()
        self.rabbit.remove()
        if self.pg_started:
            self.pg.stop()
        self.pg.remove()


# --- a setup: its nodes ------------------------------------------------------------------


@dataclass
class Cluster:
    label: str
    nodes: list[Any]  # bench/run.py Servers
    dsn: str
    bus: str
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]


def start_cluster(args: argparse.Namespace, run: ModuleType, svc: Services, setup: str) -> Cluster:
    single = setup in ("memory", "sqlite")
    dsn = "" if setup == "sqlite" else svc.pg.create_database()
    n = 1 if single else int(setup)
    secret = secrets.token_urlsafe(32)
    bus: dict[str, Any] = {"backend": "memory"}
    if not single:
        bus = {"backend": "rabbitmq", "url": svc.rabbit.url(svc.rabbit.add_vhost())}
    label = {"memory": "1 node, PostgreSQL, in-memory bus",
             "sqlite": "1 node, SQLite, in-memory bus (chatd's default)"}.get(
        setup, f"{n} node{'s' * (n > 1)}, PostgreSQL, RabbitMQ bus")  # fmt: skip
    nodes = []
    try:
        for i in range(n):
            args.server_config = {"auth": {"jwt_secret": secret}}
            if setup != "sqlite":
                args.server_config["store"] = {"backend": "postgresql", "dsn": dsn}
                args.server_config["bus"] = bus | ({} if single else {"node_name": f"bench{i + 1}"})
            nodes.append(run.start_chatd(args))
        wait_ready(nodes)
    except BaseException:
        for node in nodes:
            node.stop(keep=True)
        raise
    log(f"{label}: nodes {[s.pid for s in nodes]} ready")
    return Cluster(label, nodes, dsn, bus["backend"])


def wait_ready(nodes: list[Any], timeout: float = 60.0) -> None:
    """Every node's /readyz says 200: on the bus and the store."""
    import httpx

    deadline = time.time() + timeout
    for node in nodes:
        while True:
            try:
                r = httpx.get(f"{node.http_url}/readyz", timeout=5)
                if r.status_code == 200:
                    break
                why = r.text
            except httpx.HTTPError as exc:
                why = repr(exc)
            if time.time() > deadline:
                raise SystemExit(f"bench: node {node.pid} not ready after {timeout} s: {why}")
            time.sleep(0.1)


def stop_cluster(c: Cluster, keep: bool) -> None:
    for node in c.nodes:
        node.stop(keep=keep)


# --- one phase: rooms, clients, the load generator, /proc -----------------------------------


def base_spec(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    return {
        "mode": mode, "protocol": "stomp", "vhost": "/", "heartbeat": args.heartbeat,
        "workers": args.workers, "connectConcurrency": 50, "rate": 0, "window": 100,
        "messages": 0, "durationS": 0, "size": args.size, "warmTimeoutS": 30, "quietMaxS": 60,
        "drainIdleS": 10, "drainMaxS": 120, "history": None, "persistent": False,
        "verify": False,
    }  # fmt: skip


def plan(
    args: argparse.Namespace, phase: str, n: int
) -> tuple[list[list[int]], list[dict[str, Any]], dict[str, Any]]:
    """Rooms (member lists), clients ({user, room, pub, node, tag}) and spec settings."""
    pub_base = 900_000_000  # bench/run.py's PUBLISHER_BASE
    clients: list[dict[str, Any]]
    if phase == "fanout":
        subs = list(range(1, args.subscribers + 1))
        pubs = [pub_base + 1 + j for j in range(args.publishers)]
        clients = [{"user": u, "room": 0, "pub": -1, "node": i % n} for i, u in enumerate(subs)]
        clients += [{"user": u, "room": 0, "pub": j, "node": j % n} for j, u in enumerate(pubs)]
        each = math.ceil(args.messages / args.publishers)
        return [subs + pubs], clients, {"rate": 0, "window": args.window, "messages": each,
                                        "verify": True}  # fmt: skip
    if phase == "paced":
        subs = list(range(1, args.subscribers + 1))
        pub = pub_base + 300_001
        clients = [{"user": pub, "room": 0, "pub": 0, "node": 0, "tag": "sender"}]
        # Dealt over every node, or all on one node that is not the publisher's: the
        # bus's hop without deliveries split over processes.
        on = (lambda i: i % n) if args.paced_spread == "all" else (lambda i: min(1, n - 1))
        clients += [{"user": u, "room": 0, "pub": -1, "node": on(i), "tag": "room"}
                    for i, u in enumerate(subs)]  # fmt: skip
        paced = {"rate": args.paced_rate, "durationS": args.paced_seconds,
                 "warmupS": args.latency_warmup, "verify": True}  # fmt: skip
        return [subs + [pub]], clients, paced
    if phase == "latency":
        recv = [LATENCY_USER_BASE + 1 + i for i in range(args.latency_receivers)]
        pub = pub_base + 100_001
        far = list(range(1, n)) or [0]
        clients = [{"user": pub, "room": 0, "pub": 0, "node": 0, "tag": "sender"}]
        clients += [{"user": u, "room": 0, "pub": -1, "node": far[i % len(far)], "tag": "far"}
                    for i, u in enumerate(recv)]  # fmt: skip
        paced = {"rate": args.latency_rate, "durationS": args.latency_seconds,
                 "warmupS": args.latency_warmup, "verify": True}  # fmt: skip
        return [recv + [pub]], clients, paced
    rooms, clients = [], []
    for j in range(args.store_publishers):
        u = pub_base + 200_001 + j
        rooms.append([u])
        clients.append({"user": u, "room": j, "pub": j, "node": j % n})
    return rooms, clients, {"rate": 0, "window": args.store_window,
                            "durationS": args.store_seconds}  # fmt: skip


def run_phase(args: argparse.Namespace, run: ModuleType, svc: Services, c: Cluster,
              phase: str) -> dict[str, Any]:  # fmt: skip
    n = len(c.nodes)
    rooms, clients, settings = plan(args, phase, n)
    first = c.nodes[0]
    room_ids = run.create_rooms(first, rooms)
    spec = base_spec(args, "store" if phase == "store" else "fanout") | settings
    spec["rooms"] = [{"id": rid, "dest": f"/exchange/chat.direct/room.{rid}"} for rid in room_ids]
    spec["tokens"] = {str(u): run.mint(first, u) for members in rooms for u in members}
    spec["url"] = first.ws_url
    spec["http"] = first.http_url
    spec["chatUrl"] = first.http_url.replace("http://", "ws://") + "/chat"
    spec["clients"] = [
        {"id": i, "user": cl["user"], "room": cl["room"], "pub": cl["pub"],
         "url": c.nodes[cl["node"]].ws_url, **({"tag": cl["tag"]} if "tag" in cl else {})}
        for i, cl in enumerate(clients)
    ]  # fmt: skip
    if n > 1:
        # The rooms were made through node 1; the others hear of them over the bus. A
        # SUBSCRIBE before that would be refused: wait until every node lists them.
        wait_rooms(c, room_ids, rooms)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-cluster-",
                                     delete=False) as f:  # fmt: skip
        json.dump(spec, f)
    groups = {"chatd": lambda: c.pids, "rabbitmq": svc.rabbit_pids, "postgresql": svc.pg_pids}
    rt = ["nice", "-n", str(RT_NICE)] if args.rt else []
    cmd = [*run.pinned(args.load_core), *rt, run.node_executable(), str(run.DRIVER), f.name]
    driver = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    samples: dict[str, dict[str, Any]] = {}
    result = None
    # A load generator that stops answering (it never should) must not hold the machine.
    watchdog = threading.Timer(STALL_SECONDS, kill_tree, (driver.pid,))
    watchdog.start()
    try:
        assert driver.stdout is not None and driver.stdin is not None
        for line in driver.stdout:
            watchdog.cancel()
            watchdog = threading.Timer(STALL_SECONDS, kill_tree, (driver.pid,))
            watchdog.start()
            msg = json.loads(line)
            if "result" in msg:
                result = msg["result"]
                break
            name = msg["checkpoint"]
            if name in ("ready", "run_end"):
                s: dict[str, Any] = {"t": time.time(), "busy": run.machine_busy_seconds(),
                                     "procs": run.process_cpu_snapshot()}  # fmt: skip
                for g, pids in groups.items():
                    s[g] = cpu_of(pids(), run)
                s["rss_kb"] = [run.rss_kb(pid) for pid in c.pids]
                s["node_cpu"] = [cpu_of([pid], run) for pid in c.pids]
                s["node_switches"] = [context_switches(pid) for pid in c.pids]
                s["stored"] = svc.stored(c.dsn) if c.dsn else c.nodes[0].stored_count()
                s["bus"] = bus_counters(c)
                samples[name] = s
            log(f"{c.label}, {phase}: checkpoint {name} {run._brief(msg)}")
            driver.stdin.write("go\n")
            driver.stdin.flush()
        driver.wait(timeout=60)
    finally:
        watchdog.cancel()
        if driver.poll() is None:
            driver.kill()
        os.unlink(f.name)
    if result is None or "ready" not in samples or "run_end" not in samples:
        raise SystemExit(f"bench: the load generator ended without a result ({driver.returncode})")
    svc_pids = svc.pg_pids() + svc.rabbit_pids()
    return phase_figures(phase, c, samples, result, len(clients), run, svc_pids)


def bus_counters(c: Cluster) -> dict[str, float]:
    """The nodes' chatd_bus_* counters from /metrics, summed: frames published and
    received, messages that came before their predecessor (gaps) and read from the store
    (filled)."""
    import httpx

    out: dict[str, float] = {}
    for node in c.nodes:
        if node.metrics_url is None:
            continue
        with contextlib.suppress(httpx.HTTPError):
            for line in httpx.get(node.metrics_url, timeout=10).text.splitlines():
                if line.startswith("chatd_bus_") and not line.startswith("chatd_bus_nodes"):
                    name, value = line.split()[:2]
                    name = name.removesuffix("_total")
                    out[name] = out.get(name, 0.0) + float(value)
    return out


def wait_rooms(
    c: Cluster, room_ids: list[int], rooms: list[list[int]], timeout: float = 30
) -> None:
    import httpx

    deadline = time.time() + timeout
    for node in c.nodes[1:]:
        for rid, members in zip(room_ids[:1] + room_ids[-1:], rooms[:1] + rooms[-1:], strict=True):
            token = node_token(node, members[-1])
            t0 = time.time()
            while True:
                try:
                    r = httpx.get(f"{node.http_url}/chat/rooms/{rid}/messages?limit=1",
                                  headers={"accessToken": token}, timeout=10)  # fmt: skip
                    if r.status_code == 200:
                        break
                    why = f"{r.status_code} {r.text}"
                except httpx.HTTPError as exc:
                    why = repr(exc)
                    log(f"node {node.pid}: room {rid}: {why} after {time.time() - t0:.1f} s")
                if time.time() > deadline:
                    raise SystemExit(f"bench: node {node.pid} does not know room {rid}: {why}")
                time.sleep(0.05)
            if time.time() - t0 > 1:
                log(f"node {node.pid} knew room {rid} after {time.time() - t0:.1f} s")


def node_token(node: Any, user: int) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": str(user), "username": f"user{user}", "iat": now, "exp": now + 3600},
                      node.secret, algorithm="HS256")  # fmt: skip


def phase_figures(phase: str, c: Cluster, samples: dict[str, dict[str, Any]],
                  load: dict[str, Any], n_clients: int, run: ModuleType,
                  svc_pids: list[int]) -> dict[str, Any]:  # fmt: skip
    a, b = samples["ready"], samples["run_end"]
    wall = b["t"] - a["t"]
    cpu = {g: round(b[g] - a[g], 3) for g in ("chatd", "rabbitmq", "postgresql")}
    received = load["received"]
    f: dict[str, Any] = {
        "clients": n_clients, "subscribed": load["subscribed"], "warmed": load["warmed"],
        "sent": load["sent"], "expected": load["expected"], "received": received,
        "lost": load["lost"], "errors": load["errors"], "error_samples": load["error_samples"],
        "closed_during_run": load["closed_during_run"], "window_s": round(load["window_s"], 3),
        "cpu_s": cpu, "wall_s": round(wall, 3),
        "chatd_cpu_pct": round(100 * cpu["chatd"] / wall, 1) if wall > 0 else None,
        "loadgen_cpu_pct": round(100 * load["loadgen_cpu_s"] / wall, 1) if wall > 0 else None,
        "rss_mb": [round(kb / 1024, 1) for kb in b["rss_kb"]],
        # Node by node (node 1 first, where the paced and latency phases publish).
        "node_cpu_s": [round(y - x, 3) for x, y in zip(a["node_cpu"], b["node_cpu"], strict=True)],
        "node_wakeups": [y - x for x, y in zip(a["node_switches"], b["node_switches"],
                                              strict=True)],
    }  # fmt: skip
    # The services are ours too, not noise (PostgreSQL's postmaster is not our child).
    noise, top = run.interference(a["procs"], b["procs"], {os.getpid(), *c.pids, *svc_pids})
    f["other_processes_cpu_pct"] = round(100 * noise / wall, 1) if wall > 0 else None
    f["other_top"] = top
    f["bus"] = {k: int(v - a["bus"].get(k, 0)) for k, v in b["bus"].items()}
    f["machine_busy_pct"] = round(100 * (b["busy"] - a["busy"]) / wall, 1) if wall > 0 else None
    if phase in DELIVERING:
        f["deliveries_per_s"] = round(load["deliveries_per_s"] or 0, 1)
        per = 1e6 / received if received else None
        f["chatd_cpu_us_per_delivery"] = round(cpu["chatd"] * per, 2) if per else None
        f["rabbitmq_cpu_us_per_delivery"] = round(cpu["rabbitmq"] * per, 2) if per else None
        f["postgresql_cpu_us_per_delivery"] = round(cpu["postgresql"] * per, 2) if per else None
        f["latency"] = load["latency"]
        f["latency_by_tag"] = load.get("latency_by_tag") or {}
        # Per second of the run: deliveries, worst latency (ms): stalls show here.
        f["timeline"] = load.get("timeline")
        v = load.get("verify") or {}
        f["verify"] = v
        f["receivers_lost"] = v.get("missing", 0) + v.get("seq_gaps", 0)
        f["reordered"] = v.get("id_not_increasing", 0) + v.get("seq_behind", 0)
    else:
        stored = b["stored"] - a["stored"]
        f["stored"] = stored
        f["stored_per_s"] = round(stored / load["window_s"], 1) if load["window_s"] else None
        f["chatd_cpu_us_per_stored"] = round(cpu["chatd"] * 1e6 / stored, 2) if stored else None
        f["postgresql_cpu_us_per_stored"] = (
            round(cpu["postgresql"] * 1e6 / stored, 2) if stored else None
        )
        f["rabbitmq_cpu_us_per_stored"] = (
            round(cpu["rabbitmq"] * 1e6 / stored, 2) if stored else None
        )
        f["receipt"] = load.get("store_ack")
    return f


# --- output ------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def rows(setups: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    def get(s: dict[str, Any], *path: str) -> Any:
        cur: Any = s["phases"]
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur

    base = baseline(setups)

    def ratio(s: dict[str, Any], key: str, extra: str | None = None, ph: str = "fanout") -> Any:
        def total(x: dict[str, Any]) -> float | None:
            v = get(x, ph, key)
            if v is None:
                return None
            return v + (get(x, ph, extra) or 0) if extra else v

        t0, t = total(base), total(s)
        return round(t / t0, 2) if t0 and t is not None else None

    out: list[tuple[str, list[Any]]] = []

    def row(label: str, fn: Any) -> None:
        out.append((label, [fn(s) for s in setups]))

    def lost_reordered(ph: str) -> Any:
        return lambda s: (
            None
            if get(s, ph, "verify") is None
            else f"{get(s, ph, 'receivers_lost')}, {get(s, ph, 'reordered')}"
        )

    def p50_p99(ph: str) -> Any:
        return lambda s: (
            None
            if get(s, ph, "latency") is None
            else f"{get(s, ph, 'latency', 'p50_ms')} / {get(s, ph, 'latency', 'p99_ms')}"
        )

    row("fanout: deliveries/s (flat out)", lambda s: get(s, "fanout", "deliveries_per_s"))
    row(
        "fanout: deliveries received / expected",
        lambda s: (
            None
            if get(s, "fanout", "received") is None
            else f"{get(s, 'fanout', 'received'):,} / {get(s, 'fanout', 'expected'):,}"
        ),
    )
    row("fanout: receivers complete / checked",
        lambda s: None if not get(s, "fanout", "verify")
        else f"{get(s, 'fanout', 'verify', 'receivers_complete'):,} / "
             f"{get(s, 'fanout', 'verify', 'receivers'):,}")  # fmt: skip
    row("fanout: lost, reordered (every receiver)", lost_reordered("fanout"))
    row(
        "fanout: chatd CPU µs / delivery (all nodes)",
        lambda s: get(s, "fanout", "chatd_cpu_us_per_delivery"),
    )
    row(
        "fanout: RabbitMQ CPU µs / delivery",
        lambda s: get(s, "fanout", "rabbitmq_cpu_us_per_delivery"),
    )
    row(
        "fanout: PostgreSQL CPU µs / delivery",
        lambda s: get(s, "fanout", "postgresql_cpu_us_per_delivery"),
    )
    row(
        f"fanout: chatd CPU / delivery vs {base['label']}",
        lambda s: ratio(s, "chatd_cpu_us_per_delivery"),
    )
    row(
        f"fanout: chatd + RabbitMQ CPU / delivery vs {base['label']}",
        lambda s: ratio(s, "chatd_cpu_us_per_delivery", "rabbitmq_cpu_us_per_delivery"),
    )
    row("fanout: latency p50 / p99 (ms, flat out: the window's queue)", p50_p99("fanout"))
    row("paced: deliveries/s", lambda s: get(s, "paced", "deliveries_per_s"))
    row("paced: lost, reordered (every receiver)", lost_reordered("paced"))
    row("paced: chatd CPU µs / delivery", lambda s: get(s, "paced", "chatd_cpu_us_per_delivery"))
    row(
        "paced: RabbitMQ CPU µs / delivery",
        lambda s: get(s, "paced", "rabbitmq_cpu_us_per_delivery"),
    )
    row(
        f"paced: chatd CPU / delivery vs {base['label']}",
        lambda s: ratio(s, "chatd_cpu_us_per_delivery", ph="paced"),
    )
    row(
        f"paced: chatd + RabbitMQ CPU / delivery vs {base['label']}",
        lambda s: ratio(s, "chatd_cpu_us_per_delivery", "rabbitmq_cpu_us_per_delivery", ph="paced"),
    )
    row("paced: latency p50 / p99 (ms, every receiver)", p50_p99("paced"))
    row("latency: deliveries/s", lambda s: get(s, "latency", "deliveries_per_s"))
    for q in ("p50_ms", "p99_ms", "max_ms"):
        row(
            f"latency: sender node → other nodes, {q.replace('_ms', '')} (ms)",
            lambda s, q=q: get(s, "latency", "latency_by_tag", "far", q),
        )
    row("latency: lost, reordered (every receiver)", lost_reordered("latency"))
    row(
        "latency: chatd CPU µs / delivery", lambda s: get(s, "latency", "chatd_cpu_us_per_delivery")
    )
    row(
        "latency: RabbitMQ CPU µs / delivery",
        lambda s: get(s, "latency", "rabbitmq_cpu_us_per_delivery"),
    )
    for ph in PHASES:
        row(
            f"{ph}: bus publications received, gaps, read from the store, frames missed"
            " (all nodes)",
            lambda s, ph=ph: (
                None
                if not get(s, ph, "bus")
                else ", ".join(
                    f"{get(s, ph, 'bus', k) or 0:,}"
                    for k in (
                        "chatd_bus_received", "chatd_bus_gaps", "chatd_bus_filled",
                        "chatd_bus_missed",
                    )  # fmt: skip
                )
            ),
        )
    row("store: messages stored/s (PostgreSQL)", lambda s: get(s, "store", "stored_per_s"))
    row(
        "store: SEND → RECEIPT p50 / p99 (ms)",
        lambda s: (
            None
            if get(s, "store", "receipt") is None
            else f"{get(s, 'store', 'receipt', 'p50_ms')} / {get(s, 'store', 'receipt', 'p99_ms')}"
        ),
    )
    row(
        "store: chatd CPU µs / stored message", lambda s: get(s, "store", "chatd_cpu_us_per_stored")
    )
    row(
        "store: PostgreSQL CPU µs / stored message",
        lambda s: get(s, "store", "postgresql_cpu_us_per_stored"),
    )
    row(
        "store: RabbitMQ CPU µs / stored message",
        lambda s: get(s, "store", "rabbitmq_cpu_us_per_stored"),
    )
    for ph in PHASES:
        row(
            f"{ph}: chatd CPU % of a core (all nodes)", lambda s, ph=ph: get(s, ph, "chatd_cpu_pct")
        )
        row(f"{ph}: load generator CPU %", lambda s, ph=ph: get(s, ph, "loadgen_cpu_pct"))
        row(
            f"{ph}: other processes' CPU % (noise)",
            lambda s, ph=ph: get(s, ph, "other_processes_cpu_pct"),
        )
    return [(label, vals) for label, vals in out if any(v is not None for v in vals)]


def baseline(setups: list[dict[str, Any]]) -> dict[str, Any]:
    """What the bus's cost is measured against: one node on the same store without it."""
    return next((s for s in setups if s["setup"] == "memory"), setups[0])


def markdown(res: dict[str, Any]) -> str:
    setups = res["setups"]
    lines = ["| | " + " | ".join(s["label"] for s in setups) + " |",
             "|---|" + "---:|" * len(setups)]  # fmt: skip
    for label, vals in rows(setups):
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def verdict(res: dict[str, Any]) -> list[str]:
    out = []
    setups = res["setups"]
    base_setup = baseline(setups)
    # The bus's CPU is judged at the same pace (paced) when measured, else flat out.
    cpu_phase = "paced" if "paced" in base_setup["phases"] else "fanout"
    base = base_setup["phases"].get(cpu_phase, {}).get("chatd_cpu_us_per_delivery")
    for s in setups:
        ph = s["phases"]
        bits = []
        far = ph.get("latency", {}).get("latency_by_tag", {}).get("far")
        if far:
            ok = far["p99_ms"] < TARGET_P99_MS
            bits.append(f"p99 {far['p99_ms']} ms {'<' if ok else '>='} {TARGET_P99_MS:g} ms")
        fo = ph.get(cpu_phase, {})
        if base and fo.get("chatd_cpu_us_per_delivery") and s["setup"] not in ("memory", "sqlite"):
            r = fo["chatd_cpu_us_per_delivery"] / base
            bits.append(
                f"chatd CPU/delivery ({cpu_phase}) x{r:.2f} of {base_setup['label']} "
                f"({'within' if r <= TARGET_BUS_CPU else 'over'} +20 %)"
            )
        lost = sum(ph.get(p, {}).get("receivers_lost", 0) for p in DELIVERING)
        reord = sum(ph.get(p, {}).get("reordered", 0) for p in DELIVERING)
        checked = sum(ph.get(p, {}).get("received", 0) for p in DELIVERING)
        bits.append(f"{checked:,} deliveries checked: {lost} lost, {reord} reordered")
        out.append(f"- {s['label']}: " + "; ".join(bits))
    return out


def main(argv: list[str], run: ModuleType) -> int:
    """Called by bench/run.py (`run` is that module: its server start and /proc readers)."""
    args = parse_args(argv)
    if not args.chatd and not args.chatd_rev:
        args.chatd = str(cluster_runtime() / "bin" / "chatd")
    if args.chatd_rev and not args.python:
        args.python = str(cluster_runtime() / "bin" / "python")
    run.ensure_node_modules()
    run.raise_nofile()
    if args.load_core in run.ALLOWED_CORES:
        os.sched_setaffinity(0, {args.load_core})
    if args.wait_quiet:
        run.wait_quiet()
    t_start = time.time()
    svc = Services(args, run)
    setups: list[dict[str, Any]] = []
    version = ""
    try:
        for setup in args.setup_list:
            c = start_cluster(args, run, svc, setup)
            version = c.nodes[0].version
            try:
                phases = {ph: run_phase(args, run, svc, c, ph) for ph in args.phase_list}
                # A node that died during the run would make every figure meaningless.
                dead = [n.pid for n in c.nodes if n.proc is not None and n.proc.poll() is not None]
                if dead:
                    raise SystemExit(f"bench: chatd node(s) {dead} exited during the run")
            finally:
                stop_cluster(c, args.keep)
            setups.append(
                {"setup": setup, "label": c.label, "nodes": len(c.nodes), "phases": phases}
            )
            log(f"{c.label}: done")
    finally:
        svc.close()
    res = {
        "scenario": "cluster", "server_version": version, "rabbitmq": svc.rabbit_version(),
        "params": {k: getattr(args, k) for k in (
            "setups", "subscribers", "publishers", "messages", "window", "paced_rate",
            "paced_seconds", "paced_spread", "latency_rate",
            "latency_seconds", "latency_warmup", "latency_receivers", "store_publishers",
            "store_window", "store_seconds", "size", "workers", "rt")},
        "setups": setups, "seconds": round(time.time() - t_start, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(res, default=str) + "\n")
    if args.json:
        print(json.dumps(res, default=str))
    else:
        rt = ", nodes under chrt -f 10, the rest at nice -15" if args.rt else ""
        print(f"\n## cluster: chatd ({version}{rt}), RabbitMQ {res['rabbitmq']}, "
              f"{res['date']}, {res['seconds']} s\n")  # fmt: skip
        print(markdown(res))
        print()
        print("\n".join(verdict(res)))
        for s in setups:
            for ph, f in s["phases"].items():
                if f.get("errors"):
                    print(
                        f"{s['label']}, {ph}: {f['errors']} client errors: {f['error_samples'][:3]}"
                    )
    checked = [s["phases"].get(p, {}) for s in setups for p in DELIVERING]
    bad = any(f.get("receivers_lost") or f.get("reordered") for f in checked)
    return 2 if bad else 0
