// The load generator's coordinator: `node driver.mjs SPEC.json`.
//
// Forks worker processes (worker.mjs), deals the clients out to them, and walks them
// through the phases of a run. bench/run.py drives it over stdin/stdout, one JSON line
// each way: at each checkpoint the driver prints {"checkpoint": NAME, ...} and waits for
// a line on stdin before going on, so run.py can sample the server's /proc at exactly
// those moments (RSS before connecting, after connecting, after subscribing; CPU around
// the measured window). The last line is {"result": {...}}.
//
// Checkpoints: started, connected, ready, run_end (fanout, store), churn_start, run_end
// (churn); idle stops after ready.

import { fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Hist, nowUs } from "../lib/hist.mjs";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const workerPath = fileURLToPath(new URL("./worker.mjs", import.meta.url));

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function checkpoint(name, data = {}) {
  out({ checkpoint: name, ...data });
  const line = await stdinLines.next();
  if (line.done) throw new Error("stdin closed by the orchestrator");
}

function log(msg) {
  process.stderr.write(`[loadgen] ${msg}\n`);
}

// --- workers -----------------------------------------------------------------------------

const nWorkers = Math.max(1, Math.min(spec.workers, spec.clients.length || 1));
const workers = [];
for (let i = 0; i < nWorkers; i++) {
  const child = fork(workerPath, [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const w = { index: i, child, waiters: new Map(), last: {} };
  child.on("message", (msg) => {
    if (msg.type === "fatal") {
      log(`worker ${i} failed: ${msg.error}`);
      process.exit(3);
    }
    w.last[msg.type] = msg;
    const waiter = w.waiters.get(msg.type);
    if (waiter) {
      w.waiters.delete(msg.type);
      waiter(msg);
    }
  });
  child.on("exit", (code) => {
    if (code && !closing) {
      log(`worker ${i} exited with ${code}`);
      process.exit(3);
    }
  });
  workers.push(w);
}
let closing = false;

function expect(w, type) {
  return new Promise((resolve) => w.waiters.set(type, resolve));
}

async function all(cmd, reply, extra = {}) {
  const waits = workers.map((w) => expect(w, reply));
  for (const w of workers) w.child.send({ cmd, ...extra });
  return Promise.all(waits);
}

const sum = (xs, f) => xs.reduce((a, x) => a + f(x), 0);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Deal clients round-robin so every worker has a share of every room.
const slices = workers.map(() => []);
spec.clients.forEach((c, i) => slices[i % nWorkers].push(c));
await Promise.all(
  workers.map((w, i) => {
    const p = expect(w, "ready");
    w.child.send({ cmd: "init", spec: { ...spec, clients: undefined, workerIndex: i }, clients: slices[i] });
    return p;
  }),
);

async function finish(result) {
  out({ result });
  closing = true;
  for (const w of workers) w.child.send({ cmd: "close" });
  await sleep(300);
  process.exit(0);
}

// --- churn -------------------------------------------------------------------------------

if (spec.mode === "churn") {
  await checkpoint("churn_start");
  const reps = await all("churn", "churned");
  const cycle = new Hist();
  for (const r of reps) cycle.merge(Hist.fromJSON(r.cycle));
  const seconds = Math.max(...reps.map((r) => r.seconds));
  const cycles = sum(reps, (r) => r.cycles);
  await checkpoint("run_end", { cycles });
  await finish({
    cycles,
    failures: sum(reps, (r) => r.failures),
    seconds,
    connections_per_s: cycles / seconds,
    cycle: cycle.summary(),
    loadgen_cpu_s: sum(reps, (r) => r.cpuUs) / 1e6,
    errors: sum(reps, (r) => r.errors),
    error_samples: reps.flatMap((r) => r.errorSamples).slice(0, 10),
  });
}

// --- connect, subscribe, warm up -------------------------------------------------------------

await checkpoint("started");
const conn = await all("connect", "connected");
const connected = sum(conn, (r) => r.ok);
const connectFailed = sum(conn, (r) => r.failed);
log(`connected ${connected}, failed ${connectFailed}`);
await checkpoint("connected", {
  connected,
  failed: connectFailed,
  ms: Math.max(...conn.map((r) => r.ms)),
});

const store = spec.mode === "store";
let subscribed = connected;
let warmedByRoom = {};
let warmWaiting = 0;
if (!store) {
  const subs = await all("subscribe", "subscribed");
  subscribed = sum(subs, (r) => r.ok);
  log(`subscribed ${subscribed}, failed ${sum(subs, (r) => r.failed)}`);
  // One warm-up sender per room: its publisher, else its first client.
  const warmers = new Map();
  for (const c of spec.clients) {
    if (!warmers.has(c.room) || c.pub >= 0) {
      if (!(warmers.has(c.room) && warmers.get(c.room).pub >= 0)) warmers.set(c.room, c);
    }
  }
  const warm = await all("warm", "warmed", { warmers: [...warmers.values()].map((c) => c.id) });
  await all("stopWarm", "warmStopped");
  warmWaiting = sum(warm, (r) => r.waiting);
  for (const r of warm) {
    for (const [room, n] of Object.entries(r.byRoom)) warmedByRoom[room] = (warmedByRoom[room] || 0) + n;
  }
  log(`warmed ${sum(Object.values(warmedByRoom), (n) => n)}, not warmed ${warmWaiting}`);
  // Let the connect-time traffic (chatd's presence events) die down.
  let prev = -1;
  let still = 0;
  const t0 = Date.now();
  while (Date.now() - t0 < spec.quietMaxS * 1000) {
    const q = await all("quiet", "quiet");
    const other = sum(q, (r) => r.other);
    if (other === prev) {
      if (++still >= 2) break;
    } else still = 0;
    prev = other;
    await sleep(250);
  }
}
const warmed = sum(Object.values(warmedByRoom), (n) => n);
await checkpoint("ready", { subscribed, warmed, not_warmed: warmWaiting });

if (spec.mode === "idle") {
  await finish({ connected, connect_failed: connectFailed, subscribed, warmed, not_warmed: warmWaiting });
}

// --- the measured run ------------------------------------------------------------------------

const startAtUs = nowUs() + 200_000;
for (const w of workers) w.child.send({ cmd: "run", startAtUs });

function totals() {
  let received = 0;
  let expected = 0;
  let sent = 0;
  let pubsDone = true;
  for (const w of workers) {
    const p = w.last.progress;
    if (!p) return null;
    received += store && spec.protocol !== "chat" ? p.acked : p.received;
    if (!p.pubsDone) pubsDone = false;
    for (const [room, n] of Object.entries(p.sentByRoom)) {
      sent += n;
      expected += n * (warmedByRoom[room] || 0);
    }
  }
  return { received, expected, sent, pubsDone };
}

// Wait for the publishers, then for deliveries to drain.
await sleep(300);
let t = totals();
while (!t || !t.pubsDone) {
  await sleep(50);
  t = totals();
}
for (const w of workers) w.child.send({ cmd: "pubsStop" });
if (!store) {
  const doneAt = Date.now();
  let lastReceived = -1;
  let lastChange = Date.now();
  while (true) {
    t = totals();
    if (t.received >= t.expected) break;
    if (t.received !== lastReceived) {
      lastReceived = t.received;
      lastChange = Date.now();
    }
    if (Date.now() - lastChange > spec.drainIdleS * 1000) break;
    if (Date.now() - doneAt > spec.drainMaxS * 1000) break;
    await sleep(20);
  }
}
await checkpoint("run_end", { received: t.received, expected: store ? t.sent : t.expected });

// --- results ---------------------------------------------------------------------------------

const reps = await all("report", "report");
const latency = new Hist();
const storeAck = new Hist();
const history = new Hist();
for (const r of reps) {
  latency.merge(Hist.fromJSON(r.latency));
  storeAck.merge(Hist.fromJSON(r.storeAck));
  history.merge(Hist.fromJSON(r.history));
}
const pubs = reps.flatMap((r) => r.pubs);
const latencyByTag = {};
for (const r of reps) {
  for (const [tag, h] of Object.entries(r.latencyByTag || {})) {
    if (!latencyByTag[tag]) latencyByTag[tag] = new Hist();
    latencyByTag[tag].merge(Hist.fromJSON(h));
  }
}
// Per second of the run: deliveries and the worst latency (ms) across workers.
const timeline = [];
for (const r of reps) {
  r.timeline.forEach(([n, max], i) => {
    if (!timeline[i]) timeline[i] = [0, 0];
    timeline[i][0] += n;
    timeline[i][1] = Math.max(timeline[i][1], max / 1000);
  });
}
const sent = sum(pubs, (p) => p.sent);
const acked = sum(pubs, (p) => p.acked);
const received = sum(reps, (r) => r.received);
let expected = 0;
for (const p of pubs) expected += p.sent * (warmedByRoom[p.room] || 0);
const firstSend = Math.min(...pubs.filter((p) => p.firstSendUs).map((p) => p.firstSendUs));
const lastSend = Math.max(...pubs.map((p) => p.lastSendUs));
const lastRecv = Math.max(...reps.map((r) => r.lastRecvUs));
const windowS = ((store ? lastSend : Math.max(lastRecv, lastSend)) - firstSend) / 1e6;
const publishS = (lastSend - firstSend) / 1e6;

await finish({
  connected,
  connect_failed: connectFailed,
  subscribed,
  warmed,
  not_warmed: warmWaiting,
  publishers: pubs.length,
  sent,
  acked: store ? (spec.protocol === "chat" ? received : acked) : undefined,
  expected: store ? sent : expected,
  received: store ? (spec.protocol === "chat" ? received : acked) : received,
  lost: store ? sent - (spec.protocol === "chat" ? received : acked) : expected - received,
  reordered: sum(reps, (r) => r.reordered),
  closed_during_run: sum(reps, (r) => r.closedDuringRun),
  window_s: windowS,
  publish_s: publishS,
  messages_per_s: publishS > 0 ? sent / publishS : null,
  deliveries_per_s: windowS > 0 && !store ? received / windowS : null,
  latency: latency.summary(),
  store_ack: store ? storeAck.summary() : undefined,
  history: spec.history
    ? { ...history.summary(), reads: sum(reps, (r) => r.historyReads), errors: sum(reps, (r) => r.historyErrors) }
    : undefined,
  loadgen_cpu_s: sum(reps, (r) => r.cpuUs) / 1e6,
  errors: sum(reps, (r) => r.errors),
  error_samples: reps.flatMap((r) => r.errorSamples).slice(0, 10),
  timeline: Array.from(timeline, (x) => x || [0, 0]),
  latency_by_tag: Object.fromEntries(Object.entries(latencyByTag).map(([t, h]) => [t, h.summary()])),
  verify: spec.verify ? verifySummary(reps, pubs) : undefined,
});

// spec.verify: every receiver must have every message of every publisher of its room, in
// sequence, and the stored ids only growing. Missing = sent - received in sequence.
function verifySummary(reps, pubs) {
  const sentBy = new Map(); // room -> [[pub index, sent]]
  for (const c of spec.clients) {
    if (c.pub < 0) continue;
    const p = pubs.find((x) => x.pubIdx === c.pub);
    if (!sentBy.has(c.room)) sentBy.set(c.room, []);
    sentBy.get(c.room).push([c.pub, p ? p.sent : 0]);
  }
  const out = { receivers: 0, receivers_complete: 0, missing: 0, seq_gaps: 0, seq_behind: 0,
    id_not_increasing: 0, no_id: 0 };
  for (const r of reps) {
    const v = r.verify;
    out.seq_gaps += v.seqGaps;
    out.seq_behind += v.seqBehind;
    out.id_not_increasing += v.idNotIncreasing;
    out.no_id += v.noId;
    for (const [room, next] of v.receivers) {
      out.receivers++;
      let missing = 0;
      for (const [pub, sent] of sentBy.get(room) || []) missing += Math.max(0, sent - (next[pub] ?? 0));
      out.missing += missing;
      if (missing === 0) out.receivers_complete++;
    }
  }
  return out;
}
