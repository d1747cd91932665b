//! `reply` scenario: request/response throughput and latency of `self.reply`.
//!
//! `connections` WebSockets each keep `inflight` requests outstanding
//! (pipelined on the one socket, matched by id): as soon as a response
//! arrives, the next request goes out on that connection. Throughput counts
//! every response received inside the measurement window (after the
//! warm-up); latency is recorded for requests both sent and answered inside
//! it.
//!
//! Each connection is one task that alternates between reading a response
//! and writing the next request, so there is no lock or channel on the
//! client's hot path, and the request bytes are built from a prebuilt prefix
//! (only the id is formatted per request).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::proc::{self, CpuUsage};
use crate::stats::{self, LatencySummary};
use crate::ws::{self, Ws, WsTarget};

/// Parameters of a `reply` run.
#[derive(Debug, Clone)]
pub struct ReplyConfig {
    /// Server to measure.
    pub target: WsTarget,
    /// Number of WebSocket connections.
    pub connections: usize,
    /// Requests kept in flight per connection.
    pub inflight: usize,
    /// Bytes of `params.text` per request.
    pub text_size: usize,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Load before the window starts (not measured).
    pub warmup: Duration,
    /// Server pid, to report its CPU use over the window.
    pub server_pid: Option<u32>,
    /// Concurrent handshakes while connecting.
    pub connect_concurrency: usize,
    /// Timeout of one connect + handshake.
    pub connect_timeout: Duration,
    /// How long to wait for in-flight responses after the window.
    pub drain_timeout: Duration,
}

/// Error counters of a `reply` run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplyErrors {
    /// Sum of the counters below.
    pub total: u64,
    /// Responses carrying a JSON-RPC `error`.
    pub rpc_error: u64,
    /// Unparsable frames, unknown ids, `result` without the expected
    /// `text_length`.
    pub bad_response: u64,
    /// Connections that closed or failed before the end.
    pub connections_lost: u64,
    /// Requests never answered (still in flight at the end).
    pub unanswered: u64,
}

/// Result of a `reply` run.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyReport {
    /// Always `"reply"`.
    pub mode: &'static str,
    /// Server URL.
    pub url: String,
    /// Connections requested.
    pub connections: usize,
    /// Connections established.
    pub connected: usize,
    /// Failed connection attempts by kind.
    pub connect_failures: BTreeMap<String, u64>,
    /// Requests in flight per connection.
    pub inflight: usize,
    /// Text bytes per request.
    pub text_size: usize,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measurement window, seconds.
    pub window_s: f64,
    /// Responses received in the window.
    pub responses: u64,
    /// `responses / window_s`.
    pub requests_per_sec: f64,
    /// Round-trip latency of requests sent and answered in the window.
    pub latency: LatencySummary,
    /// Errors.
    pub errors: ReplyErrors,
    /// Server CPU over the window (with `--pid`), per response.
    pub server_cpu: Option<CpuUsage>,
    /// Loadgen CPU over the window, per response.
    pub loadgen_cpu: CpuUsage,
    /// Server RSS at the end of the window, KiB (with `--pid`).
    pub server_rss_kib: Option<u64>,
    /// Cores busy in other processes during the window (noise; should be
    /// near 0 for a trustworthy figure). Needs `--pid` to subtract the
    /// server.
    pub others_cores: Option<f64>,
}

