//! # nbio-ws-benches
//!
//! Measurement tools for nbio-ws, usable against *any* server that speaks the
//! seed wire format (JSON-RPC 2.0 over WebSocket text frames):
//!
//! * `self.reply` `{"text": T}` → `{"echo": T, "text_length": bytes(T)}`
//! * `broadcast` `{"text": T}` → `{"status": "broadcasted", "text_length": ..}`
//!   plus the notification `{"jsonrpc":"2.0","method":"broadcast","params":{"text":T}}`
//!   to every connected client, the sender included.
//! * `GET /health` → JSON with `connected_clients`.
//!
//! The crate has three parts:
//!
//! * the library (this crate): a small WebSocket client built on
//!   `fastwebsockets::handshake::client` ([`ws`]), and the three load
//!   scenarios [`reply`], [`fanout`] and [`idle`], each returning a
//!   serializable report;
//! * `src/bin/loadgen.rs`: the command-line front end of those scenarios;
//! * `src/bin/bare.rs`: the baseline server, plain hyper 1 + fastwebsockets
//!   without the framework, speaking the same wire format.
//!
//! The criterion benches in `benches/` measure the framework in-process
//! (router dispatch and hub fan-out).
//!
//! Every scenario refuses non-loopback targets: this tool is for measuring
//! servers on the same machine only.

pub mod baseline;
pub mod fanout;
pub mod idle;
pub mod proc;
pub mod reply;
pub mod stats;
pub mod ws;

use std::time::Duration;

/// Parses a human duration: `10s`, `500ms`, `2m`, `1.5s`, `250us`, or a bare
/// number of seconds.
///
/// ```
/// use std::time::Duration;
/// use nbio_ws_benches::parse_duration;
/// assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
/// assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
/// assert!(parse_duration("ten").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Builds an ASCII text of exactly `len` bytes (a repeated pangram), used as
/// the payload of `self.reply` requests.
pub fn filler_text(len: usize) -> String {
    const PATTERN: &[u8] = b"the quick brown fox jumps over the lazy dog ";
    PATTERN
        .iter()
        .cycle()
        .take(len)
        .map(|&b| b as char)
        .collect()
}
