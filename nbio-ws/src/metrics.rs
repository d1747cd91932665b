//! Counters, gauges and histograms, and their Prometheus text exposition
//! (served at `GET /metrics`).
//!
//! Everything on the hot path is a relaxed atomic add; per-method metrics
//! are created once when the router is built, so a call costs no map
//! look-up here. Rendering walks the counters and formats text.
//!
//! No label value comes from what a client sends, so what a client sends
//! cannot grow `/metrics`: `method` labels are the registered methods only
//! (a call to an unknown one counts in
//! `nbio_ws_errors_total{kind="method_not_found"}`), `kind` labels the
//! fixed error classes, and close codes are bucketed: the codes of RFC
//! 6455 and the IANA registry (1000–1003, 1007–1014) by number, `3xxx`
//! (3000–3999, registered for libraries and frameworks), `4xxx`
//! (4000–4999, private use, whether the application's or a client's), and
//! `other`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

/// Upper bounds, in seconds, of the handler latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
];

/// The server's metrics. Shared by the hub, the router and every
/// connection; read through [`Metrics::render`] or the getters.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    disconnects_total: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    broadcasts: AtomicU64,
    handler_panics: AtomicU64,
    slow_consumers: AtomicU64,
    errors: DashMap<&'static str, AtomicU64>,
    close_codes: DashMap<&'static str, AtomicU64>,
    methods: DashMap<String, Arc<MethodMetrics>>,
    extra: DashMap<&'static str, AtomicU64>,
}

/// Call counts and a latency histogram for one method.
#[derive(Debug)]
pub struct MethodMetrics {
    pub(crate) name: Arc<str>,
    calls: AtomicU64,
    failures: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_nanos: AtomicU64,
}

impl MethodMetrics {
    fn new(name: &str) -> Self {
        MethodMetrics {
            name: Arc::from(name),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            buckets: Default::default(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, elapsed: Duration, ok: bool) {
        self.calls.fetch_add(1, Relaxed);
        if !ok {
            self.failures.fetch_add(1, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// How many times the method was called.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }
}

impl Metrics {
    pub(crate) fn method(&self, name: &str) -> Arc<MethodMetrics> {
        Arc::clone(
            self.methods
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(MethodMetrics::new(name)))
                .value(),
        )
    }

    pub(crate) fn connected(&self) {
        self.connections_total.fetch_add(1, Relaxed);
    }
    pub(crate) fn disconnected(&self, code: Option<u16>) {
        self.disconnects_total.fetch_add(1, Relaxed);
        if let Some(code) = code {
            self.close_codes
                .entry(close_code_label(code))
                .or_default()
                .fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn message_in(&self) {
        self.messages_in.fetch_add(1, Relaxed);
    }
    pub(crate) fn messages_out(&self, n: u64) {
        self.messages_out.fetch_add(n, Relaxed);
    }
    pub(crate) fn broadcast(&self) {
        self.broadcasts.fetch_add(1, Relaxed);
    }
    pub(crate) fn handler_panic(&self) {
        self.handler_panics.fetch_add(1, Relaxed);
    }
    pub(crate) fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Relaxed);
    }
    pub(crate) fn error(&self, kind: &'static str) {
        self.errors.entry(kind).or_default().fetch_add(1, Relaxed);
    }

    /// Increments a named counter exposed as `nbio_ws_<name>_total`.
    /// Used by optional subsystems (brokers, limits).
    pub fn incr(&self, name: &'static str) {
        self.add(name, 1);
    }

    /// Adds `n` to a named counter exposed as `nbio_ws_<name>_total`
    /// (`n = 0` makes the series appear at zero).
    pub fn add(&self, name: &'static str, n: u64) {
        self.extra.entry(name).or_default().fetch_add(n, Relaxed);
    }

    /// The value of a named counter (see [`Metrics::incr`]).
    pub fn counter(&self, name: &str) -> u64 {
        self.extra.get(name).map_or(0, |v| v.load(Relaxed))
    }

    /// Connections accepted since start.
    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Relaxed)
    }
    /// Clients disconnected because their outbound queue was full.
    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.slow_consumers.load(Relaxed)
    }
    /// Handler panics caught since start.
    pub fn handler_panics(&self) -> u64 {
        self.handler_panics.load(Relaxed)
    }
    /// Errors of the given kind (`parse_error`, `invalid_request`, ...).
    pub fn errors(&self, kind: &str) -> u64 {
        self.errors.get(kind).map_or(0, |v| v.load(Relaxed))
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self, connected_clients: usize, uptime: Duration) -> String {
        let mut out = String::with_capacity(4096);
        let mut simple = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        simple(
            "nbio_ws_connected_clients",
            "gauge",
            "WebSocket clients connected now.",
            connected_clients.to_string(),
        );
        simple(
            "nbio_ws_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            format!("{:.3}", uptime.as_secs_f64()),
        );
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "nbio_ws_connections_total",
                "WebSocket connections accepted.",
                &self.connections_total,
            ),
            (
                "nbio_ws_disconnects_total",
                "WebSocket connections ended.",
                &self.disconnects_total,
            ),
            (
                "nbio_ws_messages_received_total",
                "Data messages received from clients.",
                &self.messages_in,
            ),
            (
                "nbio_ws_messages_sent_total",
                "Data messages written to clients.",
                &self.messages_out,
            ),
            (
                "nbio_ws_broadcasts_total",
                "Broadcasts fanned out by this instance.",
                &self.broadcasts,
            ),
            (
                "nbio_ws_handler_panics_total",
                "Handler panics caught (answered with -32603).",
                &self.handler_panics,
            ),
            (
                "nbio_ws_slow_consumer_disconnects_total",
                "Clients closed with 1008 because their outbound queue was full.",
                &self.slow_consumers,
            ),
        ];
        for (name, help, v) in counters {
            simple(name, "counter", help, v.load(Relaxed).to_string());
        }

