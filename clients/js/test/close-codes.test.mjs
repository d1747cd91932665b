// Close-code behaviour, with a scripted ws server that closes with each
// code. (The real server's 1001, 1006 and 1009 are in server.test.mjs; the
// framework itself sends 4000 for a stream gap and 4001 when credentials
// expire, the other 4xxx codes only when an application closes a client
// with one.) 4001 is among the reconnecting codes below: `getToken` is
// called, with that code, before the new attempt.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Client, closeAction } from "../nbio-ws.js";
import { fakeServer } from "./fake-server.mjs";
import { next, until, record } from "./helpers.mjs";

const fast = { WebSocket, initialDelay: 10, maxDelay: 50 };

test("closeAction: the protocol's table", () => {
  const stop = [1000, 1002, 1003, 1007, 1009, 1010, 4400, 4401, 4403, 4409, 4500, 4999];
  const reconnect = [1001, 1005, 1006, 1008, 1011, 1012, 1013, 1014, 1015, 3000, 3999, 4000, 4001, 4200, 4399, 5000];
  for (const c of stop) assert.equal(closeAction(c), "stop", `code ${c}`);
  for (const c of reconnect) assert.equal(closeAction(c), "reconnect", `code ${c}`);
});

for (const code of [1000, 1002, 1003, 1007, 1009, 1010, 4400, 4401, 4403, 4409, 4999]) {
  test(`a server close with ${code} closes the client: no reconnect, calls fail with kind closed`, async () => {
    const srv = await fakeServer();
    const c = new Client(srv.url, fast);
    const log = record(c);
    try {
      const first = c.call("first");
      const conn = await srv.connection();
      const req = await conn.recv();
      assert.equal(req.method, "first");
      conn.reply(req, "one");
      assert.equal(await first, "one");
      const call = c.call("second").catch((e) => e);
      await conn.recv();
      const closed = next(c, "closed");
      conn.close(code, "go away");
      assert.deepEqual(await closed, { code, reason: "go away" });
      const e = await call;
      assert.equal(e.kind, "closed");
      assert.deepEqual(e.data, { code, reason: "go away" });
      assert.equal(c.state, "closed");
      assert.deepEqual(log.map((x) => x.type), ["connecting", "connected", "closed"]);
      assert.equal(srv.conns.length, 1, "no second connection");
    } finally {
      c.close();
      await srv.close();
    }
  });
}

for (const code of [1001, 1008, 1011, 1012, 1013, 1014, 3000, 4000, 4001, 4399]) {
  test(`a server close with ${code} is followed by a reconnect`, async () => {
    const srv = await fakeServer();
    const tokens = [];
    const c = new Client(srv.url, {
      ...fast,
      getToken: (info) => {
        tokens.push(info);
        return `t${tokens.length}`;
      },
    });
    try {
      const first = await srv.connection();
      assert.equal(first.protocols, "bearer,t1");
      await until(c, "connected");
      first.close(code, "again");
      const second = await srv.connection();
      assert.equal(second.protocols, "bearer,t2", "a fresh token for the new connection");
      assert.deepEqual(tokens, [
        { attempt: 0, code: undefined },
        { attempt: 1, code },
      ]);
      await until(c, "connected");
      const p = c.call("ping");
      second.reply(await second.recv(), "pong");
      assert.equal(await p, "pong");
    } finally {
      c.close();
      await srv.close();
    }
  });
}

test("maxAttempts: the client gives up (closed) after that many failed attempts", async () => {
  const srv = await fakeServer();
  const url = srv.url;
  await srv.close(); // nothing listens there now
  const c = new Client(url, { ...fast, maxAttempts: 3 });
  const log = record(c);
  await until(c, "closed");
  assert.deepEqual(
    log.map((x) => x.type),
    ["connecting", "disconnected", "connecting", "disconnected", "connecting", "disconnected", "connecting", "closed"],
  );
});

test("reconnect: false stops after the first loss", async () => {
  const srv = await fakeServer();
  const c = new Client(srv.url, { ...fast, reconnect: false });
  try {
    (await srv.connection()).close(1012);
    assert.equal((await next(c, "closed")).code, 1012);
  } finally {
    await srv.close();
  }
});

test("calls queued while disconnected are sent after reconnecting; the queue is bounded", async () => {
  const srv = await fakeServer();
  const c = new Client(srv.url, { ...fast, maxQueued: 2 });
  try {
    const first = await srv.connection();
    await until(c, "connected");
    const down = next(c, "disconnected");
    first.close(1012);
    await down;
    const a = c.call("a");
    c.notify("b");
    const e = await c.call("c").catch((e) => e);
    assert.equal(e.kind, "overloaded");
    assert.throws(() => c.notify("d"), (e) => e.kind === "overloaded");
    const second = await srv.connection();
    const ra = await second.recv();
    assert.equal(ra.method, "a");
    assert.deepEqual(await second.recv(), { jsonrpc: "2.0", method: "b" });
    second.reply(ra, 1);
    assert.equal(await a, 1);
  } finally {
    c.close();
    await srv.close();
  }
});

test("a server error without an id is an error event; a server request is ignored", async () => {
  const srv = await fakeServer();
  const c = new Client(srv.url, fast);
  try {
    const conn = await srv.connection();
    const err = next(c, "error");
    conn.send({ jsonrpc: "2.0", method: "please.answer", id: 7 });
    conn.send({ jsonrpc: "2.0", error: { code: -32700, message: "Parse error" }, id: null });
    const { error } = await err;
    assert.equal(error.code, -32700);
    assert.equal(error.kind, "remote");
  } finally {
    c.close();
    await srv.close();
  }
});