impl ReplyReport {
    /// Human-readable lines.
    pub fn human(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "reply {}: {} conns ({} connected) x {} in flight, text {} B, warmup {:.1}s, window {:.2}s\n",
            self.url, self.connections, self.connected, self.inflight, self.text_size, self.warmup_s, self.window_s
        );
        s += &format!(
            "  throughput: {:.0} req/s ({} responses)\n",
            self.requests_per_sec, self.responses
        );
        s += &format!("  latency:    {}\n", self.latency.line());
        s += &format!(
            "  errors:     {} (rpc_error {}, bad_response {}, connections_lost {}, unanswered {})\n",
            self.errors.total,
            self.errors.rpc_error,
            self.errors.bad_response,
            self.errors.connections_lost,
            self.errors.unanswered
        );
        if !self.connect_failures.is_empty() {
            s += &format!("  connect failures: {:?}\n", self.connect_failures);
        }
        if let Some(c) = &self.server_cpu {
            s += &format!(
                "  server CPU: {:.2} cores, {:.1} µs/request",
                c.cores, c.us_per_op
            );
            if let Some(rss) = self.server_rss_kib {
                s += &format!(", RSS {} KiB", rss);
            }
            s += "\n";
        }
        s += &format!(
            "  loadgen CPU: {:.2} cores, {:.1} µs/request\n",
            self.loadgen_cpu.cores, self.loadgen_cpu.us_per_op
        );
        if let Some(o) = self.others_cores {
            s += &format!("  other processes: {o:.2} cores (noise)\n");
        }
        s
    }
}

/// Everything a connection task needs, shared.
struct Plan {
    prefix: Vec<u8>,
    text_size: u64,
    inflight: usize,
    measure_from: Instant,
    measure_until: Instant,
}

