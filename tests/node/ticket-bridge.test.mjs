// One bus for both protocols: the ticket protocol (/chat) and STOMP see each other's
// messages, each in its own shape, stored once. Users 80-89.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';

import {
  ISO,
  Inbox,
  TEST,
  WebSocket,
  connectUser,
  createRoom,
  env,
  http,
  newMessage,
  once,
  openChat,
  publish,
  roomDest,
  sendMessage,
  subscribe,
  token,
  unique,
} from './helpers.mjs';

let room;
before(async () => {
  room = await createRoom(unique('bridge'), { members: [80, 81] });
});

test('/chat (ticket) messages reach stompjs, stompjs messages reach /chat', TEST, async (t) => {
  const stompUser = await connectUser(t, 81);
  await subscribe(stompUser, roomDest(room.id));

  // The ticket guide: POST /chat/ticket with the accessToken header, then /chat?ticket=.
  const ticketRes = await fetch(env.http + '/chat/ticket', {
    method: 'POST',
    headers: { accessToken: token(80) },
  });
  assert.equal(ticketRes.status, 200);
  const { ticket } = await ticketRes.json();
  assert.equal(typeof ticket, 'string');
  const ws = new WebSocket(env.http.replace('http', 'ws') + '/chat?ticket=' + encodeURIComponent(ticket));
  t.after(() => ws.terminate());
  const chatInbox = new Inbox('/chat messages');
  ws.on('message', (data) => chatInbox.push(JSON.parse(data.toString('utf8'))));
  const chatWait = (pred) => chatInbox.waitFor(pred, 'message on /chat');
  await once(ws, 'open', '/chat open');

  // /chat -> STOMP
  const fromChat = unique('from /chat');
  ws.send(JSON.stringify({ roomId: room.id, content: fromChat }));
  const atStomp = await stompUser.messages.waitFor(newMessage(fromChat), 'new_message from /chat');
  assert.equal(atStomp.json.message.sender_id, 80);
  assert.equal(atStomp.json.message.message_type, 'text');
  assert.match(atStomp.json.message.created_at, ISO);
  // The sender's own /chat socket gets it too, so it is registered for what follows.
  const echo = await chatWait((m) => m.content === fromChat);
  assert.equal(echo.id, atStomp.json.message.id, 'one stored message, one id');

  // STOMP publish -> /chat, in the ticket guide's shape.
  const fromStomp = unique('from stompjs');
  await publish(stompUser, roomDest(room.id), { content: fromStomp, message_type: 'text' });
  const atChat = await chatWait((m) => m.content === fromStomp);
  assert.equal(typeof atChat.id, 'number');
  assert.equal(atChat.roomId, room.id);
  assert.equal(atChat.content, fromStomp);
  assert.match(atChat.timestamp, ISO);
  assert.deepEqual(Object.keys(atChat.user).sort(), ['id', 'profileImage', 'username']);
  assert.equal(atChat.user.id, 81);
  assert.equal(atChat.user.username, 'user81');

  // HTTP send-message -> both, stored once.
  const fromHttp = unique('from send-message');
  const sent = await sendMessage(token(81), room.id, fromHttp);
  const viaChat = await chatWait((m) => m.content === fromHttp);
  const viaStomp = await stompUser.messages.waitFor(newMessage(fromHttp), 'new_message from HTTP');
  assert.equal(viaChat.id, sent.message.id);
  assert.equal(viaStomp.json.message.id, sent.message.id);

  const history = await http(`/chat/rooms/${room.id}/messages`, { method: 'GET', jwt: token(80) });
  for (const content of [fromChat, fromStomp, fromHttp]) {
    assert.equal(history.body.messages.filter((m) => m.content === content).length, 1, content);
  }
});

test('a /chat client of a user who is not a member gets an error reply, STOMP gets nothing', TEST, async (t) => {
  const stompUser = await connectUser(t, 81);
  await subscribe(stompUser, roomDest(room.id));
  const outsider = await openChat(t, 82);
  const content = unique('outsider');
  outsider.ws.send(JSON.stringify({ roomId: room.id, content }));
  const reply = await outsider.inbox.waitFor((m) => m.type === 'error', 'error reply');
  assert.equal(typeof reply.code, 'string');

  const marker = unique('marker');
  await sendMessage(token(80), room.id, marker);
  await stompUser.messages.waitFor(newMessage(marker), 'marker');
  assert.equal(stompUser.messages.find(newMessage(content)), undefined);
});
