// client.publish to a room destination: delivery to other stompjs subscribers, receipts
// that come only once the message is stored, idempotent retries, refused SENDs.
// Users 10-19.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';

import {
  ISO,
  Inbox,
  TEST,
  connectUser,
  createRoom,
  http,
  newMessage,
  publish,
  receipt,
  roomDest,
  subscribe,
  token,
  unique,
} from './helpers.mjs';

let room;
let other;
before(async () => {
  room = await createRoom(unique('publish'), { members: [10, 11, 12, 14, 15] });
  other = await createRoom(unique('publish other'), { members: [11, 14] });
});

test('client.publish reaches another stompjs subscriber as new_message', TEST, async (t) => {
  const alice = await connectUser(t, 10);
  const bob = await connectUser(t, 11);
  await subscribe(bob, roomDest(room.id));

  const content = unique('published');
  // Exactly the guide-style call, no receipt.
  alice.client.publish({
    destination: roomDest(room.id),
    body: JSON.stringify({ content, message_type: 'text' }),
  });
  const got = await bob.messages.waitFor(newMessage(content), 'new_message');
  assert.equal(got.headers.destination, roomDest(room.id));
  assert.ok(got.headers['message-id']);
  assert.ok(got.headers.subscription);
  const { message, timestamp } = got.json;
  assert.equal(typeof message.id, 'number');
  assert.equal(message.content, content);
  assert.equal(message.message_type, 'text');
  assert.equal(message.sender_id, 10);
  assert.match(message.created_at, ISO);
  assert.match(timestamp, ISO);
});

test('a publish with a receipt: the RECEIPT comes after the message is in history', TEST, async (t) => {
  const alice = await connectUser(t, 10);
  const bob = await connectUser(t, 11);
  await subscribe(bob, roomDest(room.id));

  const content = unique('with receipt 안녕하세요 🙂');
  const receiptId = unique('receipt');
  const got = new Promise((resolve) => alice.client.watchForReceipt(receiptId, resolve));
  alice.client.publish({
    destination: roomDest(room.id),
    body: JSON.stringify({ content, message_type: 'text' }),
    headers: { receipt: receiptId },
  });
  const frame = await got;
  assert.equal(frame.command, 'RECEIPT');
  assert.equal(frame.headers['receipt-id'], receiptId);

  // Already stored: history has it the moment the receipt is in.
  const history = await http(`/chat/rooms/${room.id}/messages`, { method: 'GET', jwt: token(11) });
  assert.equal(history.status, 200);
  const stored = history.body.messages.find((m) => m.content === content);
  assert.ok(stored, `message not in history: ${JSON.stringify(history.body)}`);
  assert.equal(stored.roomId, room.id);
  assert.equal(stored.user.id, 10);

  const delivered = await bob.messages.waitFor(newMessage(content), 'new_message');
  assert.equal(delivered.json.message.id, stored.id);
  assert.equal(delivered.json.message.content, content, 'non-ASCII content survives the round trip');
});

test('a SEND retried with the same clientMessageId is stored and delivered once', TEST, async (t) => {
  const alice = await connectUser(t, 12);
  const bob = await connectUser(t, 11);
  await subscribe(bob, roomDest(room.id));

  const content = unique('retried');
  const clientMessageId = unique('cmid');
  await publish(alice, roomDest(room.id), { content, message_type: 'text', clientMessageId });
  await publish(alice, roomDest(room.id), { content, message_type: 'text', clientMessageId });
  const marker = unique('after the retry');
  await publish(alice, roomDest(room.id), { content: marker, message_type: 'text' });

  await bob.messages.waitFor(newMessage(marker), 'the marker message');
  assert.equal(bob.messages.filter(newMessage(content)).length, 1);
  const history = await http(`/chat/rooms/${room.id}/messages`, { method: 'GET', jwt: token(11) });
  assert.equal(history.body.messages.filter((m) => m.content === content).length, 1);
});

