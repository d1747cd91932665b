//! Runs the chat page's browser test (`examples/chat/browser-test/test.mjs`:
//! headless Chromium driven by playwright-core) against this build's `chat`
//! binary.
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

#[test]
fn chat_page_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !works("node", "--version") {
        eprintln!("SKIPPED chat_page_in_headless_chromium: node is not installed (apt-get install nodejs npm, or run scripts/install-test-deps.sh)");
        return;
    }
    if !Path::new(&chromium).exists() {
        eprintln!("SKIPPED chat_page_in_headless_chromium: no Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)");
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
