// Protocol unit tests for rooms with recovery: a scripted ws server speaks
// the recovery protocol (positions on live publications, `since` on join,
// a Recovery in the join result) message by message, so that buffering,
// deduplication and order are checked exactly. The same behaviour against
// the real server belongs with the server's history support.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Client } from "../nbio-ws.js";
import { fakeServer } from "./fake-server.mjs";
import { next, until, record } from "./helpers.mjs";

const fast = { WebSocket, initialDelay: 5, maxDelay: 20 };
const E = "e1";
const pub = (room, offset, epoch = E) => ({
  jsonrpc: "2.0",
  method: "msg",
  params: { room, n: offset },
  position: { room, epoch, offset },
});
const recovered = (room, offsets, epoch = E) => offsets.map((o) => ({ method: "msg", params: { room, n: o }, position: { room, epoch, offset: o } }));
const joinOpts = (room) => ({
  join: (since) => ({ method: "room.join", params: since ? { room, since } : { room } }),
  leave: () => ({ method: "room.leave", params: { room } }),
});

/** A client with a room, its deliveries recorded as [n, recovered?]. */
async function setup(clientOptions = {}, room = "lobby", roomOptions = joinOpts(room)) {
  const srv = await fakeServer();
  const c = new Client(srv.url, { ...fast, ...clientOptions });
  const got = [];
  c.on("msg", (p, m) => got.push([p.n, m.recovered === true]));
  const r = c.room(room, roomOptions);
  return { srv, c, r, got, log: record(c) };
}

test("first join: live publications that arrive before the reply are buffered, deduplicated and delivered after the history", async () => {
  const { srv, c, r, got } = await setup();
  try {
    const joined = r.join();
    const conn = await srv.connection();
    const req = await conn.recv();
    assert.deepEqual(req.params, { room: "lobby" }, "no since the first time");
    // 3 and 4 were published after the server read the history up to 3.
    conn.send(pub("lobby", 3));
    conn.send(pub("lobby", 4));
    conn.send(pub("lobby", 5));
    conn.reply(req, { recovered: false, position: { epoch: E, offset: 3 }, publications: recovered("lobby", [1, 2, 3]) });
    const res = await joined;
    assert.equal(res.position.offset, 3);
    assert.deepEqual(got, [
      [1, true],
      [2, true],
      [3, true],
      [4, false],
      [5, false],
    ]);
    assert.deepEqual(r.position, { epoch: E, offset: 5 });
    assert.equal(r.state, "joined");
    conn.send(pub("lobby", 4)); // a duplicate is dropped
    conn.send(pub("lobby", 6));
    conn.send({ jsonrpc: "2.0", method: "msg", params: { n: "no position" } });
    await new Promise((res) => c.on("msg", (p) => p.n === "no position" && res()));
    assert.deepEqual(got.slice(5), [
      [6, false],
      ["no position", false],
    ]);
  } finally {
    c.close();
    await srv.close();
  }
});

test("after a reconnect: rejoin with since, recovered publications exactly once, in order, before live ones", async () => {
  const { srv, c, r, got, log } = await setup();
  try {
    const joined = r.join();
    const first = await srv.connection();
    const j1 = await first.recv();
    first.reply(j1, { recovered: true, position: { epoch: E, offset: 2 }, publications: [] });
    await joined;
    first.send(pub("lobby", 3));
    await until(c, "connected");
    // Lost with 4000 (stream gap): reconnect and recover.
    const waitRejoined = next(c, "joined", (d) => d.since !== null);
    await new Promise((res) => c.on("msg", (p) => p.n === 3 && res()));
    first.close(4000, "gap");
    const second = await srv.connection();
    const j2 = await second.recv();
    assert.equal(j2.method, "room.join");
    assert.deepEqual(j2.params, { room: "lobby", since: { epoch: E, offset: 3 } });
    // Live 6 and 7 (and a duplicate of 5) arrive before the reply.
    second.send(pub("lobby", 6));
    second.send(pub("lobby", 5));
    second.send(pub("lobby", 7));
    second.reply(j2, { recovered: true, position: { epoch: E, offset: 6 }, publications: recovered("lobby", [4, 5, 6]) });
    const d = await waitRejoined;
    assert.equal(d.recovered, true);
    assert.deepEqual(got, [
      [3, false],
      [4, true],
      [5, true],
      [6, true],
      [7, false],
    ]);
    assert.deepEqual(r.position, { epoch: E, offset: 7 });
    assert.equal(log.filter((x) => x.type === "unrecovered").length, 0);
  } finally {
    c.close();
    await srv.close();
  }
});

