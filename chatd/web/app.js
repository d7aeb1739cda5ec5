// chatd web client: plain JavaScript, no build step.
//
// Messages go both ways over /chat, the ticket protocol (POST /chat/ticket, then
// /chat?ticket=…&since=<last id seen>), which replays what was missed after a drop.
// Typing, presence and read marks travel on the STOMP room destinations (stompjs, shipped
// beside this file): /chat carries chat messages only. They are sent over the HTTP API
// (/chat-ws/typing-start|end, /chat-ws/read). Edits and deletes go over HTTP (PATCH and
// DELETE /chat/rooms/{id}/messages/{mid}) and come back as message_updated /
// message_deleted, on /chat (asked for with CHAT_EVENTS_QUERY) and on STOMP alike.
'use strict';

(() => {
  const BASE = location.origin;
  const WS_BASE = BASE.replace(/^http/, 'ws');
  const CHAT_EVENTS_QUERY = 'edits=1';
  const PAGE = 30;
  const TYPING_IDLE_MS = 3000;
  const RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
  const TOKEN_KEY = 'chatd.token';

  const $ = (id) => document.getElementById(id);
  const el = {
    conn: $('conn'), me: $('me'), signout: $('signout'),
    signin: $('signin'), signinForm: $('signin-form'), token: $('token'), signinError: $('signin-error'),
    chat: $('chat'), rooms: $('rooms'), noRooms: $('no-rooms'), back: $('back'),
    roomTitle: $('room-title'), presence: $('presence'), scroller: $('scroller'), older: $('older'),
    messages: $('messages'), typing: $('typing'), roomError: $('room-error'),
    composer: $('composer'), input: $('composer-input'), send: $('send'),
  };

  // Everything the page knows; reset on sign-out.
  let S = null;
  const fresh = (token) => ({
    token, me: null, myName: '', rooms: new Map(), current: null, names: new Map(),
    online: new Set(), lastId: 0, ws: null, everOpen: false, retry: 0, retryTimer: null, outbox: [],
    stomp: null, stompSubs: new Map(), typingRoom: null, typingTimer: null, ended: false,
  });

  // --- HTTP ------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.error;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${S.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(BASE + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch { /* an empty or non-JSON answer */ }
    if (!resp.ok) throw new HttpError(resp.status, data);
    return data;
  }

  // --- connection state --------------------------------------------------------------------

  function setConn(state, text) {
    el.conn.dataset.state = state;
    el.conn.textContent = text;
  }

  // --- sign in and out ----------------------------------------------------------------------

  async function signIn(token) {
    S = fresh(token);
    el.signinError.textContent = '';
    let info;
    try {
      info = await api('POST', '/chat-ws/connect');
    } catch (err) {
      S = null;
      el.signinError.textContent = err.status === 401
        ? `The server refused this token: ${err.message}`
        : `Cannot sign in: ${err.message}`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    S.me = info.userInfo.userId;
    S.myName = info.userInfo.username;
    S.names.set(S.me, S.myName);
    S.online.add(S.me);
    el.me.textContent = `Signed in as ${S.myName}`;
    el.signin.hidden = true;
    el.chat.hidden = false;
    el.signout.hidden = false;
    setView('rooms');
    // /chat first, the room list and history after it opens: whatever is stored after the
    // socket opened arrives on it, and what was stored before is in history.
    connectChat();
    startStomp(info);
  }

  function signOut(reason) {
    if (S) {
      S.ended = true;
      clearTimeout(S.retryTimer);
      clearTimeout(S.typingTimer);
      if (S.ws) S.ws.close(1000);
      if (S.stomp) S.stomp.deactivate();
    }
    S = null;
    sessionStorage.removeItem(TOKEN_KEY);
    el.rooms.replaceChildren();
    el.messages.replaceChildren();
    el.chat.hidden = true;
    el.signin.hidden = false;
    el.signout.hidden = true;
    el.me.textContent = '';
    el.signinError.textContent = reason || '';
    setConn('signed-out', 'Signed out');
    setView('signin');
    el.token.focus();
  }

  function setView(view) { document.body.dataset.view = view; }

  // --- /chat: the ticket protocol -----------------------------------------------------------

  async function connectChat() {
    const s = S;
    setConn(s.retry ? 'reconnecting' : 'connecting', s.retry ? 'Reconnecting…' : 'Connecting…');
    let ticket;
    try {
      ticket = (await api('POST', '/chat/ticket')).ticket;
    } catch (err) {
      if (s !== S || s.ended) return;
      if (err.status === 401) { signOut(`Signed out: ${err.message}`); return; }
      scheduleReconnect();
      return;
    }
    if (s !== S || s.ended) return;
    let url = `${WS_BASE}/chat?ticket=${encodeURIComponent(ticket)}&${CHAT_EVENTS_QUERY}`;
    if (s.lastId) url += `&since=${s.lastId}`;
    const ws = new WebSocket(url);
    s.ws = ws;
    ws.onopen = () => {
      if (s.ws !== ws) return;
      const first = !s.everOpen;
      s.everOpen = true;
      s.retry = 0;
      setConn('connected', 'Connected');
      for (const out of s.outbox) ws.send(JSON.stringify(out));
      // After a drop, `since` replays what was missed, unread counts included; fetching
      // the rooms again would count those twice.
      if (first) loadRooms(false);
    };
    ws.onmessage = (event) => {
      if (s !== S) return;
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      onChatFrame(data);
    };
    ws.onclose = (event) => {
      if (s.ws !== ws) return;
      s.ws = null;
      if (s !== S || s.ended) return;
      if (event.code === 4001) { signOut('Your token expired: sign in with a new one.'); return; }
      if (event.code === 1003 && /revoked/.test(event.reason)) {
        signOut('Your token was revoked: sign in with a new one.');
        return;
      }
      scheduleReconnect(event.reason);
    };
  }

  function scheduleReconnect(reason) {
    const s = S;
    const delay = RETRY_MS[Math.min(s.retry, RETRY_MS.length - 1)];
    s.retry += 1;
    const why = reason ? ` (${reason})` : '';
    setConn('reconnecting', `Offline${why}: retrying in ${Math.ceil(delay / 1000)} s`);
    clearTimeout(s.retryTimer);
    s.retryTimer = setTimeout(() => { if (s === S && !s.ended) connectChat(); }, delay);
  }

  function onChatFrame(data) {
    if (data.type === 'error') {
      if (data.code === 'resume_truncated') { loadRooms(true); return; }
      el.roomError.textContent = data.message || data.code;
      return;
    }
    if (data.type === 'message_updated' || data.type === 'message_deleted') {
      applyChange(data);
      return;
    }
    if (typeof data.id === 'number' && typeof data.roomId === 'number') addLive(data);
  }

  // --- STOMP: typing, presence, read marks, room changes --------------------------------------

  function startStomp(info) {
    if (!window.StompJs) return; // typing and read marks are extras; chat works without them
    const ci = info.connectionInfo;
    const s = S;
    // /ws on this page's own origin (chatd's HTTP listener serves it too, and a proxy in
    // front routes it): a same-origin page needs no [auth] allowed_origins entry, while
    // ci.stompUrl may name another port, which is another origin.
    const ownWs = location.origin.replace(/^http/, 'ws') + '/ws';
    const client = new window.StompJs.Client({
      brokerURL: ownWs,
      connectHeaders: { login: ci.username, passcode: ci.password, host: ci.vhost },
      reconnectDelay: 2000,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
    });
    // stompjs reconnects by itself with the same login; a login that has expired, or was
    // revoked, would be refused each time, so every reconnect asks for a fresh one.
    let first = true;
    client.beforeConnect = async () => {
      if (first) { first = false; return; }
      try {
        const again = (await api('POST', '/chat-ws/connect')).connectionInfo;
        client.connectHeaders = { login: again.username, passcode: again.password, host: again.vhost };
      } catch { /* the server is away: try again with what we have */ }
    };
    client.onConnect = () => {
      if (s !== S) return;
      s.stompSubs.clear();
      client.subscribe(info.userDestination, (frame) => onStompEvent(null, frame));
      for (const id of s.rooms.keys()) subscribeRoom(id);
    };
    s.stomp = client;
    client.activate();
  }

  function subscribeRoom(id) {
    const c = S.stomp;
    if (!c || !c.connected || S.stompSubs.has(id)) return;
    S.stompSubs.set(id, c.subscribe(`/exchange/chat.direct/room.${id}`, (f) => onStompEvent(id, f)));
  }

  function onStompEvent(roomId, frame) {
    let ev;
    try { ev = JSON.parse(frame.body); } catch { return; }
    const room = roomId === null ? null : S.rooms.get(roomId);
    switch (ev.type) {
      case 'user_typing':
        if (room && ev.userId !== S.me) {
          if (ev.isTyping) room.typing.add(ev.userId); else room.typing.delete(ev.userId);
          if (room === S.current) renderTyping();
        }
        break;
      case 'user_status_changed':
        if (ev.status === 'online') S.online.add(ev.userId); else S.online.delete(ev.userId);
        renderPresence();
        break;
      case 'message_read':
        if (room) {
          const before = room.readBy.get(ev.readerId) || 0;
          if (ev.messageId > before) room.readBy.set(ev.readerId, ev.messageId);
          if (ev.readerId === S.me && ev.messageId >= room.newestId) setUnread(room, 0);
          if (room === S.current) renderReadMarks();
        }
        break;
      case 'message_updated':
      case 'message_deleted':
        applyChange(ev);
        break;
      case 'room_joined':
      case 'room_removed':
      case 'room_updated':
        loadRooms(false);
        break;
      default:
        break; // new_message: it comes over /chat
    }
  }

  // --- rooms ------------------------------------------------------------------------------

  function roomState(r) {
    return {
      id: r.id, name: r.name, members: r.members || [], unread: 0, last: null, newestId: 0,
      msgs: new Map(), loaded: false, nextBefore: null, readBy: new Map(), typing: new Set(),
      readSent: 0,
    };
  }

  async function loadRooms(reloadCurrent) {
    const s = S;
    let data;
    try {
      data = await api('GET', '/chat/rooms');
    } catch (err) {
      if (s === S) el.roomError.textContent = `Cannot load rooms: ${err.message}`;
      return;
    }
    if (s !== S) return;
    const seen = new Set();
    for (const r of data.rooms) {
      seen.add(r.id);
      let room = s.rooms.get(r.id);
      if (!room) { room = roomState(r); s.rooms.set(r.id, room); }
      room.name = r.name;
      room.members = r.members || room.members;
      if (typeof r.unread === 'number') room.unread = r.unread;
      if (r.lastMessage) noteLast(room, normalize(r.lastMessage));
      subscribeRoom(r.id);
    }
    for (const id of [...s.rooms.keys()]) {
      if (!seen.has(id)) {
        s.rooms.delete(id);
        const sub = s.stompSubs.get(id);
        if (sub) { sub.unsubscribe(); s.stompSubs.delete(id); }
        if (s.current && s.current.id === id) closeRoom();
      }
    }
    renderRooms();
    if (s.current && reloadCurrent) {
      s.current.msgs.clear();
      s.current.loaded = false;
      openRoom(s.current.id);
    }
  }

  function noteLast(room, m) {
    if (!room.last || m.id >= room.last.id) room.last = m;
    if (m.id > room.newestId) room.newestId = m.id;
    if (m.id > S.lastId) S.lastId = m.id;
  }

  function setUnread(room, n) {
    room.unread = n;
    renderRooms();
  }

  function renderRooms() {
    const items = [];
    for (const room of [...S.rooms.values()].sort((a, b) => a.id - b.id)) {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.dataset.roomId = room.id;
      b.setAttribute('aria-current', String(S.current === room));
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = room.name;
      const last = document.createElement('span');
      last.className = 'last';
      if (room.last) {
        const who = room.last.user && room.last.user.id === S.me ? 'You' : authorName(room.last);
        last.textContent = room.last.deleted ? `${who}: message deleted` : `${who}: ${room.last.content}`;
      }
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.dataset.count = String(room.unread);
      badge.textContent = room.unread > 99 ? '99+' : String(room.unread);
      badge.setAttribute('aria-label', `${room.unread} unread`);
      b.append(name, badge, last);
      b.addEventListener('click', () => openRoom(room.id));
      li.append(b);
      items.push(li);
    }
    el.rooms.replaceChildren(...items);
    el.noRooms.hidden = S.rooms.size > 0;
  }

  // --- one room -----------------------------------------------------------------------------

  async function openRoom(id) {
    const room = S.rooms.get(id);
    if (!room) return;
    if (S.current !== room) stopTyping();
    S.current = room;
    setView('room');
    el.roomTitle.textContent = room.name;
    el.roomError.textContent = '';
    el.input.disabled = false;
    el.send.disabled = false;
    renderRooms();
    renderPresence();
    renderTyping();
    renderMessages();
    if (!room.loaded) await loadPage(room, null);
    if (S && S.current === room) {
      renderMessages();
      scrollToEnd();
      markRead(room);
    }
  }

  function closeRoom() {
    S.current = null;
    el.roomTitle.textContent = 'Choose a room';
    el.messages.replaceChildren();
    el.input.disabled = true;
    el.send.disabled = true;
    el.older.hidden = true;
    setView('rooms');
  }

  async function loadPage(room, before) {
    const q = `limit=${PAGE}${before ? `&before=${before}` : ''}`;
    let data;
    try {
      data = await api('GET', `/chat/rooms/${room.id}/messages?${q}`);
    } catch (err) {
      el.roomError.textContent = `Cannot load messages: ${err.message}`;
      return;
    }
    for (const raw of data.messages) {
      const m = normalize(raw);
      room.msgs.set(m.id, m);
      if (m.user) S.names.set(m.user.id, m.user.username);
      noteLast(room, m);
    }
    if (!before || room.nextBefore !== null) room.nextBefore = data.nextBefore;
    room.loaded = true;
  }

  async function loadOlder() {
    const room = S.current;
    if (!room || !room.nextBefore) return;
    const height = el.scroller.scrollHeight;
    const top = el.scroller.scrollTop;
    el.older.disabled = true;
    await loadPage(room, room.nextBefore);
    el.older.disabled = false;
    if (S.current !== room) return;
    renderMessages();
    // Keep what the reader was looking at where it was.
    el.scroller.scrollTop = top + (el.scroller.scrollHeight - height);
  }

  // One shape for every source: /chat and history (chat shape), STOMP (snake case).
  function normalize(m) {
    const out = {
      id: m.id,
      roomId: m.roomId ?? m.room_id,
      content: m.content ?? '',
      timestamp: m.timestamp ?? m.created_at,
      user: m.user || (m.sender_id !== undefined
        ? { id: m.sender_id, username: m.sender_name, profileImage: m.sender_profile_image }
        : null),
      editedAt: m.editedAt ?? m.edited_at ?? null,
      deleted: Boolean(m.deleted || m.deletedAt || m.deleted_at),
    };
    return out;
  }

  function addLive(raw) {
    const m = normalize(raw);
    if (m.user) S.names.set(m.user.id, m.user.username);
    if (m.id > S.lastId) S.lastId = m.id;
    const room = S.rooms.get(m.roomId);
    if (!room) { loadRooms(false); return; }
    const mine = m.user && m.user.id === S.me;
    if (mine) {
      const i = S.outbox.findIndex((o) => o.roomId === m.roomId && o.content === m.content);
      if (i >= 0) S.outbox.splice(i, 1);
    }
    const known = room.msgs.has(m.id) || (room.last && room.last.id >= m.id && !room.loaded);
    if (room.loaded || room === S.current) room.msgs.set(m.id, m);
    noteLast(room, m);
    if (!known && !mine) {
      const reading = room === S.current && document.visibilityState === 'visible';
      if (!reading) room.unread += 1;
    }
    renderRooms();
    if (room === S.current) {
      const atEnd = nearEnd();
      renderMessages();
      if (atEnd || mine) scrollToEnd();
      if (room.typing.delete(m.user && m.user.id)) renderTyping();
      markRead(room);
    }
  }

  function applyChange(ev) {
    const raw = ev.message || ev;
    const id = raw.id ?? ev.messageId;
    const roomId = raw.roomId ?? raw.room_id ?? ev.roomId;
    const room = S.rooms.get(roomId);
    if (!room) return;
    const old = room.msgs.get(id) || (room.last && room.last.id === id ? room.last : null);
    const m = old ? { ...old } : normalize({ ...raw, id, roomId });
    if (ev.type === 'message_deleted') {
      m.deleted = true;
      m.content = '';
    } else {
      const n = normalize({ ...raw, id, roomId });
      m.content = n.content;
      m.editedAt = n.editedAt || new Date().toISOString();
    }
    if (room.msgs.has(id) || room.loaded) room.msgs.set(id, m);
    if (room.last && room.last.id === id) room.last = m;
    renderRooms();
    if (room === S.current) renderMessages();
  }

  async function markRead(room) {
    if (document.visibilityState !== 'visible' || !room.newestId) return;
    if (room.readSent >= room.newestId) { if (room.unread) setUnread(room, 0); return; }
    room.readSent = room.newestId;
    setUnread(room, 0);
    try {
      await api('POST', '/chat-ws/read', { roomId: room.id, messageId: room.newestId });
    } catch { room.readSent = 0; }
  }

  // --- rendering messages ---------------------------------------------------------------------

  function authorName(m) {
    if (!m.user) return 'someone';
    return m.user.username || S.names.get(m.user.id) || `user ${m.user.id}`;
  }

  function timeOf(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function messageItem(m, pending) {
    const li = document.createElement('li');
    const mine = pending || (m.user && m.user.id === S.me);
    li.className = `msg${mine ? ' mine' : ''}${pending ? ' pending' : ''}${m.deleted ? ' deleted' : ''}`;
    if (!pending) li.dataset.id = m.id;
    const meta = document.createElement('p');
    meta.className = 'meta';
    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = pending ? 'You' : (mine ? 'You' : authorName(m));
    const time = document.createElement('time');
    time.textContent = pending ? 'sending…' : timeOf(m.timestamp);
    if (!pending && m.timestamp) time.dateTime = m.timestamp;
    meta.append(author, time);
    if (m.editedAt && !m.deleted) {
      const ed = document.createElement('span');
      ed.className = 'edited';
      ed.textContent = '(edited)';
      meta.append(ed);
    }
    if (mine && !pending) {
      const read = document.createElement('span');
      read.className = 'read';
      meta.append(read);
    }
    const text = document.createElement('p');
    text.className = 'text';
    text.textContent = m.deleted ? 'Message deleted' : m.content;
    if (mine && !pending && !m.deleted) meta.append(actions(m));
    li.append(meta, text);
    return li;
  }

  function actions(m) {
    const box = document.createElement('span');
    box.className = 'actions';
    const edit = document.createElement('button');
    edit.type = 'button';
    edit.textContent = 'Edit';
    edit.setAttribute('aria-label', `Edit message: ${m.content.slice(0, 40)}`);
    edit.addEventListener('click', () => startEdit(m, box));
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = 'Delete';
    del.setAttribute('aria-label', `Delete message: ${m.content.slice(0, 40)}`);
    del.addEventListener('click', () => deleteMessage(m));
    box.append(edit, del);
    return box;
  }

  function startEdit(m, box) {
    const form = document.createElement('form');
    form.className = 'edit-form';
    const label = document.createElement('label');
    label.className = 'visually-hidden';
    label.htmlFor = `edit-${m.id}`;
    label.textContent = 'Edit message';
    const ta = document.createElement('textarea');
    ta.id = `edit-${m.id}`;
    ta.rows = 2;
    ta.value = m.content;
    const save = document.createElement('button');
    save.type = 'submit';
    save.textContent = 'Save';
    const cancel = document.createElement('button');
    cancel.type = 'button';
    cancel.textContent = 'Cancel';
    form.append(label, ta, save, cancel);
    const li = box.closest('li');
    const shown = li.querySelector('.text');
    const done = () => {
      form.remove();
      shown.hidden = false;
      box.hidden = false;
      box.querySelector('button').focus();
    };
    cancel.addEventListener('click', done);
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); done(); }
      if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const content = ta.value.trim();
      if (!content || content === m.content) { done(); return; }
      try {
        const r = await api('PATCH', `/chat/rooms/${m.roomId}/messages/${m.id}`, { content });
        applyChange({ type: 'message_updated', message: { ...(r && r.id ? r : {}), id: m.id, roomId: m.roomId, content } });
      } catch (err) {
        el.roomError.textContent = `Cannot edit: ${err.message}`;
        done();
      }
    });
    shown.hidden = true;
    box.hidden = true;
    li.append(form);
    ta.focus();
  }

  async function deleteMessage(m) {
    if (!window.confirm('Delete this message?')) return;
    try {
      await api('DELETE', `/chat/rooms/${m.roomId}/messages/${m.id}`);
      applyChange({ type: 'message_deleted', message: { id: m.id, roomId: m.roomId } });
    } catch (err) {
      el.roomError.textContent = `Cannot delete: ${err.message}`;
    }
  }

  function renderMessages() {
    const room = S.current;
    if (!room) return;
    const items = [...room.msgs.values()].sort((a, b) => a.id - b.id).map((m) => messageItem(m, false));
    for (const out of S.outbox) {
      if (out.roomId === room.id) items.push(messageItem({ content: out.content }, true));
    }
    el.messages.replaceChildren(...items);
    el.older.hidden = !room.nextBefore;
    renderReadMarks();
  }

  function renderReadMarks() {
    const room = S.current;
    if (!room) return;
    let readUpTo = 0;
    for (const [reader, id] of room.readBy) if (reader !== S.me && id > readUpTo) readUpTo = id;
    for (const span of el.messages.querySelectorAll('.msg.mine .read')) {
      const id = Number(span.closest('li').dataset.id);
      span.textContent = id <= readUpTo ? 'Read' : '';
    }
  }

  function renderTyping() {
    const room = S.current;
    const names = room ? [...room.typing].map((id) => S.names.get(id) || `user ${id}`) : [];
    el.typing.textContent = names.length === 0 ? ''
      : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
  }

  function renderPresence() {
    const room = S && S.current;
    if (!room) { el.presence.textContent = ''; return; }
    const online = room.members.filter((id) => S.online.has(id))
      .map((id) => (id === S.me ? 'you' : S.names.get(id) || `user ${id}`));
    el.presence.textContent = `${room.members.length} members · online: ${online.join(', ')}`;
  }

  function nearEnd() {
    const s = el.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToEnd() { el.scroller.scrollTop = el.scroller.scrollHeight; }

  // --- sending and typing ---------------------------------------------------------------------

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  function sendMessage() {
    const room = S.current;
    const content = el.input.value.trim();
    if (!room || !content) return;
    const out = {
      roomId: room.id, content, timestamp: new Date().toISOString(), clientMessageId: newId(),
    };
    // Kept until the server echoes it; sent again (same clientMessageId, so stored once)
    // if the socket drops first.
    S.outbox.push(out);
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(out));
    el.input.value = '';
    stopTyping();
    renderMessages();
    scrollToEnd();
  }

  function noteTyping() {
    const room = S.current;
    if (!room) return;
    if (!el.input.value) { stopTyping(); return; }
    if (S.typingRoom !== room.id) {
      S.typingRoom = room.id;
      api('POST', '/chat-ws/typing-start', { roomId: room.id }).catch(() => {});
    }
    clearTimeout(S.typingTimer);
    S.typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    if (!S || S.typingRoom === null) return;
    const roomId = S.typingRoom;
    S.typingRoom = null;
    clearTimeout(S.typingTimer);
    api('POST', '/chat-ws/typing-end', { roomId }).catch(() => {});
  }

  // --- wiring -------------------------------------------------------------------------------

  el.signinForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = el.token.value.trim();
    if (token) signIn(token);
  });
  // Only this tab's sockets close: POST /chat-ws/disconnect would end the user's sessions
  // on every device.
  el.signout.addEventListener('click', () => signOut(''));
  el.back.addEventListener('click', () => {
    stopTyping();
    setView('rooms');
    const b = el.rooms.querySelector('[aria-current="true"]');
    if (b) b.focus();
  });
  el.older.addEventListener('click', loadOlder);
  el.composer.addEventListener('submit', (e) => { e.preventDefault(); sendMessage(); });
  el.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendMessage(); }
  });
  el.input.addEventListener('input', noteTyping);
  document.addEventListener('visibilitychange', () => {
    if (S && S.current && document.visibilityState === 'visible') markRead(S.current);
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
})();
