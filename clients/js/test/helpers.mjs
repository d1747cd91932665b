// Shared by the tests: the examples' binaries, free ports, a TCP proxy,
// a redis-server, events.

import { spawn, execFileSync } from "node:child_process";
import { createServer, connect } from "node:net";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const workspace = resolve(here, "../../..");

let built = null;

/**
 * A binary of the examples crate: $NBIO_WS_<NAME>_BIN when set (the cargo
 * test that runs these sets it), else built here with cargo, with every
 * feature (as scripts/test.sh builds them).
 */
export function exampleBin(name) {
  const fromEnv = process.env[`NBIO_WS_${name.toUpperCase()}_BIN`];
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`NBIO_WS_${name.toUpperCase()}_BIN=${fromEnv}: no such file`);
    return fromEnv;
  }
  built ??= new Map();
  if (!built.has(name)) {
    const out = execFileSync(
      "cargo",
      ["build", "-q", "-p", "nbio-ws-examples", "--all-features", "--bin", name, "--message-format=json-render-diagnostics"],
      { cwd: workspace, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 << 20 },
    );
    const exe = out
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .find((m) => m.reason === "compiler-artifact" && m.target?.name === name && m.executable)?.executable;
    if (!exe) throw new Error(`cargo build did not report the ${name} binary`);
    built.set(name, exe);
  }
  return built.get(name);
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** A running example server on 127.0.0.1:port; stop() ends it. */
export async function startServer({ bin = "server", port, env = {}, args = [] } = {}) {
  port ??= await freePort();
  const child = spawn(exampleBin(bin), args, {
    env: { ...process.env, WS_HOST: "127.0.0.1", WS_PORT: String(port), WS_LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr.on("data", (d) => (log = (log + d).slice(-4000)));
  const exited = new Promise((r) => child.once("exit", r));
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`${bin} exited with ${child.exitCode}: ${log}`);
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) break;
    } catch {
      // not up yet
    }
    if (i > 200) throw new Error(`${bin} on port ${port} did not come up: ${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    /** SIGSTOP, returning once every thread of the server is stopped. */
    async pause() {
      child.kill("SIGSTOP");
      const stopped = () =>
        readdirSync(`/proc/${child.pid}/task`).every((t) => {
          try {
            return /^\d+ \(.*\) [Tt]/.test(readFileSync(`/proc/${child.pid}/task/${t}/stat`, "utf8"));
          } catch {
            return true; // the thread is gone
          }
        });
      while (!stopped()) await new Promise((r) => setTimeout(r, 5));
    },
    resume() {
      child.kill("SIGCONT");
    },
    url: `ws://127.0.0.1:${port}/ws`,
    child,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        if (signal !== "SIGKILL") child.kill("SIGCONT"); // a paused server gets it then
        await exited;
      }
    },
  };
}

/** Resolves with the detail of the next `type` event whose detail passes `pred`. */
export function next(target, type, pred = () => true) {
  return new Promise((res) => {
    const f = (ev) => {
      if (pred(ev.detail)) {
        target.removeEventListener(type, f);
        res(ev.detail);
      }
    };
    target.addEventListener(type, f);
  });
}

/** Resolves once client.state is `state` (at once if it already is). */
export function until(client, state) {
  return client.state === state ? Promise.resolve() : next(client, "statechange", (d) => d.state === state);
}

/** Records every lifecycle event of a client, in order. */
export function record(client, types = ["connecting", "connected", "disconnected", "closed", "joined", "unrecovered", "roomerror", "error"]) {
  const log = [];
  for (const t of types) client.addEventListener(t, (ev) => log.push({ type: t, ...ev.detail }));
  return log;
}

/** Resolves with the params of the next notification `method` on client. */
export function nextNotification(client, method, pred = () => true) {
  return new Promise((res) => {
    const off = client.on(method, (params, msg) => {
      if (pred(params, msg)) {
        off();
        res(params);
      }
    });
  });
}

/**
 * A TCP proxy from a free loopback port to 127.0.0.1:target, to take a
 * client's connection away while its server stays up: hold() stops
 * forwarding what the clients send (their connections stay open), cut()
 * drops every connection and refuses new ones, restore() forwards again.
 */
export async function tcpProxy(target) {
  const pairs = new Set();
  let refusing = false;
  const server = createServer((down) => {
    if (refusing) return down.destroy();
    const up = connect(target, "127.0.0.1");
    const pair = { down, up };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    for (const s of [down, up]) s.on("error", end).on("close", end);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((res, rej) => server.once("error", rej).listen(0, "127.0.0.1", res));
  const port = server.address().port;
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    hold() {
      for (const { down, up } of pairs) {
        down.unpipe(up);
        down.pause();
      }
    },
    cut() {
      refusing = true;
      for (const { down, up } of [...pairs]) {
        down.destroy();
        up.destroy();
      }
    },
    restore() {
      refusing = false;
    },
    close() {
      this.cut();
      return new Promise((res) => server.close(res));
    },
  };
}

/**
 * A Redis for the tests: $NBIO_WS_REDIS_URL when set (the cargo test
 * starts one with the test kit), else a redis-server of our own on a free
 * port when the binaries are built here; null when there is none (a cargo
 * test without the `redis` feature). stop() ends ours.
 */
export async function redis() {
  if (process.env.NBIO_WS_REDIS_URL) return { url: process.env.NBIO_WS_REDIS_URL, stop: async () => {} };
  if (process.env.NBIO_WS_CHAT_BIN) return null;
  const port = await freePort();
  const child = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const spawned = await new Promise((res) => child.once("spawn", () => res(true)).once("error", () => res(false)));
  if (!spawned) return null;
  const exited = new Promise((r) => child.once("exit", r));
  for (let i = 0; ; i++) {
    const pong = await new Promise((res) => {
      const s = connect(port, "127.0.0.1", () => s.write("PING\r\n"));
      s.once("data", (d) => (s.destroy(), res(d.toString().startsWith("+PONG"))));
      s.once("error", () => res(false));
    });
    if (pong) break;
    if (child.exitCode !== null || i > 200) throw new Error(`redis-server on port ${port} did not come up`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGKILL");
        await exited;
      }
    },
  };
}
