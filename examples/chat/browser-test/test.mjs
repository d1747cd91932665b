#!/usr/bin/env node
// Browser test of the chat example: starts the chat binary on a free
// loopback port, drives two pages in headless Chromium (Debian's
// /usr/bin/chromium, through playwright-core) and checks what a person
// would see. Prints `browser: N passed, N failed[, N skipped]` and exits
// non-zero when anything failed.
//
//   cargo build -p nbio-ws-examples --bin chat
//   npm ci --prefix examples/chat/browser-test
//   node examples/chat/browser-test/test.mjs target/debug/chat
//
// The binary comes from the first argument or CHAT_BIN; the browser from
// CHROMIUM (default /usr/bin/chromium). Screenshots go to out/ beside this
// file. The servers run with WS_MAX_ROOMS_PER_CLIENT=3, so that the page's
// answer to a refused join is checked too.
//
// With CHAT_INSTANCES=2 it starts two instances of the binary on two ports
// and opens alice's page on the first and bob's on the second: set the
// WS_PUBSUB_* variables so that they share a broker (with Redis and the
// `redis` feature they also share the history):
//
//   WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis WS_REDIS_URL=redis://127.0.0.1:6379/0 \
//     CHAT_INSTANCES=2 node examples/chat/browser-test/test.mjs target/debug/chat

import { spawn } from "node:child_process";
import { mkdirSync, rmSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
// The JavaScript client's test helpers (node builtins only).
import { freePort } from "../../../clients/js/test/helpers.mjs";
import { TIMEOUT, assert, checks, launch, playwright, watchErrors, watchdog } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const outDir = join(here, "out");
const OVERALL_TIMEOUT = 150_000;
const MAX_ROOMS = 3;
/** Messages bob sends while alice's instance is down (two instances). */
const MISSED = 20;

const bin = resolve(process.argv[2] || process.env.CHAT_BIN || "");
if (!process.argv[2] && !process.env.CHAT_BIN) {
  console.error("usage: node test.mjs PATH/TO/chat  (or CHAT_BIN=PATH/TO/chat)");
  process.exit(2);
}
if (!existsSync(bin)) {
  console.error(`no chat binary at ${bin}: build it with cargo build -p nbio-ws-examples --bin chat`);
  process.exit(2);
}
const browser = await playwright(here);

// ---- processes and cleanup --------------------------------------------------

const INSTANCES = process.env.CHAT_INSTANCES === "2" ? 2 : 1;
let servers = [];
let serverLog = "";
let chrome = null;

function startServer(port) {
  const child = spawn(bin, [], {
    env: {
      ...process.env,
      WS_HOST: "127.0.0.1",
      WS_PORT: String(port),
      WS_LOG_LEVEL: "warn",
      WS_MAX_ROOMS_PER_CLIENT: String(MAX_ROOMS),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const keep = (d) => {
    serverLog = (serverLog + `[:${port}] ` + d.toString()).slice(-8000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  return child;
}

async function waitHealthy(port) {
  const deadline = Date.now() + TIMEOUT;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.ok) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`chat server on port ${port} did not come up; log:\n${serverLog}`);
}

function stopServer(child, signal = "SIGTERM") {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    const hard = setTimeout(() => child.kill("SIGKILL"), 5000);
    child.once("exit", () => {
      clearTimeout(hard);
      res();
    });
    child.kill(signal);
  });
}

let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (chrome) await chrome.close();
  await Promise.all(servers.map((s) => stopServer(s)));
}
const stopWatchdog = watchdog(OVERALL_TIMEOUT, cleanup);

// ---- the checks ---------------------------------------------------------------

const run = checks();
const check = run.check;

const XSS = `<script>window.__xss=1</script><img src=x onerror="window.__xss=2">`;

const msgText = (page, nick, text) =>
  page.locator(`#messages [data-testid=message][data-nick="${nick}"] [data-testid=message-text]`, {
    hasText: text,
  });
const member = (page, nick) => page.locator(`#members [data-testid=member][data-nick="${nick}"]`);
const notice = (page, kind, text) =>
  page.locator(`#messages [data-testid=notice][data-kind="${kind}"]`, { hasText: text });

async function joinAs(page, nick, room) {
  await page.getByTestId("nick-input").fill(nick);
  await page.getByTestId("room-input").fill(room);
  await page.getByTestId("join-button").click();
  await page.locator("body[data-view=chat]").waitFor({ timeout: TIMEOUT });
  const shown = await page.getByTestId("current-room").textContent();
  assert(shown === room, `current room shows ${JSON.stringify(shown)}, expected ${room}`);
}

async function say(page, text) {
  const box = page.getByTestId("message-input");
  await box.fill(text);
  await box.press("Enter");
  // The input clears once the server accepted the message.
  await page.waitForFunction(() => document.getElementById("text").value === "", null, {
    timeout: TIMEOUT,
    polling: 50,
  });
}

rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });
let pages = {};
const jsErrors = [];

