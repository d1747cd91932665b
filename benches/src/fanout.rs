//! `fanout` scenario: broadcast delivery latency, loss and duplication.
//!
//! `clients` receiver connections are opened (receiver `i` to
//! `targets[i % targets.len()]`, so with one `--url2` half of them are on the
//! second instance). When all are connected and a settle time has passed,
//! `senders` extra connections to the first target issue `broadcast`
//! requests at `rate` per second in total. Each broadcast's text carries its
//! sequence number and the send time (`"SEQ:NANOS:xxx…"`, nanoseconds since
//! the run's base instant; all clients live in this process, so clocks
//! agree). Every receiver records, per sequence number, whether it saw the
//! notification (a bitset: a second sighting is a duplicate) and the
//! latency. After the last broadcast, the run waits until every expected
//! delivery arrived or the grace period ran out.
//!
//! Expected deliveries = broadcasts sent × connected receivers. The sender
//! connections receive the notifications too (the wire format says so);
//! those are counted separately and not part of the expected figure.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::proc::{self, CpuUsage};
use crate::stats::{self, LatencySummary};
use crate::ws::{self, Ws, WsTarget};

/// Parameters of a `fanout` run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Servers: receivers are spread round-robin over all of them; the
    /// senders connect to the first.
    pub targets: Vec<WsTarget>,
    /// Receiver connections.
    pub clients: usize,
    /// Broadcasts per second, all senders together.
    pub rate: f64,
    /// Sending period.
    pub duration: Duration,
    /// Sender connections.
    pub senders: usize,
    /// Minimum bytes of broadcast text (seq and timestamp, then padding).
    pub text_size: usize,
    /// Pause between "all connected" and the first broadcast.
    pub settle: Duration,
    /// Longest wait for stragglers after the last broadcast.
    pub grace: Duration,
    /// Concurrent handshakes while connecting.
    pub connect_concurrency: usize,
    /// Timeout of one connect + handshake.
    pub connect_timeout: Duration,
    /// Pid of the (first) server, to report its CPU use.
    pub server_pid: Option<u32>,
}

/// Per-target breakdown (useful with `--url2`).
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Server URL.
    pub url: String,
    /// Receivers connected to it.
    pub receivers: usize,
    /// `connected_clients` of its `/health` after the settle time.
    pub health_connected_clients: Option<u64>,
    /// Unique deliveries to its receivers.
    pub deliveries: u64,
    /// Expected minus unique deliveries for its receivers.
    pub missing: u64,
    /// Latency of its deliveries.
    pub latency: LatencySummary,
}

/// Result of a `fanout` run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Always `"fanout"`.
    pub mode: &'static str,
    /// Server URLs; the senders use the first.
    pub urls: Vec<String>,
    /// Receivers requested.
    pub clients: usize,
    /// Receivers connected.
    pub connected: usize,
    /// Failed connection attempts (receivers and senders) by kind.
    pub connect_failures: BTreeMap<String, u64>,
    /// Sender connections.
    pub senders: usize,
    /// Target broadcasts per second.
    pub rate: f64,
    /// Broadcasts written.
    pub broadcasts_sent: u64,
    /// `broadcasted` acknowledgements received.
    pub acks_ok: u64,
    /// Error responses to broadcasts.
    pub ack_errors: u64,
    /// `broadcasts_sent × connected`.
    pub expected_deliveries: u64,
    /// Unique (receiver, seq) notifications received.
    pub deliveries: u64,
    /// `expected_deliveries − deliveries`.
    pub missing: u64,
    /// Notifications received again by the same receiver.
    pub duplicates: u64,
    /// Frames that were not a parsable broadcast notification of this run.
    pub unexpected_frames: u64,
    /// Receivers whose connection dropped before the end.
    pub connections_lost: u64,
    /// Notifications received by the sender connections (not in expected).
    pub sender_deliveries: u64,
    /// From first send to last delivery, seconds.
    pub delivery_window_s: f64,
    /// `deliveries / delivery_window_s`.
    pub deliveries_per_sec: f64,
    /// Send-to-receive latency of all deliveries.
    pub latency: LatencySummary,
    /// Breakdown per server.
    pub per_target: Vec<TargetReport>,
    /// Server CPU from first send to the end of the wait (with `--pid`),
    /// per delivery.
    pub server_cpu: Option<CpuUsage>,
    /// Loadgen CPU over the same window, per delivery.
    pub loadgen_cpu: CpuUsage,
    /// Cores busy in other processes over the window (noise; with `--pid`).
    pub others_cores: Option<f64>,
}