test("recovered: false is an unrecovered event; a new epoch starts over", async () => {
  const { srv, c, r, got } = await setup({}, "lobby", { ...joinOpts("lobby"), position: { epoch: "old", offset: 40 } });
  try {
    const unrecovered = next(c, "unrecovered");
    const joined = r.join();
    const conn = await srv.connection();
    const req = await conn.recv();
    assert.deepEqual(req.params.since, { epoch: "old", offset: 40 }, "a position given to room() is the first since");
    conn.send(pub("lobby", 2, "new"));
    conn.reply(req, { recovered: false, position: { epoch: "new", offset: 1 }, publications: recovered("lobby", [1], "new") });
    const u = await unrecovered;
    assert.equal(u.room, "lobby");
    assert.equal(u.reason, "server");
    assert.deepEqual(u.since, { epoch: "old", offset: 40 });
    assert.deepEqual(u.position, { epoch: "new", offset: 1 });
    await joined;
    assert.deepEqual(got, [
      [1, true],
      [2, false],
    ]);
    assert.deepEqual(r.position, { epoch: "new", offset: 2 });
    // The epoch changes under a joined room: reported, then followed.
    const again = next(c, "unrecovered");
    conn.send(pub("lobby", 1, "newer"));
    const u2 = await again;
    assert.equal(u2.reason, "epoch");
    assert.deepEqual(r.position, { epoch: "newer", offset: 1 });
  } finally {
    c.close();
    await srv.close();
  }
});

test("the buffer is bounded: an overflow is reported as unrecovered", async () => {
  const { srv, c, r, got } = await setup({ maxBuffered: 2 });
  try {
    const overflow = next(c, "unrecovered");
    const joined = r.join();
    const conn = await srv.connection();
    const req = await conn.recv();
    for (const o of [1, 2, 3, 4]) conn.send(pub("lobby", o));
    conn.reply(req, { recovered: true, position: { epoch: E, offset: 1 }, publications: [] });
    assert.equal((await overflow).reason, "overflow");
    await joined;
    assert.deepEqual(got, [[2, false]], "1 is at or before the join position; 3 and 4 did not fit");
  } finally {
    c.close();
    await srv.close();
  }
});

test("the join mapping is the application's: any method, since anywhere, a custom recovery reader", async () => {
  const roomOptions = {
    join: (since) => ({ method: "app.subscribe", params: ["news", since ? since.offset : null, since ? since.epoch : null] }),
    recovery: (res) => ({ recovered: res.ok, position: res.at, publications: res.missed }),
  };
  const { srv, c, r, got } = await setup({}, "news", roomOptions);
  try {
    const joined = r.join();
    const first = await srv.connection();
    const j1 = await first.recv();
    assert.deepEqual(j1, { jsonrpc: "2.0", method: "app.subscribe", params: ["news", null, null], id: j1.id });
    first.reply(j1, { ok: true, at: { epoch: E, offset: 10 }, missed: [] });
    await joined;
    first.close(1012);
    const second = await srv.connection();
    const j2 = await second.recv();
    assert.deepEqual(j2.params, ["news", 10, E]);
    second.reply(j2, { ok: true, at: { epoch: E, offset: 11 }, missed: recovered("news", [11]) });
    await next(c, "joined");
    assert.deepEqual(got, [[11, true]]);
  } finally {
    c.close();
    await srv.close();
  }
});

