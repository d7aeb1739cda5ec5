// The STOMP guide's flow, step by step: POST /chat-ws/connect, connect stompjs with the
// issued login, subscribe to every subscription and to the user queue, send through
// POST /chat-ws/send-message, receive `new_message`. Users 1-5 and the driver's rooms.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Client,
  Inbox,
  ISO,
  TEST,
  createRoom,
  env,
  http,
  newMessage,
  isEvent,
  receipt,
  sendMessage,
  roomDest,
  token,
  unique,
  userDest,
} from './helpers.mjs';

const SHARED = Number(process.env.CHATD_ROOM_SHARED);
const PUBLIC = Number(process.env.CHATD_ROOM_PUBLIC);
const PRIVATE = Number(process.env.CHATD_ROOM_PRIVATE);
const jwt1 = process.env.CHATD_TOKEN_1;
const jwt2 = process.env.CHATD_TOKEN_2;

test('POST /chat-ws/connect answers in the guide shape', TEST, async () => {
  const response = await fetch(env.http + '/chat-ws/connect', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + jwt1, 'Content-Type': 'application/json' },
  });
  assert.equal(response.status, 200);
  const result = await response.json();
  assert.equal(result.status, 'success');
  const info = result.connectionInfo;
  assert.equal(info.stompUrl, env.publicStompUrl, 'stompUrl comes from [stomp] public_url');
  assert.equal(typeof info.username, 'string');
  assert.ok(info.username.length > 0);
  assert.equal(typeof info.password, 'string');
  assert.ok(info.password.length > 0);
  assert.equal(info.vhost, '/');
  assert.deepEqual(
    result.subscriptions.map((s) => s.roomId).sort((a, b) => a - b),
    [SHARED, PUBLIC, PRIVATE].sort((a, b) => a - b),
  );
  for (const sub of result.subscriptions) {
    assert.equal(sub.destination, roomDest(sub.roomId));
    assert.equal(typeof sub.roomName, 'string');
  }
  assert.equal(result.subscriptions.find((s) => s.roomId === SHARED).roomName, 'shared room');
  assert.equal(result.userInfo.userId, 1);
  assert.equal(result.userInfo.email, 'user1@example.com');
  assert.equal(result.userInfo.userType, 'user');

  // A user in no room gets an empty list, not an error.
  const lonely = await http('/chat-ws/connect', { jwt: process.env.CHATD_TOKEN_3 });
  assert.equal(lonely.status, 200);
  assert.deepEqual(lonely.body.subscriptions, []);
  assert.equal(lonely.body.userInfo.userId, 3);
});

