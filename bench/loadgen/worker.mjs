// One load-generator process: holds a slice of the benchmark's client connections, and
// publishes, receives and times messages. Started and steered by driver.mjs over IPC.
//
// Clients speak STOMP over WebSocket (chatd's /ws or RabbitMQ Web-STOMP) or chatd's ticket
// protocol (/chat). Every timestamp is process.hrtime() (CLOCK_MONOTONIC), one clock for
// all processes on the machine, so latency = receive time here - send time in the
// publisher's process.

import http from "node:http";
import WebSocket from "ws";
import { Hist, nowUs } from "../lib/hist.mjs";
import { StompParser, commandOf, encode, parseHeaders } from "../lib/stomp.mjs";

const STOMP_PROTOCOLS = ["v12.stomp", "v11.stomp", "v10.stomp"];
const MARK = Buffer.from("bench|");
const MESSAGE_ID = Buffer.from('"id":'); // the first in a STOMP new_message body is the message's
const WARM = Buffer.from("warm|");
const CHAR_M = 0x4d; // 'M' of MESSAGE

let spec = null; // the run's spec (see driver.mjs)
let clients = []; // this worker's Client objects
let publishers = []; // the clients that publish
const hist = new Hist(); // delivery latency
const ackHist = new Hist(); // store mode: send -> RECEIPT (stored)
const historyHist = new Hist();
const tagHists = new Map(); // delivery latency per client tag (the cluster scenario: "far", "near")
const churnHist = new Hist();
const stats = {
  received: 0, // bench messages delivered to this worker's clients
  other: 0, // frames/messages that are not ours (presence events and the like)
  reordered: 0,
  errors: 0, // ERROR frames, unexpected closes, failed connects
  errorSamples: [],
  closedDuringRun: 0,
  firstRecvUs: 0,
  lastRecvUs: 0,
  historyReads: 0,
  historyErrors: 0,
  churnCycles: 0,
  churnFailures: 0,
};
// spec.verify: what the receivers found wrong (see Client.verify).
const verified = { idNotIncreasing: 0, noId: 0, seqGaps: 0, seqBehind: 0 };
let running = false; // between "run" and the end of the measured window
let runStartUs = 0;
let measureFromUs = 0; // sends before this are not timed (a paced run's warm-up)
const TIMELINE_MAX = 3600;
const timelineCount = new Float64Array(TIMELINE_MAX);
const timelineMax = new Float64Array(TIMELINE_MAX);
let recvUs = 0; // receive time of the WebSocket message being parsed

const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

function send(msg) {
  process.send(msg);
}

function noteError(what) {
  stats.errors++;
  if (stats.errorSamples.length < 10) stats.errorSamples.push(String(what).slice(0, 300));
}

function readInt(buf, pos, end) {
  // Digits at buf[pos..] up to a non-digit; returns value and sets readInt.next.
  let v = 0;
  let i = pos;
  while (i < end) {
    const c = buf[i];
    if (c < 0x30 || c > 0x39) break;
    v = v * 10 + (c - 0x30);
    i++;
  }
  readInt.next = i + 1; // skip the separator
  return v;
}

function httpRequest(method, path, headers, body) {
  const url = new URL(path, spec.http);
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method, headers, agent, timeout: 30000 },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("HTTP timeout")));
    if (body) req.end(body);
    else req.end();
  });
}

// --- clients ---------------------------------------------------------------------------

