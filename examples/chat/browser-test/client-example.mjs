#!/usr/bin/env node
// The JavaScript client's README example, as a new user runs it: the
// README's HTML block (taken from clients/js/README.md, so that the two
// cannot drift) saved in a folder of its own, served by the example
// server (`server --static DIR`) beside /nbio-ws.js, opened in two pages
// of headless Chromium. Checks what the README promises: the call's
// result, the error, a broadcast from one page shown in both, a server
// restart survived; and that /client-example.html is the same page.
// Prints `browser: N passed, N failed[, N skipped]`.
//
//   cargo build -p nbio-ws-examples --bin server
//   npm ci --prefix examples/chat/browser-test
//   node examples/chat/browser-test/client-example.mjs target/debug/server

import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "../../../clients/js/test/helpers.mjs";
import { TIMEOUT, assert, checks, launch, playwright, watchErrors, watchdog } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const readme = resolve(here, "../../../clients/js/README.md");

const bin = process.argv[2] || process.env.NBIO_WS_SERVER_BIN;
if (!bin || !existsSync(bin)) {
  console.error("usage: node client-example.mjs PATH/TO/server  (built with cargo build -p nbio-ws-examples --bin server)");
  process.exit(2);
}
process.env.NBIO_WS_SERVER_BIN = resolve(bin);
const browser = await playwright(here);

/** The first ```html block of the README. */
function readmeExample() {
  const m = /```html\n([\s\S]*?)```/.exec(readFileSync(readme, "utf8"));
  if (!m) throw new Error(`no html block in ${readme}`);
  return m[1];
}

const folder = mkdtempSync(join(tmpdir(), "nbio-ws-my-page-"));
let srv = null;
let chrome = null;
let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (chrome) await chrome.close();
  if (srv) await srv.stop();
  rmSync(folder, { recursive: true, force: true });
}
const stopWatchdog = watchdog(90_000, cleanup);

const run = checks();
const errors = [];
/** Resolves with the first line of the page's log that matches `re`, once there is one. */
const logLine = (page, re, timeout = TIMEOUT) =>
  page
    .waitForFunction(
      ([src, flags]) => document.getElementById("log").textContent.split("\n").find((l) => new RegExp(src, flags).test(l)) || false,
      [re.source, re.flags],
      { timeout, polling: 50 },
    )
    .then((h) => h.jsonValue());
const state = (page, s, timeout = TIMEOUT) =>
  page.waitForFunction((s) => document.getElementById("state").textContent === s, s, { timeout, polling: 50 });

try {
  const html = readmeExample();
  writeFileSync(join(folder, "index.html"), html); // as the README says: my-page/index.html
  const args = ["--static", folder];
  srv = await startServer({ bin: "server", args });
  const url = `http://127.0.0.1:${srv.port}/`;
  console.log(`the README's example (${html.length} bytes) at ${url}`);

  await run.check("/client-example.html is the README's example, byte for byte", async () => {
    const served = await (await fetch(`http://127.0.0.1:${srv.port}/client-example.html`)).text();
    assert(served === html, "clients/js/example.html and the README's html block differ");
    const js = await fetch(`http://127.0.0.1:${srv.port}/nbio-ws.js`);
    assert(js.ok && /javascript/.test(js.headers.get("content-type")), `/nbio-ws.js: ${js.status}`);
  });

  chrome = await launch(browser);
  const one = chrome.context.pages()[0] || (await chrome.context.newPage());
  const two = await chrome.context.newPage();
  watchErrors(one, "one", errors);
  watchErrors(two, "two", errors);

  await run.check("the page connects, makes its call and shows the result and the error", async () => {
    for (const page of [one, two]) {
      await page.goto(url);
      await state(page, "connected");
      const reply = await logLine(page, /^self\.reply -> /);
      assert(reply === 'self.reply -> {"echo":"hi","text_length":2}', reply);
      const err = await logLine(page, /^error /);
      assert(/^error -32601 \(remote\): /.test(err), err);
    }
    console.log(`      ${await logLine(one, /^self\.reply -> /)}; ${await logLine(one, /^error /)}`);
  });

  const broadcast = async (from, text) => {
    await from.locator("#text").fill(text);
    await from.locator("#form button").click();
    const res = await logLine(from, /^broadcast -> /);
    assert(res === `broadcast -> {"status":"broadcasted","text_length":${text.length}}`, res);
    for (const page of [one, two]) await logLine(page, new RegExp(`^broadcast: ${text}$`)); // letters and spaces only
  };

  await run.check("a broadcast from one page shows in both", async () => {
    await broadcast(two, "hello from page two");
  });

  await run.check("server stopped and started again: disconnected, then connected by itself; broadcasts go on", async () => {
    await srv.stop();
    for (const page of [one, two]) console.log(`      ${await logLine(page, /^lost \(1001\); retrying in \d+ ms$/)}`);
    srv = await startServer({ bin: "server", port: srv.port, args });
    for (const page of [one, two]) await state(page, "connected", 20_000);
    await broadcast(one, "hello again");
  });

  await run.check("no JavaScript errors on the pages", async () => {
    assert(errors.length === 0, errors.join("\n"));
    console.log(`      ${errors.length} JavaScript errors (pageerror, console.error) on 2 pages`);
  });
} catch (e) {
  run.fail("setup", e);
}

await cleanup();
stopWatchdog();
process.exit(run.summary() ? 0 : 1);
