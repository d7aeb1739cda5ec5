// Error paths as stompjs sees them: refused logins (RabbitMQ's "Bad CONNECT"), refused
// subscriptions, frames before CONNECT, and the HTTP API without a token. Users 40-49.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';

import {
  Client,
  Inbox,
  TEST,
  WebSocket,
  chatWs,
  connectUser,
  createRoom,
  env,
  http,
  once,
  receipt,
  roomDest,
  token,
  unique,
  userDest,
} from './helpers.mjs';

let room;
before(async () => {
  room = await createRoom(unique('errors'), { members: [41] });
});

/** activate a client that must be refused; returns the ERROR frame after the close. */
async function refused(t, connectHeaders) {
  let onConnectCalled = false;
  const errors = new Inbox('ERROR frames');
  const closes = new Inbox('closes');
  const stompClient = new Client({
    brokerURL: env.stompWs,
    connectHeaders,
    reconnectDelay: 0,
    heartbeatIncoming: 4000,
    heartbeatOutgoing: 4000,
  });
  stompClient.onConnect = () => {
    onConnectCalled = true;
  };
  // The guide's handler, recording what it would print.
  stompClient.onStompError = function (frame) {
    errors.push(frame);
  };
  stompClient.onWebSocketClose = (evt) => closes.push(evt);
  t.after(() => stompClient.deactivate({ force: true }));
  stompClient.activate();
  const frame = await errors.waitFor(() => true, 'ERROR frame');
  await closes.waitFor(() => true, 'WebSocket close after ERROR');
  assert.equal(onConnectCalled, false);
  assert.equal(stompClient.connected, false);
  return frame;
}

test('a wrong passcode gets RabbitMQ\'s Bad CONNECT error', TEST, async (t) => {
  const info = await chatWs('connect', token(40));
  const login = info.connectionInfo.username;
  const frame = await refused(t, { login, passcode: info.connectionInfo.password + 'x', host: '/' });
  assert.equal(frame.command, 'ERROR');
  assert.equal(frame.headers['message'], 'Bad CONNECT');
  assert.equal(frame.body.trimEnd(), `Access refused for user '${login}'`);

  const wrong = await refused(t, { login, passcode: 'not-the-passcode', host: '/' });
  assert.equal(wrong.headers.message, 'Bad CONNECT');
  assert.equal(wrong.body.trimEnd(), `Access refused for user '${login}'`);
});

test('guest/guest (the guide\'s sample credentials) is refused by default', TEST, async (t) => {
  const frame = await refused(t, { login: 'guest', passcode: 'guest', host: '/' });
  assert.equal(frame.headers.message, 'Bad CONNECT');
  assert.equal(frame.body.trimEnd(), "Access refused for user 'guest'");
});

test('a passcode is bound to its login, and a bad JWT is no passcode', TEST, async (t) => {
  const info = await chatWs('connect', token(40));
  const stolen = await refused(t, { login: 'chatd-user-41', passcode: info.connectionInfo.password, host: '/' });
  assert.equal(stolen.headers.message, 'Bad CONNECT');
  assert.equal(stolen.body.trimEnd(), "Access refused for user 'chatd-user-41'");

  const [h, p, s] = token(40).split('.');
  const forged = `${h}.${p}.${s.slice(0, -4)}AAAA`;
  const bad = await refused(t, { login: 'someone', passcode: forged, host: '/' });
  assert.equal(bad.headers.message, 'Bad CONNECT');
  assert.equal(bad.body.trimEnd(), "Access refused for user 'someone'");

  const none = await refused(t, { host: '/' });
  assert.equal(none.headers.message, 'Bad CONNECT');
});

for (const [what, dest] of [
  ["another user's queue", () => userDest(41)],
  ['a room the user is not in', () => roomDest(room.id)],
  ['a room that does not exist', () => roomDest(987654321)],
  ['a destination outside chat.direct', () => '/topic/everything'],
  ['a queue', () => '/queue/chat'],
]) {
  test(`subscribing to ${what} gets an ERROR frame and the connection closes`, TEST, async (t) => {
    const h = await connectUser(t, 40);
    const id = unique('r');
    const done = receipt(h, id);
    const received = new Inbox('messages');
    h.client.subscribe(dest(), (m) => received.push(m), { receipt: id });
    await assert.rejects(done, /ERROR instead of/);
    const frame = h.errors.items.at(-1);
    assert.equal(frame.command, 'ERROR');
    assert.equal(typeof frame.headers.message, 'string');
    assert.ok(frame.headers.message.length > 0);
    assert.equal(frame.headers['receipt-id'], id);
    await h.closes.waitFor(() => true, 'close after ERROR');
    assert.equal(received.items.length, 0);
  });
}

test('a frame before CONNECT gets an ERROR frame, then the socket closes', TEST, async (t) => {
  const ws = new WebSocket(env.stompWs, ['v12.stomp']);
  t.after(() => ws.terminate());
  const frames = new Inbox('raw frames');
  ws.on('message', (data) => frames.push(data.toString('utf8')));
  await once(ws, 'open');
  assert.equal(ws.protocol, 'v12.stomp');
  const closed = once(ws, 'close');
  ws.send(`SUBSCRIBE\nid:0\ndestination:${userDest(40)}\n\n\0`);
  const error = await frames.waitFor((f) => f.startsWith('ERROR\n'), 'ERROR frame');
  assert.match(error, /\nmessage:[^\n]+\n/);
  await closed;
});

test('/chat-ws/* without a valid token is 401 JSON', TEST, async () => {
  const calls = [
    ['connect', undefined],
    ['send-message', { roomId: room.id, message: { message_type: 'text', content: 'x' } }],
    ['typing-start', { roomId: room.id }],
    ['typing-end', { roomId: room.id }],
    ['join-room', { roomId: room.id }],
    [`leave-room/${room.id}`, undefined],
    ['read', { roomId: room.id, messageId: 1 }],
    ['disconnect', undefined],
  ];
  for (const [path, json] of calls) {
    for (const jwt of [undefined, 'not.a.jwt']) {
      const res = await http(`/chat-ws/${path}`, { jwt, json });
      assert.equal(res.status, 401, `${path} with ${jwt ? 'a bad' : 'no'} token`);
      assert.match(res.headers.get('content-type'), /application\/json/, path);
      assert.equal(typeof res.body.error, 'string', path);
      assert.equal(typeof res.body.message, 'string', path);
    }
  }
});

test('send-message errors a client can act on: 400, 404', TEST, async () => {
  const empty = await http('/chat-ws/send-message', {
    jwt: token(41),
    json: { roomId: room.id, message: { message_type: 'text', content: '' } },
  });
  assert.equal(empty.status, 400);
  const notMember = await http('/chat-ws/send-message', {
    jwt: token(42),
    json: { roomId: room.id, message: { message_type: 'text', content: 'x' } },
  });
  // A room one is not in answers as one that does not exist: ids cannot be probed.
  assert.equal(notMember.status, 404);
  assert.equal(notMember.body.error, 'unknown_room');
  const noRoom = await http('/chat-ws/send-message', {
    jwt: token(41),
    json: { roomId: 987654321, message: { message_type: 'text', content: 'x' } },
  });
  assert.equal(noRoom.status, 404);
  for (const res of [empty, notMember, noRoom]) assert.equal(typeof res.body.error, 'string');
});
