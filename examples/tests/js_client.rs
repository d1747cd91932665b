//! Runs the JavaScript client's tests (`clients/js/test/*.test.mjs`, Node's
//! test runner) against this build's example `server` and `chat` binaries.
//! With the `redis` feature it starts a `redis-server` of its own for the
//! test of two chat instances sharing it (`NBIO_WS_REDIS_URL`); without
//! the feature that test is skipped (and says so).
//!
//! Needs node (20 or later) and npm (and, with `redis`, redis-server): the
//! test fails naming them when they are missing, unless
//! `NBIO_WS_SKIP_MISSING_TOOLS=1` is set (then it prints a SKIP line). The
//! client's devDependencies (`ws`, `typescript`) are installed with
//! `npm ci` when `clients/js/node_modules` lacks them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nbio_ws_testkit::process::{npm_ci, run_captured};

fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[test]
fn js_client_node_tests() {
    nbio_ws_testkit::require_tools!("node", "npm");
    #[cfg(feature = "redis")]
    nbio_ws_testkit::require_tools!("redis-server");
    let major = node_major().expect("node --version prints its version");
    assert!(
        major >= 20,
        "node {major} is too old: the JavaScript client's tests need node 20+"
    );

    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "clients", "js"]
        .iter()
        .collect();
    npm_ci(&dir, &["ws", "typescript"]);
    // The test files only (a directory would run its helper modules as
    // tests too).
    let mut files: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("clients/js/test")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".test.mjs"))
        .map(|n| format!("test/{n}"))
        .collect();
    files.sort();
    let mut node = Command::new("node");
    node.args(["--test", "--test-timeout=120000"])
        .args(&files)
        .current_dir(&dir)
        .env("NBIO_WS_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
        .env("NBIO_WS_CHAT_BIN", env!("CARGO_BIN_EXE_chat"))
        .env_remove("NBIO_WS_REDIS_URL");
    #[cfg(feature = "redis")]
    let _redis = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let redis = rt.block_on(nbio_ws_testkit::broker::Redis::start());
        node.env("NBIO_WS_REDIS_URL", redis.url());
        (redis, rt)
    };
    let (status, out) = run_captured(&mut node, Duration::from_secs(600));
    // Shown by cargo test when the test fails (or with --nocapture).
    println!("{out}");
    assert!(
        status.success(),
        "node --test in {} failed: {status}",
        dir.display()
    );
    let count = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    assert_eq!(count("# fail "), Some(0), "node --test reported failures");
    assert!(count("# pass ").unwrap_or(0) > 0, "node --test ran no test");
    // Only the Redis test may be skipped, and only without the feature.
    let skipped = count("# skipped ").unwrap_or(0);
    assert_eq!(
        skipped,
        if cfg!(feature = "redis") { 0 } else { 1 },
        "node --test skipped {skipped} tests"
    );
}
