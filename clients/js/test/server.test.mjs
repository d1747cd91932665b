// The client against the real example server (examples/src/bin/server.rs),
// built from this workspace and started on a free port.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Client, RpcError, ErrorCode } from "../nbio-ws.js";
import { startServer, next, until, record, nextNotification } from "./helpers.mjs";

const fast = { WebSocket, initialDelay: 20, maxDelay: 200 };

describe("calls, errors, batches and notifications", () => {
  let srv;
  const clients = [];
  const client = (o) => {
    const c = new Client(srv.url, { ...fast, ...o });
    clients.push(c);
    return c;
  };
  before(async () => {
    srv = await startServer();
  });
  after(async () => {
    for (const c of clients) c.close();
    await srv.stop();
  });

  test("a call made while connecting is queued and resolves with the result", async () => {
    const c = client();
    assert.equal(c.state, "connecting");
    const r = await c.call("self.reply", { text: "hi" });
    assert.deepEqual(r, { echo: "hi", text_length: 2 });
    assert.equal(c.state, "connected");
    assert.equal(c.pending, 0);
  });

  test("an unknown method rejects with RpcError -32601 (kind remote)", async () => {
    const c = client();
    const e = await c.call("no.such.method", {}).catch((e) => e);
    assert.ok(e instanceof RpcError, String(e));
    assert.equal(e.code, -32601);
    assert.equal(e.kind, "remote");
    assert.match(e.message, /not found/i);
  });

  test("invalid params reject with -32602", async () => {
    const c = client();
    const e = await c.call("self.reply", { wrong: 1 }).catch((e) => e);
    assert.ok(e instanceof RpcError);
    assert.equal(e.code, -32602);
  });

  test("a batch: results in item order, a notification, a per-item error", async () => {
    const a = client();
    const b = client();
    await b.call("self.reply", { text: "ready" });
    const heard = nextNotification(b, "broadcast", (p) => p.text === "from the batch");
    const out = await a.batch([
      { method: "self.reply", params: { text: "one" } },
      { method: "broadcast", params: { text: "from the batch" }, notify: true },
      { method: "nope" },
      { method: "self.reply", params: { text: "four" } },
    ]);
    assert.equal(out.length, 4);
    assert.deepEqual(out[0], { status: "fulfilled", value: { echo: "one", text_length: 3 } });
    assert.deepEqual(out[1], { status: "fulfilled", value: undefined });
    assert.equal(out[2].status, "rejected");
    assert.equal(out[2].reason.code, -32601);
    assert.deepEqual(out[3], { status: "fulfilled", value: { echo: "four", text_length: 4 } });
    assert.deepEqual(await heard, { text: "from the batch" });
  });

  test("on() receives broadcasts from another client, off() stops them", async () => {
    const a = client();
    const b = client();
    await b.call("self.reply", { text: "ready" });
    const got = [];
    const h = (params, msg) => got.push([params.text, msg.method]);
    b.on("broadcast", h);
    const last = nextNotification(b, "broadcast", (p) => p.text === "2");
    await a.call("broadcast", { text: "1" });
    await a.call("broadcast", { text: "2" });
    await last;
    b.off("broadcast", h);
    const after = nextNotification(b, "broadcast", (p) => p.text === "3");
    await a.call("broadcast", { text: "3" });
    await after;
    assert.deepEqual(got, [
      ["1", "broadcast"],
      ["2", "broadcast"],
    ]);
  });

  test("notify() sends a notification: no answer, the broadcast reaches others", async () => {
    const a = client();
    const b = client();
    await Promise.all([a.call("self.reply", { text: "x" }), b.call("self.reply", { text: "x" })]);
    const heard = nextNotification(b, "broadcast", (p) => p.text === "notified");
    assert.equal(a.notify("broadcast", { text: "notified" }), undefined);
    assert.deepEqual(await heard, { text: "notified" });
    assert.equal(a.pending, 0);
  });

  test("a call the server does not answer in time rejects with kind timeout", async () => {
    const c = client();
    await c.call("self.reply", { text: "up" });
    await srv.pause(); // the socket stays open, nothing answers
    try {
      const e = await c.call("self.reply", { text: "late" }, { timeout: 100 }).catch((e) => e);
      assert.ok(e instanceof RpcError);
      assert.equal(e.kind, "timeout");
      assert.equal(e.code, ErrorCode.TIMEOUT);
      assert.equal(c.pending, 0);
    } finally {
      srv.resume();
    }
    // The late answer is dropped; the connection goes on.
    assert.deepEqual(await c.call("self.reply", { text: "ok" }), { echo: "ok", text_length: 2 });
  });

  test("an AbortSignal rejects the call with kind aborted", async () => {
    const c = client();
    await c.call("self.reply", { text: "up" });
    const pre = AbortSignal.abort("no");
    const e1 = await c.call("self.reply", { text: "x" }, { signal: pre }).catch((e) => e);
    assert.equal(e1.kind, "aborted");
    await srv.pause();
    try {
      const ac = new AbortController();
      const p = c.call("self.reply", { text: "x" }, { signal: ac.signal });
      ac.abort("changed my mind");
      const e2 = await p.catch((e) => e);
      assert.equal(e2.kind, "aborted");
      assert.equal(e2.code, ErrorCode.ABORTED);
      assert.equal(e2.data, "changed my mind");
    } finally {
      srv.resume();
    }
  });

  test("the pending table is bounded: kind overloaded past maxPending", async () => {
    const c = client({ maxPending: 3 });
    await c.call("self.reply", { text: "up" });
    const ps = [1, 2, 3].map((i) => c.call("self.reply", { text: String(i) }));
    const e = await c.call("self.reply", { text: "4" }).catch((e) => e);
    assert.equal(e.kind, "overloaded");
    assert.equal((await Promise.all(ps)).length, 3);
  });

  test("close() rejects pending calls with kind closed and stops", async () => {
    const c = client();
    await c.call("self.reply", { text: "up" });
    await srv.pause();
    let e;
    try {
      const p = c.call("self.reply", { text: "x" });
      c.close();
      e = await p.catch((e) => e);
    } finally {
      srv.resume();
    }
    assert.equal(e.kind, "closed");
    assert.equal(c.state, "closed");
    assert.equal((await c.call("self.reply", { text: "y" }).catch((e) => e)).kind, "closed");
  });
});