class Client {
  constructor(def) {
    this.id = def.id; // global client index
    this.user = def.user;
    this.room = def.room; // room index into spec.rooms
    this.pubIdx = def.pub; // publisher index, or -1
    this.url = def.url; // its own server (the cluster scenario: one node of several), or spec.url
    this.tagHist = null;
    if (def.tag) {
      if (!tagHists.has(def.tag)) tagHists.set(def.tag, new Hist());
      this.tagHist = tagHists.get(def.tag);
    }
    // spec.verify: the stored id of the last message (ids must only grow) and, per
    // publisher, the next sequence number expected (a gap is a lost message).
    this.lastId = -1;
    this.nextSeq = spec.verify ? new Map() : null;
    this.ws = null;
    this.parser = null;
    this.open = false;
    this.subscribed = false;
    this.warmed = false;
    this.lastSeq = -1;
    this.receipts = new Map(); // receipt-id -> callback
    this.hbOut = 0; // ms between our heart-beats, 0 = none
    this.lastSend = 0;
    this.closing = false;
    // publisher state
    this.sent = 0;
    this.acked = 0;
    this.sendUs = null; // store mode: send time per outstanding receipt
    this.pubDone = false;
    this.firstSendUs = 0;
    this.lastSendUs = 0;
  }

  get roomDef() {
    return spec.rooms[this.room];
  }

  token() {
    return spec.tokens[String(this.user)];
  }

  wsSend(data) {
    this.ws.send(data);
    this.lastSend = Date.now();
  }

  // Connect: STOMP CONNECT/CONNECTED, or a /chat ticket and the WebSocket.
  async connect() {
    if (spec.protocol === "chat") return this.connectChat();
    return this.connectStomp();
  }

