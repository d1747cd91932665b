//! Runs the chat page's browser test (`examples/chat/browser-test/test.mjs`:
//! headless Chromium driven by playwright-core) against this build's `chat`
//! binary: once against one instance, and (with the `redis` feature) once
//! against two instances sharing a real `redis-server`, alice's page on one
//! and bob's on the other.
//!
//! Needs node and Debian's chromium (`scripts/install-test-deps.sh` installs
//! both); without either the test says so and passes without running.
//! playwright-core is installed with `npm ci` when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn works(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The two browser tests take turns: two Chromiums at once on a small
/// machine only make both slow, and `npm ci` must run once.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn chat_page_in_headless_chromium() {
    run_browser_test("chat_page_in_headless_chromium", &[]);
}

/// The same with permessage-deflate on: the page checks that its socket
/// negotiated the extension, and every other check runs compressed.
#[test]
fn chat_page_with_compression_in_headless_chromium() {
    run_browser_test(
        "chat_page_with_compression_in_headless_chromium",
        &[("WS_COMPRESSION", "true")],
    );
}

/// Two chat instances on two ports sharing a Redis (rooms, presence and
/// history across instances), alice on the first, bob on the second.
#[cfg(feature = "redis")]
#[test]
fn chat_page_across_two_instances_in_headless_chromium() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let _redis = KillOnDrop(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(25));
    }
    let url = format!("redis://127.0.0.1:{port}/0");
    let channel = format!("browser{port}");
    run_browser_test(
        "chat_page_across_two_instances_in_headless_chromium",
        &[
            ("CHAT_INSTANCES", "2"),
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "redis"),
            ("WS_REDIS_URL", &url),
            ("WS_PUBSUB_CHANNEL", &channel),
        ],
    );
}

/// A child process killed when the test ends, passed or not.
#[cfg(feature = "redis")]
struct KillOnDrop(std::process::Child);

#[cfg(feature = "redis")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_browser_test(name: &str, env: &[(&str, &str)]) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !works("node", "--version") {
        eprintln!("SKIPPED {name}: node is not installed (apt-get install nodejs npm, or run scripts/install-test-deps.sh)");
        return;
    }
    if !Path::new(&chromium).exists() {
        eprintln!(
            "SKIPPED {name}: no Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)"
        );
        return;
    }

    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "chat", "browser-test"]
        .iter()
        .collect();
    if !dir.join("node_modules/playwright-core").exists() {
        eprintln!(
            "installing playwright-core: npm ci --prefix {}",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .status()
            .expect("run npm");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }

    let mut child = Command::new("node")
        .arg(dir.join("test.mjs"))
        .arg(env!("CARGO_BIN_EXE_chat"))
        .env("CHROMIUM", &chromium)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    // test.mjs gives up by itself after 150 s; this is the backstop.
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser test did not finish in 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    println!("{out}");
    assert!(status.success(), "browser test failed ({status}):\n{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("browser: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    assert!(summary.ends_with(", 0 failed"), "{summary}");
}
