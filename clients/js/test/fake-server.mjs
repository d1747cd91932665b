// A scripted WebSocket server (the ws package) for protocol unit tests:
// close codes and the recovery protocol, message by message. The tests
// against the real server are in server.test.mjs.

import { WebSocketServer } from "ws";

/** One accepted connection: read requests, send anything, close with a code. */
class Conn {
  #inbox = [];
  #waiting = [];
  constructor(ws, req) {
    this.ws = ws;
    this.protocols = String(req.headers["sec-websocket-protocol"] ?? ""); // as the ws package joins them: "a,b"
    this.closed = new Promise((r) => ws.once("close", (code) => r(code)));
    ws.on("message", (data) => {
      const m = JSON.parse(String(data));
      const w = this.#waiting.shift();
      if (w) w(m);
      else this.#inbox.push(m);
    });
  }
  /** The next message from the client, parsed. */
  recv() {
    return this.#inbox.length ? Promise.resolve(this.#inbox.shift()) : new Promise((r) => this.#waiting.push(r));
  }
  send(obj) {
    this.ws.send(JSON.stringify(obj));
  }
  reply(req, result) {
    this.send({ jsonrpc: "2.0", id: req.id, result });
  }
  close(code, reason) {
    this.ws.close(code, reason);
  }
}

export async function fakeServer() {
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (offered) => (offered.has("bearer") ? "bearer" : false),
  });
  await new Promise((r) => wss.once("listening", r));
  const conns = [];
  const waiting = [];
  wss.on("connection", (ws, req) => {
    const c = new Conn(ws, req);
    conns.push(c);
    const w = waiting.shift();
    if (w) w(c);
  });
  let taken = 0;
  return {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    conns,
    /** The next connection not returned before (waits for it). */
    connection() {
      const i = taken++;
      return i < conns.length ? Promise.resolve(conns[i]) : new Promise((r) => waiting.push(r));
    },
    close() {
      for (const ws of wss.clients) ws.terminate();
      return new Promise((r) => wss.close(r));
    },
  };
}