test('a SEND with a bad body or to a room of others is refused with an ERROR frame', TEST, async (t) => {
  const cases = [
    { body: 'not json', why: 'not JSON' },
    { body: JSON.stringify({ content: '   ', message_type: 'text' }), why: 'empty content' },
    { body: JSON.stringify({ content: 'x', message_type: 'video' }), why: 'unknown message_type' },
  ];
  for (const { body, why } of cases) {
    const alice = await connectUser(t, 10);
    const id = unique('bad');
    const done = receipt(alice, id);
    alice.client.publish({ destination: roomDest(room.id), body, headers: { receipt: id } });
    await assert.rejects(done, /ERROR instead of/, why);
    const error = alice.errors.items.at(-1);
    assert.equal(error.headers.message, 'Bad SEND', why);
    assert.equal(error.headers['receipt-id'], id, why);
    await alice.closes.waitFor(() => true, 'close after ERROR');
  }

  // User 13 is in no room: publishing to one is refused, and nothing is stored.
  const outsider = await connectUser(t, 13);
  const content = unique('intruder');
  const id = unique('r');
  const done = receipt(outsider, id);
  outsider.client.publish({
    destination: roomDest(room.id),
    body: JSON.stringify({ content, message_type: 'text' }),
    headers: { receipt: id },
  });
  await assert.rejects(done, /ERROR instead of/);
  await outsider.closes.waitFor(() => true, 'close after ERROR');
  const history = await http(`/chat/rooms/${room.id}/messages`, { method: 'GET', jwt: token(10) });
  assert.equal(history.body.messages.filter((m) => m.content === content).length, 0);
});

test('unsubscribe() with a receipt ends delivery to that subscription', TEST, async (t) => {
  const alice = await connectUser(t, 14);
  const bob = await connectUser(t, 11);
  const gone = new Inbox('unsubscribed');
  const sub = await subscribe(bob, roomDest(room.id), gone);
  // A subscription that stays, to another room: chatd takes one subscription per
  // destination on a connection.
  await subscribe(bob, roomDest(other.id));

  const id = unique('unsub');
  const done = receipt(bob, id);
  sub.unsubscribe({ receipt: id });
  await done;

  const content = unique('after unsubscribe');
  await publish(alice, roomDest(room.id), { content, message_type: 'text' });
  // Stored after it, so on bob's connection it would come after it.
  const marker = unique('on the other room');
  await publish(alice, roomDest(other.id), { content: marker, message_type: 'text' });
  await bob.messages.waitFor(newMessage(marker), 'message on the remaining subscription');
  assert.equal(gone.find(newMessage(content)), undefined);
});

test('ack: client-individual and client subscriptions accept ACK and NACK', TEST, async (t) => {
  const alice = await connectUser(t, 14);
  const bob = await connectUser(t, 11);
  const bob2 = await connectUser(t, 11); // one subscription per destination on a connection
  const individual = new Inbox('client-individual');
  const cumulative = new Inbox('client');
  await subscribe(bob, roomDest(room.id), individual, { ack: 'client-individual' });
  await subscribe(bob2, roomDest(room.id), cumulative, { ack: 'client' });

  const content = unique('to ack');
  await publish(alice, roomDest(room.id), { content, message_type: 'text' });
  const a = await individual.waitFor(newMessage(content), 'client-individual message');
  const c = await cumulative.waitFor(newMessage(content), 'client message');
  assert.ok(a.headers.ack, 'a MESSAGE for an ack subscription carries an ack header');
  assert.ok(c.headers.ack);
  const ids = [unique('ack'), unique('nack')];
  const done = Promise.all([receipt(bob, ids[0]), receipt(bob2, ids[1])]);
  a.message.ack({ receipt: ids[0] });
  c.message.nack({ receipt: ids[1] });
  await done;
  assert.equal(bob.client.connected, true);
  assert.equal(bob2.client.connected, true);
});

test('transactions: a SEND in a transaction is posted at COMMIT, never after ABORT', TEST, async (t) => {
  const alice = await connectUser(t, 15);
  const bob = await connectUser(t, 11);
  await subscribe(bob, roomDest(room.id));

  const tx = alice.client.begin();
  const held = unique('in transaction');
  await publish(alice, roomDest(room.id), { content: held, message_type: 'text' }, { transaction: tx.id });
  const marker = unique('outside transaction');
  await publish(alice, roomDest(room.id), { content: marker, message_type: 'text' });
  await bob.messages.waitFor(newMessage(marker), 'marker');
  assert.equal(bob.messages.find(newMessage(held)), undefined, 'delivered before COMMIT');

  tx.commit();
  await bob.messages.waitFor(newMessage(held), 'message at COMMIT');

  const aborted = alice.client.begin();
  const dropped = unique('aborted');
  await publish(alice, roomDest(room.id), { content: dropped, message_type: 'text' }, { transaction: aborted.id });
  aborted.abort();
  const marker2 = unique('after abort');
  await publish(alice, roomDest(room.id), { content: marker2, message_type: 'text' });
  await bob.messages.waitFor(newMessage(marker2), 'marker after ABORT');
  assert.equal(bob.messages.find(newMessage(dropped)), undefined, 'an aborted SEND was delivered');
  const history = await http(`/chat/rooms/${room.id}/messages`, { method: 'GET', jwt: token(11) });
  assert.equal(history.body.messages.filter((m) => m.content === dropped).length, 0);
  assert.equal(history.body.messages.filter((m) => m.content === held).length, 1);
});