test('the guide client receives new_message from /chat-ws/send-message, and user-queue events', TEST, async (t) => {
  const connect = await fetch(env.http + '/chat-ws/connect', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + jwt1, 'Content-Type': 'application/json' },
  });
  const connectionInfo = await connect.json();

  // --- the guide's React Native `connectToChat`, with brokerURL from the environment
  //     (connectionInfo.stompUrl is the public URL, which points nowhere in a test) and a
  //     receipt on each SUBSCRIBE so the test knows when the server has them.
  const rooms = new Inbox('room messages');
  const personal = new Inbox('user-queue messages');
  const errors = new Inbox('ERROR frames');
  const subscribed = [];
  let onConnectCalls = 0;
  const ready = new Promise((resolve, reject) => {
    const client = new Client({
      brokerURL: env.stompWs,
      connectHeaders: {
        login: connectionInfo.connectionInfo.username,
        passcode: connectionInfo.connectionInfo.password,
        host: connectionInfo.connectionInfo.vhost,
      },
      reconnectDelay: 5000,
      heartbeatIncoming: 4000,
      heartbeatOutgoing: 4000,
      onConnect: (frame) => {
        onConnectCalls += 1;
        const receipts = [];
        connectionInfo.subscriptions.forEach((sub) => {
          const id = unique('r');
          receipts.push(receipt(h, id));
          client.subscribe(
            sub.destination,
            (message) => {
              const data = JSON.parse(message.body);
              rooms.push({ data, roomId: sub.roomId, headers: message.headers });
            },
            { receipt: id },
          );
          subscribed.push(sub.destination);
        });
        const id = unique('r');
        receipts.push(receipt(h, id));
        client.subscribe(
          userDest(connectionInfo.userInfo.userId),
          (message) => personal.push(JSON.parse(message.body)),
          { receipt: id },
        );
        Promise.all(receipts).then(() => resolve(frame), reject);
      },
      onStompError: (frame) => {
        errors.push(frame);
        reject(new Error(`STOMP error: ${frame.headers['message']} ${frame.body}`));
      },
    });
    const h = { client, errors };
    t.after(() => client.deactivate());
    client.activate();
  });
  const connected = await ready;
  assert.equal(onConnectCalls, 1);
  assert.equal(connected.headers.version, '1.2');
  assert.equal(subscribed.length, 3);

  // --- the guide's sendMessage, from user 2 to the shared room.
  const content = unique('hello from the guide');
  const response = await fetch(env.http + '/chat-ws/send-message', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + jwt2, 'Content-Type': 'application/json' },
    body: JSON.stringify({ roomId: SHARED, message: { message_type: 'text', content } }),
  });
  assert.equal(response.status, 200);
  const result = await response.json();
  assert.equal(result.message.content, content);

  const got = await rooms.waitFor((m) => m.data.type === 'new_message' && m.data.message.content === content);
  assert.equal(got.roomId, SHARED);
  assert.equal(got.headers.destination, roomDest(SHARED));
  assert.match(got.headers['content-type'], /^application\/json/);
  const { data } = got;
  assert.equal(data.type, 'new_message');
  assert.equal(data.message.id, result.message.id);
  assert.equal(typeof data.message.id, 'number');
  assert.equal(data.message.content, content);
  assert.equal(data.message.message_type, 'text');
  assert.equal(data.message.sender_id, 2);
  assert.match(data.message.created_at, ISO);
  assert.match(data.timestamp, ISO);

  // --- the user queue: being added to a new room is announced there.
  const room = await createRoom(unique('announced'), { members: [1] });
  const joined = await personal.waitFor((e) => e.type === 'room_joined' && e.roomId === room.id, 'room_joined');
  assert.equal(joined.destination, roomDest(room.id));
  assert.equal(joined.roomName, room.name);

  // Nothing of room traffic leaked onto the user queue.
  assert.equal(personal.find(isEvent('new_message')), undefined);
  assert.equal(errors.items.length, 0);
});

test('a JWT works as the STOMP passcode too', TEST, async (t) => {
  const inbox = new Inbox('messages');
  const client = new Client({
    brokerURL: env.stompWs,
    connectHeaders: { login: 'user2', passcode: jwt2, host: '/' },
    reconnectDelay: 0,
  });
  t.after(() => client.deactivate());
  const errors = new Inbox('ERROR frames');
  const h = { client, errors };
  client.onStompError = (f) => errors.push(f);
  const connected = new Promise((resolve) => {
    client.onConnect = resolve;
  });
  client.activate();
  await connected;
  const id = unique('r');
  const done = receipt(h, id);
  client.subscribe(roomDest(SHARED), (m) => inbox.push({ json: JSON.parse(m.body) }), { receipt: id });
  await done;
  const content = unique('via jwt passcode');
  const res = await http('/chat-ws/send-message', {
    jwt: token(1),
    json: { roomId: SHARED, message: { message_type: 'text', content } },
  });
  assert.equal(res.status, 200);
  const got = await inbox.waitFor(newMessage(content), 'new_message');
  assert.equal(got.json.message.sender_id, 1);
});