  connectStomp() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url || spec.url, STOMP_PROTOCOLS, {
        perMessageDeflate: false,
        skipUTF8Validation: true,
        handshakeTimeout: 30000,
      });
      this.ws = ws;
      let done = false;
      const fail = (err) => {
        if (!done) {
          done = true;
          reject(err);
        }
      };
      this.onConnected = (headers) => {
        const hb = (headers["heart-beat"] || "0,0").split(",").map(Number);
        this.hbOut = hb[1] || 0; // the server wants a beat every hb[1] ms
        this.open = true;
        done = true;
        resolve();
      };
      this.parser = new StompParser((buf, s, ce, he, bs, be) =>
        this.onFrame(buf, s, ce, he, bs, be),
      );
      ws.on("open", () => {
        const passcode = spec.passcode ?? this.token();
        const login = spec.login ?? `user${this.user}`;
        this.wsSend(
          encode("CONNECT", {
            "accept-version": "1.2,1.1,1.0",
            host: spec.vhost,
            login,
            passcode,
            "heart-beat": spec.heartbeat,
          }),
        );
      });
      ws.on("message", (data) => {
        recvUs = nowUs();
        try {
          this.parser.feed(data);
        } catch (err) {
          noteError(`client ${this.id}: ${err.message}`);
        }
      });
      ws.on("error", (err) => fail(err));
      ws.on("unexpected-response", (_req, res) => fail(new Error(`HTTP ${res.statusCode}`)));
      ws.on("close", (code, reason) => this.onClose(code, reason, fail));
    });
  }

  async connectChat() {
    const res = await httpRequest("POST", "/chat/ticket", { accessToken: this.token() });
    if (res.status !== 200) throw new Error(`ticket: HTTP ${res.status} ${res.body}`);
    const ticket = JSON.parse(res.body).ticket;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${spec.chatUrl}?ticket=${encodeURIComponent(ticket)}`, {
        perMessageDeflate: false,
        skipUTF8Validation: true,
        handshakeTimeout: 30000,
      });
      this.ws = ws;
      let done = false;
      const fail = (err) => {
        if (!done) {
          done = true;
          reject(err);
        }
      };
      ws.on("open", () => {
        this.open = true;
        this.subscribed = true; // /chat delivers the user's rooms without asking
        done = true;
        resolve();
      });
      ws.on("message", (data) => {
        recvUs = nowUs();
        this.onBody(data, 0, data.length);
      });
      ws.on("error", (err) => fail(err));
      ws.on("unexpected-response", (_req, res2) => fail(new Error(`HTTP ${res2.statusCode}`)));
      ws.on("close", (code, reason) => this.onClose(code, reason, fail));
    });
  }

  onClose(code, reason, fail) {
    const was = this.open;
    this.open = false;
    fail(new Error(`closed ${code} ${reason}`));
    if (was && !this.closing) {
      noteError(`client ${this.id} closed by server: ${code} ${reason}`);
      if (running) stats.closedDuringRun++;
    }
  }

  subscribe() {
    if (spec.protocol === "chat") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const rid = `sub-${this.id}`;
      const timer = setTimeout(() => {
        this.receipts.delete(rid);
        reject(new Error("no RECEIPT for SUBSCRIBE"));
      }, 30000);
      this.receipts.set(rid, () => {
        clearTimeout(timer);
        this.subscribed = true;
        resolve();
      });
      this.wsSend(
        encode("SUBSCRIBE", {
          id: "0",
          destination: this.roomDef.dest,
          ack: "auto",
          receipt: rid,
        }),
      );
    });
  }

  onFrame(buf, s, cmdEnd, headerEnd, bodyStart, bodyEnd) {
    if (buf[s] === CHAR_M) {
      this.onBody(buf, bodyStart, bodyEnd);
      return;
    }
    const command = commandOf(buf, s, cmdEnd);
    const { headers } = parseHeaders(buf, s, headerEnd);
    if (command === "RECEIPT") {
      const id = headers["receipt-id"];
      const cb = this.receipts.get(id);
      if (cb !== undefined) {
        this.receipts.delete(id);
        cb();
      } else if (this.sendUs !== null) {
        this.onStoreReceipt(id);
      }
    } else if (command === "CONNECTED") {
      this.onConnected?.(headers);
    } else if (command === "ERROR") {
      noteError(
        `client ${this.id}: ERROR ${headers.message || ""} ${buf.toString("utf8", bodyStart, bodyEnd)}`,
      );
    }
  }

  onBody(buf, start, end) {
    const m = buf.indexOf(MARK, start);
    if (m >= 0 && m < end) {
      let p = m + MARK.length;
      const pub = readInt(buf, p, end);
      p = readInt.next;
      const seq = readInt(buf, p, end);
      p = readInt.next;
      const ts = readInt(buf, p, end);
      const lat = recvUs - ts;
      // Messages sent during a paced run's warm-up (spec.warmupS) are checked and counted
      // but not timed: the first seconds measure the load generator's own JIT warming up.
      const timed = ts >= measureFromUs;
      if (timed) {
        hist.record(lat);
        if (this.tagHist !== null) this.tagHist.record(lat);
      }
      if (this.nextSeq !== null) this.verify(buf, start, m, pub, seq);
      stats.received++;
      if (running && timed) {
        // Per-second timeline of the run (deliveries, worst latency), to find stalls.
        const sec = Math.floor((recvUs - measureFromUs) / 1e6);
        if (sec >= 0 && sec < TIMELINE_MAX) {
          timelineCount[sec]++;
          if (lat > timelineMax[sec]) timelineMax[sec] = lat;
        }
      }
      if (stats.firstRecvUs === 0) stats.firstRecvUs = recvUs;
      stats.lastRecvUs = recvUs;
      if (seq <= this.lastSeq) stats.reordered++;
      this.lastSeq = seq;
      if (pub === this.pubIdx) {
        // Our own message back: in store mode over /chat it is the only acknowledgement
        // (stored, then published); over STOMP store mode acknowledges with RECEIPTs.
        if (spec.mode !== "store") this.onOwnDelivery();
        else if (spec.protocol === "chat") {
          ackHist.record(recvUs - ts);
          this.onOwnDelivery();
        }
      }
      return;
    }
    const w = buf.indexOf(WARM, start);
    if (w >= 0 && w < end) {
      this.warmed = true;
      return;
    }
    stats.other++;
  }

  verify(buf, start, mark, pub, seq) {
    const at = buf.indexOf(MESSAGE_ID, start);
    if (at >= 0 && at < mark) {
      const id = readInt(buf, at + MESSAGE_ID.length, mark);
      if (id <= this.lastId) verified.idNotIncreasing++;
      this.lastId = id;
    } else verified.noId++;
    const want = this.nextSeq.get(pub) ?? 0;
    if (seq > want) verified.seqGaps += seq - want;
    else if (seq < want) verified.seqBehind++;
    if (seq >= want) this.nextSeq.set(pub, seq + 1);
  }

  // --- publishing ----------------------------------------------------------------------

  content(seq) {
    const head = `bench|${this.pubIdx}|${seq}|${Math.round(nowUs())}|`;
    return head + spec.padding.slice(0, Math.max(0, spec.size - head.length));
  }

  publishOne() {
    const seq = this.sent++;
    const content = this.content(seq);
    const t = nowUs();
    if (this.firstSendUs === 0) this.firstSendUs = t;
    this.lastSendUs = t;
    const rd = this.roomDef;
    if (spec.protocol === "chat") {
      this.wsSend(`{"roomId":${rd.id},"content":"${content}"}`);
      return;
    }
    let frame = `SEND\ndestination:${rd.pubDest || rd.dest}\n`;
    if (spec.mode === "store") {
      frame += `receipt:${seq}\n`;
      this.sendUs.set(String(seq), t);
    }
    if (spec.persistent) frame += "persistent:true\n";
    this.wsSend(`${frame}content-type:application/json\n\n{"content":"${content}"}\0`);
  }

  warm() {
    const rd = this.roomDef;
    const content = `warm|${this.room}|`;
    if (spec.protocol === "chat") {
      this.wsSend(`{"roomId":${rd.id},"content":"${content}"}`);
    } else {
      this.wsSend(encode("SEND", { destination: rd.dest, "content-type": "application/json" }, `{"content":"${content}"}`));
    }
  }

  onOwnDelivery() {
    this.acked++;
    if (spec.rate === 0) this.fill();
  }

  onStoreReceipt(id) {
    const t0 = this.sendUs.get(id);
    if (t0 === undefined) return;
    this.sendUs.delete(id);
    ackHist.record(recvUs - t0);
    this.acked++;
    if (spec.rate === 0) this.fill();
  }

  // Flat out: keep `window` messages in flight (sent, not yet seen back / receipted).
  fill() {
    if (!running || this.pubDone || !this.open) return;
    while (this.sent - this.acked < spec.window) {
      if (this.limitReached()) {
        this.pubDone = true;
        return;
      }
      this.publishOne();
    }
  }

  limitReached() {
    if (spec.messages > 0 && this.sent >= spec.messages) return true;
    if (runDeadlineUs > 0 && nowUs() >= runDeadlineUs) return true;
    return false;
  }
}

// --- phases ----------------------------------------------------------------------------

async function forEachLimited(items, limit, fn) {
  let next = 0;
  let ok = 0;
  let failed = 0;
  async function lane() {
    while (next < items.length) {
      const item = items[next++];
      try {
        await fn(item);
        ok++;
      } catch (err) {
        failed++;
        noteError(`client ${item.id}: ${err.message}`);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return { ok, failed };
}

async function phaseConnect() {
  const t0 = nowUs();
  const r = await forEachLimited(clients, spec.connectConcurrency, (c) => c.connect());
  send({ type: "connected", ...r, ms: (nowUs() - t0) / 1000 });
}

async function phaseSubscribe() {
  const t0 = nowUs();
  const r = await forEachLimited(
    clients.filter((c) => c.open),
    spec.connectConcurrency,
    (c) => c.subscribe(),
  );
  send({ type: "subscribed", ...r, ms: (nowUs() - t0) / 1000 });
}

let warmTimer = null;
function phaseWarm(warmers) {
  // Warmers (one client per room, chosen by the driver) send a warm-up message until
  // every client of this worker has seen its room's; the driver stops it.
  const mine = clients.filter((c) => warmers.includes(c.id) && c.open);
  const tick = () => {
    for (const c of mine) c.warm();
  };
  tick();
  warmTimer = setInterval(tick, 1000);
  const t0 = nowUs();
  const check = setInterval(() => {
    const waiting = clients.filter((c) => c.subscribed && c.open && !c.warmed).length;
    if (waiting === 0 || nowUs() - t0 > spec.warmTimeoutS * 1e6) {
      clearInterval(check);
      const byRoom = {};
      for (const c of clients) {
        if (c.warmed && c.open) byRoom[c.room] = (byRoom[c.room] || 0) + 1;
      }
      send({ type: "warmed", waiting, byRoom, other: stats.other });
    }
  }, 50);
}

function stopWarm() {
  if (warmTimer) clearInterval(warmTimer);
  warmTimer = null;
}

let runDeadlineUs = 0;
let tickTimer = null;
let progressTimer = null;
let historyStop = false;

function progress() {
  const sentByRoom = {};
  let pubsDone = true;
  for (const p of publishers) {
    sentByRoom[p.room] = (sentByRoom[p.room] || 0) + p.sent;
    if (!p.pubDone) pubsDone = false;
  }
  let acked = 0;
  for (const p of publishers) acked += p.acked;
  return { type: "progress", received: stats.received, acked, sentByRoom, pubsDone, other: stats.other };
}

function phaseRun(startAtUs) {
  stats.received = 0;
  stats.firstRecvUs = 0;
  stats.lastRecvUs = 0;
  const cpu0 = process.cpuUsage();
  const wait = Math.max(0, (startAtUs - nowUs()) / 1000);
  runStartUs = startAtUs;
  running = true;
  setTimeout(() => {
    const warmupUs = spec.rate > 0 ? (spec.warmupS || 0) * 1e6 : 0;
    measureFromUs = nowUs() + warmupUs;
    runDeadlineUs = spec.durationS > 0 ? nowUs() + warmupUs + spec.durationS * 1e6 : 0;
    for (const p of publishers) {
      // Paced publishers start spread over one interval (golden-ratio offsets), not all
      // on the same tick: 200 rooms publishing in lockstep would measure our bursts.
      const phase = spec.rate > 0 ? ((p.pubIdx * 0.6180339887) % 1) * (1e6 / spec.rate) : 0;
      p.startUs = nowUs() + phase;
      if (spec.mode === "store" && spec.protocol !== "chat") p.sendUs = new Map();
    }
    if (spec.rate === 0) {
      for (const p of publishers) p.fill();
    } else {
      const tick = () => {
        const now = nowUs();
        let all = true;
        for (const p of publishers) {
          if (p.pubDone) continue;
          if (!p.open) {
            p.pubDone = true;
            continue;
          }
          const due = Math.floor(((now - p.startUs) * spec.rate) / 1e6) + 1;
          while (p.sent < due) {
            if (p.limitReached()) {
              p.pubDone = true;
              break;
            }
            p.publishOne();
          }
          if (!p.pubDone && p.limitReached()) p.pubDone = true;
          if (!p.pubDone) all = false;
        }
        if (!all) tickTimer = setTimeout(tick, 1);
      };
      tick();
    }
    // A publisher whose connection died, or a flat-out one whose window never drains,
    // is done at the deadline.
    const watchdog = setInterval(() => {
      for (const p of publishers) {
        if (!p.open || p.limitReached()) p.pubDone = true;
      }
      if (publishers.every((p) => p.pubDone)) clearInterval(watchdog);
    }, 50);
    if (spec.history && spec.history.worker === spec.workerIndex) runHistory();
  }, wait);
  progressTimer = setInterval(() => send(progress()), 100);
  return cpu0;
}

async function runHistory() {
  const h = spec.history;
  const path = `/chat/rooms/${h.roomId}/messages?limit=${h.limit}`;
  const headers = { accessToken: h.token };
  const intervalUs = 1e6 / h.rate;
  let nextUs = nowUs();
  while (!historyStop) {
    const t0 = nowUs();
    try {
      const res = await httpRequest("GET", path, headers);
      if (res.status === 200) {
        historyHist.record(nowUs() - t0);
        stats.historyReads++;
      } else {
        stats.historyErrors++;
        noteError(`history: HTTP ${res.status}`);
      }
    } catch (err) {
      stats.historyErrors++;
      noteError(`history: ${err.message}`);
    }
    nextUs += intervalUs;
    const waitMs = (nextUs - nowUs()) / 1000;
    if (waitMs > 0) await new Promise((r) => setTimeout(r, waitMs));
    else nextUs = nowUs(); // fell behind: no catch-up burst
  }
}

// --- churn -----------------------------------------------------------------------------

function churnCycleStomp(c) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(spec.url, STOMP_PROTOCOLS, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: 30000,
    });
    let step = "open";
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`churn timed out at ${step}`));
    }, 30000);
    const parser = new StompParser((buf, s, ce, he) => {
      const cmd = commandOf(buf, s, ce);
      if (cmd === "CONNECTED" && step === "connect") {
        step = "subscribe";
        ws.send(encode("SUBSCRIBE", { id: "0", destination: c.roomDef.dest, receipt: "s" }));
      } else if (cmd === "RECEIPT" && step === "subscribe") {
        step = "close";
        ws.send(encode("DISCONNECT", {}));
        ws.close(1000);
      } else if (cmd === "ERROR") {
        const { headers } = parseHeaders(buf, s, he);
        step = `error ${headers.message}`;
      }
    });
    ws.on("open", () => {
      step = "connect";
      ws.send(
        encode("CONNECT", {
          "accept-version": "1.2,1.1,1.0",
          host: spec.vhost,
          login: spec.login ?? `user${c.user}`,
          passcode: spec.passcode ?? c.token(),
          "heart-beat": "0,0",
        }),
      );
    });
    ws.on("message", (data) => parser.feed(data));
    ws.on("error", () => {});
    ws.on("close", () => {
      clearTimeout(timer);
      if (step === "close") resolve();
      else reject(new Error(`churn closed at ${step}`));
    });
  });
}

async function churnCycleChat(c) {
  const res = await httpRequest("POST", "/chat/ticket", { accessToken: c.token() });
  if (res.status !== 200) throw new Error(`ticket: HTTP ${res.status}`);
  const ticket = JSON.parse(res.body).ticket;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${spec.chatUrl}?ticket=${encodeURIComponent(ticket)}`, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: 30000,
    });
    let opened = false;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error("churn timed out"));
    }, 30000);
    ws.on("open", () => {
      opened = true;
      ws.close(1000);
    });
    ws.on("error", () => {});
    ws.on("close", (code) => {
      clearTimeout(timer);
      if (opened && code === 1000) resolve();
      else reject(new Error(`churn closed with ${code}`));
    });
  });
}

