// Room events in the guide's shapes: user_typing, message_read, user_status_changed.
// Users 20-29.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';

import {
  ISO,
  TEST,
  chatWs,
  connectUser,
  createRoom,
  env,
  http,
  isEvent,
  newMessage,
  once,
  openChat,
  roomDest,
  sendMessage,
  subscribe,
  token,
  unique,
} from './helpers.mjs';

let room;
before(async () => {
  room = await createRoom(unique('events'), { members: [20, 21, 22, 23, 24, 25] });
});

const typing = (userId, isTyping) => isEvent('user_typing', (j) => j.userId === userId && j.isTyping === isTyping);
const status = (userId, s) => isEvent('user_status_changed', (j) => j.userId === userId && j.status === s);

test('typing-start / typing-end reach subscribers as user_typing', TEST, async (t) => {
  const watcher = await connectUser(t, 20);
  await subscribe(watcher, roomDest(room.id));

  const started = await chatWs('typing-start', token(21), { roomId: room.id });
  assert.equal(started.status, 'success');
  const on = await watcher.messages.waitFor(typing(21, true), 'user_typing true');
  assert.equal(on.json.type, 'user_typing');
  assert.equal(on.json.isTyping, true);
  assert.match(on.json.timestamp, ISO);
  assert.equal(on.headers.destination, roomDest(room.id));

  // A second typing-start while typing is not a second event.
  await chatWs('typing-start', token(21), { roomId: room.id });
  await chatWs('typing-end', token(21), { roomId: room.id });
  const off = await watcher.messages.waitFor(typing(21, false), 'user_typing false');
  assert.equal(off.json.isTyping, false);
  assert.equal(watcher.messages.filter(typing(21, true)).length, 1);

  // Typing nobody ends stops by itself after the configured timeout.
  await chatWs('typing-start', token(22), { roomId: room.id });
  await watcher.messages.waitFor(typing(22, true), 'user_typing true (22)');
  const expired = await watcher.messages.waitFor(
    typing(22, false),
    'user_typing false after the typing timeout',
    env.typingTimeoutMs + 4000,
  );
  assert.equal(expired.json.userId, 22);

  // Only members may type in a room.
  const res = await http('/chat-ws/typing-start', { jwt: token(29), json: { roomId: room.id } });
  assert.equal(res.status, 404);
  assert.equal(typeof res.body.error, 'string');
});

test(
  'sending a message while typing ends the typing with a user_typing false event',
  TEST,
  async (t) => {
    const watcher = await connectUser(t, 20);
    await subscribe(watcher, roomDest(room.id));
    await chatWs('typing-start', token(25), { roomId: room.id });
    await watcher.messages.waitFor(typing(25, true), 'user_typing true (25)');
    const content = unique('typed');
    await sendMessage(token(25), room.id, content);
    await watcher.messages.waitFor(newMessage(content), 'the message');
    await watcher.messages.waitFor(
      typing(25, false),
      'user_typing false after the message (or after the typing timeout)',
      env.typingTimeoutMs + 1500,
    );
  },
);

test('POST /chat-ws/read reaches subscribers as message_read', TEST, async (t) => {
  const watcher = await connectUser(t, 21);
  await subscribe(watcher, roomDest(room.id));

  const sent = await sendMessage(token(21), room.id, unique('to be read'));
  const messageId = sent.message.id;
  const read = await chatWs('read', token(20), { roomId: room.id, messageId });
  assert.equal(read.status, 'success');
  assert.match(read.readAt, ISO);

  const got = await watcher.messages.waitFor(
    isEvent('message_read', (j) => j.messageId === messageId),
    'message_read',
  );
  assert.equal(got.json.messageId, messageId);
  assert.equal(got.json.readerId, 20);
  assert.equal(got.json.readAt, read.readAt);

  const unknown = await http('/chat-ws/read', { jwt: token(20), json: { roomId: room.id, messageId: 999999999 } });
  assert.equal(unknown.status, 404);
  assert.equal(typeof unknown.body.error, 'string');
  const outsider = await http('/chat-ws/read', { jwt: token(29), json: { roomId: room.id, messageId } });
  assert.equal(outsider.status, 404);
  const bad = await http('/chat-ws/read', { jwt: token(20), json: { roomId: room.id } });
  assert.equal(bad.status, 400);
});

test('user_status_changed: online at the first connection, offline after the last', TEST, async (t) => {
  const watcher = await connectUser(t, 20);
  await subscribe(watcher, roomDest(room.id));

  // User 23 connects over STOMP: online.
  const first = await connectUser(t, 23);
  const online = await watcher.messages.waitFor(status(23, 'online'), 'user 23 online');
  assert.match(online.json.timestamp, ISO);

  // A second connection (the ticket protocol) is not a second "online".
  const chat = await openChat(t, 23);
  // The /chat socket is registered once it gets its own message back.
  const echo = unique('echo');
  chat.ws.send(JSON.stringify({ roomId: room.id, content: echo }));
  await chat.inbox.waitFor((m) => m.content === echo, 'own /chat message');
  await watcher.messages.waitFor(newMessage(echo), 'the echo on STOMP');
  assert.equal(watcher.messages.filter(status(23, 'online')).length, 1);

  // Closing one of the two is not "offline"; closing the last is, exactly once.
  await first.client.deactivate();
  chat.ws.close(1000);
  await once(chat.ws, 'close', '/chat close');
  await watcher.messages.waitFor(status(23, 'offline'), 'user 23 offline');
  const marker = unique('marker');
  await sendMessage(token(20), room.id, marker);
  await watcher.messages.waitFor(newMessage(marker), 'marker');
  assert.equal(watcher.messages.filter(status(23, 'offline')).length, 1);
  assert.equal(watcher.messages.filter(status(23, 'online')).length, 1);
});

test('user_status_changed for a /chat-only user', TEST, async (t) => {
  const watcher = await connectUser(t, 20);
  await subscribe(watcher, roomDest(room.id));
  const chat = await openChat(t, 24);
  await watcher.messages.waitFor(status(24, 'online'), 'user 24 online');
  chat.ws.close(1000);
  await watcher.messages.waitFor(status(24, 'offline'), 'user 24 offline');
});
