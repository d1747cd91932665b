//! Helpers shared by the example binaries' tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on `127.0.0.1:port` over a real socket: status and body, or
/// `None` when nothing answers (in 5 s).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

/// `npm ci` in `dir` unless every one of `modules` is in its
/// `node_modules`; `what` names the packages in the messages.
pub fn npm_ci_unless_installed(dir: &Path, modules: &[&str], what: &str) {
    let installed = |m: &&str| {
        dir.join("node_modules")
            .join(m)
            .join("package.json")
            .exists()
    };
    if modules.iter().all(installed) {
        return;
    }
    eprintln!("installing {what}: npm ci in {}", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm is not installed (apt-get install npm), or set NBIO_WS_SKIP_NODE_TESTS=1");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}