impl FanoutReport {
    /// Human-readable lines.
    pub fn human(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "fanout {}: {} clients ({} connected), {} sender(s), {:.1} broadcasts/s\n",
            self.urls.join(" + "),
            self.clients,
            self.connected,
            self.senders,
            self.rate
        );
        s += &format!(
            "  broadcasts: {} sent, {} acked, {} errors\n",
            self.broadcasts_sent, self.acks_ok, self.ack_errors
        );
        s += &format!(
            "  deliveries: {} of {} expected -> missing {}, duplicates {}, unexpected frames {}, connections lost {}\n",
            self.deliveries,
            self.expected_deliveries,
            self.missing,
            self.duplicates,
            self.unexpected_frames,
            self.connections_lost
        );
        s += &format!(
            "  rate:       {:.0} deliveries/s over {:.2}s\n",
            self.deliveries_per_sec, self.delivery_window_s
        );
        s += &format!("  latency:    {}\n", self.latency.line());
        if self.per_target.len() > 1 {
            for t in &self.per_target {
                s += &format!(
                    "  [{}] {} receivers (health: {:?}), {} deliveries, missing {}, {}\n",
                    t.url,
                    t.receivers,
                    t.health_connected_clients,
                    t.deliveries,
                    t.missing,
                    t.latency.line()
                );
            }
        } else if let Some(t) = self.per_target.first() {
            s += &format!(
                "  server /health connected_clients after settle: {:?}\n",
                t.health_connected_clients
            );
        }
        if !self.connect_failures.is_empty() {
            s += &format!("  connect failures: {:?}\n", self.connect_failures);
        }
        if let Some(c) = &self.server_cpu {
            s += &format!(
                "  server CPU: {:.2} cores, {:.2} µs/delivery\n",
                c.cores, c.us_per_op
            );
        }
        s += &format!(
            "  loadgen CPU: {:.2} cores, {:.2} µs/delivery\n",
            self.loadgen_cpu.cores, self.loadgen_cpu.us_per_op
        );
        if let Some(o) = self.others_cores {
            s += &format!("  other processes: {o:.2} cores (noise)\n");
        }
        s
    }
}

/// State shared by every task of a run.
struct Shared {
    base: Instant,
    total: u64,
    delivered: AtomicU64,
}

/// What one receiver saw.
struct RecvStats {
    index: usize,
    latencies_ns: Vec<u64>,
    unique: u64,
    duplicates: u64,
    unexpected: u64,
    lost: bool,
    last_rx: Option<Instant>,
}

/// What one sender did.
struct SendStats {
    sent: u64,
    acks_ok: u64,
    ack_errors: u64,
    notifications: u64,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<NotifParams<'a>>,
    #[serde(default)]
    id: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    result: Option<AckResult<'a>>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct NotifParams<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize)]
struct AckResult<'a> {
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
}

/// Extracts `(seq, sent_ns)` from a broadcast text `"SEQ:NANOS:…"`.
///
/// ```
/// assert_eq!(nbio_ws_benches::fanout::parse_stamp("12:3456:xx"), Some((12, 3456)));
/// assert_eq!(nbio_ws_benches::fanout::parse_stamp("hello"), None);
/// ```
pub fn parse_stamp(text: &str) -> Option<(u64, u64)> {
    let mut it = text.splitn(3, ':');
    let seq = it.next()?.parse().ok()?;
    let t = it.next()?.parse().ok()?;
    Some((seq, t))
}

