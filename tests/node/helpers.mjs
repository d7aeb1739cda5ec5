// Shared helpers for the stompjs suite. Everything comes from the environment that
// tests/test_stompjs.py sets (its docstring is the contract); nothing here sleeps to
// synchronise: every wait is on a real event (a frame, a receipt, a socket event), with a
// deadline only so that a failure names what was missing instead of a bare test timeout.
//
// User ids: each test file owns a block of ids from CHATD_TOKENS, so files can run in
// parallel without seeing each other's presence events or messages:
//   guide-flow 1-9 · publish 10-19 · events 20-29 · rooms 30-39 · errors 40-49
//   heartbeat 50-59 · reconnect 60-69 · endpoints 70-79 · ticket-bridge 80-89

import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

// Node 20 has no global WebSocket; stompjs uses the global one for `brokerURL`.
Object.assign(globalThis, { WebSocket });

export { Client, WebSocket };

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run this suite through tests/test_stompjs.py`);
  return value;
}

export const env = {
  http: need('CHATD_HTTP'),
  stompWs: need('CHATD_STOMP_WS'),
  wsOnHttp: need('CHATD_WS_ON_HTTP'),
  chatWs: need('CHATD_CHAT_WS'),
  publicStompUrl: need('CHATD_STOMP_PUBLIC_URL'),
  allowedOrigin: need('CHATD_ALLOWED_ORIGIN'),
  adminToken: need('CHATD_ADMIN_TOKEN'),
  typingTimeoutMs: Number(need('CHATD_TYPING_TIMEOUT_MS')),
};

const tokens = JSON.parse(need('CHATD_TOKENS'));

export function token(userId) {
  const t = tokens[String(userId)];
  if (!t) throw new Error(`no token for user ${userId} in CHATD_TOKENS`);
  return t;
}

export const WAIT_MS = 5000;
export const TEST = { timeout: 10000 };

export const roomDest = (id) => `/exchange/chat.direct/room.${id}`;
export const userDest = (id) => `/exchange/chat.direct/user.${id}`;

let counter = 0;
export const unique = (prefix) => `${prefix}-${process.pid}-${++counter}-${Date.now()}`;

// --- HTTP --------------------------------------------------------------------------------

/** fetch against CHATD_HTTP; returns {status, headers, body (parsed JSON or text)}. */
export async function http(path, { method = 'POST', jwt, json, headers = {} } = {}) {
  const h = { ...headers };
  if (jwt) h.Authorization = 'Bearer ' + jwt;
  if (json !== undefined) h['Content-Type'] = 'application/json';
  const res = await fetch(env.http + path, {
    method,
    headers: h,
    body: json === undefined ? undefined : JSON.stringify(json),
  });
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON; the assertion that follows will say so
  }
  return { status: res.status, headers: res.headers, body };
}

/** The guide's `POST /chat-ws/<name>` call with the user's JWT; asserts a 2xx JSON reply. */
export async function chatWs(name, jwt, json) {
  const res = await http(`/chat-ws/${name}`, { jwt, json });
  if (res.status < 200 || res.status >= 300) {
    throw new Error(`/chat-ws/${name} -> ${res.status} ${JSON.stringify(res.body)}`);
  }
  return res.body;
}

export async function createRoom(name, { isPublic = false, members = [] } = {}) {
  const res = await http('/admin/rooms', {
    jwt: env.adminToken,
    json: { name, public: isPublic, members },
  });
  if (res.status !== 201) throw new Error(`POST /admin/rooms -> ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

export async function sendMessage(jwt, roomId, content) {
  const res = await chatWs('send-message', jwt, {
    roomId,
    message: { message_type: 'text', content },
  });
  return res;
}

// --- waiting -----------------------------------------------------------------------------

/**
 * A buffer of received items. `waitFor(pred)` resolves with the first matching item,
 * already received or still to come; `waitNext(pred)` only considers items that arrive
 * after the call. Deadlines use unref'd timers so they never keep a finished file alive.
 */
export class Inbox {
  constructor(label) {
    this.label = label;
    this.items = [];
    this.waiters = new Set();
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) {
      if (w.pred(item)) w.settle(item);
    }
  }

  find(pred) {
    return this.items.find(pred);
  }

  filter(pred) {
    return this.items.filter(pred);
  }

  waitFor(pred, what = 'matching item', ms = WAIT_MS) {
    const found = this.items.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    return this.waitNext(pred, what, ms);
  }

  waitNext(pred, what = 'matching item', ms = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const w = { pred };
      const timer = setTimeout(() => {
        this.waiters.delete(w);
        const seen = this.items.map((i) => describe(i)).join('\n  ');
        reject(new Error(`${this.label}: no ${what} within ${ms} ms; received:\n  ${seen || '(nothing)'}`));
      }, ms);
      timer.unref();
      w.settle = (item) => {
        this.waiters.delete(w);
        clearTimeout(timer);
        resolve(item);
      };
      this.waiters.add(w);
    });
  }
}

function describe(item) {
  if (item && item.command) return `${item.command} ${JSON.stringify(item.headers)} ${item.body}`;
  return typeof item === 'string' ? item : JSON.stringify(item);
}

/** A message inbox item: {command, headers, body, json, message (the stompjs IMessage)}. */
function stompItem(message) {
  let json;
  try {
    json = JSON.parse(message.body);
  } catch {
    json = undefined;
  }
  return { command: message.command, headers: message.headers, body: message.body, json, message };
}

