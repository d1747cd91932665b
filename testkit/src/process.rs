//! Child processes: killed when the test ends, passed or not; and the
//! workspace's server binaries, started as a user starts them.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::http::try_http_request;
use crate::net::{eventually, free_port, loopback};
use crate::ws::WsClient;

/// A child process, killed (SIGKILL) and reaped when dropped; or, made with
/// [`Proc::graceful`], sent SIGTERM first and given two seconds to exit.
pub struct Proc {
    child: Child,
    graceful: bool,
}

impl Proc {
    /// Spawns `cmd`; fails the test, naming the program, if it cannot start.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        Proc::new(child)
    }

    /// Takes charge of a child already spawned.
    pub fn new(child: Child) -> Proc {
        Proc {
            child,
            graceful: false,
        }
    }

    /// A child stopped with SIGTERM when dropped (nginx's master process,
    /// which would leave its workers running on SIGKILL).
    pub fn graceful(child: Child) -> Proc {
        Proc {
            child,
            graceful: true,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (to take its pipes, say).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGHUP (a server's "reload your configuration").
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with a valid signal number has no memory effects.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill -{signal} {pid}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Blocks until it exits; its status.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for the child")
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.graceful && matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }
}

/// Runs `cmd` to its end with stdout captured (stderr goes to the test's),
/// killing it if it runs longer than `limit`: its status and stdout.
pub fn run_captured(cmd: &mut Command, limit: Duration) -> (ExitStatus, String) {
    let mut proc = Proc::spawn(cmd.stdout(Stdio::piped()));
    let mut stdout = proc.child().stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = proc.child().try_wait().expect("wait for the child") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            proc.kill();
            panic!("{:?} did not finish in {limit:?}", cmd.get_program());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().unwrap_or_default())
}

/// Installs the npm packages of `dir` (`npm ci`) unless each of `modules`
/// is there already; no browser downloads (the browser tests drive
/// Debian's Chromium).
pub fn npm_ci(dir: &std::path::Path, modules: &[&str]) {
    let installed = |m: &&str| {
        dir.join("node_modules")
            .join(m)
            .join("package.json")
            .exists()
    };
    if modules.iter().all(installed) {
        return;
    }
    eprintln!("installing {modules:?}: npm ci --prefix {}", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()
        .expect("run npm");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// A server binary's command as a test runs it: on `127.0.0.1:port`
/// (`WS_HOST`, `WS_PORT`), logging warnings only (`WS_LOG_LEVEL`, no
/// `RUST_LOG` from the test's environment), no stdin, stdout discarded
/// (stderr is the test's, so that a failing server says why).
pub fn command(bin: impl AsRef<OsStr>, port: u16) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("WS_HOST", "127.0.0.1")
        .env("WS_PORT", port.to_string())
        .env("WS_LOG_LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Runs a server binary that is expected to stop at once (a bad
/// configuration, say): its exit code and stderr.
pub fn run_to_exit<K, V>(bin: impl AsRef<OsStr>, env: &[(K, V)]) -> (Option<i32>, String)
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut cmd = command(bin, free_port());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server binary running as a child process on a loopback port.
pub struct ServerProcess {
    /// The process (killed on drop).
    pub proc: Proc,
    /// Its port.
    pub port: u16,
}

impl ServerProcess {
    /// Starts `bin` with [`command`] on a free port and the extra `env`,
    /// and waits until `GET /health` answers 200.
    pub async fn start(bin: impl AsRef<OsStr>, env: &[(&str, String)]) -> ServerProcess {
        let port = free_port();
        let mut cmd = command(bin, port);
        for (k, v) in env {
            cmd.env(k, v);
        }
        ServerProcess::spawn(&mut cmd, port, "/health").await
    }

    /// Spawns `cmd`, which is to listen on `port`, and waits until
    /// `GET ready` answers 200 (failing the test if the process exits or
    /// does not answer in time).
    pub async fn spawn(cmd: &mut Command, port: u16, ready: &str) -> ServerProcess {
        let mut server = ServerProcess::new(Proc::spawn(cmd), port);
        server.wait_ready(ready).await;
        server
    }

    /// A process started already, which is to listen on `port`.
    pub fn new(proc: Proc, port: u16) -> ServerProcess {
        ServerProcess { proc, port }
    }

    /// Waits until `GET path` answers 200, failing the test if the process
    /// exits or does not answer in time.
    pub async fn wait_ready(&mut self, path: &str) {
        let (port, addr) = (self.port, self.addr());
        let proc = &mut self.proc;
        eventually(|| {
            if let Ok(Some(status)) = proc.child().try_wait() {
                panic!("the server on port {port} exited: {status}");
            }
            async move {
                match try_http_request(addr, "GET", path).await {
                    Ok((200, _, _)) => Ok(()),
                    Ok((status, _, body)) => {
                        Err(format!("GET {path} on port {port}: {status} {body}"))
                    }
                    Err(e) => Err(format!("the server on port {port} did not come up: {e}")),
                }
            }
        })
        .await
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `ws://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    /// `GET path`: `(status, head, body)`, failing the test on an error.
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        crate::http::http_request(self.addr(), "GET", path).await
    }

    /// A client connected to `/ws`.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.url("/ws")).await
    }

    /// Waits until `/metrics` shows `name` at `want`.
    pub async fn wait_metric(&self, name: &str, want: u64) {
        self.wait_for("/metrics", |body| match crate::metric(body, name) {
            Some(v) if v == want => Ok(()),
            last => Err(format!("{name} is {last:?}, expected {want}")),
        })
        .await
    }

    /// Waits until `/health` reports the broker connected.
    pub async fn wait_broker_connected(&self) {
        self.wait_for("/health", |body| {
            let h: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            match h["broker"]["connected"] == true {
                true => Ok(()),
                false => Err(format!("not connected to its broker: {body}")),
            }
        })
        .await
    }

    /// Waits until the body of `GET path` passes `check`.
    async fn wait_for(&self, path: &str, check: impl Fn(&str) -> Result<(), String>) {
        let addr = self.addr();
        let check = &check;
        eventually(|| async move {
            let body = try_http_request(addr, "GET", path)
                .await
                .map(|r| r.2)
                .unwrap_or_default();
            check(&body).map_err(|e| format!("{addr}{path}: {e}"))
        })
        .await
    }
}