/// Runs the scenario.
pub async fn run(cfg: FanoutConfig) -> FanoutReport {
    assert!(!cfg.targets.is_empty(), "at least one target");
    let senders_n = cfg.senders.max(1);
    let total = ((cfg.rate * cfg.duration.as_secs_f64()).round() as u64).max(1);

    let receivers = ws::connect_many(
        &cfg.targets,
        cfg.clients,
        cfg.connect_concurrency,
        cfg.connect_timeout,
    )
    .await;
    let senders = ws::connect_many(
        &cfg.targets[..1],
        senders_n,
        cfg.connect_concurrency,
        cfg.connect_timeout,
    )
    .await;
    eprintln!(
        "fanout: {} receivers + {} senders connected in {:.2}s ({} failed)",
        receivers.sockets.len(),
        senders.sockets.len(),
        receivers.elapsed.as_secs_f64() + senders.elapsed.as_secs_f64(),
        receivers.failed() + senders.failed()
    );
    let mut connect_failures = receivers.failures.clone();
    for (k, v) in &senders.failures {
        *connect_failures.entry(k.clone()).or_default() += v;
    }
    let connected = receivers.sockets.len();
    let mut per_target_receivers = vec![0usize; cfg.targets.len()];
    for (i, _) in &receivers.sockets {
        per_target_receivers[i % cfg.targets.len()] += 1;
    }

    let shared = Arc::new(Shared {
        base: Instant::now(),
        total,
        delivered: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut recv_handles = Vec::with_capacity(connected);
    for (i, ws) in receivers.sockets {
        let shared = shared.clone();
        let stop = stop_rx.clone();
        recv_handles.push(tokio::spawn(receiver(i, ws, shared, stop)));
    }

    tokio::time::sleep(cfg.settle).await;
    let mut health = Vec::with_capacity(cfg.targets.len());
    for t in &cfg.targets {
        health.push(
            ws::get_json(t, "/health")
                .await
                .and_then(|v| v.get("connected_clients").and_then(|c| c.as_u64())),
        );
    }

    // Send.
    let send_start = Instant::now();
    let srv0 = cfg.server_pid.and_then(proc::cpu_seconds);
    let me0 = proc::self_cpu_seconds();
    let m0 = proc::machine_busy_seconds();
    let period = Duration::from_secs_f64(senders_n as f64 / cfg.rate.max(1e-3));
    let sender_count = senders.sockets.len();
    let mut send_handles = Vec::with_capacity(sender_count);
    for (k, (_, ws)) in senders.sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let stop = stop_rx.clone();
        let text_size = cfg.text_size;
        send_handles.push(tokio::spawn(sender(
            ws,
            k as u64,
            sender_count as u64,
            period,
            text_size,
            shared,
            stop,
        )));
    }
    // Senders return their write count once done writing; acks are
    // collected by their reader tasks until `stop`.
    let mut sent_total = 0u64;
    let mut ack_handles = Vec::with_capacity(sender_count);
    for h in send_handles {
        if let Ok((sent, ack)) = h.await {
            sent_total += sent;
            ack_handles.push(ack);
        }
    }
    let expected = sent_total * connected as u64;
    let grace_end = Instant::now() + cfg.grace;
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now();
    let srv1 = cfg.server_pid.and_then(proc::cpu_seconds);
    let me1 = proc::self_cpu_seconds();
    let m1 = proc::machine_busy_seconds();
    let _ = stop_tx.send(true);

    let mut all = stats::new_histogram();
    let mut per_hist: Vec<_> = cfg.targets.iter().map(|_| stats::new_histogram()).collect();
    let mut per_unique = vec![0u64; cfg.targets.len()];
    let (mut unique, mut duplicates, mut unexpected, mut lost) = (0u64, 0u64, 0u64, 0u64);
    let mut last_rx: Option<Instant> = None;
    for h in recv_handles {
        let Ok(st) = h.await else {
            lost += 1;
            continue;
        };
        let g = st.index % cfg.targets.len();
        for &ns in &st.latencies_ns {
            stats::record(&mut all, ns);
            stats::record(&mut per_hist[g], ns);
        }
        unique += st.unique;
        per_unique[g] += st.unique;
        duplicates += st.duplicates;
        unexpected += st.unexpected;
        lost += st.lost as u64;
        last_rx = last_rx.max(st.last_rx);
    }
    let mut snd = SendStats {
        sent: sent_total,
        acks_ok: 0,
        ack_errors: 0,
        notifications: 0,
    };
    for h in ack_handles {
        if let Ok(s) = h.await {
            snd.acks_ok += s.acks_ok;
            snd.ack_errors += s.ack_errors;
            snd.notifications += s.notifications;
        }
    }
    let window = last_rx
        .map(|t| t.saturating_duration_since(send_start))
        .unwrap_or_default()
        .as_secs_f64();
    let cpu_window = (end - send_start).as_secs_f64();
    let per_target = cfg
        .targets
        .iter()
        .enumerate()
        .map(|(g, t)| TargetReport {
            url: t.url.clone(),
            receivers: per_target_receivers[g],
            health_connected_clients: health[g],
            deliveries: per_unique[g],
            missing: (snd.sent * per_target_receivers[g] as u64).saturating_sub(per_unique[g]),
            latency: LatencySummary::from_histogram(&per_hist[g]),
        })
        .collect();

    let server_cpu = match (srv0, srv1) {
        (Some(a), Some(b)) => Some(CpuUsage::from_samples(a, b, cpu_window, unique)),
        _ => None,
    };
    let loadgen_cpu = CpuUsage::from_samples(me0, me1, cpu_window, unique);
    let others_cores = server_cpu
        .as_ref()
        .and_then(|s| proc::others_cores((m0, m1), Some(s), &loadgen_cpu, cpu_window));
    FanoutReport {
        mode: "fanout",
        urls: cfg.targets.iter().map(|t| t.url.clone()).collect(),
        clients: cfg.clients,
        connected,
        connect_failures,
        senders: sender_count,
        rate: cfg.rate,
        broadcasts_sent: snd.sent,
        acks_ok: snd.acks_ok,
        ack_errors: snd.ack_errors,
        expected_deliveries: expected,
        deliveries: unique,
        missing: expected.saturating_sub(unique),
        duplicates,
        unexpected_frames: unexpected,
        connections_lost: lost,
        sender_deliveries: snd.notifications,
        delivery_window_s: window,
        deliveries_per_sec: if window > 0.0 {
            unique as f64 / window
        } else {
            0.0
        },
        latency: LatencySummary::from_histogram(&all),
        per_target,
        server_cpu,
        loadgen_cpu,
        others_cores,
    }
}

/// A receiver: reads notifications until `stop`, then closes.
async fn receiver(
    index: usize,
    mut ws: Ws,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> RecvStats {
    let words = (shared.total as usize).div_ceil(64);
    let mut seen = vec![0u64; words];
    let mut st = RecvStats {
        index,
        latencies_ns: Vec::with_capacity(shared.total as usize),
        unique: 0,
        duplicates: 0,
        unexpected: 0,
        lost: false,
        last_rx: None,
    };
    loop {
        // Cancelling `read_frame` may lose a partial frame: only done at
        // the end, right before closing.
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = ws.read_frame() => r,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(_) => {
                st.lost = true;
                return st;
            }
        };
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => {
                st.lost = true;
                return st;
            }
            _ => continue,
        }
        let now = Instant::now();
        let msg: Incoming = match serde_json::from_slice(&frame.payload) {
            Ok(m) => m,
            Err(_) => {
                st.unexpected += 1;
                continue;
            }
        };
        let stamp = match (&msg.method, &msg.params, &msg.id) {
            (Some(m), Some(p), None) if m == "broadcast" => parse_stamp(&p.text),
            _ => None,
        };
        let Some((seq, sent_ns)) = stamp.filter(|(seq, _)| *seq < shared.total) else {
            st.unexpected += 1;
            continue;
        };
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seen[w] & bit != 0 {
            st.duplicates += 1;
            continue;
        }
        seen[w] |= bit;
        st.unique += 1;
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        let now_ns = now.duration_since(shared.base).as_nanos() as u64;
        st.latencies_ns.push(now_ns.saturating_sub(sent_ns));
        st.last_rx = Some(now);
    }
    let _ = ws.write_frame(Frame::close(1000, b"")).await;
    st
}