        let _ = writeln!(
            out,
            "# HELP nbio_ws_errors_total JSON-RPC error responses by kind."
        );
        let _ = writeln!(out, "# TYPE nbio_ws_errors_total counter");
        let mut errors: Vec<(&str, u64)> = self
            .errors
            .iter()
            .map(|e| (*e.key(), e.value().load(Relaxed)))
            .collect();
        errors.sort_unstable();
        for (kind, v) in errors {
            let _ = writeln!(out, "nbio_ws_errors_total{{kind=\"{kind}\"}} {v}");
        }

        let _ = writeln!(
            out,
            "# HELP nbio_ws_close_codes_total Close codes that ended connections (the server's, or the client's it echoed), bucketed."
        );
        let _ = writeln!(out, "# TYPE nbio_ws_close_codes_total counter");
        let mut codes: Vec<(&str, u64)> = self
            .close_codes
            .iter()
            .map(|e| (*e.key(), e.value().load(Relaxed)))
            .collect();
        codes.sort_unstable();
        for (code, v) in codes {
            let _ = writeln!(out, "nbio_ws_close_codes_total{{code=\"{code}\"}} {v}");
        }

        let mut extra: Vec<(&str, u64)> = self
            .extra
            .iter()
            .map(|e| (*e.key(), e.value().load(Relaxed)))
            .collect();
        extra.sort_unstable();
        for (name, v) in extra {
            let _ = writeln!(out, "# TYPE nbio_ws_{name}_total counter");
            let _ = writeln!(out, "nbio_ws_{name}_total {v}");
        }

        let mut methods: Vec<Arc<MethodMetrics>> =
            self.methods.iter().map(|e| Arc::clone(e.value())).collect();
        methods.sort_by(|a, b| a.name.cmp(&b.name));
        let _ = writeln!(
            out,
            "# HELP nbio_ws_method_calls_total Calls per JSON-RPC method."
        );
        let _ = writeln!(out, "# TYPE nbio_ws_method_calls_total counter");
        for m in &methods {
            let name = escape_label(&m.name);
            let _ = writeln!(
                out,
                "nbio_ws_method_calls_total{{method=\"{name}\"}} {}",
                m.calls.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP nbio_ws_method_failures_total Calls that returned an error, per method."
        );
        let _ = writeln!(out, "# TYPE nbio_ws_method_failures_total counter");
        for m in &methods {
            let name = escape_label(&m.name);
            let _ = writeln!(
                out,
                "nbio_ws_method_failures_total{{method=\"{name}\"}} {}",
                m.failures.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP nbio_ws_method_duration_seconds Handler latency per method."
        );
        let _ = writeln!(out, "# TYPE nbio_ws_method_duration_seconds histogram");
        for m in &methods {
            let name = escape_label(&m.name);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "nbio_ws_method_duration_seconds_bucket{{method=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let calls = m.calls.load(Relaxed);
            let _ = writeln!(
                out,
                "nbio_ws_method_duration_seconds_bucket{{method=\"{name}\",le=\"+Inf\"}} {calls}"
            );
            let sum = m.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "nbio_ws_method_duration_seconds_sum{{method=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "nbio_ws_method_duration_seconds_count{{method=\"{name}\"}} {calls}"
            );
        }
        out
    }
}

/// The label of a close code: registered codes by number, the rest in a
/// few buckets (see the module documentation).
fn close_code_label(code: u16) -> &'static str {
    const KNOWN: [&str; 15] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014",
    ];
    match code {
        1000..=1003 | 1007..=1014 => KNOWN[usize::from(code - 1000)],
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "other",
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        let method = m.method("a\"b");
        method.observe(Duration::from_micros(10), true);
        method.observe(Duration::from_millis(3), false);
        method.observe(Duration::from_secs(10), true);
        let text = m.render(2, Duration::from_secs(1));
        assert!(text.contains("nbio_ws_connected_clients 2"));
        assert!(text
            .contains(r#"nbio_ws_method_duration_seconds_bucket{method="a\"b",le="0.00005"} 1"#));
        assert!(
            text.contains(r#"nbio_ws_method_duration_seconds_bucket{method="a\"b",le="0.005"} 2"#)
        );
        assert!(
            text.contains(r#"nbio_ws_method_duration_seconds_bucket{method="a\"b",le="+Inf"} 3"#)
        );
        assert!(text.contains(r#"nbio_ws_method_failures_total{method="a\"b"} 1"#));
    }

    #[test]
    fn close_codes_are_bucketed() {
        let m = Metrics::default();
        for code in [1000, 1008, 1008, 3001, 3999, 4000, 4999, 2000, 1005, 5000] {
            m.disconnected(Some(code));
        }
        let text = m.render(0, Duration::ZERO);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("nbio_ws_close_codes_total{"))
            .collect();
        assert_eq!(
            lines,
            [
                r#"nbio_ws_close_codes_total{code="1000"} 1"#,
                r#"nbio_ws_close_codes_total{code="1008"} 2"#,
                r#"nbio_ws_close_codes_total{code="3xxx"} 2"#,
                r#"nbio_ws_close_codes_total{code="4xxx"} 2"#,
                r#"nbio_ws_close_codes_total{code="other"} 3"#,
            ]
        );
    }
}
