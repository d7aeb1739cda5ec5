// stompjs's automatic reconnect: the issued passcode is reusable so a lost connection
// comes back by itself (and the guide's onConnect re-subscribes), while
// POST /chat-ws/disconnect closes the sessions and revokes the passcode. Users 60-69.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';

import {
  Inbox,
  TEST,
  chatWs,
  connectUser,
  createRoom,
  isEvent,
  newMessage,
  receipt,
  roomDest,
  sendMessage,
  stomp,
  subscribe,
  token,
  unique,
} from './helpers.mjs';

let room;
before(async () => {
  room = await createRoom(unique('reconnect'), { members: [60, 61, 62] });
});

test('after a lost connection stompjs reconnects with the same passcode and re-subscribes', TEST, async (t) => {
  const info = await chatWs('connect', token(61));
  const messages = new Inbox('room messages');
  const subscribed = new Inbox('subscription receipts');
  const h = stomp(t, {
    login: info.connectionInfo.username,
    passcode: info.connectionInfo.password,
    host: info.connectionInfo.vhost,
    reconnectDelay: 200,
    // The guide's onConnect: (re-)subscribe to every room.
    onConnect: (frame, client) => {
      for (const sub of info.subscriptions) {
        const id = unique('r');
        receipt(h, id).then((f) => subscribed.push(f), () => {});
        client.subscribe(sub.destination, (m) => messages.push({ json: JSON.parse(m.body) }), { receipt: id });
      }
    },
  });
  assert.deepEqual(info.subscriptions.map((s) => s.roomId), [room.id]);
  h.client.activate();
  await h.connects.waitFor(() => true, 'first CONNECTED');
  await subscribed.waitFor(() => true, 'first subscription');
  const first = h.connects.items[0].headers.session;

  const one = unique('first life');
  await sendMessage(token(60), room.id, one);
  await messages.waitFor(newMessage(one), 'message before the drop');

  // Simulate a lost connection.
  h.client.forceDisconnect();
  await h.closes.waitFor(() => true, 'WebSocket close');
  await h.connects.waitFor(() => h.connects.items.length >= 2, 'CONNECTED after reconnect');
  await subscribed.waitFor(() => subscribed.items.length >= 2, 're-subscription');
  assert.notEqual(h.connects.items[1].headers.session, first, 'a new session after reconnect');
  assert.equal(h.errors.items.length, 0);

  const two = unique('second life');
  await sendMessage(token(60), room.id, two);
  await messages.waitFor(newMessage(two), 'message after the reconnect');
  assert.equal(messages.filter(newMessage(two)).length, 1, 'a stale subscription delivered twice');
});

test('POST /chat-ws/disconnect closes the STOMP session and the old passcode stops working', TEST, async (t) => {
  const watcher = await connectUser(t, 60);
  await subscribe(watcher, roomDest(room.id));

  const info = await chatWs('connect', token(62));
  const h = stomp(t, {
    login: info.connectionInfo.username,
    passcode: info.connectionInfo.password,
    host: info.connectionInfo.vhost,
    reconnectDelay: 200,
  });
  h.client.activate();
  await h.connects.waitFor(() => true, 'CONNECTED');
  await watcher.messages.waitFor(
    isEvent('user_status_changed', (j) => j.userId === 62 && j.status === 'online'),
    'user 62 online',
  );

  // The guide's disconnectChat, step 1.
  const result = await chatWs('disconnect', token(62));
  assert.equal(result.closedSessions, 1);
  await h.closes.waitFor(() => true, 'the server closing the session');
  await watcher.messages.waitFor(
    isEvent('user_status_changed', (j) => j.userId === 62 && j.status === 'offline'),
    'user 62 offline',
  );

  // stompjs reconnects by itself with the revoked passcode: refused like RabbitMQ.
  const refused = await h.errors.waitFor((f) => f.headers.message === 'Bad CONNECT', 'Bad CONNECT on reconnect');
  assert.equal(refused.body.trimEnd(), `Access refused for user '${info.connectionInfo.username}'`);
  assert.equal(h.connects.items.length, 1, 'the revoked passcode connected again');
  await h.client.deactivate();

  // A fresh /chat-ws/connect issues a passcode that works.
  const again = await connectUser(t, 62);
  assert.equal(again.client.connected, true);
});
