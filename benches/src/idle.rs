//! `idle` scenario: server memory per idle WebSocket connection.
//!
//! Reads the server's `VmRSS` (`/proc/PID/status`), opens `connections`
//! WebSockets (at most `connect_concurrency` handshakes at a time, each with
//! a timeout), holds them for `hold` (each client task keeps reading, so
//! server pings are answered), reads `VmRSS` again and reports
//! `(after − before) / connected` in KiB. Then closes them all and reads the
//! RSS once more.
//!
//! File descriptors: this process raises its own `RLIMIT_NOFILE`. The server
//! needs one descriptor per connection too, and this tool cannot raise the
//! server's limit: it reads the server's `Max open files` from
//! `/proc/PID/limits` and warns when it is too low (start the server under
//! `ulimit -n 65536` or have it raise the limit itself). A server out of
//! descriptors (`EMFILE` in `accept`) leaves connections hanging in the
//! listen backlog: they show up here as handshake timeouts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode};
use serde::Serialize;
use tokio::sync::watch;

use crate::proc::{self, NofileLimit};
use crate::ws::{self, WsTarget};

/// Parameters of an `idle` run.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// Server to measure.
    pub target: WsTarget,
    /// Connections to open.
    pub connections: usize,
    /// Server pid (for `/proc/PID/status`).
    pub pid: u32,
    /// How long to hold the connections before measuring.
    pub hold: Duration,
    /// Concurrent handshakes (the batch size).
    pub connect_concurrency: usize,
    /// Timeout of one connect + handshake.
    pub connect_timeout: Duration,
    /// Pause after closing before the last RSS reading.
    pub after_close: Duration,
}

/// Result of an `idle` run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Always `"idle"`.
    pub mode: &'static str,
    /// Server URL.
    pub url: String,
    /// Server pid.
    pub pid: u32,
    /// Connections requested.
    pub connections: usize,
    /// Connections established.
    pub connected: usize,
    /// Connections that dropped while held.
    pub lost_during_hold: u64,
    /// Failed attempts by kind.
    pub connect_failures: BTreeMap<String, u64>,
    /// First failure message.
    pub first_error: Option<String>,
    /// Seconds to open all connections.
    pub connect_s: f64,
    /// This process's `RLIMIT_NOFILE` before/after raising it.
    pub loadgen_nofile: NofileLimit,
    /// The server's soft `Max open files`.
    pub server_max_open_files: Option<u64>,
    /// Server descriptors before connecting.
    pub server_fds_before: Option<u64>,
    /// Server descriptors while holding.
    pub server_fds_held: Option<u64>,
    /// Server threads while holding.
    pub server_threads: Option<u64>,
    /// `connected_clients` from `/health` while holding.
    pub health_connected_clients: Option<u64>,
    /// Server VmRSS before connecting, KiB.
    pub rss_before_kib: u64,
    /// Server VmRSS while holding, KiB.
    pub rss_held_kib: u64,
    /// Server VmRSS after closing everything, KiB.
    pub rss_after_close_kib: Option<u64>,
    /// `(rss_held − rss_before) / connected`, KiB.
    pub kib_per_connection: f64,
    /// Problems worth a human's attention.
    pub warnings: Vec<String>,
}

impl IdleReport {
    /// Human-readable lines.
    pub fn human(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "idle {} (pid {}): {} of {} connections open after {:.2}s, {} lost while held\n",
            self.url,
            self.pid,
            self.connected,
            self.connections,
            self.connect_s,
            self.lost_during_hold
        );
        s += &format!(
            "  server RSS: {} KiB before, {} KiB held, {} after close\n",
            self.rss_before_kib,
            self.rss_held_kib,
            self.rss_after_close_kib
                .map(|v| format!("{v} KiB"))
                .unwrap_or_else(|| "?".into())
        );
        s += &format!("  => {:.2} KiB per connection\n", self.kib_per_connection);
        s += &format!(
            "  server fds: {:?} before, {:?} held (limit {:?}); threads {:?}; /health connected_clients {:?}\n",
            self.server_fds_before,
            self.server_fds_held,
            self.server_max_open_files,
            self.server_threads,
            self.health_connected_clients
        );
        if !self.connect_failures.is_empty() {
            s += &format!(
                "  connect failures: {:?} (first: {})\n",
                self.connect_failures,
                self.first_error.as_deref().unwrap_or("")
            );
        }
        for w in &self.warnings {
            s += &format!("  WARNING: {w}\n");
        }
        s
    }
}

