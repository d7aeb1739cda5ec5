// The web client at / (chatd/web/) in real Chromium: alice and bob in two pages, signed in
// with pasted JWTs, against chatd serving the page itself (its own origin allowed).
// tests/test_browser.py stops and starts chatd on the same port when asked (control()).
// CHATD_SCREENSHOTS=DIR also saves the desktop and phone screenshots the README shows.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import { TEST, WAIT_MS, control, env, launch, openPage, post, token, until } from './helpers.mjs';

const GENERAL = Number(process.env.CHATD_ROOM_GENERAL);
const OTHER = Number(process.env.CHATD_ROOM_OTHER);
const ARCHIVE = Number(process.env.CHATD_ROOM_ARCHIVE);
const SHOTS = process.env.CHATD_SCREENSHOTS;

// One browser per person: a page in a background tab is hidden (no read marks, no
// animation frames), as it would be for a person.
const browsers = [];
const newBrowser = async () => { const b = await launch(); browsers.push(b); return b; };
let alice;
let bob;
after(async () => { await Promise.all(browsers.map((b) => b.close())); });

async function signIn(page, jwt) {
  // With the keyboard, as a person would: the token field, Tab to the button, Enter.
  await page.focus('#token');
  await page.keyboard.sendCharacter(jwt); // as a paste: one input event
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#conn').dataset.state === 'connected',
    { timeout: WAIT_MS, polling: 100 }).catch(async (err) => {
    const shown = await text(page, '#conn') + ' / ' + await text(page, '#signin-error');
    throw new Error(`not connected: ${shown}; console: ${page.consoleText.join(' | ')}`, { cause: err });
  });
  await page.waitForSelector('#rooms button', { timeout: WAIT_MS });
}

const text = (page, sel) => page.$eval(sel, (e) => e.textContent);
const connState = (page) => page.$eval('#conn', (e) => e.dataset.state);
const badge = (page, room) => page.$eval(`#rooms button[data-room-id="${room}"] .unread`,
  (e) => Number(e.dataset.count));
const messageTexts = (page) => page.$$eval('#messages .msg', (lis) => lis.map((li) => ({
  text: li.querySelector('.text').textContent,
  author: li.querySelector('.author').textContent,
  pending: li.classList.contains('pending'),
  edited: Boolean(li.querySelector('.edited')),
  read: li.querySelector('.read')?.textContent ?? null,
})));
const hasMessage = (page, t) => async () => (await messageTexts(page)).find((m) => m.text === t && !m.pending);

async function openRoom(page, room) {
  // The room list is drawn again as events arrive (unread counts, last messages): a
  // locator finds the button again if it was replaced between finding and clicking it.
  await page.locator(`#rooms button[data-room-id="${room}"]`).setTimeout(WAIT_MS).click();
  await page.waitForFunction((r) => document.querySelector(`#rooms button[data-room-id="${r}"]`)
    ?.getAttribute('aria-current') === 'true' && !document.querySelector('#composer-input').disabled,
  { timeout: WAIT_MS, polling: 100 }, room);
}

async function send(page, content) {
  await page.focus('#composer-input');
  await page.keyboard.type(content);
  await page.keyboard.press('Enter');
}

test('sign in, rooms, send and receive', TEST, async () => {
  alice = await openPage(await newBrowser(), `${env.http}/`);
  bob = await openPage(await newBrowser(), `${env.http}/`);
  assert.equal(await connState(alice), 'signed-out');
  await signIn(alice, token(1));
  await signIn(bob, token(2));
  assert.equal(await text(alice, '#me'), 'Signed in as alice');
  const names = await alice.$$eval('#rooms .name', (e) => e.map((n) => n.textContent));
  assert.deepEqual(names, ['General', 'Release planning', 'Archive']);

  await openRoom(alice, GENERAL);
  await openRoom(bob, GENERAL);
  await send(alice, 'hello bob');
  const got = await until('bob to receive alice\'s message', hasMessage(bob, 'hello bob'));
  assert.equal(got.author, 'alice');
  const mine = await until('alice to see her message stored', hasMessage(alice, 'hello bob'));
  assert.equal(mine.author, 'You');
  await send(bob, 'hi alice');
  await until('alice to receive bob\'s answer', hasMessage(alice, 'hi alice'));
  assert.equal(await alice.$eval('#composer-input', (e) => e.value), '');
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
});

test('typing shows on the other page, without moving the page', TEST, async () => {
  const before = await alice.$eval('#composer', (e) => e.getBoundingClientRect().top);
  await bob.focus('#composer-input');
  await bob.keyboard.type('thinking');
  await until('alice to see bob typing', async () => (await text(alice, '#typing')) === 'bob is typing…');
  assert.equal(await alice.$eval('#composer', (e) => e.getBoundingClientRect().top), before);
  // Clearing the box ends typing.
  await bob.$eval('#composer-input', (e) => { e.value = ''; e.dispatchEvent(new Event('input')); });
  await until('alice to see bob stop typing', async () => (await text(alice, '#typing')) === '');
  assert.equal(await alice.$eval('#composer', (e) => e.getBoundingClientRect().top), before);
});

