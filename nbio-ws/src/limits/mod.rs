//! Abuse limits: per-connection rate limiting, connection caps (global and
//! per client address), trusted proxies, and handshake hardening.
//!
//! | variable | default | what a client over the limit sees |
//! |---|---|---|
//! | `WS_RATE_LIMIT_ENABLED` | `false` | — |
//! | `WS_RATE_LIMIT_RATE` | `100` | requests refilled per interval |
//! | `WS_RATE_LIMIT_INTERVAL` | `1m` | the refill interval |
//! | `WS_RATE_LIMIT_BURST` | `10` | bucket size: requests allowed back to back |
//! | `WS_RATE_LIMIT_CLOSE_AFTER` | `50` | consecutive limited requests after which the connection is closed with 1008 (`0`: never) |
//! | `WS_MAX_CONNECTIONS` | `0` (unlimited) | HTTP 503 before the upgrade |
//! | `WS_MAX_CONNECTIONS_PER_IP` | `0` (unlimited) | HTTP 429 before the upgrade |
//! | `WS_TRUSTED_PROXIES` | empty | IPs or CIDRs whose `X-Forwarded-For` is believed |
//! | `WS_HANDSHAKE_TIMEOUT` | `10s` | the time to send the request headers (and finish TLS); past it the connection is closed |
//! | `WS_MAX_HEADER_SIZE` | `32KiB` | HTTP 431 (minimum 8KiB) |
//! | `WS_MAX_PENDING_HANDSHAKES` | `1024` | HTTP 503 and close, for TCP connections past that many not yet upgraded (`0`: unlimited) |
//!
//! A connection counts as pending from `accept` until it is upgraded or
//! closed: while its TLS handshake and request headers arrive, while the
//! authenticator decides, and while it serves plain HTTP (`/health`,
//! `/metrics`). An idle keep-alive HTTP connection is closed after
//! `WS_HANDSHAKE_TIMEOUT` without a new request, so it gives its slot back.
//! A client that does not finish its headers in time is disconnected
//! without an answer.
//!
//! ## Rate limiting
//!
//! Each connection has a token bucket of `WS_RATE_LIMIT_BURST` tokens,
//! refilled continuously at `WS_RATE_LIMIT_RATE` tokens per
//! `WS_RATE_LIMIT_INTERVAL` (the defaults allow one request every 600 ms
//! on average, and bursts of 10). Every JSON-RPC request costs one token:
//! each element of a batch, notifications, and unparsable messages too.
//! A request that finds the bucket empty is not run; it is answered with
//!
//! ```json
//! {"jsonrpc":"2.0","error":{"code":-32029,"message":"Rate limit exceeded",
//!  "data":{"retry_after_ms":600}},"id":7}
//! ```
//!
//! carrying its own id ([`RpcError::RATE_LIMITED`](crate::RpcError::RATE_LIMITED);
//! a limited notification gets no answer, as JSON-RPC requires).
//! `retry_after_ms` is when the next token will be there. After
//! `WS_RATE_LIMIT_CLOSE_AFTER` limited requests in a row (any admitted
//! request resets the count) the connection is closed with 1008 and the
//! reason `rate limit exceeded`. In raw mode each message costs a token and
//! a limited message is dropped. The bucket lives in the connection's task
//! and is freed with it.
//!
//! ## Connection caps and proxies
//!
//! Caps are checked before the upgrade, so a refused client costs one
//! HTTP response. Addresses are counted per IPv4 address and per IPv6
//! `/64` (one host usually owns a whole `/64`). Behind a reverse proxy,
//! list the proxy in `WS_TRUSTED_PROXIES`: for a request whose TCP peer is
//! a trusted proxy, the client's address is the right-most
//! `X-Forwarded-For` entry that is not itself a trusted proxy. That address
//! is counted, and is the [`Client::remote_addr`](crate::Client::remote_addr)
//! (with port 0). From any other peer `X-Forwarded-For` is ignored, so
//! clients cannot pick their own address.

mod caps;
mod proxy;
mod rate;

pub(crate) use caps::{refuse_busy, CapExceeded, Caps, ConnectionSlot};
pub use proxy::TrustedProxies;
pub(crate) use rate::{LiveCount, RateLimiter};

use std::time::Duration;

use crate::env::{parse_duration, parse_size, ConfigError, Env};

/// Rate limiting settings (`WS_RATE_LIMIT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Whether requests are rate limited (`WS_RATE_LIMIT_ENABLED`, default `false`).
    pub enabled: bool,
    /// Tokens refilled per `interval` (`WS_RATE_LIMIT_RATE`, default 100).
    pub rate: u32,
    /// The refill interval (`WS_RATE_LIMIT_INTERVAL`, default 1 minute).
    pub interval: Duration,
    /// Bucket size: requests allowed back to back (`WS_RATE_LIMIT_BURST`, default 10).
    pub burst: u32,
    /// Consecutive limited requests after which the connection is closed
    /// with 1008 (`WS_RATE_LIMIT_CLOSE_AFTER`, default 50; 0 never closes).
    pub close_after: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            enabled: false,
            rate: 100,
            interval: Duration::from_secs(60),
            burst: 10,
            close_after: 50,
        }
    }
}

