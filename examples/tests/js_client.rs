//! Runs the JavaScript client's tests (`clients/js/test/*.test.mjs`, Node's
//! test runner) against this build's example `server` binary.
//!
//! Needs node (20 or later) and npm: the test fails naming them when they
//! are missing, unless `NBIO_WS_SKIP_NODE_TESTS=1` is set (then it prints a
//! SKIP line). The client's devDependencies (`ws`, `typescript`) are
//! installed with `npm ci` when `clients/js/node_modules` lacks them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::npm_ci_unless_installed;

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
    if std::env::var("NBIO_WS_SKIP_NODE_TESTS").as_deref() == Ok("1") {
        println!("SKIP js_client_node_tests: NBIO_WS_SKIP_NODE_TESTS=1");
        return;
    }
    let major = node_major().expect(
        "node is not installed: the JavaScript client's tests need node 20+ and npm \
         (apt-get install nodejs npm), or set NBIO_WS_SKIP_NODE_TESTS=1 to skip them",
    );
    assert!(
        major >= 20,
        "node {major} is too old: the JavaScript client's tests need node 20+"
    );

    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "clients", "js"]
        .iter()
        .collect();
    npm_ci_unless_installed(&dir, &["ws", "typescript"], "the client's devDependencies");

    let mut child = Command::new("node")
        .args(["--test", "--test-timeout=120000", "test/"])
        .current_dir(&dir)
        .env("NBIO_WS_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node --test did not finish in 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
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
