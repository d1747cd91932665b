// What the browser tests share: headless Chromium (Debian's, through
// playwright-core) in a throwaway profile, the JavaScript errors of its
// pages, named checks with a summary line, and a watchdog.

import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TIMEOUT = 10_000;

export function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** playwright-core's chromium, or exit 2 naming what is missing. */
export async function playwright(here) {
  const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!existsSync(chromiumPath)) {
    console.error(`no Chromium at ${chromiumPath}: apt-get install chromium (or set CHROMIUM)`);
    process.exit(2);
  }
  try {
    const { chromium } = await import("playwright-core");
    return { chromium, chromiumPath };
  } catch (e) {
    console.error(`playwright-core is missing: npm ci --prefix ${here}\n${e.message}`);
    process.exit(2);
  }
}

/** A headless Chromium with a fresh profile; close() ends it and removes the profile. */
export async function launch({ chromium, chromiumPath }) {
  const userDataDir = mkdtempSync(join(tmpdir(), "nbio-ws-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
    viewport: { width: 1100, height: 720 },
  });
  context.setDefaultTimeout(TIMEOUT);
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Records the page's uncaught exceptions and console errors in `errors`
 * (as "name: message"). A refused WebSocket connection while a server
 * restarts is logged by Chromium itself; that one is expected.
 */
export function watchErrors(page, name, errors) {
  page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/WebSocket connection to .* failed/.test(m.text())) {
      errors.push(`${name} console: ${m.text()}`);
    }
  });
}

/**
 * Named checks, run in order: after a failure the rest are skipped.
 * summary() prints `browser: N passed, N failed[, N skipped]`.
 */
export function checks() {
  const results = [];
  const self = {
    failed: false,
    async check(name, fn) {
      if (self.failed) {
        results.push({ name, status: "skipped" });
        console.log(`skip  ${name}`);
        return;
      }
      const t0 = Date.now();
      try {
        await fn();
        results.push({ name, status: "passed" });
        console.log(`ok    ${name} (${Date.now() - t0} ms)`);
      } catch (e) {
        self.fail(name, e);
      }
    },
    fail(name, e) {
      self.failed = true;
      results.push({ name, status: "failed" });
      console.log(`FAIL  ${name}: ${e && e.stack ? e.stack : e}`);
    },
    summary() {
      const n = (s) => results.filter((r) => r.status === s).length;
      const skipped = n("skipped") ? `, ${n("skipped")} skipped` : "";
      console.log(`browser: ${n("passed")} passed, ${n("failed")} failed${skipped}`);
      return n("failed") === 0;
    },
  };
  return self;
}

/** Runs cleanup() on SIGINT/SIGTERM, and gives up after `ms` (one failed check). */
export function watchdog(ms, cleanup) {
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.on(sig, async () => {
      await cleanup();
      process.exit(1);
    });
  }
  const t = setTimeout(async () => {
    console.error(`browser test took over ${ms / 1000}s; giving up`);
    console.log("browser: 0 passed, 1 failed");
    await cleanup();
    process.exit(1);
  }, ms);
  return () => clearTimeout(t);
}
