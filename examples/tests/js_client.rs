//! Runs the JavaScript client's tests (`clients/js/test/*.test.mjs`, Node's
//! test runner) against this build's example `server` binary.
//!
//! Needs node (20 or later) and npm: the test fails naming them when they
//! are missing, unless `NBIO_WS_SKIP_MISSING_TOOLS=1` is set (then it
//! prints a SKIP line). The client's devDependencies (`ws`, `typescript`)
//! are installed with `npm ci` when `clients/js/node_modules` lacks them.

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
    let major = node_major().expect("node --version prints its version");
    assert!(
        major >= 20,
        "node {major} is too old: the JavaScript client's tests need node 20+"
    );

    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "clients", "js"]
        .iter()
        .collect();
    npm_ci(&dir, &["ws", "typescript"]);
    let (status, out) = run_captured(
        Command::new("node")
            .args(["--test", "--test-timeout=120000", "test/"])
            .current_dir(&dir)
            .env("NBIO_WS_SERVER_BIN", env!("CARGO_BIN_EXE_server")),
        Duration::from_secs(600),
    );
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
}
