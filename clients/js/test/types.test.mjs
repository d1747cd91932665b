// nbio-ws.d.ts agrees with nbio-ws.js: the same exports, the same members,
// the same error codes; and tsc --strict accepts test/usage.ts against it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as mod from "../nbio-ws.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dts = readFileSync(join(root, "nbio-ws.d.ts"), "utf8");

/** The members of a top-level `export declare class X` / `export interface X` block. */
function members(kind, name) {
  const start = dts.search(new RegExp(`^export (declare )?${kind} ${name}\\b[^\\n]*\\{$`, "m"));
  assert.ok(start >= 0, `${kind} ${name} in nbio-ws.d.ts`);
  const body = dts.slice(start, dts.indexOf("\n}", start));
  const names = [...body.matchAll(/^ {2}(?:readonly )?(?:get )?([A-Za-z_$][\w$]*)\??[(<:]/gm)].map((m) => m[1]);
  return new Set(names.filter((n) => n !== "constructor"));
}

/** Public members of an object as the module builds it (own and prototype chain up to `stop`). */
function actual(obj, stop) {
  const out = new Set();
  for (let o = obj; o && o !== stop; o = Object.getPrototypeOf(o)) {
    for (const k of Object.getOwnPropertyNames(o)) if (k !== "constructor" && !k.startsWith("_")) out.add(k);
  }
  return out;
}

const sorted = (s) => [...s].sort();

test("the module exports exactly what the declarations declare", () => {
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) ([A-Za-z_$][\w$]*)/gm)].map((m) => m[1]);
  assert.deepEqual(sorted(declared), sorted(Object.keys(mod)));
});

test("ErrorCode: the same names and values", () => {
  const block = dts.slice(dts.indexOf("export declare const ErrorCode"), dts.indexOf("};", dts.indexOf("export declare const ErrorCode")));
  const declared = Object.fromEntries([...block.matchAll(/readonly (\w+): (-?\d+);/g)].map((m) => [m[1], Number(m[2])]));
  assert.deepEqual(declared, { ...mod.ErrorCode });
  assert.ok(Object.isFrozen(mod.ErrorCode));
});

test("Client: the declared members are the instance's public members", () => {
  class FakeWebSocket {}
  const c = new mod.Client("ws://x/", { WebSocket: FakeWebSocket, autoConnect: false });
  const have = actual(c, EventTarget.prototype);
  const declared = members("class", "Client");
  // addEventListener/removeEventListener are EventTarget's, typed again for the event map.
  for (const k of ["addEventListener", "removeEventListener"]) {
    assert.ok(declared.delete(k));
    assert.equal(typeof c[k], "function");
  }
  assert.deepEqual(sorted(declared), sorted(have));
});

test("RpcError: code, data, kind (plus Error's)", () => {
  const e = new mod.RpcError(1, "m", { x: 1 });
  assert.ok(e instanceof Error);
  assert.equal(e.kind, "remote");
  const have = actual(e, Error.prototype);
  for (const k of ["message", "name", "stack"]) have.delete(k);
  assert.deepEqual(sorted(members("class", "RpcError")), sorted(have));
});

test("Room: the declared members are those of client.room()", () => {
  class FakeWebSocket {}
  const c = new mod.Client("ws://x/", { WebSocket: FakeWebSocket, autoConnect: false });
  const r = c.room("lobby", { join: () => ({ method: "join" }) });
  assert.deepEqual(sorted(members("interface", "Room")), sorted(actual(r, Object.prototype)));
});

test("tsc --strict compiles test/usage.ts against the declarations", () => {
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  assert.ok(existsSync(tsc), "typescript is missing: npm ci in clients/js");
  execFileSync(
    process.execPath,
    [tsc, "--noEmit", "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext", "--lib", "es2022,dom", join(root, "test", "usage.ts")],
    { cwd: root, stdio: "inherit" },
  );
});