/// Runs the scenario.
pub async fn run(cfg: IdleConfig) -> Result<IdleReport, String> {
    let nofile = proc::raise_nofile_limit(cfg.connections as u64 + 1024);
    let mut warnings = Vec::new();
    if nofile.after < cfg.connections as u64 + 64 {
        warnings.push(format!(
            "loadgen RLIMIT_NOFILE is {} (< {} connections): run it as root or raise the hard limit",
            nofile.after, cfg.connections
        ));
    }
    let server_limit = proc::max_open_files(cfg.pid);
    if let Some(limit) = server_limit {
        if limit < cfg.connections as u64 + 64 {
            warnings.push(format!(
                "server pid {} has RLIMIT_NOFILE {limit} (< {} connections + headroom): it will hit EMFILE; \
                 start it under `ulimit -n 65536` or have it raise the limit",
                cfg.pid, cfg.connections
            ));
        }
    }
    let rss_before =
        proc::vm_rss_kib(cfg.pid).ok_or_else(|| format!("cannot read /proc/{}/status", cfg.pid))?;
    let fds_before = proc::open_fds(cfg.pid);

    let conns = ws::connect_many(
        std::slice::from_ref(&cfg.target),
        cfg.connections,
        cfg.connect_concurrency,
        cfg.connect_timeout,
    )
    .await;
    let connected = conns.sockets.len();
    eprintln!(
        "idle: {connected}/{} connected in {:.2}s; holding {:.1}s",
        cfg.connections,
        conns.elapsed.as_secs_f64(),
        cfg.hold.as_secs_f64()
    );

    let lost = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = Vec::with_capacity(connected);
    for (_, mut ws) in conns.sockets {
        let mut stop = stop_rx.clone();
        let lost = lost.clone();
        holders.push(tokio::spawn(async move {
            loop {
                // Reading answers pings; cancelled only at the end.
                let r = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    r = ws.read_frame() => r,
                };
                match r {
                    Ok(f) if f.opcode == OpCode::Close => {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            let _ = ws.write_frame(Frame::close(1000, b"")).await;
        }));
    }

    tokio::time::sleep(cfg.hold).await;
    let rss_held = proc::vm_rss_kib(cfg.pid)
        .ok_or_else(|| format!("cannot read /proc/{}/status (server exited?)", cfg.pid))?;
    let fds_held = proc::open_fds(cfg.pid);
    let threads = proc::threads(cfg.pid);
    let health = ws::get_json(&cfg.target, "/health")
        .await
        .and_then(|v| v.get("connected_clients").and_then(|c| c.as_u64()));
    let lost_during_hold = lost.load(Ordering::Relaxed);

    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    tokio::time::sleep(cfg.after_close).await;
    let rss_after_close = proc::vm_rss_kib(cfg.pid);

    if conns
        .failures
        .keys()
        .any(|k| k.starts_with("timeout") || k.starts_with("handshake"))
    {
        let near_limit = match (fds_held, server_limit) {
            (Some(f), Some(l)) => f + 16 >= l,
            _ => false,
        };
        warnings.push(if near_limit {
            format!(
                "connections failed while the server held {fds_held:?} fds of its limit {server_limit:?}: \
                 the server ran out of file descriptors (EMFILE)"
            )
        } else {
            "some handshakes timed out or were refused: server overloaded, listen backlog full, or EMFILE"
                .to_string()
        });
    }
    if let Some(h) = health {
        if h + lost_during_hold < connected as u64 {
            warnings.push(format!(
                "/health reports {h} connected clients but {connected} were open"
            ));
        }
    }

    let kib_per_connection = if connected > 0 {
        (rss_held as f64 - rss_before as f64) / connected as f64
    } else {
        0.0
    };
    Ok(IdleReport {
        mode: "idle",
        url: cfg.target.url.clone(),
        pid: cfg.pid,
        connections: cfg.connections,
        connected,
        lost_during_hold,
        connect_failures: conns.failures,
        first_error: conns.first_error,
        connect_s: conns.elapsed.as_secs_f64(),
        loadgen_nofile: nofile,
        server_max_open_files: server_limit,
        server_fds_before: fds_before,
        server_fds_held: fds_held,
        server_threads: threads,
        health_connected_clients: health,
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        rss_after_close_kib: rss_after_close,
        kib_per_connection,
        warnings,
    })
}