test("several rooms: each keeps its own position; publications of other rooms are not held back", async () => {
  const { srv, c, r, got } = await setup();
  const b = c.room("b", joinOpts("b"));
  try {
    const ja = r.join();
    const jb = b.join();
    const conn = await srv.connection();
    const reqA = await conn.recv();
    const reqB = await conn.recv();
    conn.reply(reqB, { recovered: true, position: { epoch: E, offset: 5 }, publications: [] });
    await jb;
    conn.send(pub("b", 6)); // b is joined: delivered at once, while lobby's join is pending
    conn.send(pub("lobby", 2));
    await new Promise((res) => c.on("msg", (p) => p.n === 6 && res()));
    assert.deepEqual(got, [[6, false]]);
    conn.reply(reqA, { recovered: true, position: { epoch: E, offset: 1 }, publications: [] });
    await ja;
    assert.deepEqual(got, [
      [6, false],
      [2, false],
    ]);
    assert.deepEqual(r.position, { epoch: E, offset: 2 });
    assert.deepEqual(b.position, { epoch: E, offset: 6 });
  } finally {
    c.close();
    await srv.close();
  }
});

test("a refused join rejects join() and emits roomerror; leave() stops the rejoins", async () => {
  const { srv, c, r, log } = await setup();
  try {
    const joined = r.join().catch((e) => e);
    const conn = await srv.connection();
    const req = await conn.recv();
    conn.send({ jsonrpc: "2.0", id: req.id, error: { code: -32010, message: "no", data: { detail: "banned" } } });
    const e = await joined;
    assert.equal(e.code, -32010);
    assert.deepEqual(e.data, { detail: "banned" });
    assert.equal(log.filter((x) => x.type === "roomerror").length, 1);

    const r2 = c.room("lobby", joinOpts("lobby"));
    const j = r2.join();
    const req2 = await conn.recv();
    conn.reply(req2, { recovered: true, position: { epoch: E, offset: 1 }, publications: [] });
    await j;
    const left = r2.leave();
    const lreq = await conn.recv();
    assert.deepEqual(lreq.params, { room: "lobby" });
    assert.equal(lreq.method, "room.leave");
    conn.reply(lreq, { room: "lobby" });
    assert.deepEqual(await left, { room: "lobby" });
    conn.close(1012);
    const second = await srv.connection();
    const p = c.call("after");
    const m = await second.recv();
    assert.equal(m.method, "after", "no rejoin of a room that was left");
    second.reply(m, true);
    await p;
  } finally {
    c.close();
    await srv.close();
  }
});

test("a join lost with its connection is sent again after reconnecting; join() resolves then", async () => {
  const { srv, c, r, got } = await setup();
  try {
    const joined = r.join();
    const first = await srv.connection();
    await first.recv();
    first.close(1012);
    const second = await srv.connection();
    const req = await second.recv();
    assert.deepEqual(req.params, { room: "lobby" });
    second.reply(req, { recovered: true, position: { epoch: E, offset: 2 }, publications: recovered("lobby", [1, 2]) });
    assert.equal((await joined).position.offset, 2);
    assert.deepEqual(got, [
      [1, true],
      [2, true],
    ]);
  } finally {
    c.close();
    await srv.close();
  }
});

test("an empty room's position (offset 0) is kept: the rejoin recovers from it", async () => {
  const { srv, c, r, got } = await setup();
  try {
    const joined = r.join();
    const first = await srv.connection();
    const j1 = await first.recv();
    first.reply(j1, { recovered: false, position: { epoch: E, offset: 0 }, publications: [] });
    await joined;
    assert.deepEqual(r.position, { epoch: E, offset: 0 });
    first.close(1012);
    const second = await srv.connection();
    const j2 = await second.recv();
    assert.deepEqual(j2.params, { room: "lobby", since: { epoch: E, offset: 0 } });
    const rejoined = next(c, "joined");
    second.reply(j2, { recovered: true, position: { epoch: E, offset: 1 }, publications: recovered("lobby", [1]) });
    const d = await rejoined;
    assert.equal(d.recovered, true);
    assert.deepEqual(got, [[1, true]]);
  } finally {
    c.close();
    await srv.close();
  }
});

test("close() rejects a pending join with kind closed", async () => {
  const { srv, c, r } = await setup();
  try {
    const joined = r.join().catch((e) => e);
    await (await srv.connection()).recv();
    c.close();
    assert.equal((await joined).kind, "closed");
  } finally {
    await srv.close();
  }
});