test('read state and unread counts', TEST, async () => {
  // bob has General open, so alice's message is read by him at once.
  await send(alice, 'read me');
  await until('bob to receive it', hasMessage(bob, 'read me'));
  const read = await until('alice to see it read',
    async () => (await messageTexts(alice)).find((m) => m.text === 'read me' && m.read === 'Read'));
  assert.ok(read);

  // bob looks at another room: alice's next messages count as unread there, and are not
  // read until he comes back.
  await openRoom(bob, OTHER);
  await send(alice, 'unread one');
  await send(alice, 'unread two');
  await until('bob\'s General badge to show 2', async () => (await badge(bob, GENERAL)) === 2);
  const last = await bob.$eval(`#rooms button[data-room-id="${GENERAL}"] .last`, (e) => e.textContent);
  assert.equal(last, 'alice: unread two');
  assert.equal((await messageTexts(alice)).find((m) => m.text === 'unread two').read, '');
  await openRoom(bob, GENERAL);
  await until('the badge to fall to 0', async () => (await badge(bob, GENERAL)) === 0);
  await until('alice to see both read', async () => (await messageTexts(alice))
    .filter((m) => m.text.startsWith('unread ')).every((m) => m.read === 'Read'));
  // The read mark is the server's: GET /chat/rooms agrees.
  const rooms = await (await fetch(`${env.http}/chat/rooms`, {
    headers: { Authorization: `Bearer ${token(2)}` }, signal: AbortSignal.timeout(WAIT_MS),
  })).json();
  const general = rooms.rooms.find((r) => r.id === GENERAL);
  assert.equal(general.unread, 0);
  assert.equal(general.lastMessage.content, 'unread two');
});

test('a fresh page shows the server\'s unread counts and last messages', TEST, async () => {
  await openRoom(alice, OTHER);
  await send(alice, 'in the other room');
  await until('bob\'s badge for it', async () => (await badge(bob, OTHER)) === 1);
  // The token is kept for the tab, so a reload signs in again by itself.
  await bob.reload({ waitUntil: 'load' });
  await bob.waitForFunction(() => document.querySelector('#conn').dataset.state === 'connected'
    && document.querySelectorAll('#rooms button').length === 3, { timeout: WAIT_MS, polling: 100 });
  assert.equal(await badge(bob, OTHER), 1);
  assert.equal(await badge(bob, GENERAL), 0);
  const last = await bob.$eval(`#rooms button[data-room-id="${OTHER}"] .last`, (e) => e.textContent);
  assert.equal(last, 'alice: in the other room');
  await openRoom(bob, OTHER);
  await until('the badge to fall to 0', async () => (await badge(bob, OTHER)) === 0);
  await openRoom(alice, GENERAL);
  await openRoom(bob, GENERAL);
  await until('history after the reload', hasMessage(bob, 'unread two'));
});

test('edit and delete, seen by the other page', TEST, async () => {
  await send(alice, 'typo here');
  await until('bob to receive it', hasMessage(bob, 'typo here'));
  const li = await until('alice\'s copy', () => alice.evaluateHandle(() => [...document
    .querySelectorAll('#messages .msg.mine')].find((e) => e.querySelector('.text').textContent === 'typo here')
    ?.closest('li') ?? null).then((h) => h.asElement()));
  await (await li.$('.actions button')).click(); // Edit
  const box = await alice.waitForSelector('.edit-form textarea', { timeout: WAIT_MS });
  await box.evaluate((e) => { e.value = ''; });
  await box.type('no typo here');
  await alice.keyboard.press('Enter');
  const edited = await until('bob to see the edit', hasMessage(bob, 'no typo here'));
  assert.equal(edited.edited, true);
  assert.equal((await messageTexts(bob)).some((m) => m.text === 'typo here'), false);

  const li2 = await until('alice\'s edited copy', () => alice.evaluateHandle(() => [...document
    .querySelectorAll('#messages .msg.mine')].find((e) => e.querySelector('.text').textContent === 'no typo here')
    ?.closest('li') ?? null).then((h) => h.asElement()));
  const buttons = await li2.$$('.actions button');
  await buttons[1].click(); // Delete (the page's confirm() is accepted)
  await until('bob to see it deleted', async () => (await messageTexts(bob))
    .some((m) => m.text === 'Message deleted') && !(await messageTexts(bob)).some((m) => m.text === 'no typo here'));
});

