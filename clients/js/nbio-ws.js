// nbio-ws-client: a JSON-RPC 2.0 WebSocket client for nbio-ws servers.
// One ES module, no dependencies, no build step. Types: nbio-ws.d.ts.
// MIT OR Apache-2.0.

/** Codes of the errors the client raises itself (`kind` in the comment). */
export const ErrorCode = Object.freeze({
  TIMEOUT: -32801, // "timeout": no answer within the call's timeout
  DISCONNECTED: -32802, // "disconnected": the connection was lost before the answer came
  CLOSED: -32803, // "closed": the client is closed and will not reconnect
  ABORTED: -32804, // "aborted": the call's AbortSignal fired
  OVERLOADED: -32805, // "overloaded": too many calls pending, or the send queue is full
});

/** An error answer from the server (kind "remote") or one raised by the client. */
export class RpcError extends Error {
  constructor(code, message, data, kind = "remote") {
    super(message);
    this.name = "RpcError";
    this.code = code;
    this.data = data;
    this.kind = kind;
  }
}

const local = (kind, message, data) => new RpcError(ErrorCode[kind.toUpperCase()], message, data, kind);

/**
 * What a close code tells the client to do: "stop" for the codes that mean
 * "do not come back" (1000 from the server, 1002, 1003, 1007, 1009, 1010,
 * 4400-4999), "reconnect" for every other code.
 */
export function closeAction(code) {
  return [1000, 1002, 1003, 1007, 1009, 1010].includes(code) || (code >= 4400 && code <= 4999) ? "stop" : "reconnect";
}

// A stream position: offset 0 is an empty room's (nothing published yet);
// a publication's offset is 1 or more.
const isAt = (p) => !!p && typeof p.epoch === "string" && Number.isSafeInteger(p.offset) && p.offset >= 0;
const isPos = (p) => isAt(p) && p.offset >= 1;
const isPub = (p) => !!p && typeof p.method === "string";

/** Reads a join result the way the nbio-ws recovery protocol shapes it. */
export function defaultRecovery(result) {
  const r = result && typeof result === "object" ? result : {};
  const pubs = Array.isArray(r.publications) ? r.publications : Array.isArray(r.history) ? r.history : [];
  return { recovered: r.recovered, position: r.position, publications: pubs };
}

const DEFAULTS = {
  token: undefined,
  getToken: undefined,
  protocols: [],
  timeout: 30000,
  retry: false,
  maxPending: 1024,
  maxQueued: 256,
  maxBuffered: 10000,
  reconnect: true,
  initialDelay: 500,
  maxDelay: 15000,
  factor: 2,
  maxAttempts: Infinity,
  resetAfter: 5000,
  autoConnect: true,
};

/** A JSON-RPC 2.0 client over one reconnecting WebSocket. */
export class Client extends EventTarget {
  #ws = null;
  #gen = 0;
  #id = 0;
  #pending = new Map(); // id -> {resolve, reject, item, retry, timer, done}
  #queue = []; // items waiting for a connection: {msg, ids}
  #handlers = new Map(); // method -> Set of handlers
  #rooms = new Map(); // name -> Room
  #attempt = 0;
  #timer = null;
  #openedAt = 0;
  #code = undefined;
  #up = false; // the socket is open

  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { ...DEFAULTS, WebSocket: globalThis.WebSocket, ...options };
    this.state = "closed";
    if (typeof this.options.WebSocket !== "function") {
      throw new TypeError("nbio-ws: no WebSocket implementation: pass options.WebSocket (for example the ws package)");
    }
    if (this.options.autoConnect) {
      // Opened from a microtask so that listeners added right after the
      // constructor see the first "connecting" event.
      this.state = "connecting";
      const gen = this.#gen;
      queueMicrotask(() => gen === this.#gen && this.#open());
    }
  }

  /** Connects now: from "closed", or skipping the wait when "disconnected". */
  connect() {
    if (this.state === "connecting" || this.state === "connected") return;
    if (this.state === "closed") this.#attempt = 0;
    this.#open();
  }

  /** Closes for good (until connect()); pending calls fail with kind "closed". */
  close(code = 1000, reason = "") {
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    this.#shut(code, reason);
  }

  /** Calls a method; resolves with its result or rejects with an RpcError. */
  call(method, params, options) {
    return this.#rpc([{ method, params }], options, false)[0];
  }

  /** Sends a notification (no answer). Throws an RpcError when closed or the queue is full. */
  notify(method, params) {
    const e = this.#rpc([{ method, params, notify: true }], undefined, false)[0];
    if (e) throw e;
  }

