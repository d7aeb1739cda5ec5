// The guides' browser code in real Chromium, in pages served from an allowed origin
// (tests/browser/pages/, copied from the guides, only URLs and credentials changed), and the
// answers a page of an origin not allowed gets, as the README documents them.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { TEST, env, launch, openPage, post, token, until } from './helpers.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

test('the ticket guide ChatClient and the STOMP guide Client talk to each other', TEST, async () => {
  const connect = await post('/chat-ws/connect', token(123));
  assert.equal(connect.status, 200);
  const ci = connect.body.connectionInfo;
  assert.equal(ci.stompUrl, env.stompWs);
  const q = new URLSearchParams({
    stompUrl: ci.stompUrl, login: ci.username, passcode: ci.password, http: env.http,
    token: token(123),
  });
  const stomp = await openPage(browser, `${env.origin}/pages/stomp-guide.html?${q}`);
  await until('the STOMP guide client to connect',
    () => stomp.consoleText.some((t) => t.startsWith('STOMP 연결 성공:')));
  // Its own message, posted over HTTP by the guide's sendMessage, coming back on its room
  // subscription proves the subscription is in place before the other page speaks.
  await stomp.evaluate(() => window.sendMessage(1, 'STOMP page is listening'));
  const own = (content) => () => stomp.evaluate((c) => window.chatMessages
    .find((d) => d.type === 'new_message' && d.message.content === c) ?? null, content);
  const first = await until('the STOMP page to see its own message', own('STOMP page is listening'));
  assert.equal(first.message.sender_id, 123);
  assert.ok(stomp.consoleText.some((t) => t.startsWith('메시지 전송 결과:')));

  // The ticket guide's page connects and sends `{ roomId: 1, content: "Hello!" }` on load.
  const q2 = new URLSearchParams({ base: env.http, token: token(1) });
  const ticket = await openPage(browser, `${env.origin}/pages/ticket-guide.html?${q2}`);
  const hello = await until('the STOMP page to receive the ticket page\'s Hello!', own('Hello!'));
  assert.equal(hello.message.sender_id, 1);
  assert.equal(hello.message.sender_name, 'ticketuser');
  assert.equal(hello.message.room_id, 1);

  await stomp.evaluate(() => window.sendMessage(1, 'hi from STOMP'));
  const seen = (content) => () => ticket.consoleValues.map((v) => v[0])
    .find((m) => m && m.content === content) ?? null;
  const reply = await until('the ticket page to log the STOMP page\'s message', seen('hi from STOMP'));
  assert.equal(reply.roomId, 1);
  assert.equal(reply.user.id, 123);
  assert.equal(reply.user.username, 'stompuser');
  assert.equal(typeof reply.id, 'number');
  assert.ok(reply.id > hello.message.id);
  // The sender's own message comes back to it in the guide's shape too.
  const echo = await until('the ticket page to log its own Hello!', seen('Hello!'));
  assert.equal(echo.id, hello.message.id);

  assert.deepEqual(ticket.errors, []);
  assert.deepEqual(stomp.errors, []);
  assert.equal(await stomp.evaluate(() => window.stompClient.connected), true);
  await ticket.evaluate(() => window.chat.disconnect());
  await stomp.evaluate(() => window.stompClient.deactivate());
});

test('a page from an origin not allowed is refused on /chat/ticket, /chat and /ws', TEST, async () => {
  const page = await openPage(browser, `${env.refusedOrigin}/pages/blank.html`);
  const cdp = await page.createCDPSession();
  await cdp.send('Network.enable');
  const preflights = [];
  cdp.on('Network.responseReceived', (e) => { if (e.type === 'Preflight') preflights.push(e.response); });
  // A refused WebSocket handshake's status reaches no page API and no Network event, only
  // Chromium's own log line for the page.
  await cdp.send('Log.enable');
  const logLines = [];
  cdp.on('Log.entryAdded', (e) => logLines.push(e.entry.text));
  const failed = [];
  cdp.on('Network.loadingFailed', (e) => failed.push(e));

  // POST /chat/ticket with the guide's accessToken header: the preflight is refused (403),
  // so the page never gets to send the token.
  const ticketTry = await page.evaluate(async (http, jwt) => {
    try {
      const r = await fetch(`${http}/chat/ticket`, { method: 'POST', headers: { accessToken: jwt } });
      return { status: r.status };
    } catch (err) {
      return { error: err.name };
    }
  }, env.http, token(1));
  assert.deepEqual(ticketTry, { error: 'TypeError' });
  const preflight = await until('the preflight answer', () => preflights[0]);
  assert.equal(preflight.status, 403);
  assert.equal(preflight.headers['access-control-allow-origin'] ?? preflight.headers['Access-Control-Allow-Origin'], undefined);
  const cors = await until('the failed request', () => failed.find((f) => f.corsErrorStatus));
  // Chromium names the first thing it finds missing in the 403: the allow-origin header.
  assert.equal(cors.corsErrorStatus.corsError, 'PreflightMissingAllowOriginHeader');

  // /chat with a good ticket (bought outside the browser): closed with 1002.
  const bought = await post('/chat/ticket', token(1));
  assert.equal(bought.status, 200);
  const chatClose = await page.evaluate((url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onclose = (e) => resolve({ opened, code: e.code, reason: e.reason });
  }), `${env.chatWs}?ticket=${bought.body.ticket}`);
  assert.deepEqual(chatClose, { opened: true, code: 1002, reason: 'origin not allowed' });

  // /ws: the handshake is answered 403; the browser's WebSocket fails (1006).
  const wsClose = await page.evaluate((url) => new Promise((resolve) => {
    const ws = new WebSocket(url, ['v12.stomp']);
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onclose = (e) => resolve({ opened, code: e.code });
  }), env.stompWs);
  assert.deepEqual(wsClose, { opened: false, code: 1006 });
  const refused = await until('the /ws handshake answer', () => logLines.find((t) => t.includes(env.stompWs)));
  assert.match(refused, /Unexpected response code: 403/);

  // The server carries on: the same ticket API answers a client with no Origin.
  assert.equal((await post('/chat/ticket', token(1))).status, 200);
  assert.deepEqual(page.errors, []);
});
