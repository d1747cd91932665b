// The nbio-ws chat page: plain JavaScript, no build step.
//
// Talks JSON-RPC 2.0 over one WebSocket at /ws on the page's own host,
// through the nbio-ws client (/nbio-ws.js: clients/js in the repository),
// which reconnects with backoff and rejoins the rooms after a reconnect.
// Every string that came from a user or the server is put in the page with
// textContent (never innerHTML), so a message is always shown as text.

import { Client, RpcError } from "/nbio-ws.js";

{
  const $ = (id) => document.getElementById(id);
  const els = {
    conn: $("conn"),
    connText: $("conn-text"),
    reconnectNow: $("reconnect-now"),
    whoami: $("whoami"),
    error: $("error"),
    errorText: $("error-text"),
    errorClose: $("error-close"),
    login: $("login"),
    loginForm: $("login-form"),
    nick: $("nick"),
    room: $("room"),
    joinBtn: $("join-btn"),
    chat: $("chat"),
    rooms: $("rooms"),
    addRoomForm: $("add-room-form"),
    addRoom: $("add-room"),
    members: $("members"),
    memberCount: $("member-count"),
    currentRoom: $("current-room"),
    leaveBtn: $("leave-btn"),
    messages: $("messages"),
    composer: $("composer"),
    text: $("text"),
    sendBtn: $("send-btn"),
  };

  /** The WebSocket URL: same host as the page, ws:// or wss://, path /ws. */
  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  // ---- state ---------------------------------------------------------------

  const state = {
    nick: "",
    /** room name -> { members: string[], log: entry[], seen: Set, unread: number, joined: boolean } */
    rooms: new Map(),
    /** The room on screen. */
    active: null,
  };

  function roomState(name) {
    let r = state.rooms.get(name);
    if (!r) {
      r = { members: [], log: [], seen: new Set(), unread: 0, joined: false };
      state.rooms.set(name, r);
    }
    return r;
  }

  // ---- the connection (nbio-ws client) ---------------------------------------

  const CALL_TIMEOUT_MS = 15000;
  const client = new Client(wsUrl(), { initialDelay: 500, maxDelay: 15000, timeout: CALL_TIMEOUT_MS });
  let everOpened = false;
  let countdownTimer = null;

  /** The server's words: the message, and `data.detail` when there is one. */
  function errorText(e) {
    if (e instanceof RpcError) {
      const detail = e.data && e.data.detail;
      if (e.kind === "remote") return detail ? `${e.message}: ${detail}` : e.message;
      if (e.kind === "timeout") return "no answer from the server";
      return "not connected to the server";
    }
    return e && e.message ? e.message : String(e);
  }

  function setConn(stateName, text) {
    els.conn.dataset.state = stateName;
    els.connText.textContent = text;
    els.reconnectNow.hidden = stateName !== "waiting";
    document.body.dataset.conn = stateName;
    updateControls();
  }

  client.addEventListener("connecting", () => {
    clearInterval(countdownTimer);
    setConn("connecting", everOpened ? "Reconnecting…" : "Connecting…");
  });
  let online = false;
  client.addEventListener("connected", () => {
    everOpened = online = true;
    setConn("open", "Connected");
    // After a close for good and "Reconnect now", the client has forgotten its rooms.
    for (const [room, h] of handles) if (h.state === "idle") join(room, state.nick).catch(showError);
  });
  client.addEventListener("disconnected", (ev) => {
    if (online) {
      for (const room of state.rooms.keys()) addNotice(room, "info", "Connection lost; reconnecting…");
    }
    online = false;
    const due = Date.now() + ev.detail.delay;
    const tick = () => {
      const s = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setConn("waiting", `Disconnected — retrying in ${s}s`);
    };
    clearInterval(countdownTimer);
    tick();
    countdownTimer = setInterval(tick, 250);
  });
  client.addEventListener("closed", (ev) => {
    online = false;
    clearInterval(countdownTimer);
    setConn("waiting", `Disconnected (${ev.detail.code})`);
  });
  els.reconnectNow.addEventListener("click", () => client.connect());

  // Every join and rejoin (the client rejoins by itself after a reconnect).
  client.addEventListener("joined", (ev) => {
    const { room, result } = ev.detail;
    const r = state.rooms.get(room);
    if (!r) return;
    r.members = Array.isArray(result.members) ? result.members.slice() : [];
    // Without stream positions the history is plain messages; with them the
    // client delivers it to the chat.message handler (recovered, once each).
    if (!result.position) for (const msg of result.history || []) addChatMessage(room, msg, false);
    if (r.joined) addNotice(room, "info", "Reconnected.");
    r.joined = true;
    if (room === state.active) renderMembers();
  });
  client.addEventListener("unrecovered", (ev) => {
    addNotice(ev.detail.room, "info", "Some messages may be missing.");
  });
  // A rejoin refused after a reconnect: the room is gone.
  client.addEventListener("roomerror", (ev) => {
    const r = state.rooms.get(ev.detail.room);
    if (!r || !r.joined) return;
    showError(ev.detail.error);
    dropRoom(ev.detail.room);
    render();
  });
  client.addEventListener("error", (ev) => showError(ev.detail.error));

  const call = (method, params) => client.call(method, params);

  client.on("chat.message", (p) => addChatMessage(p.room, p, true));
  client.on("chat.joined", (p) => onPresence(p, "joined"));
  client.on("chat.left", (p) => onPresence(p, "left"));

  // ---- errors --------------------------------------------------------------

  function showError(err) {
    els.errorText.textContent = errorText(err);
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
    els.errorText.textContent = "";
  }

  els.errorClose.addEventListener("click", clearError);

  // ---- chat actions --------------------------------------------------------

  /** The client's room objects, by name. */
  const handles = new Map();

  async function join(room, nick) {
    const fresh = !state.rooms.has(room);
    roomState(room); // before the reply: recovered messages may come with it
    const handle = client.room(room, {
      // After a reconnect the client calls this again with the last position.
      join: (since) => ({ method: "chat.join", params: since ? { room, nick, since } : { room, nick } }),
      leave: () => ({ method: "chat.leave", params: { room } }),
    });
    try {
      await handle.join();
    } catch (e) {
      if (fresh) state.rooms.delete(room);
      throw e;
    }
    handles.set(room, handle);
    state.nick = nick;
    saveNick(nick);
    return room;
  }

  function dropRoom(room) {
    state.rooms.delete(room);
    handles.delete(room);
    if (state.active === room) state.active = state.rooms.keys().next().value || null;
  }

  async function leave(room) {
    try {
      const handle = handles.get(room);
      if (handle) await handle.leave();
    } catch (e) {
      // -32010: the server already forgot us there; drop it all the same.
      if (!(e instanceof RpcError && e.code === -32010)) {
        showError(e);
        return;
      }
    }
    dropRoom(room);
    render();
    if (!state.active) els.nick.focus();
  }

  async function send(room, text) {
    await call("chat.send", { room, text });
  }

  const membersTimers = new Map();
  /** Re-fetches the member list (after the quick local update). */
  function refreshMembersSoon(room) {
    clearTimeout(membersTimers.get(room));
    membersTimers.set(
      room,
      setTimeout(async () => {
        membersTimers.delete(room);
        if (!state.rooms.has(room)) return;
        try {
          const res = await call("chat.members", { room });
          if (state.rooms.has(room)) {
            state.rooms.get(room).members = res.members || [];
            if (state.active === room) renderMembers();
          }
        } catch {
          // Not fatal: the local list stays.
        }
      }, 300),
    );
  }

  // ---- incoming ------------------------------------------------------------

  function addChatMessage(room, msg, live) {
    const r = state.rooms.get(room);
    if (!r) return;
    const key = `${msg.ts}\u0000${msg.nick}\u0000${msg.text}`;
    if (r.seen.has(key)) return;
    r.seen.add(key);
    const entry = { kind: "message", nick: String(msg.nick ?? ""), text: String(msg.text ?? ""), ts: Number(msg.ts) || Date.now() };
    r.log.push(entry);
    if (r.log.length > 500) r.log.splice(0, r.log.length - 500);
    if (room === state.active) appendEntry(entry);
    else if (live) {
      r.unread += 1;
      renderRooms();
    }
  }

  function addNotice(room, kind, text) {
    const r = state.rooms.get(room);
    if (!r) return;
    const entry = { kind: "notice", notice: kind, text, ts: Date.now() };
    r.log.push(entry);
    if (room === state.active) appendEntry(entry);
  }

  function onPresence(p, what) {
    const r = state.rooms.get(p.room);
    if (!r) return;
    const nick = String(p.nick ?? "");
    if (what === "joined") {
      r.members.push(nick);
      r.members.sort();
      addNotice(p.room, "joined", `${nick} joined`);
    } else {
      const i = r.members.indexOf(nick);
      if (i >= 0) r.members.splice(i, 1);
      addNotice(p.room, "left", `${nick} left`);
    }
    if (p.room === state.active) renderMembers();
    refreshMembersSoon(p.room);
  }

  // ---- rendering (textContent only) ----------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === "text") node.textContent = v;
        else if (k === "class") node.className = v;
        else if (k.startsWith("data-")) node.setAttribute(k, v);
        else node[k] = v;
      }
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function nickHue(nick) {
    let h = 0;
    for (const ch of nick) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return h % 360;
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

  function entryNode(entry) {
    if (entry.kind === "notice") {
      return el("li", { class: `notice ${entry.notice}`, "data-testid": "notice", "data-kind": entry.notice },
        el("span", { class: "text", text: entry.text }));
    }
    const when = new Date(entry.ts);
    const nick = el("span", { class: "nick", "data-testid": "message-nick", text: entry.nick });
    nick.style.setProperty("--hue", String(nickHue(entry.nick)));
    const li = el("li", {
      class: entry.nick === state.nick ? "msg mine" : "msg",
      "data-testid": "message",
      "data-nick": entry.nick,
    },
      el("time", { class: "time", dateTime: when.toISOString(), title: when.toLocaleString(), text: timeFmt.format(when) }),
      nick,
      el("span", { class: "text", "data-testid": "message-text", text: entry.text }));
    return li;
  }

  function appendEntry(entry) {
    const box = els.messages;
    const empty = box.querySelector(".empty");
    if (empty) empty.remove();
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.append(entryNode(entry));
    if (atBottom || (entry.kind === "message" && entry.nick === state.nick)) box.scrollTop = box.scrollHeight;
  }

  function renderMessages() {
    const r = state.active && state.rooms.get(state.active);
    els.messages.replaceChildren();
    if (!r) return;
    if (r.log.length === 0) {
      els.messages.append(el("li", { class: "empty", text: "No messages yet. Say hello!" }));
    }
    for (const entry of r.log) els.messages.append(entryNode(entry));
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function renderMembers() {
    const r = state.active && state.rooms.get(state.active);
    const list = r ? r.members : [];
    const counts = new Map();
    for (const n of list) counts.set(n, (counts.get(n) || 0) + 1);
    const names = [...counts.keys()].sort((a, b) => a.localeCompare(b));
    els.members.replaceChildren(
      ...names.map((n) => {
        const li = el("li", { "data-testid": "member", "data-nick": n },
          el("span", { class: "avatar", text: [...n][0] ? [...n][0].toUpperCase() : "?" }),
          el("span", { class: "name", text: n }));
        li.firstChild.style.setProperty("--hue", String(nickHue(n)));
        if (n === state.nick) li.append(el("span", { class: "you", text: "you" }));
        if (counts.get(n) > 1) li.append(el("span", { class: "multi", text: `×${counts.get(n)}` }));
        return li;
      }),
    );
    els.memberCount.textContent = String(names.length);
  }

  function renderRooms() {
    els.rooms.replaceChildren(
      ...[...state.rooms.entries()].map(([name, r]) => {
        const open = el("button", { type: "button", class: "room-open", "data-testid": "room-open", title: `Switch to #${name}` },
          el("span", { class: "hash", text: "#" }),
          el("span", { class: "name", text: name }));
        if (r.unread > 0) open.append(el("span", { class: "badge", "data-testid": "unread", text: String(r.unread) }));
        open.addEventListener("click", () => switchTo(name));
        const close = el("button", { type: "button", class: "room-leave icon", "data-testid": "room-leave", title: `Leave #${name}`, text: "×" });
        close.setAttribute("aria-label", `Leave ${name}`);
        close.addEventListener("click", () => leave(name));
        return el("li", { class: name === state.active ? "active" : "", "data-testid": "room", "data-room": name }, open, close);
      }),
    );
  }

  function updateControls() {
    const online = client.state === "connected";
    els.sendBtn.disabled = !online;
    els.joinBtn.disabled = !online;
    els.leaveBtn.disabled = !online;
  }

  function render() {
    const inChat = state.active !== null;
    els.login.hidden = inChat;
    els.chat.hidden = !inChat;
    els.whoami.hidden = !inChat;
    els.whoami.textContent = inChat ? state.nick : "";
    document.body.dataset.view = inChat ? "chat" : "login";
    if (inChat) {
      const r = state.rooms.get(state.active);
      r.unread = 0;
      els.currentRoom.textContent = state.active;
      document.title = `#${state.active} — nbio-ws chat`;
    } else {
      document.title = "nbio-ws chat";
      if (state.nick) els.nick.value = state.nick;
    }
    renderRooms();
    renderMembers();
    renderMessages();
    updateControls();
  }

  function switchTo(room) {
    if (!state.rooms.has(room)) return;
    state.active = room;
    render();
    els.text.focus();
  }

  // ---- forms ---------------------------------------------------------------

  function saveNick(nick) {
    try {
      localStorage.setItem("nbio-chat-nick", nick);
    } catch {
      // storage may be unavailable; not important
    }
  }

  try {
    const saved = localStorage.getItem("nbio-chat-nick");
    if (saved) els.nick.value = saved;
  } catch {
    // ignore
  }

  async function joinAndShow(room, nick) {
    clearError();
    if (state.rooms.has(room)) {
      switchTo(room);
      return true;
    }
    try {
      const name = await join(room, nick);
      state.active = name;
      render();
      els.text.focus();
      return true;
    } catch (e) {
      showError(e);
      return false;
    }
  }

  els.loginForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const nick = els.nick.value.trim();
    const room = els.room.value.trim();
    await joinAndShow(room, nick);
  });

  els.addRoomForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const room = els.addRoom.value.trim();
    if (!room) return;
    if (await joinAndShow(room, state.nick)) els.addRoom.value = "";
  });

  els.leaveBtn.addEventListener("click", () => {
    if (state.active) leave(state.active);
  });

  els.composer.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const room = state.active;
    const text = els.text.value;
    if (!room || !text.trim()) return;
    els.sendBtn.disabled = true;
    try {
      await send(room, text);
      els.text.value = "";
      autosize();
      clearError();
    } catch (e) {
      showError(e);
    } finally {
      updateControls();
      els.text.focus();
    }
  });

  // Enter sends; Shift+Enter inserts a new line.
  els.text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      els.composer.requestSubmit();
    }
  });

  function autosize() {
    els.text.style.height = "auto";
    els.text.style.height = `${Math.min(els.text.scrollHeight, 160)}px`;
  }
  els.text.addEventListener("input", autosize);

  render();
}