/// A sender: writes its share of the broadcasts (`seq ≡ k mod n`) at the
/// given period; a reader task counts acknowledgements until `stop`.
/// Returns the number written and the reader's handle.
async fn sender(
    ws: Ws,
    k: u64,
    n: u64,
    period: Duration,
    text_size: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> (u64, tokio::task::JoinHandle<SendStats>) {
    let (mut rx, mut tx) = ws.split(tokio::io::split);
    let mut stop_r = stop.clone();
    let reader = tokio::spawn(async move {
        let mut st = SendStats {
            sent: 0,
            acks_ok: 0,
            ack_errors: 0,
            notifications: 0,
        };
        // Control frames (pong/close) the server obliges us to send are
        // dropped: the run is short and ends with our own close.
        let mut ignore = |_f: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop_r.changed() => break,
                r = rx.read_frame(&mut ignore) => r,
            };
            let Ok(frame) = frame else { break };
            if frame.opcode != OpCode::Text {
                if frame.opcode == OpCode::Close {
                    break;
                }
                continue;
            }
            let Ok(msg) = serde_json::from_slice::<Incoming>(&frame.payload) else {
                st.ack_errors += 1;
                continue;
            };
            if msg.id.is_some() {
                match (&msg.result, &msg.error) {
                    (Some(r), None) if r.status.as_deref() == Some("broadcasted") => {
                        st.acks_ok += 1
                    }
                    _ => st.ack_errors += 1,
                }
            } else if msg.method.as_deref() == Some("broadcast") {
                st.notifications += 1;
            }
        }
        st
    });

    let mut interval = tokio::time::interval(period);
    let mut buf = Vec::with_capacity(text_size + 128);
    let mut text = String::with_capacity(text_size + 32);
    let mut sent = 0u64;
    let mut seq = k;
    while seq < shared.total {
        interval.tick().await;
        if *stop.borrow() {
            break;
        }
        let t = Instant::now().duration_since(shared.base).as_nanos() as u64;
        text.clear();
        use std::fmt::Write as _;
        write!(text, "{seq}:{t}:").expect("write to String");
        while text.len() < text_size {
            text.push('x');
        }
        buf.clear();
        write!(
            buf,
            r#"{{"jsonrpc":"2.0","method":"broadcast","params":{{"text":"{text}"}},"id":{seq}}}"#
        )
        .expect("write to Vec");
        if tx
            .write_frame(Frame::text(Payload::BorrowedMut(buf.as_mut_slice())))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        seq += n;
    }
    // Keep the write half open until the run stops, then close politely.
    let mut stop_w = stop;
    tokio::spawn(async move {
        if !*stop_w.borrow() {
            let _ = stop_w.changed().await;
        }
        let _ = tx.write_frame(Frame::close(1000, b"")).await;
    });
    (sent, reader)
}