/// Per-connection counters, merged at the end.
struct ConnStats {
    hist: Histogram<u64>,
    responses: u64,
    rpc_error: u64,
    bad_response: u64,
    lost: bool,
    outstanding: u64,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    result: Option<ReplyResult>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ReplyResult {
    #[serde(default)]
    text_length: Option<u64>,
}

/// Runs the scenario. Connects first, then starts every connection at the
/// same instant.
pub async fn run(cfg: ReplyConfig) -> ReplyReport {
    assert!(cfg.inflight > 0, "inflight must be at least 1");
    let conns = ws::connect_many(
        std::slice::from_ref(&cfg.target),
        cfg.connections,
        cfg.connect_concurrency,
        cfg.connect_timeout,
    )
    .await;
    let connected = conns.sockets.len();

    let text = crate::filler_text(cfg.text_size);
    let mut prefix = Vec::new();
    write!(
        prefix,
        r#"{{"jsonrpc":"2.0","method":"self.reply","params":{{"text":"{text}"}},"id":"#
    )
    .expect("write to Vec");
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let measure_until = measure_from + cfg.duration;
    let hard_deadline = measure_until + cfg.drain_timeout;
    let plan = Arc::new(Plan {
        prefix,
        text_size: cfg.text_size as u64,
        inflight: cfg.inflight,
        measure_from,
        measure_until,
    });

    let mut handles = Vec::with_capacity(connected);
    let connect_failed = conns.failed();
    for (_, ws) in conns.sockets {
        let plan = plan.clone();
        handles.push(tokio::spawn(async move {
            let mut st = ConnStats {
                hist: stats::new_histogram(),
                responses: 0,
                rpc_error: 0,
                bad_response: 0,
                lost: false,
                outstanding: 0,
            };
            if tokio::time::timeout_at(hard_deadline.into(), run_conn(ws, &plan, &mut st))
                .await
                .is_err()
            {
                st.lost = st.lost || st.outstanding > 0;
            }
            st
        }));
    }

    // CPU samples at the window's edges.
    tokio::time::sleep_until(measure_from.into()).await;
    let srv0 = cfg.server_pid.and_then(proc::cpu_seconds);
    let me0 = proc::self_cpu_seconds();
    let m0 = proc::machine_busy_seconds();
    tokio::time::sleep_until(measure_until.into()).await;
    let srv1 = cfg.server_pid.and_then(proc::cpu_seconds);
    let me1 = proc::self_cpu_seconds();
    let m1 = proc::machine_busy_seconds();
    let rss = cfg.server_pid.and_then(proc::vm_rss_kib);
    let window_s = (measure_until - measure_from).as_secs_f64();

    let mut hist = stats::new_histogram();
    let mut errors = ReplyErrors::default();
    let mut responses = 0u64;
    for h in handles {
        match h.await {
            Ok(st) => {
                hist.add(&st.hist).expect("same bounds");
                responses += st.responses;
                errors.rpc_error += st.rpc_error;
                errors.bad_response += st.bad_response;
                errors.connections_lost += st.lost as u64;
                errors.unanswered += st.outstanding;
            }
            Err(_) => errors.connections_lost += 1,
        }
    }
    errors.connections_lost += connect_failed;
    errors.total =
        errors.rpc_error + errors.bad_response + errors.connections_lost + errors.unanswered;

    let server_cpu = match (srv0, srv1) {
        (Some(a), Some(b)) => Some(CpuUsage::from_samples(a, b, window_s, responses)),
        _ => None,
    };
    let loadgen_cpu = CpuUsage::from_samples(me0, me1, window_s, responses);
    let others_cores = server_cpu
        .as_ref()
        .and_then(|s| proc::others_cores((m0, m1), Some(s), &loadgen_cpu, window_s));
    ReplyReport {
        mode: "reply",
        url: cfg.target.url.clone(),
        connections: cfg.connections,
        connected,
        connect_failures: conns.failures,
        inflight: cfg.inflight,
        text_size: cfg.text_size,
        warmup_s: cfg.warmup.as_secs_f64(),
        window_s,
        responses,
        requests_per_sec: responses as f64 / window_s,
        latency: LatencySummary::from_histogram(&hist),
        errors,
        server_cpu,
        loadgen_cpu,
        server_rss_kib: rss,
        others_cores,
    }
}

/// Writes request `id` (prefix + id + `}`), masking in place.
async fn send(ws: &mut Ws, buf: &mut Vec<u8>, prefix: &[u8], id: u64) -> bool {
    buf.clear();
    buf.extend_from_slice(prefix);
    write!(buf, "{id}}}").expect("write to Vec");
    ws.write_frame(Frame::text(Payload::BorrowedMut(buf.as_mut_slice())))
        .await
        .is_ok()
}

/// One connection's closed loop. Ids are `n * inflight + slot`, so the slot
/// of a response is `id % inflight`, whatever order responses come in.
async fn run_conn(mut ws: Ws, plan: &Plan, st: &mut ConnStats) {
    let d = plan.inflight as u64;
    let mut slots: Vec<(u64, Instant)> = vec![(u64::MAX, plan.measure_from); plan.inflight];
    let mut buf = Vec::with_capacity(plan.prefix.len() + 24);
    let mut next: u64 = 0;
    for (slot, entry) in slots.iter_mut().enumerate() {
        let id = next * d + slot as u64;
        *entry = (id, Instant::now());
        if !send(&mut ws, &mut buf, &plan.prefix, id).await {
            st.lost = true;
            return;
        }
        st.outstanding += 1;
    }
    next += 1;
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(_) => {
                st.lost = st.outstanding > 0;
                return;
            }
        };
        let now = Instant::now();
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => {
                st.lost = st.outstanding > 0;
                return;
            }
            _ => continue,
        }
        let resp: Response = match serde_json::from_slice(&frame.payload) {
            Ok(r) => r,
            Err(_) => {
                st.bad_response += 1;
                continue;
            }
        };
        let Some(id) = resp.id else {
            if resp.method.is_none() {
                st.bad_response += 1;
            }
            // A server notification: not ours to count.
            continue;
        };
        let slot = (id % d) as usize;
        if slots[slot].0 != id {
            st.bad_response += 1;
            continue;
        }
        let sent = slots[slot].1;
        slots[slot].0 = u64::MAX;
        st.outstanding -= 1;
        match (&resp.result, &resp.error) {
            (_, Some(_)) => st.rpc_error += 1,
            (Some(r), None) if r.text_length == Some(plan.text_size) => {}
            _ => st.bad_response += 1,
        }
        if now >= plan.measure_from && now < plan.measure_until {
            st.responses += 1;
            if sent >= plan.measure_from {
                stats::record(&mut st.hist, (now - sent).as_nanos() as u64);
            }
        }
        if now < plan.measure_until {
            let id = next * d + slot as u64;
            next += 1;
            slots[slot] = (id, Instant::now());
            if !send(&mut ws, &mut buf, &plan.prefix, id).await {
                st.lost = true;
                return;
            }
            st.outstanding += 1;
        } else if st.outstanding == 0 {
            break;
        }
    }
    let _ = ws.write_frame(Frame::close(1000, b"")).await;
}
