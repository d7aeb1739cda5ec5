// Heart-beats: the CONNECTED frame answers the client's heart-beat header, both sides beat,
// a connection survives several intervals, and a peer whose beats stop is closed.
// These legitimately take real time (about a second or two each). Users 50-59.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';

import {
  Inbox,
  TEST,
  WebSocket,
  activate,
  chatWs,
  createRoom,
  env,
  newMessage,
  once,
  publish,
  roomDest,
  stomp,
  subscribe,
  token,
  unique,
} from './helpers.mjs';

let room;
before(async () => {
  room = await createRoom(unique('heartbeat'), { members: [50, 51] });
});

async function connectWith(t, userId, heartbeatIncoming, heartbeatOutgoing) {
  const info = await chatWs('connect', token(userId));
  const h = stomp(t, {
    login: info.connectionInfo.username,
    passcode: info.connectionInfo.password,
    host: info.connectionInfo.vhost,
    heartbeatIncoming,
    heartbeatOutgoing,
  });
  const frame = await activate(h);
  return { h, frame };
}

test('the CONNECTED heart-beat header answers the client\'s (the guide\'s 4000,4000 and others)', TEST, async (t) => {
  for (const [incoming, outgoing, expected] of [
    [4000, 4000, '4000,4000'],
    [0, 0, '0,0'],
    [0, 1000, '0,1000'],
    [1000, 0, '1000,0'],
    [10000, 2500, '10000,2500'],
  ]) {
    const { h, frame } = await connectWith(t, 50, incoming, outgoing);
    // Client sends heart-beat "cx,cy" = "outgoing,incoming"; the server's "sx,sy" says
    // it beats every sx ms (what the client wants to receive) and wants beats every sy.
    assert.equal(frame.headers['heart-beat'], expected, `client heart-beat ${outgoing},${incoming}`);
    assert.equal(frame.headers.version, '1.2');
    await h.client.deactivate();
  }
});

test('both sides beat and the connection stays up across several intervals', TEST, async (t) => {
  const { h, frame } = await connectWith(t, 50, 1000, 1000);
  assert.equal(frame.headers['heart-beat'], '1000,1000');
  await subscribe(h, roomDest(room.id));
  assert.ok(h.debug.find((l) => l === 'send PING every 1000ms'), 'stompjs did not schedule PINGs');
  assert.ok(h.debug.find((l) => l === 'check PONG every 1000ms'), 'stompjs did not schedule PONG checks');

  // stompjs logs '<<< PONG' for each heart-beat it receives and '>>> PING' for each it sends.
  const start = h.debug.items.length;
  const pongsSince = () => h.debug.items.slice(start).filter((l) => l === '<<< PONG').length;
  const pingsSince = () => h.debug.items.slice(start).filter((l) => l === '>>> PING').length;
  await h.debug.waitNext(() => pongsSince() >= 2, 'two server heart-beats', 4000);
  await h.debug.waitFor(() => pingsSince() >= 2, 'two client heart-beats', 4000);

  assert.equal(h.client.connected, true);
  assert.equal(h.closes.items.length, 0, 'the socket closed during the heart-beat test');
  assert.equal(h.errors.items.length, 0);
  assert.equal(
    h.debug.find((l) => l.startsWith('did not receive server activity')),
    undefined,
    'stompjs saw the server go quiet',
  );

  // And it still works.
  const content = unique('after heart-beats');
  await publish(h, roomDest(room.id), { content, message_type: 'text' });
  await h.messages.waitFor(newMessage(content), 'new_message after heart-beats');
});

test('the server closes a connection whose heart-beats stop', TEST, async (t) => {
  // A raw client that promises a beat every 500 ms (the server floors it at 1000) and
  // then says nothing.
  const info = await chatWs('connect', token(51));
  const ws = new WebSocket(env.stompWs, ['v12.stomp']);
  t.after(() => ws.terminate());
  const frames = new Inbox('raw frames');
  ws.on('message', (data) => frames.push(data.toString('utf8')));
  await once(ws, 'open');
  const { username, password } = info.connectionInfo;
  ws.send(`CONNECT\naccept-version:1.2\nhost:/\nlogin:${username}\npasscode:${password}\nheart-beat:500,0\n\n\0`);
  const connected = await frames.waitFor((f) => f.startsWith('CONNECTED\n'), 'CONNECTED');
  const hb = /\nheart-beat:(\d+),(\d+)\n/.exec(connected);
  assert.ok(hb, connected);
  assert.equal(hb[1], '0', 'the client asked for no beats');
  const expectEvery = Number(hb[2]);
  assert.ok(expectEvery >= 500, `server wants beats every ${expectEvery} ms`);

  const opened = Date.now();
  const [code] = await once(ws, 'close', 'close by the server', 8000);
  const after = Date.now() - opened;
  assert.ok(after >= expectEvery, `closed after ${after} ms, before one interval (${expectEvery} ms)`);
  assert.ok(typeof code === 'number');
});

test('one-byte heart-beats are accepted as text and as binary messages', TEST, async (t) => {
  const info = await chatWs('connect', token(51));
  const ws = new WebSocket(env.wsOnHttp, ['v12.stomp']);
  t.after(() => ws.terminate());
  const frames = new Inbox('raw frames');
  ws.on('message', (data) => frames.push(data.toString('utf8')));
  await once(ws, 'open');
  const { username, password } = info.connectionInfo;
  ws.send(`CONNECT\naccept-version:1.2\nhost:/\nlogin:${username}\npasscode:${password}\nheart-beat:0,0\n\n\0`);
  await frames.waitFor((f) => f.startsWith('CONNECTED\n'), 'CONNECTED');
  ws.send('\n');
  ws.send(Buffer.from('\n'), { binary: true });
  ws.send(Buffer.from('\r\n'), { binary: true });
  ws.send(`SUBSCRIBE\nid:s1\ndestination:${roomDest(room.id)}\nreceipt:r1\n\n\0`);
  const got = await frames.waitFor((f) => f.startsWith('RECEIPT\n'), 'RECEIPT');
  assert.match(got, /\nreceipt-id:r1\n/);
  assert.equal(frames.find((f) => f.startsWith('ERROR')), undefined);
});
