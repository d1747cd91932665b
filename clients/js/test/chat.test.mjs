// Rooms with recovery against the real chat server
// (examples/src/bin/chat), built from this workspace: its chat.join takes
// `since` and answers {history, position, recovered}; its chat.send
// publishes with a position. One client's connection is lost while
// another keeps publishing; after the reconnect every room is rejoined
// and what was missed arrives exactly once, in order, before live ones.

import { test, describe } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Client, RpcError, ErrorCode } from "../nbio-ws.js";
import { startServer, tcpProxy, redis, next, record } from "./helpers.mjs";

const fast = { WebSocket, initialDelay: 40, maxDelay: 400 };

/** A chat client; what it hears of chat.message is kept as [room, text, recovered]. */
function chatter(url, nick, options = {}) {
  const c = new Client(url, { ...fast, ...options });
  const heard = [];
  c.on("chat.message", (p, msg) => heard.push([p.room, p.text, msg.recovered === true]));
  const join = (room) =>
    c
      .room(room, {
        join: (since) => ({ method: "chat.join", params: { room, nick, ...(since && { since }) } }),
        leave: () => ({ method: "chat.leave", params: { room } }),
      })
      .join();
  const say = (room, text) => c.call("chat.send", { room, text });
  /** Resolves once `text` was heard in `room`. */
  const hears = (room, text) =>
    heard.some(([r, t]) => r === room && t === text)
      ? Promise.resolve()
      : new Promise((res) => {
          const off = c.on("chat.message", (p) => p.room === room && p.text === text && (off(), res()));
        });
  return { c, heard, join, say, hears, log: record(c) };
}

/** What a room's history says: heard live, then recovered, then `live` heard live again. */
const story = (before, missed) => [...before.map((t) => [t, false]), ...missed.map((t) => [t, true]), ["live", false]];

/** Resolves once each room is rejoined with `since` and recovered; listen before the reconnect. */
async function rejoined(c, rooms) {
  const joins = await Promise.all(rooms.map((room) => next(c, "joined", (d) => d.room === room)));
  for (const j of joins) {
    assert.equal(j.recovered, true, `${j.room} recovered`);
    assert.equal(j.since?.epoch, j.result.position.epoch, `${j.room} rejoined with since, same epoch`);
  }
}

/** Both join both rooms; ben says m1..m3 in the first, and ann hears them. */
async function converse(ann, ben, rooms) {
  await Promise.all(rooms.flatMap((room) => [ann.join(room), ben.join(room)]));
  for (const t of range(1, 3, "m")) await ben.say(rooms[0], t);
  await ann.hears(rooms[0], "m3");
}

const texts = (heard, room) => heard.filter(([r]) => r === room).map(([, t, rec]) => [t, rec]);
const range = (from, to, prefix) => Array.from({ length: to - from + 1 }, (_, i) => `${prefix}${from + i}`);

/**
 * Exponential backoff with full jitter: the n-th failure in a row (from 1)
 * waits within [0, min(maxDelay, initialDelay × 2^(n-1))].
 */
function assertBackoff(log, o) {
  const waits = log.filter((x) => x.type === "disconnected");
  assert.ok(waits.length >= 1, "at least one disconnect");
  waits.forEach((w, i) => {
    assert.equal(w.attempt, waits[0].attempt + i, "attempts counted in a row");
    assert.equal(w.cap, Math.min(o.maxDelay, o.initialDelay * 2 ** (w.attempt - 1)), JSON.stringify(w));
    assert.ok(w.delay >= 0 && w.delay <= w.cap, `delay ${w.delay} within [0, ${w.cap}]`);
  });
  return waits;
}