async function phaseChurn() {
  const cpu0 = process.cpuUsage();
  const deadline = nowUs() + spec.durationS * 1e6;
  const cycle = spec.protocol === "chat" ? churnCycleChat : churnCycleStomp;
  const t0 = nowUs();
  await Promise.all(
    clients.map(async (c) => {
      while (nowUs() < deadline) {
        const t = nowUs();
        try {
          await cycle(c);
          churnHist.record(nowUs() - t);
          stats.churnCycles++;
        } catch (err) {
          stats.churnFailures++;
          noteError(err.message);
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    }),
  );
  const cpu = process.cpuUsage(cpu0);
  send({
    type: "churned",
    seconds: (nowUs() - t0) / 1e6,
    cycles: stats.churnCycles,
    failures: stats.churnFailures,
    cycle: churnHist.toJSON(),
    cpuUs: cpu.user + cpu.system,
    errors: stats.errors,
    errorSamples: stats.errorSamples,
  });
}

// --- the worker's end of the IPC ---------------------------------------------------------

let runCpu0 = null;

process.on("message", async (msg) => {
  try {
    switch (msg.cmd) {
      case "init":
        spec = msg.spec;
        spec.padding = "x".repeat(spec.size);
        clients = msg.clients.map((d) => new Client(d));
        publishers = clients.filter((c) => c.pubIdx >= 0);
        setInterval(heartBeats, 500).unref();
        send({ type: "ready" });
        break;
      case "connect":
        await phaseConnect();
        break;
      case "subscribe":
        await phaseSubscribe();
        break;
      case "warm":
        phaseWarm(msg.warmers);
        break;
      case "stopWarm":
        stopWarm();
        send({ type: "warmStopped", other: stats.other });
        break;
      case "quiet":
        send({ type: "quiet", other: stats.other });
        break;
      case "run":
        runCpu0 = phaseRun(msg.startAtUs);
        break;
      case "pubsStop":
        // The driver saw every publisher done: stop the history reader.
        historyStop = true;
        break;
      case "report": {
        running = false;
        historyStop = true;
        if (tickTimer) clearTimeout(tickTimer);
        if (progressTimer) clearInterval(progressTimer);
        const cpu = process.cpuUsage(runCpu0 || undefined);
        const pubs = publishers.map((p) => ({
          room: p.room,
          pubIdx: p.pubIdx,
          sent: p.sent,
          acked: p.acked,
          firstSendUs: p.firstSendUs,
          lastSendUs: p.lastSendUs,
        }));
        send({
          type: "report",
          received: stats.received,
          reordered: stats.reordered,
          firstRecvUs: stats.firstRecvUs,
          lastRecvUs: stats.lastRecvUs,
          closedDuringRun: stats.closedDuringRun,
          errors: stats.errors,
          errorSamples: stats.errorSamples,
          latency: hist.toJSON(),
          storeAck: ackHist.toJSON(),
          history: historyHist.toJSON(),
          historyReads: stats.historyReads,
          historyErrors: stats.historyErrors,
          pubs,
          cpuUs: cpu.user + cpu.system,
          timeline: timelineOf(),
          latencyByTag: Object.fromEntries([...tagHists].map(([t, h]) => [t, h.toJSON()])),
          verify: spec.verify ? verifyReport() : undefined,
        });
        break;
      }
      case "churn":
        await phaseChurn();
        break;
      case "close":
        for (const c of clients) {
          c.closing = true;
          if (c.ws) c.ws.terminate();
        }
        setTimeout(() => process.exit(0), 50);
        break;
      default:
        noteError(`unknown command ${msg.cmd}`);
    }
  } catch (err) {
    send({ type: "fatal", error: String(err && err.stack ? err.stack : err) });
  }
});

// Per receiver (warmed, so proven subscribed): its room and how many of each publisher's
// messages it got in sequence; the driver compares them with what each one sent.
function verifyReport() {
  const receivers = [];
  for (const c of clients) {
    if (c.warmed && c.open) receivers.push([c.room, Object.fromEntries(c.nextSeq)]);
  }
  return { ...verified, receivers };
}

function timelineOf() {
  let last = -1;
  for (let i = 0; i < TIMELINE_MAX; i++) if (timelineCount[i]) last = i;
  const out = [];
  for (let i = 0; i <= last; i++) out.push([timelineCount[i], Math.round(timelineMax[i])]);
  return out;
}

function heartBeats() {
  const now = Date.now();
  for (const c of clients) {
    if (c.open && c.hbOut > 0 && now - c.lastSend >= c.hbOut / 2) c.wsSend("\n");
  }
}

process.on("disconnect", () => process.exit(0));
