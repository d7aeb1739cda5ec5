// The guide's joinRoom / leaveRoom: join-room then subscribe to result.subscription,
// refusals for private rooms, invitations, and leave-room ending delivery. Users 30-39.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Inbox,
  TEST,
  connectUser,
  createRoom,
  env,
  http,
  isEvent,
  newMessage,
  openChat,
  receipt,
  roomDest,
  sendMessage,
  subscribe,
  token,
  unique,
  userDest,
} from './helpers.mjs';

test('join-room on a public room, then subscribe to result.subscription', TEST, async (t) => {
  const room = await createRoom(unique('public'), { isPublic: true, members: [30] });
  const stompClient = await connectUser(t, 31);

  // The guide's joinRoom, verbatim but for the URL.
  const handled = new Inbox('room messages');
  const response = await fetch(env.http + '/chat-ws/join-room', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + token(31), 'Content-Type': 'application/json' },
    body: JSON.stringify({ roomId: room.id }),
  });
  const result = await response.json();
  assert.equal(response.status, 200);
  assert.equal(result.status, 'joined');
  assert.equal(result.roomId, room.id);
  assert.equal(result.subscription, roomDest(room.id));
  if (result.status === 'joined') {
    await subscribe(stompClient, result.subscription, handled);
  }

  const content = unique('welcome');
  await sendMessage(token(30), room.id, content);
  const got = await handled.waitFor(newMessage(content), 'new_message in the joined room');
  assert.equal(got.json.message.sender_id, 30);

  // Joining again is harmless.
  const again = await http('/chat-ws/join-room', { jwt: token(31), json: { roomId: room.id } });
  assert.equal(again.status, 200);
  assert.equal(again.body.status, 'joined');
});

test('join-room on a private room is 404 JSON until the user is invited', TEST, async (t) => {
  const room = await createRoom(unique('private'), { members: [30] });
  const user = await connectUser(t, 32);
  await subscribe(user, userDest(32));

  const refused = await http('/chat-ws/join-room', { jwt: token(32), json: { roomId: room.id } });
  // Answered as a room that does not exist: room ids cannot be probed.
  assert.equal(refused.status, 404);
  assert.equal(refused.body.error, 'unknown_room');
  assert.match(refused.headers.get('content-type'), /application\/json/);
  assert.equal(typeof refused.body.error, 'string');
  assert.equal(typeof refused.body.message, 'string');

  const invite = await http(`/admin/rooms/${room.id}/invites`, { jwt: env.adminToken, json: { userId: 32 } });
  assert.equal(invite.status, 200);
  const invited = await user.messages.waitFor(
    isEvent('room_invited', (j) => j.roomId === room.id),
    'room_invited on the user queue',
  );
  assert.equal(invited.json.destination, roomDest(room.id));

  const joined = await http('/chat-ws/join-room', { jwt: token(32), json: { roomId: room.id } });
  assert.equal(joined.status, 200);
  assert.equal(joined.body.status, 'joined');
  await subscribe(user, joined.body.subscription);

  const unknown = await http('/chat-ws/join-room', { jwt: token(32), json: { roomId: 987654321 } });
  assert.equal(unknown.status, 404);
  const bad = await http('/chat-ws/join-room', { jwt: token(32), json: { roomId: 'seven' } });
  assert.equal(bad.status, 400);
  const noBody = await http('/chat-ws/join-room', { jwt: token(32), headers: { 'Content-Type': 'application/json' } });
  assert.equal(noBody.status, 400);
});

test('leave-room ends STOMP and /chat delivery for that room', TEST, async (t) => {
  const room = await createRoom(unique('to leave'), { members: [30, 33] });
  const other = await createRoom(unique('stays'), { members: [30, 33] });
  const user = await connectUser(t, 33);
  const roomInbox = new Inbox('left room');
  await subscribe(user, roomDest(room.id), roomInbox);
  await subscribe(user, roomDest(other.id));
  await subscribe(user, userDest(33));
  const chat = await openChat(t, 33);

  const before = unique('before leaving');
  await sendMessage(token(30), room.id, before);
  await roomInbox.waitFor(newMessage(before), 'message before leaving');
  await chat.inbox.waitFor((m) => m.content === before, 'message before leaving on /chat');

  // The guide's leaveRoom.
  const response = await fetch(`${env.http}/chat-ws/leave-room/${room.id}`, {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + token(33) },
  });
  assert.equal(response.status, 200);
  const left = await response.json();
  assert.equal(left.status, 'left');
  await user.messages.waitFor(isEvent('room_removed', (j) => j.roomId === room.id), 'room_removed');

  // A message to the left room, then one to a room the user is still in: the second
  // arrives, the first never did (each connection's deliveries are in order).
  const after = unique('after leaving');
  await sendMessage(token(30), room.id, after);
  const marker = unique('marker');
  await sendMessage(token(30), other.id, marker);
  await user.messages.waitFor(newMessage(marker), 'marker on STOMP');
  await chat.inbox.waitFor((m) => m.content === marker, 'marker on /chat');
  assert.equal(roomInbox.find(newMessage(after)), undefined, 'STOMP got a message of a left room');
  assert.equal(user.messages.find(newMessage(after)), undefined);
  assert.equal(chat.inbox.find((m) => m.content === after), undefined, '/chat got a message of a left room');

  // Subscribing again is refused now.
  const id = unique('r');
  const done = receipt(user, id);
  user.client.subscribe(roomDest(room.id), () => {}, { receipt: id });
  await assert.rejects(done, /ERROR instead of/);

  // Leaving a room one is not in is an error a client can act on.
  const again = await http(`/chat-ws/leave-room/${room.id}`, { jwt: token(33) });
  assert.equal(again.status, 404);
});