// The guide's connectToChat subscribes to every room of connectionInfo.subscriptions, and
// its joinRoom() subscribes to result.subscription whenever join-room says "joined": also
// for a room the client already subscribed, and again after leaveRoom() (which never
// unsubscribes). Each of those SUBSCRIBEs is taken, and each message still reaches the
// app exactly once. Users 4 and 5.
test('the guide client joining rooms it is in, and join/leave/join, gets each message once', TEST, async (t) => {
  const mine = await createRoom(unique('already mine'), { members: [4, 5] });
  const open = await createRoom(unique('public to join'), { isPublic: true, members: [5] });
  const jwt4 = token(4);
  const connectionInfo = await http('/chat-ws/connect', { jwt: jwt4 }).then((r) => r.body);
  assert.deepEqual(connectionInfo.subscriptions.map((s) => s.roomId), [mine.id]);

  // What the guide's callbacks hand the app: onMessageReceived(data, roomId) and
  // handleRoomMessage(data, roomId), both into one list.
  const handled = new Inbox('messages the app handled');
  const errors = new Inbox('ERROR frames');
  let stompClient;
  // The guide's code subscribes without a receipt; the test adds one to each SUBSCRIBE
  // (a header stompjs passes along) to know when the server has it.
  const subscribed = (destination, roomId) => {
    const id = unique('r');
    const done = receipt({ client: stompClient, errors }, id, `RECEIPT for SUBSCRIBE ${destination}`);
    stompClient.subscribe(
      destination,
      (message) => handled.push({ data: JSON.parse(message.body), roomId, sub: message.headers.subscription }),
      { receipt: id },
    );
    return done;
  };
  const connected = new Promise((resolve, reject) => {
    stompClient = new Client({
      brokerURL: env.stompWs,
      connectHeaders: {
        login: connectionInfo.connectionInfo.username,
        passcode: connectionInfo.connectionInfo.password,
        host: connectionInfo.connectionInfo.vhost,
      },
      reconnectDelay: 0,
      onConnect: () => {
        Promise.all(connectionInfo.subscriptions.map((sub) => subscribed(sub.destination, sub.roomId))).then(
          resolve,
          reject,
        );
      },
      onStompError: (frame) => {
        errors.push(frame);
        reject(new Error(`STOMP error: ${frame.headers['message']} ${frame.body}`));
      },
    });
    t.after(() => stompClient.deactivate({ force: true }));
    stompClient.activate();
  });
  await connected;

  // The guide's joinRoom and leaveRoom, verbatim but for the URL and the receipt.
  const joinRoom = async (roomId) => {
    const response = await fetch(env.http + '/chat-ws/join-room', {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + jwt4, 'Content-Type': 'application/json' },
      body: JSON.stringify({ roomId }),
    });
    const result = await response.json();
    if (result.status === 'joined') {
      await subscribed(result.subscription, roomId);
    }
    return result;
  };
  const leaveRoom = async (roomId) => {
    await fetch(`${env.http}/chat-ws/leave-room/${roomId}`, {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + jwt4 },
    });
  };

  // Each message exactly once: the marker sent after it arrives after any copy would have
  // (one connection's deliveries are in order).
  const content = (c) => (m) => m.data.type === 'new_message' && m.data.message.content === c;
  const exactlyOnce = async (roomId) => {
    const text = unique('once');
    await sendMessage(token(5), roomId, text);
    const marker = unique('marker');
    await sendMessage(token(5), roomId, marker);
    await handled.waitFor(content(marker), `marker in room ${roomId}`);
    assert.equal(handled.filter(content(text)).length, 1, `copies of one message in room ${roomId}`);
    assert.equal(handled.filter(content(marker)).length, 1);
  };

  // A room the client is in and already subscribed: "joined", subscribed a second time.
  assert.equal((await joinRoom(mine.id)).status, 'joined');
  await exactlyOnce(mine.id);
  assert.equal((await joinRoom(mine.id)).status, 'joined');
  await exactlyOnce(mine.id);

  // join, leave, join again.
  assert.equal((await joinRoom(open.id)).status, 'joined');
  await exactlyOnce(open.id);
  await leaveRoom(open.id);
  assert.equal((await joinRoom(open.id)).status, 'joined');
  await exactlyOnce(open.id);
  await exactlyOnce(mine.id);

  assert.equal(errors.items.length, 0);
  assert.equal(stompClient.connected, true);
});