/// Abuse limits: rate limiting, connection caps, trusted proxies and the
/// handshake limits. Part of [`Config`](crate::Config) (`config.limits`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Per-connection rate limiting.
    pub rate_limit: RateLimit,
    /// Most WebSocket connections at once, 0 for no limit (`WS_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Most WebSocket connections from one address (IPv4) or `/64` (IPv6),
    /// 0 for no limit (`WS_MAX_CONNECTIONS_PER_IP`).
    pub max_connections_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed (`WS_TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    /// How long a client may take to send its request headers, TLS
    /// handshake included (`WS_HANDSHAKE_TIMEOUT`, default 10 s).
    pub handshake_timeout: Duration,
    /// Largest request head accepted, in bytes; at least 8192
    /// (`WS_MAX_HEADER_SIZE`, default 32 KiB).
    pub max_header_size: usize,
    /// Most TCP connections accepted but not yet upgraded (reading
    /// headers, authenticating, or plain HTTP), 0 for no limit
    /// (`WS_MAX_PENDING_HANDSHAKES`, default 1024).
    pub max_pending_handshakes: usize,
}

/// The smallest header buffer hyper accepts.
pub const MIN_HEADER_SIZE: usize = 8192;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rate_limit: RateLimit::default(),
            max_connections: 0,
            max_connections_per_ip: 0,
            trusted_proxies: TrustedProxies::default(),
            handshake_timeout: Duration::from_secs(10),
            max_header_size: 32 * 1024,
            max_pending_handshakes: 1024,
        }
    }
}

impl LimitsConfig {
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let d = LimitsConfig::default();
        let count = |var: &'static str, positive: bool| {
            env.parse(
                var,
                if positive {
                    "a positive whole number"
                } else {
                    "a whole number (0 for no limit)"
                },
                move |v| v.parse::<usize>().ok().filter(|n| !positive || *n > 0),
            )
        };
        let u32_positive = |var: &'static str| -> Result<Option<u32>, ConfigError> {
            env.parse(var, "a positive whole number", |v| {
                v.parse::<u32>().ok().filter(|n| *n > 0)
            })
        };
        let rate_limit = RateLimit {
            enabled: env
                .boolean("WS_RATE_LIMIT_ENABLED")?
                .unwrap_or(d.rate_limit.enabled),
            rate: u32_positive("WS_RATE_LIMIT_RATE")?.unwrap_or(d.rate_limit.rate),
            interval: env
                .duration_nonzero("WS_RATE_LIMIT_INTERVAL")?
                .unwrap_or(d.rate_limit.interval),
            burst: u32_positive("WS_RATE_LIMIT_BURST")?.unwrap_or(d.rate_limit.burst),
            close_after: env
                .parse(
                    "WS_RATE_LIMIT_CLOSE_AFTER",
                    "a whole number (0 never closes)",
                    |v| v.parse::<u32>().ok(),
                )?
                .unwrap_or(d.rate_limit.close_after),
        };
        Ok(LimitsConfig {
            rate_limit,
            max_connections: count("WS_MAX_CONNECTIONS", false)?.unwrap_or(d.max_connections),
            max_connections_per_ip: count("WS_MAX_CONNECTIONS_PER_IP", false)?
                .unwrap_or(d.max_connections_per_ip),
            trusted_proxies: env
                .parse(
                    "WS_TRUSTED_PROXIES",
                    "comma-separated IP addresses or CIDRs (e.g. 10.0.0.0/8,::1)",
                    |v| TrustedProxies::parse(v).ok(),
                )?
                .unwrap_or_default(),
            handshake_timeout: env
                .parse(
                    "WS_HANDSHAKE_TIMEOUT",
                    "a positive duration such as 500ms, 10s or 1m",
                    |v| parse_duration(v).filter(|d| !d.is_zero()),
                )?
                .unwrap_or(d.handshake_timeout),
            max_header_size: env
                .parse(
                    "WS_MAX_HEADER_SIZE",
                    "a size of at least 8192 bytes (e.g. 32KiB)",
                    |v| parse_size(v).filter(|n| *n >= MIN_HEADER_SIZE),
                )?
                .unwrap_or(d.max_header_size),
            max_pending_handshakes: count("WS_MAX_PENDING_HANDSHAKES", false)?
                .unwrap_or(d.max_pending_handshakes),
        })
    }
}