test('the server restarts: both pages reconnect and nothing is lost', TEST, async () => {
  await control('stop');
  await until('both pages to show the drop', async () => (await connState(alice)) === 'reconnecting'
    && (await connState(bob)) === 'reconnecting');
  assert.match(await text(alice, '#conn'), /^Offline/);
  // bob writes while the server is down: kept, shown as sending, sent once it is back.
  await send(bob, 'written while offline');
  assert.equal((await messageTexts(bob)).find((m) => m.text === 'written while offline').pending, true);
  await control('start');
  // Posted over HTTP as soon as the server is back, maybe before alice's page reconnects:
  // she gets it either way (live, or replayed with `since`).
  const posted = await post('/chat-ws/send-message', token(2),
    { roomId: GENERAL, message: { content: 'posted during the reconnect' } });
  assert.equal(posted.status, 200);
  await until('both pages to reconnect', async () => (await connState(alice)) === 'connected'
    && (await connState(bob)) === 'connected', 45000);
  for (const content of ['written while offline', 'posted during the reconnect']) {
    await until(`alice to receive "${content}"`, hasMessage(alice, content), 45000);
    await until(`bob to see "${content}" stored`, hasMessage(bob, content), 45000);
  }
  // Exactly once each, and everything from before the restart still there.
  for (const page of [alice, bob]) {
    const texts = (await messageTexts(page)).map((m) => m.text);
    for (const content of ['hello bob', 'hi alice', 'written while offline', 'posted during the reconnect']) {
      assert.equal(texts.filter((x) => x === content).length, 1, `${content} once in ${texts}`);
    }
    assert.equal((await messageTexts(page)).some((m) => m.pending), false);
  }
  // And the live path works after the restart.
  await send(alice, 'after the restart');
  await until('bob to receive it', hasMessage(bob, 'after the restart'));
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
});

test('history pages back with "Load older messages", keeping the view in place', TEST, async () => {
  // 45 messages: a page of 30, then the older 15.
  for (let i = 1; i <= 45; i += 1) {
    const r = await post('/chat-ws/send-message', token(2),
      { roomId: ARCHIVE, message: { content: `archived ${i}` }, clientMessageId: `archive-${i}` });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  await openRoom(alice, ARCHIVE);
  await until('the newest page', hasMessage(alice, 'archived 45'));
  let texts = (await messageTexts(alice)).map((m) => m.text);
  assert.equal(texts.length, 30);
  assert.equal(texts[0], 'archived 16');
  assert.equal(await alice.$eval('#older', (e) => e.hidden), false);
  // Scrolled to the top, the first message on screen stays where it is when older ones
  // are added above it.
  await alice.$eval('#scroller', (e) => { e.scrollTop = 0; });
  const anchor = await alice.$eval('#messages .msg', (e) => e.getBoundingClientRect().top);
  await alice.focus('#older');
  await alice.keyboard.press('Enter');
  await until('the older page', hasMessage(alice, 'archived 1'));
  texts = (await messageTexts(alice)).map((m) => m.text);
  assert.deepEqual(texts, Array.from({ length: 45 }, (_, i) => `archived ${i + 1}`));
  assert.equal(await alice.$eval('#older', (e) => e.hidden), true);
  const moved = await alice.$$eval('#messages .msg', (lis) => lis
    .find((li) => li.querySelector('.text').textContent === 'archived 16').getBoundingClientRect().top);
  assert.ok(Math.abs(moved - anchor) < 2, `'archived 16' moved from ${anchor} to ${moved}`);
  await openRoom(alice, GENERAL);
});

test('phone width: one pane at a time, nothing wider than the screen', TEST, async () => {
  const phone = await openPage(await newBrowser(), `${env.http}/`, { width: 390, height: 780 });
  await signIn(phone, token(2));
  const shown = (sel) => phone.$eval(sel, (e) => e.getBoundingClientRect().width > 0);
  assert.equal(await shown('.rooms'), true);
  assert.equal(await shown('.room'), false);
  await openRoom(phone, GENERAL);
  assert.equal(await shown('.rooms'), false);
  await until('history', hasMessage(phone, 'after the restart'));
  const width = await phone.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(width[0] <= width[1], `page ${width[0]}px wide on a ${width[1]}px screen`);
  if (SHOTS) {
    await phone.click('#back');
    for (const page of [alice, bob, phone]) await openRoom(page, OTHER);
    const lines = [
      [alice, 'Release is tagged as v1.4.0. The changelog is in the wiki.'],
      [bob, 'Thanks! I will upgrade staging after lunch.'],
      [alice, 'The migration takes about a minute; the app stays up meanwhile.'],
      [bob, 'Staging is upgraded, all checks green.'],
    ];
    for (const [page, line] of lines) {
      await send(page, line);
      await until('the line to arrive', hasMessage(alice, line));
      await until('the line to arrive', hasMessage(phone, line));
    }
    await bob.focus('#composer-input');
    await bob.keyboard.type('Rolling out to production');
    await until('the typing line', async () => (await text(alice, '#typing')) !== '');
    await until('read marks', async () => (await messageTexts(alice)).at(-2).read === 'Read');
    await alice.screenshot({ path: path.join(SHOTS, 'web-client-desktop.png') });
    await phone.screenshot({ path: path.join(SHOTS, 'web-client-phone.png') });
  }
  await phone.click('#back');
  assert.equal(await shown('.rooms'), true);
  assert.deepEqual(phone.errors, []);
});