/** Wait for `event` on an EventEmitter (ws) or reject on `error`, with a deadline. */
export function once(emitter, event, what = event, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no ${what} within ${ms} ms`));
    }, ms);
    timer.unref();
    const onEvent = (...args) => {
      cleanup();
      resolve(args);
    };
    const onError = (err) => {
      cleanup();
      reject(err);
    };
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off(event, onEvent);
      if (event !== 'error') emitter.off('error', onError);
    };
    emitter.on(event, onEvent);
    if (event !== 'error') emitter.on('error', onError);
  });
}

// --- stompjs -----------------------------------------------------------------------------

/**
 * A stompjs Client in the guide's shape, instrumented: every callback feeds an Inbox.
 * `t` (the node:test context) gets an after-hook that tears the client down.
 *
 * Returns {client, connects, errors, closes, debug, messages}:
 *   connects — CONNECTED frames (onConnect), errors — ERROR frames (onStompError),
 *   closes — WebSocket close events, debug — stompjs debug lines,
 *   messages — every MESSAGE from subscriptions made with `subscribe()` below.
 */
export function stomp(t, { url = env.stompWs, login, passcode, host = '/', onConnect, ...options } = {}) {
  const h = {
    connects: new Inbox('CONNECTED frames'),
    errors: new Inbox('ERROR frames'),
    closes: new Inbox('WebSocket closes'),
    debug: new Inbox('stompjs debug'),
    messages: new Inbox('MESSAGE frames'),
  };
  const client = new Client({
    brokerURL: url,
    connectHeaders: { login, passcode, host },
    debug: (line) => h.debug.push(line),
    reconnectDelay: 0,
    heartbeatIncoming: 4000,
    heartbeatOutgoing: 4000,
    ...options,
  });
  client.onConnect = (frame) => {
    h.connects.push(frame);
    if (onConnect) onConnect(frame, client);
  };
  client.onStompError = (frame) => h.errors.push(frame);
  client.onWebSocketClose = (evt) => h.closes.push({ code: evt.code, reason: evt.reason });
  client.onWebSocketError = () => {};
  h.client = client;
  t.after(() => client.deactivate({ force: true }));
  return h;
}

/** activate() and wait for the next CONNECTED (or fail with the ERROR frame). */
export async function activate(h) {
  const connected = h.connects.waitNext(() => true, 'CONNECTED');
  const refused = h.errors.waitNext(() => true, 'ERROR');
  h.client.activate();
  return await firstOf([
    connected,
    refused.then((f) => {
      throw new Error(`ERROR instead of CONNECTED: ${f.headers.message} ${f.body}`);
    }),
  ]);
}

export function firstOf(promises) {
  // Promise.race, but a loser's later rejection is not an unhandled rejection.
  for (const p of promises) p.catch(() => {});
  return Promise.race(promises);
}

/** Connect as `userId` with a passcode from POST /chat-ws/connect (the guide's flow). */
export async function connectUser(t, userId, options = {}) {
  const info = await chatWs('connect', token(userId));
  const h = stomp(t, {
    login: info.connectionInfo.username,
    passcode: info.connectionInfo.password,
    host: info.connectionInfo.vhost,
    ...options,
  });
  h.info = info;
  await activate(h);
  return h;
}

/** Wait for a RECEIPT with this id, or fail on the ERROR frame that comes instead. */
export function receipt(h, receiptId, what = `RECEIPT ${receiptId}`) {
  const got = new Promise((resolve) => h.client.watchForReceipt(receiptId, resolve));
  // Every ERROR ends the connection, so after one no receipt can come.
  const failed = h.errors.waitNext(() => true, what, 60000).then((f) => {
    throw new Error(`ERROR instead of ${what}: ${f.headers.message} ${f.body}`);
  });
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
    timer.unref();
  });
  return firstOf([got, failed, late]).finally(() => clearTimeout(timer));
}

/**
 * client.subscribe(dest, cb) as the guide does, with a `receipt` header so the test knows
 * the server has the subscription before it makes anything happen. Messages go to
 * `inbox` (default h.messages) as {headers, body, json}.
 */
export async function subscribe(h, destination, inbox = h.messages, headers = {}) {
  const id = unique('sub');
  const done = receipt(h, id, `RECEIPT for SUBSCRIBE ${destination}`);
  const sub = h.client.subscribe(destination, (m) => inbox.push(stompItem(m)), { ...headers, receipt: id });
  await done;
  return sub;
}

/** client.publish with a receipt; resolves when the RECEIPT arrives. */
export async function publish(h, destination, body, headers = {}) {
  const id = unique('pub');
  const done = receipt(h, id, `RECEIPT for SEND ${destination}`);
  h.client.publish({ destination, body: JSON.stringify(body), headers: { ...headers, receipt: id } });
  return await done;
}

export const isEvent = (type, extra = () => true) => (m) => m.json && m.json.type === type && extra(m.json);
export const newMessage = (content) => isEvent('new_message', (j) => j.message && j.message.content === content);

// --- ticket protocol (/chat) ----------------------------------------------------------------

/** POST /chat/ticket (header accessToken), then open /chat?ticket=…; returns {ws, inbox}. */
export async function openChat(t, userId) {
  const res = await http('/chat/ticket', { headers: { accessToken: token(userId) } });
  if (res.status !== 200) throw new Error(`/chat/ticket -> ${res.status} ${JSON.stringify(res.body)}`);
  const ws = new WebSocket(env.chatWs + '?ticket=' + encodeURIComponent(res.body.ticket));
  const inbox = new Inbox(`/chat messages of user ${userId}`);
  ws.on('message', (data) => {
    const text = data.toString('utf8');
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    inbox.push(json);
  });
  t.after(() => ws.terminate());
  await once(ws, 'open', '/chat open');
  return { ws, inbox, ticket: res.body };
}

export const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