async function screenshots(prefix) {
  for (const [name, page] of Object.entries(pages)) {
    const file = join(outDir, `${prefix}-${name}.png`);
    try {
      await page.screenshot({ path: file, fullPage: true });
      console.log(`screenshot ${file}`);
    } catch (e) {
      console.log(`screenshot of ${name} failed: ${e.message}`);
    }
  }
}

try {
  const ports = [];
  for (let i = 0; i < INSTANCES; i++) ports.push(await freePort());
  const port = ports[0];
  const bases = ports.map((p) => `http://127.0.0.1:${p}/`);
  servers = ports.map((p) => startServer(p));
  for (const p of ports) await waitHealthy(p);
  if (INSTANCES > 1) console.log(`two instances: alice on :${ports[0]}, bob on :${ports[1]}`);

  chrome = await launch(browser);
  const { context } = chrome;
  const alice = context.pages()[0] || (await context.newPage());
  const bob = await context.newPage();
  pages = { alice, bob };
  const prepare = async (name, page) => {
    // Keep each page's WebSockets reachable, to read what they negotiated.
    await page.addInitScript(() => {
      const Native = window.WebSocket;
      window.__sockets = [];
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          window.__sockets.push(this);
        }
      };
    });
    watchErrors(page, name, jsErrors);
  };
  for (const [name, page] of Object.entries(pages)) await prepare(name, page);

  const baseOf = (page) => (page === bob ? bases[bases.length - 1] : bases[0]);
  await check("page loads and connects to ws://…/ws", async () => {
    for (const page of [alice, bob]) {
      await page.goto(baseOf(page));
      await page.locator("#conn[data-state=open]").waitFor();
      assert((await page.getByTestId("room-input").inputValue()) === "lobby", "room defaults to lobby");
    }
  });

  // With WS_COMPRESSION=true the browser's offer is accepted; without it,
  // no extension is negotiated.
  const compression = /^(true|1|yes|on)$/i.test(process.env.WS_COMPRESSION || "");
  await check(
    compression ? "the socket negotiated permessage-deflate" : "the socket negotiated no extension",
    async () => {
      for (const page of [alice, bob]) {
        const ext = await page.evaluate(
          () => window.__sockets.filter((s) => s.readyState === 1).map((s) => s.extensions)[0],
        );
        if (compression) {
          assert(/^permessage-deflate\b/.test(ext || ""), `extensions: ${JSON.stringify(ext)}`);
        } else {
          assert(ext === "", `extensions: ${JSON.stringify(ext)}`);
        }
      }
    },
  );

  await check("an invalid nick shows the server's error", async () => {
    await alice.getByTestId("nick-input").fill("bad<nick>");
    await alice.getByTestId("join-button").click();
    const err = alice.getByTestId("error-text");
    await err.waitFor({ state: "visible" });
    const text = await err.textContent();
    assert(/nick must be 1-24 characters/.test(text), `error says ${JSON.stringify(text)}`);
    assert((await alice.locator("body").getAttribute("data-view")) === "login", "still on the login form");
  });

  await check("alice joins lobby and her message is kept as history", async () => {
    await joinAs(alice, "alice", "lobby");
    assert(await alice.getByTestId("error").isHidden(), "the error banner went away");
    await member(alice, "alice").waitFor();
    await say(alice, "first message, before bob");
    await msgText(alice, "alice", "first message, before bob").waitFor();
  });

  await check("bob joins lobby: sees the history and alice in the member list", async () => {
    await joinAs(bob, "bob", "lobby");
    await msgText(bob, "alice", "first message, before bob").waitFor();
    await member(bob, "alice").waitFor();
    await member(bob, "bob").waitFor();
  });

  await check("alice sees bob join (notice and member list)", async () => {
    await notice(alice, "joined", "bob joined").waitFor();
    await member(alice, "bob").waitFor();
    const count = await alice.getByTestId("member-count").textContent();
    assert(count === "2", `member count ${count}`);
  });

  await check("messages go both ways (Enter sends)", async () => {
    await say(alice, "hello bob");
    await msgText(bob, "alice", "hello bob").waitFor();
    await say(bob, "hi alice");
    await msgText(alice, "bob", "hi alice").waitFor();
    await msgText(bob, "bob", "hi alice").waitFor();
  });

  await check("a join past the server's rooms limit shows its error; the chat goes on", async () => {
    const room = (name) => alice.locator(`#rooms [data-testid=room][data-room="${name}"]`);
    const extra = Array.from({ length: MAX_ROOMS }, (_, i) => `extra-${i + 1}`);
    await alice.bringToFront(); // a background page's frames are throttled
    for (const name of extra) {
      await alice.getByTestId("add-room-input").fill(name);
      await alice.getByTestId("add-room-input").press("Enter");
      if (name !== extra[extra.length - 1]) await room(name).waitFor();
    }
    const err = alice.getByTestId("error-text");
    await err.waitFor({ state: "visible" });
    const text = await err.textContent();
    assert(
      text === `Join refused: a client may be in at most ${MAX_ROOMS} rooms: leave one first`,
      `error says ${JSON.stringify(text)}`,
    );
    assert((await room(extra[extra.length - 1]).count()) === 0, "the refused room is not listed");
    for (const name of extra.slice(0, -1)) {
      await room(name).hover(); // the leave button shows on hover
      await room(name).getByTestId("room-leave").click();
      await room(name).waitFor({ state: "detached" });
    }
    await room("lobby").getByTestId("room-open").click();
    await alice.waitForFunction(() => document.getElementById("current-room").textContent === "lobby");
    await say(alice, "still here");
    await msgText(bob, "alice", "still here").waitFor();
  });

  await check("an HTML/script message is shown as literal text, nothing runs", async () => {
    await say(bob, XSS);
    for (const page of [alice, bob]) {
      const el = page.locator("#messages [data-testid=message-text]").last();
      await page.waitForFunction(
        (want) => {
          const all = document.querySelectorAll("#messages [data-testid=message-text]");
          return all.length > 0 && all[all.length - 1].textContent === want;
        },
        XSS,
        { polling: 50 },
      );
      assert((await el.textContent()) === XSS, "the text is the payload, verbatim");
    }
    await alice.waitForTimeout(500); // give a broken page time to load the <img> and fire onerror
    for (const page of [alice, bob]) {
      const xss = await page.evaluate(() => window.__xss);
      assert(xss === undefined, `window.__xss is ${xss}`);
      const injected = await page.locator("#messages img, #messages script").count();
      assert(injected === 0, `${injected} injected elements in the message list`);
    }
  });
  if (!run.failed) await screenshots("conversation");

  await check("bob leaves: alice gets a leave notice and the member list drops him", async () => {
    await bob.getByTestId("leave-button").click();
    await bob.locator("body[data-view=login]").waitFor();
    await notice(alice, "left", "bob left").waitFor();
    await member(alice, "bob").waitFor({ state: "detached" });
    await member(alice, "alice").waitFor();
  });

  await check("closing a page (disconnect) also shows a leave notice", async () => {
    await joinAs(bob, "bob", "lobby");
    await member(alice, "bob").waitFor();
    await bob.close();
    delete pages.bob;
    await notice(alice, "left", "bob left").nth(1).waitFor();
    await member(alice, "bob").waitFor({ state: "detached" });
  });

  await check("server restart: the page reconnects with backoff and re-joins", async () => {
    await stopServer(servers[0]);
    await alice.locator("#conn[data-state=waiting]").waitFor();
    await notice(alice, "info", "Connection lost").waitFor();
    servers[0] = startServer(port);
    await waitHealthy(port);
    await alice.locator("#conn[data-state=open]").waitFor({ timeout: 20_000 });
    await notice(alice, "info", "Reconnected.").waitFor();
    await member(alice, "alice").waitFor();
    await say(alice, "back again");
    await msgText(alice, "alice", "back again").waitFor();
  });

  // With two instances sharing Redis (history included), bob keeps talking
  // on the second while alice's is down: her page recovers what it missed.
  if (INSTANCES > 1) {
    await check(`alice's instance killed while bob, on the other, sends ${MISSED} messages: after its restart alice's page shows all ${MISSED}, once each, in order`, async () => {
      const bob = await context.newPage();
      await prepare("bob", bob);
      pages.bob = bob;
      await bob.goto(bases[1]);
      await bob.locator("#conn[data-state=open]").waitFor();
      await joinAs(bob, "bob", "lobby");
      await member(alice, "bob").waitFor();
      await stopServer(servers[0], "SIGKILL");
      await alice.locator("#conn[data-state=waiting]").waitFor();
      const sent = Array.from({ length: MISSED }, (_, i) => `missed ${i + 1} of ${MISSED}`);
      for (const text of sent) await say(bob, text);
      servers[0] = startServer(port);
      await waitHealthy(port);
      await alice.locator("#conn[data-state=open]").waitFor({ timeout: 20_000 });
      await say(bob, "after the restart");
      await msgText(alice, "bob", "after the restart").waitFor();
      const shown = await alice
        .locator('#messages [data-testid=message][data-nick="bob"] [data-testid=message-text]')
        .allTextContents();
      const missed = shown.filter((t) => t.startsWith("missed "));
      assert(JSON.stringify(missed) === JSON.stringify(sent), `alice shows ${JSON.stringify(missed)}`);
      assert(shown.at(-1) === "after the restart", `the live message comes last: ${JSON.stringify(shown.slice(-3))}`);
      const gaps = await notice(alice, "info", "Some messages may be missing").count();
      assert(gaps === 0, `${gaps} "may be missing" notices`);
      console.log(`      alice shows bob's ${missed.length} missed messages in order, then the live one`);
    });
  }

  await check("no JavaScript errors on the pages", async () => {
    assert(jsErrors.length === 0, jsErrors.join("\n"));
    console.log(`      ${jsErrors.length} JavaScript errors (pageerror, console.error); pages open: ${Object.keys(pages).join(", ")}`);
  });

  await screenshots(run.failed ? "failure" : "success");
} catch (e) {
  run.fail("setup", e);
  await screenshots("failure");
}

if (run.failed && serverLog.trim()) console.log(`--- chat server log (tail) ---\n${serverLog}`);
await cleanup();
stopWatchdog();
process.exit(run.summary() ? 0 : 1);
