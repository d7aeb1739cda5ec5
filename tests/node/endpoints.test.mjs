// Both Web-STOMP endpoints: the dedicated listener and /ws on the HTTP port; subprotocol
// and version negotiation; the Origin check. Users 70-79.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';

import { Versions } from '@stomp/stompjs';

import {
  TEST,
  WebSocket,
  connectUser,
  createRoom,
  env,
  newMessage,
  once,
  publish,
  roomDest,
  subscribe,
  unique,
} from './helpers.mjs';

let room;
before(async () => {
  room = await createRoom(unique('endpoints'), { members: [70, 71, 72] });
});

for (const [name, url] of [
  ['the dedicated listener', () => env.stompWs],
  ['/ws on the HTTP listener', () => env.wsOnHttp],
]) {
  test(`stompjs over ${name}: v12.stomp, STOMP 1.2, publish and subscribe`, TEST, async (t) => {
    const h = await connectUser(t, 70, { brokerURL: url() });
    assert.equal(h.client.webSocket.protocol, 'v12.stomp');
    assert.equal(h.client.connectedVersion, '1.2');
    const connected = h.connects.items[0];
    assert.equal(connected.headers.version, '1.2');
    assert.ok(connected.headers.session);
    assert.ok(connected.headers.server);

    await subscribe(h, roomDest(room.id));
    const content = unique(`over ${name}`);
    await publish(h, roomDest(room.id), { content, message_type: 'text' });
    const got = await h.messages.waitFor(newMessage(content), 'own message back');
    assert.equal(got.json.message.sender_id, 70);
  });
}

test('a message published on one endpoint reaches a subscriber on the other', TEST, async (t) => {
  const onDedicated = await connectUser(t, 70, { brokerURL: env.stompWs });
  const onHttp = await connectUser(t, 71, { brokerURL: env.wsOnHttp });
  await subscribe(onDedicated, roomDest(room.id));
  await subscribe(onHttp, roomDest(room.id));

  const a = unique('dedicated to http');
  await publish(onDedicated, roomDest(room.id), { content: a, message_type: 'text' });
  await onHttp.messages.waitFor(newMessage(a), 'message on /ws of the HTTP port');
  const b = unique('http to dedicated');
  await publish(onHttp, roomDest(room.id), { content: b, message_type: 'text' });
  await onDedicated.messages.waitFor(newMessage(b), 'message on the dedicated listener');
});

test('older STOMP versions negotiate their own subprotocol', TEST, async (t) => {
  for (const [versions, proto, version] of [
    [['1.1', '1.0'], 'v11.stomp', '1.1'],
    [['1.0'], 'v10.stomp', '1.0'],
  ]) {
    for (const url of [env.stompWs, env.wsOnHttp]) {
      const h = await connectUser(t, 70, { brokerURL: url, stompVersions: new Versions(versions) });
      assert.equal(h.client.webSocket.protocol, proto, url);
      assert.equal(h.connects.items[0].headers.version, version, url);
      await h.client.deactivate();
    }
  }
});

test('a handshake offering no subprotocol is accepted', TEST, async (t) => {
  for (const url of [env.stompWs, env.wsOnHttp]) {
    const ws = new WebSocket(url);
    t.after(() => ws.terminate());
    await once(ws, 'open', `open ${url}`);
    assert.equal(ws.protocol, '');
    ws.close();
  }
});

test('Origin is checked at the handshake on both endpoints', TEST, async (t) => {
  for (const url of [env.stompWs, env.wsOnHttp]) {
    const bad = new WebSocket(url, ['v12.stomp'], { headers: { Origin: 'http://evil.example' } });
    t.after(() => bad.terminate());
    bad.on('error', () => {});
    const [, response] = await once(bad, 'unexpected-response', `403 from ${url}`);
    assert.equal(response.statusCode, 403, url);
    response.resume();

    const good = new WebSocket(url, ['v12.stomp'], { headers: { Origin: env.allowedOrigin } });
    t.after(() => good.terminate());
    await once(good, 'open', `open ${url} with an allowed Origin`);
    assert.equal(good.protocol, 'v12.stomp');
    good.close();
  }
});

test('the dedicated listener only serves /ws', TEST, async (t) => {
  const ws = new WebSocket(env.stompWs.replace(/\/ws$/, '/stomp'), ['v12.stomp']);
  t.after(() => ws.terminate());
  ws.on('error', () => {});
  const [, response] = await once(ws, 'unexpected-response', '404');
  assert.equal(response.statusCode, 404);
  response.resume();
});

test('frames sent as binary WebSocket messages work the same', TEST, async (t) => {
  const h = await connectUser(t, 72, { forceBinaryWSFrames: true });
  await subscribe(h, roomDest(room.id));
  const content = unique('binary frames 바이너리');
  await publish(h, roomDest(room.id), { content, message_type: 'text' });
  const got = await h.messages.waitFor(newMessage(content), 'own message back');
  assert.equal(got.json.message.content, content);
});

test('deactivate(): DISCONNECT is answered with its RECEIPT before the close', TEST, async (t) => {
  const h = await connectUser(t, 72);
  let disconnectFrame;
  h.client.onDisconnect = (frame) => {
    disconnectFrame = frame;
  };
  await h.client.deactivate();
  assert.ok(disconnectFrame, 'onDisconnect was not called with the RECEIPT');
  assert.equal(disconnectFrame.command, 'RECEIPT');
  assert.match(disconnectFrame.headers['receipt-id'], /^close-/);
  assert.equal(h.errors.items.length, 0);
});
