// Shared by the tests: the example server binary, free ports, events.

import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const workspace = resolve(here, "../../..");

let built = null;

/**
 * A binary of the examples crate: $NBIO_WS_<NAME>_BIN when set (the cargo
 * test that runs these sets it), else built here with cargo.
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
      ["build", "-q", "-p", "nbio-ws-examples", "--bin", name, "--message-format=json-render-diagnostics"],
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
export async function startServer({ bin = "server", port, env = {} } = {}) {
  port ??= await freePort();
  const child = spawn(exampleBin(bin), [], {
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