describe("one chat instance (memory history)", () => {
  test("a lost connection: the pending call is rejected, both rooms are rejoined with since, missed messages recovered once each, in order", async () => {
    const srv = await startServer({ bin: "chat" });
    const proxy = await tcpProxy(srv.port);
    const ann = chatter(proxy.url, "ann");
    const ben = chatter(srv.url, "ben");
    try {
      await converse(ann, ben, ["r1", "r2"]);

      // A call sent but never answered, then the connection goes.
      proxy.hold();
      const lost = ann.c.call("chat.members", { room: "r1" }).catch((e) => e);
      const failedTwice = next(ann.c, "disconnected", (d) => d.attempt >= 2);
      proxy.cut();
      const e = await lost;
      assert.ok(e instanceof RpcError, String(e));
      assert.equal(e.kind, "disconnected");
      assert.equal(e.code, ErrorCode.DISCONNECTED);
      await failedTwice; // refused while cut: backoff between attempts

      // ben goes on in both rooms while ann is away.
      for (const t of range(4, 13, "m")) await ben.say("r1", t);
      for (const t of range(1, 5, "n")) await ben.say("r2", t);
      const back = rejoined(ann.c, ["r1", "r2"]);
      proxy.restore();
      await back;
      await ben.say("r1", "live");
      await ann.hears("r1", "live");

      assert.deepEqual(texts(ann.heard, "r1"), story(range(1, 3, "m"), range(4, 13, "m")));
      assert.deepEqual(
        texts(ann.heard, "r2"),
        range(1, 5, "n").map((t) => [t, true]),
      );
      assert.ok(assertBackoff(ann.log, fast).length >= 2, "failed attempts while cut");
      assert.equal(ann.log.filter((x) => x.type === "unrecovered").length, 0);
      assert.equal(ann.c.pending, 0);
    } finally {
      ann.c.close();
      ben.c.close();
      await proxy.close();
      await srv.stop();
    }
  });

  test("a restarted server has lost its memory history: the rejoin says recovered: false, the client fires unrecovered and goes on", async () => {
    let srv = await startServer({ bin: "chat" });
    const ann = chatter(srv.url, "ann");
    const ben = chatter(srv.url, "ben");
    try {
      await Promise.all([ann.join("lobby"), ben.join("lobby")]);
      await ben.say("lobby", "before");
      await ann.hears("lobby", "before");
      const unrecovered = next(ann.c, "unrecovered");
      const benBack = next(ben.c, "joined", (d) => !!d.since);
      await srv.stop("SIGKILL");
      srv = await startServer({ bin: "chat", port: srv.port });
      const u = await unrecovered;
      assert.equal(u.room, "lobby");
      assert.equal(u.reason, "server");
      assert.notEqual(u.since.epoch, u.position.epoch, "a new epoch");
      await benBack;
      // Offsets start over in the new epoch: live messages are not taken for old ones.
      await ben.say("lobby", "after");
      await ann.hears("lobby", "after");
      assert.deepEqual(texts(ann.heard, "lobby"), [
        ["before", false],
        ["after", false],
      ]);
    } finally {
      ann.c.close();
      ben.c.close();
      await srv.stop();
    }
  });
});

describe("two chat instances sharing Redis", () => {
  test("the first client's instance killed while the other keeps publishing: after the restart, 20 missed messages recovered exactly once, in order", async (t) => {
    const r = await redis();
    if (!r) {
      t.skip("no Redis: run from cargo test with --features redis (it sets NBIO_WS_REDIS_URL), or put redis-server on PATH");
      return;
    }
    const env = {
      WS_PUBSUB_ENABLED: "true",
      WS_PUBSUB_ADAPTER: "redis",
      WS_REDIS_URL: r.url,
      WS_PUBSUB_CHANNEL: `jsclient${process.pid}`,
    };
    let one = await startServer({ bin: "chat", env });
    const two = await startServer({ bin: "chat", env });
    const ann = chatter(one.url, "ann");
    const ben = chatter(two.url, "ben");
    try {
      await converse(ann, ben, ["lobby", "side"]);

      await one.pause();
      const lost = ann.c.call("chat.members", { room: "lobby" }).catch((e) => e);
      const down = next(ann.c, "disconnected");
      await one.stop("SIGKILL");
      const e = await lost;
      assert.equal(e.kind, "disconnected");
      assert.equal(e.data.code, 1006);
      await down;

      for (const t of range(4, 23, "m")) await ben.say("lobby", t);
      await ben.say("side", "s1");
      const back = rejoined(ann.c, ["lobby", "side"]);
      one = await startServer({ bin: "chat", env, port: one.port });
      await back;
      await ben.say("lobby", "live");
      await ann.hears("lobby", "live");

      assert.deepEqual(texts(ann.heard, "lobby"), story(range(1, 3, "m"), range(4, 23, "m")));
      assert.deepEqual(texts(ann.heard, "side"), [["s1", true]]);
      assertBackoff(ann.log, fast);
      assert.equal(ann.log.filter((x) => x.type === "unrecovered").length, 0);
    } finally {
      ann.c.close();
      ben.c.close();
      await Promise.all([one.stop(), two.stop()]);
      await r.stop();
    }
  });
});
