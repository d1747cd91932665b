//! Runs the chat page's browser test (`examples/chat/browser-test/test.mjs`:
//! headless Chromium driven by playwright-core) against this build's `chat`
//! binary: once against one instance, and (with the `redis` feature) once
//! against two instances sharing a real `redis-server`, alice's page on one
//! and bob's on the other (alice's instance is killed while bob sends 20
//! messages; her page must show all 20, once each, in order). And the
//! JavaScript client's README example (`browser-test/client-example.mjs`)
//! as a user runs it: saved in a folder the `server` binary serves with
//! `--static`.
//!
//! Needs node, npm and Debian's chromium (`scripts/install-test-deps.sh`
//! installs them): without one of them the test fails, naming it, unless
//! `NBIO_WS_SKIP_MISSING_TOOLS=1` is set (then it says `SKIP:` and returns).
//! playwright-core is installed with `npm ci` when it is missing.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nbio_ws_testkit::process::{npm_ci, run_captured};
use nbio_ws_testkit::tools::chromium;

/// The browser tests take turns: two Chromiums at once on a small
/// machine only make both slow, and `npm ci` must run once.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn chat_page_in_headless_chromium() {
    nbio_ws_testkit::require_tools!("node", "npm", "chromium");
    run_browser_test(&[]);
}

/// The same with permessage-deflate on: the page checks that its socket
/// negotiated the extension, and every other check runs compressed.
#[test]
fn chat_page_with_compression_in_headless_chromium() {
    nbio_ws_testkit::require_tools!("node", "npm", "chromium");
    run_browser_test(&[("WS_COMPRESSION", "true")]);
}

/// Two chat instances on two ports sharing a Redis (rooms, presence and
/// history across instances), alice on the first, bob on the second.
#[cfg(feature = "redis")]
#[test]
fn chat_page_across_two_instances_in_headless_chromium() {
    nbio_ws_testkit::require_tools!("redis-server", "node", "npm", "chromium");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let redis = rt.block_on(nbio_ws_testkit::broker::Redis::start());
    let url = redis.url();
    let channel = format!("browser{}", redis.port());
    run_browser_test(&[
        ("CHAT_INSTANCES", "2"),
        ("WS_PUBSUB_ENABLED", "true"),
        ("WS_PUBSUB_ADAPTER", "redis"),
        ("WS_REDIS_URL", &url),
        ("WS_PUBSUB_CHANNEL", &channel),
    ]);
}

/// The client README's example page, saved in a folder of its own and
/// served by the example `server` with `--static`: its call, error and
/// broadcasts in two pages, a server restart, and `/client-example.html`
/// the same page byte for byte.
#[test]
fn js_client_readme_example_in_headless_chromium() {
    nbio_ws_testkit::require_tools!("node", "npm", "chromium");
    run_script("client-example.mjs", env!("CARGO_BIN_EXE_server"), &[]);
}

fn run_browser_test(env: &[(&str, &str)]) {
    run_script("test.mjs", env!("CARGO_BIN_EXE_chat"), env);
}

/// Runs `browser-test/<script> <bin>` and checks its summary line.
fn run_script(script: &str, bin: &str, env: &[(&str, &str)]) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let chromium = chromium();
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "chat", "browser-test"]
        .iter()
        .collect();
    npm_ci(&dir, &["playwright-core"]);
    // The scripts give up by themselves after 150 s at most; this is the backstop.
    let (status, out) = run_captured(
        Command::new("node")
            .arg(dir.join(script))
            .arg(bin)
            .env("CHROMIUM", &chromium)
            .envs(env.iter().copied()),
        Duration::from_secs(240),
    );
    println!("{out}");
    assert!(status.success(), "browser test failed ({status}):\n{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("browser: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    assert!(summary.ends_with(", 0 failed"), "{summary}");
}