describe("server killed and restarted", () => {
  test("pending calls are rejected, the client reconnects with backoff, retried calls complete", async () => {
    let srv = await startServer();
    const o = { ...fast, initialDelay: 40, maxDelay: 400 };
    const c = new Client(srv.url, o);
    const log = record(c);
    try {
      await c.call("self.reply", { text: "up" });
      await srv.pause(); // calls are sent but not answered
      const lost = c.call("self.reply", { text: "lost" });
      const kept = c.call("self.reply", { text: "kept" }, { retry: true });
      const lostErr = lost.catch((e) => e);
      // Several failed attempts while the server is gone.
      const thirdFailure = next(c, "disconnected", (d) => d.attempt >= 4);
      await srv.stop("SIGKILL");
      const e = await lostErr;
      assert.ok(e instanceof RpcError);
      assert.equal(e.kind, "disconnected");
      assert.equal(e.code, ErrorCode.DISCONNECTED);
      assert.equal(e.data.code, 1006);
      await thirdFailure;
      assert.equal(c.pending, 1, "the retried call waits for the connection");

      srv = await startServer({ port: srv.port });
      await until(c, "connected");
      assert.deepEqual(await kept, { echo: "kept", text_length: 4 });
      assert.deepEqual(await c.call("self.reply", { text: "back" }), { echo: "back", text_length: 4 });

      // Exponential backoff with full jitter, bounded by maxDelay.
      const waits = log.filter((x) => x.type === "disconnected");
      assert.ok(waits.length >= 4, JSON.stringify(waits));
      waits.forEach((w, i) => {
        assert.equal(w.attempt, i + 1);
        assert.equal(w.cap, Math.min(o.maxDelay, o.initialDelay * 2 ** i));
        assert.ok(w.delay >= 0 && w.delay <= w.cap, `delay ${w.delay} within [0, ${w.cap}]`);
      });
      const states = log.map((x) => x.type).filter((t) => t !== "error");
      assert.deepEqual(states.slice(0, 3), ["connecting", "connected", "disconnected"]);
      assert.equal(states.at(-1), "connected");
      assert.equal(log.at(-1).reconnected, true);
    } finally {
      c.close();
      await srv.stop();
    }
  });

  test("a graceful shutdown (1001) is followed by a reconnect", async () => {
    let srv = await startServer();
    const c = new Client(srv.url, fast);
    try {
      await c.call("self.reply", { text: "up" });
      const down = next(c, "disconnected");
      await srv.stop("SIGTERM");
      assert.equal((await down).code, 1001);
      srv = await startServer({ port: srv.port });
      await until(c, "connected");
      assert.equal(c.state, "connected");
    } finally {
      c.close();
      await srv.stop();
    }
  });
});

describe("close codes that mean: do not reconnect", () => {
  test("1009 (message too big) from the real server closes the client for good", async () => {
    const srv = await startServer({ env: { WS_MAX_MESSAGE_SIZE: "1024" } });
    const c = new Client(srv.url, fast);
    const log = record(c);
    try {
      await c.call("self.reply", { text: "small" });
      const closed = next(c, "closed");
      const e = await c.call("self.reply", { text: "x".repeat(4096) }).catch((e) => e);
      assert.equal((await closed).code, 1009);
      assert.equal(e.kind, "closed");
      assert.equal(e.data.code, 1009);
      assert.equal(c.state, "closed");
      assert.deepEqual(
        log.map((x) => x.type),
        ["connecting", "connected", "closed"],
        "no reconnect attempt",
      );
      assert.equal((await c.call("self.reply", { text: "y" }).catch((e) => e)).kind, "closed");
    } finally {
      c.close();
      await srv.stop();
    }
  });
});

describe("bearer credentials (Sec-WebSocket-Protocol: bearer, <token>)", () => {
  test("getToken() is asked before every attempt; a refused token is retried with a fresh one", async () => {
    const srv = await startServer({ env: { WS_AUTH_ENABLED: "true", WS_BEARER_TOKENS: "alice:s3cret-token" } });
    const asked = [];
    const c = new Client(srv.url, {
      ...fast,
      getToken: async (info) => {
        asked.push(info.attempt);
        return asked.length < 3 ? "wrong-token" : "s3cret-token";
      },
    });
    try {
      await until(c, "connected");
      assert.deepEqual(asked, [0, 1, 2]);
      assert.deepEqual(await c.call("self.reply", { text: "authed" }), { echo: "authed", text_length: 6 });
    } finally {
      c.close();
      await srv.stop();
    }
  });

  test("a static token connects", async () => {
    const srv = await startServer({ env: { WS_AUTH_ENABLED: "true", WS_BEARER_TOKENS: "alice:s3cret-token" } });
    const c = new Client(srv.url, { ...fast, token: "s3cret-token" });
    try {
      assert.deepEqual(await c.call("self.reply", { text: "t" }), { echo: "t", text_length: 1 });
    } finally {
      c.close();
      await srv.stop();
    }
  });
});