  /**
   * Sends several requests in one message. Resolves with one settled result
   * per item ({status:"fulfilled", value} or {status:"rejected", reason});
   * rejects as a whole when the batch is lost (timeout, disconnected, ...).
   */
  async batch(items, options) {
    const out = await Promise.allSettled(this.#rpc(items, options, true).map((x) => (x instanceof RpcError ? Promise.reject(x) : x)));
    for (const r of out) if (r.status === "rejected" && r.reason.kind !== "remote") throw r.reason;
    return out;
  }

  /** Adds a handler for a server notification; returns a function that removes it. */
  on(method, handler) {
    let set = this.#handlers.get(method);
    if (!set) this.#handlers.set(method, (set = new Set()));
    set.add(handler);
    return () => this.off(method, handler);
  }

  /** Removes a handler added with on(). */
  off(method, handler) {
    const set = this.#handlers.get(method);
    if (set && set.delete(handler) && !set.size) this.#handlers.delete(method);
  }

  /** The room of this name, created with these options the first time. */
  room(name, options) {
    let r = this.#rooms.get(name);
    if (!r) {
      if (!options || typeof options.join !== "function") throw new TypeError("nbio-ws: room() needs options.join");
      this.#rooms.set(name, (r = new Room(this, name, options, (items, opts) => this.#rpc(items, opts, false), () => this.#rooms.delete(name))));
    }
    return r;
  }

  /** Number of calls waiting for an answer (sent or queued). */
  get pending() {
    return this.#pending.size;
  }

  // ---- connection ----------------------------------------------------------

  async #open() {
    clearTimeout(this.#timer);
    const gen = ++this.#gen;
    const o = this.options;
    this.#set("connecting", { attempt: this.#attempt });
    let token = o.token;
    let ws;
    try {
      if (o.getToken) token = await o.getToken({ attempt: this.#attempt, code: this.#code });
      if (gen !== this.#gen) return;
      ws = new o.WebSocket(this.url, token ? ["bearer", token, ...o.protocols] : o.protocols);
    } catch (e) {
      if (gen === this.#gen) {
        this.#emit("error", { error: e });
        this.#lost(1006, String(e && e.message));
      }
      return;
    }
    this.#ws = ws;
    ws.onerror = () => {}; // a close event follows
    ws.onopen = () => ws === this.#ws && this.#onOpen();
    ws.onmessage = (ev) => ws === this.#ws && this.#onMessage(ev.data);
    ws.onclose = (ev) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      this.#lost(ev.code, ev.reason);
    };
  }

  #onOpen() {
    this.#openedAt = Date.now();
    const again = this.#code !== undefined;
    this.#up = true;
    for (const r of this.#rooms.values()) r._connected();
    const q = this.#queue;
    this.#queue = [];
    for (const { msg, ids } of q) if (!ids.length || ids.some((id) => this.#pending.has(id))) this.#write(msg, ids);
    this.#set("connected", { attempt: this.#attempt, reconnected: again });
  }

  #lost(code, reason) {
    this.#up = false;
    this.#code = code;
    const o = this.options;
    if (this.#openedAt && Date.now() - this.#openedAt >= o.resetAfter) this.#attempt = 0;
    this.#openedAt = 0;
    if (closeAction(code) === "stop" || !o.reconnect || this.#attempt >= o.maxAttempts) {
      this.#shut(code, reason);
      return;
    }
    // Calls sent on the lost connection: retried ones go back to the queue, the others fail.
    const again = new Map();
    for (const [id, p] of this.#pending) {
      if (!p.sent) continue;
      if (p.retry) {
        p.sent = false;
        const e = again.get(p.msg) || { msg: p.msg, ids: [] };
        e.ids.push(id);
        again.set(p.msg, e);
      } else this.#settle(id, local("disconnected", `connection lost (${code})`, { code, reason }));
    }
    this.#queue = [...again.values(), ...this.#queue];
    for (const r of this.#rooms.values()) r._disconnected();
    const cap = Math.min(o.maxDelay, o.initialDelay * o.factor ** this.#attempt);
    const delay = Math.random() * cap;
    this.#attempt++;
    this.#set("disconnected", { code, reason, attempt: this.#attempt, delay, cap });
    const gen = this.#gen;
    this.#timer = setTimeout(() => gen === this.#gen && this.#open(), delay);
  }

  #shut(code, reason) {
    this.#gen++;
    this.#up = false;
    clearTimeout(this.#timer);
    const err = local("closed", `connection closed (${code})`, { code, reason });
    for (const id of [...this.#pending.keys()]) this.#settle(id, err);
    this.#queue = [];
    for (const r of [...this.#rooms.values()]) r._closed(err);
    this.#rooms.clear();
    if (this.state !== "closed") this.#set("closed", { code, reason });
  }

  #set(state, detail) {
    const previous = this.state;
    this.state = state;
    this.#emit(state, detail);
    this.#emit("statechange", { state, previous, ...detail });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // ---- requests ------------------------------------------------------------

  // Returns one promise per call item (notifications: an RpcError or undefined).
  #rpc(items, { timeout = this.options.timeout, signal, retry = this.options.retry } = {}, asBatch) {
    const calls = items.filter((i) => !i.notify).length;
    const fail = (e) => items.map((i) => (i.notify ? e : Promise.reject(e)));
    if (this.state === "closed") return fail(local("closed", "the client is closed"));
    if (signal && signal.aborted) return fail(local("aborted", "aborted", signal.reason));
    if (this.#pending.size + calls > this.options.maxPending) {
      return fail(local("overloaded", `more than ${this.options.maxPending} calls pending`));
    }
    if (!this.#up && this.#queue.length >= this.options.maxQueued) {
      return fail(local("overloaded", `more than ${this.options.maxQueued} messages queued while not connected`));
    }
    const ids = [];
    const out = [];
    const msgs = items.map(({ method, params, notify }) => {
      const m = { jsonrpc: "2.0", method };
      if (params !== undefined) m.params = params;
      if (notify) {
        out.push(undefined);
        return m;
      }
      const id = (m.id = this.#id = (this.#id % 2147483647) + 1);
      ids.push(id);
      out.push(
        new Promise((resolve, reject) => {
          const p = { resolve, reject, retry, sent: false };
          if (timeout > 0) {
            p.timer = setTimeout(() => this.#settle(id, local("timeout", `${method}: no answer in ${timeout} ms`)), timeout);
          }
          if (signal) {
            p.abort = () => this.#settle(id, local("aborted", `${method}: aborted`, signal.reason));
            p.signal = signal;
            signal.addEventListener("abort", p.abort, { once: true });
          }
          this.#pending.set(id, p);
        }),
      );
      return m;
    });
    const msg = asBatch ? msgs : msgs[0];
    for (const id of ids) this.#pending.get(id).msg = msg;
    if (this.#up) this.#write(msg, ids);
    else this.#queue.push({ msg, ids });
    return out;
  }

  #write(msg, ids) {
    for (const id of ids) {
      const p = this.#pending.get(id);
      if (p) p.sent = true;
    }
    try {
      this.#ws.send(JSON.stringify(msg));
    } catch (e) {
      for (const id of ids) this.#settle(id, e instanceof RpcError ? e : local("disconnected", String(e && e.message)));
    }
  }

  #settle(id, error, result) {
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    if (p.signal) p.signal.removeEventListener("abort", p.abort);
    if (error) p.reject(error);
    else p.resolve(result);
  }

  // ---- incoming ------------------------------------------------------------

  #onMessage(data) {
    if (typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    for (const m of Array.isArray(msg) ? msg : [msg]) {
      if (!m || typeof m !== "object") continue;
      if (typeof m.method === "string") {
        if (m.id === undefined || m.id === null) this.#notification(m);
      } else if (m.id !== undefined && m.id !== null) {
        const e = m.error;
        this.#settle(m.id, e ? new RpcError(Number(e.code), String(e.message ?? "error"), e.data) : null, m.result);
      } else if (m.error) {
        const e = m.error;
        this.#emit("error", { error: new RpcError(Number(e.code), String(e.message ?? "error"), e.data) });
      }
    }
  }

  #notification(m) {
    const pos = m.position;
    const room = pos && isPos(pos) && this.#rooms.get(pos.room);
    if (room) room._live(m);
    else this._deliver(m);
  }

  /** @internal Calls the handlers of a notification (or publication). */
  _deliver(m) {
    const set = this.#handlers.get(m.method);
    if (!set) return;
    for (const h of [...set]) {
      try {
        h(m.params, m);
      } catch (e) {
        // Reported like an event listener's exception; the other handlers still run.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  /** @internal */
  _emit(type, detail) {
    this.#emit(type, detail);
  }
}

/** A room the client joins, rejoins after each reconnect and recovers. */
class Room {
  #c;
  #rpc;
  #forget;
  #buf = null; // live publications held while a join is pending
  #overflow = false;
  #waiters = [];
  #busy = false; // a join call is in flight
  #try = 0;

  constructor(client, name, options, rpc, forget) {
    this.#c = client;
    this.name = name;
    this.options = options;
    this.#rpc = rpc;
    this.#forget = forget;
    this.position = isAt(options.position) ? { epoch: options.position.epoch, offset: options.position.offset } : null;
    this.state = "idle"; // idle | joining | joined
    this.result = undefined;
  }

  /** Joins (with `since` when a position is known); resolves with the join result. */
  join() {
    const p = new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
    if (this.state === "idle") this.state = "joining";
    if (!this.#busy && this.state === "joining") this.#attempt();
    else if (this.state === "joined") this.#done(null, this.result);
    return p;
  }

  /** Leaves: no more rejoins; calls options.leave's method when given. */
  async leave() {
    this.state = "idle";
    this.#buf = null;
    this.#try++;
    this.#forget();
    this.#done(local("aborted", `left ${this.name}`));
    // Not connected: the server dropped the membership with the connection.
    const l = this.options.leave && this.#c.state === "connected" && this.options.leave(this);
    if (l) return this.#rpc([{ method: l.method, params: l.params }], this.options.callOptions)[0];
  }

  #done(error, value) {
    const w = this.#waiters;
    this.#waiters = [];
    for (const x of w) error ? x.reject(error) : x.resolve(value);
  }

  async #attempt() {
    const since = this.position && { epoch: this.position.epoch, offset: this.position.offset };
    const { method, params } = this.options.join(since, this);
    const t = ++this.#try;
    this.#busy = true;
    this.#buf = [];
    this.#overflow = false;
    let res;
    try {
      res = await this.#rpc([{ method, params }], { ...this.options.callOptions, retry: false })[0];
    } catch (e) {
      if (t !== this.#try) return;
      this.#busy = false;
      this.#buf = null;
      if (e.kind === "disconnected") return; // rejoined once connected again
      this.state = "idle";
      this.#forget();
      this.#done(e);
      this.#c._emit("roomerror", { room: this.name, error: e });
      return;
    }
    if (t !== this.#try) return;
    this.#busy = false;
    const buf = this.#buf;
    this.#buf = null;
    const r = (this.options.recovery || defaultRecovery)(res) || {};
    if (since && r.recovered === false) {
      this.#c._emit("unrecovered", { room: this.name, since, position: r.position, result: res, reason: "server" });
    }
    if (isAt(r.position)) {
      if (this.position && r.position.epoch !== this.position.epoch) this.position = null;
      for (const p of Array.isArray(r.publications) ? r.publications : []) if (isPub(p)) this.#accept(p, true);
      const cur = this.position;
      if (!cur || (cur.epoch === r.position.epoch && r.position.offset > cur.offset)) {
        this.position = { epoch: r.position.epoch, offset: r.position.offset };
      }
    }
    for (const m of buf) this.#accept(m, false);
    if (this.#overflow) this.#c._emit("unrecovered", { room: this.name, since, position: this.position, reason: "overflow" });
    this.state = "joined";
    this.result = res;
    this.#c._emit("joined", { room: this.name, result: res, since, recovered: r.recovered });
    this.#done(null, res);
  }

  #accept(p, recovered) {
    const pos = p.position;
    const cur = this.position;
    if (isPos(pos)) {
      if (cur && pos.epoch === cur.epoch && pos.offset <= cur.offset) return; // already delivered
      if (cur && pos.epoch !== cur.epoch && !recovered) {
        this.#c._emit("unrecovered", { room: this.name, since: cur, position: pos, reason: "epoch" });
      }
      this.position = { epoch: pos.epoch, offset: pos.offset };
    }
    this.#c._deliver(recovered ? { jsonrpc: "2.0", ...p, recovered: true } : p);
  }

  /** @internal A live publication of this room. */
  _live(m) {
    if (this.#buf) {
      if (this.#buf.length < this.#c.options.maxBuffered) this.#buf.push(m);
      else this.#overflow = true;
    } else if (this.state === "joined") this.#accept(m, false);
    else this.#c._deliver(m);
  }

  /** @internal */
  _connected() {
    if (this.state === "joined") this.state = "joining";
    if (this.state === "joining" && !this.#busy) this.#attempt();
  }

  /** @internal */
  _disconnected() {
    if (this.state === "joined") this.state = "joining";
  }

  /** @internal */
  _closed(err) {
    this.state = "idle";
    this.#try++;
    this.#buf = null;
    this.#done(err);
  }
}
