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
//! carrying its own id ([`RATE_LIMITED`](crate::jsonrpc::RATE_LIMITED);
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

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hyper::HeaderMap;
use tokio::time::Instant;

use crate::config::{parse_duration, parse_size, ConfigError, Env};
use crate::jsonrpc::RpcError;

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

// ---------------------------------------------------------------------------
// Token bucket

/// A token bucket with continuous refill, in exact integer arithmetic.
///
/// One token is worth `interval` (in nanoseconds) units, and every
/// nanosecond adds `rate` units: so `rate` tokens come back per `interval`,
/// fractions of a token included, and nothing is lost to rounding however
/// often the bucket is looked at.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Units per token: the interval in nanoseconds.
    unit: u128,
    /// Units added per nanosecond.
    rate: u128,
    capacity: u128,
    level: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per `interval`.
    /// Zero values are taken as 1 (and a zero interval as 1 ns).
    pub fn new(rate: u32, interval: Duration, burst: u32) -> Self {
        let unit = interval.as_nanos().max(1);
        let capacity = unit * u128::from(burst.max(1));
        TokenBucket {
            unit,
            rate: u128::from(rate.max(1)),
            capacity,
            level: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&mut self) -> Result<(), Duration> {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= self.unit {
            self.level -= self.unit;
            Ok(())
        } else {
            let missing = self.unit - self.level;
            let nanos = missing.div_ceil(self.rate);
            Err(Duration::from_nanos(
                u64::try_from(nanos).unwrap_or(u64::MAX),
            ))
        }
    }

    /// Whole tokens available now.
    pub fn available(&mut self) -> u64 {
        self.refill(Instant::now());
        u64::try_from(self.level / self.unit).unwrap_or(u64::MAX)
    }
}

/// Counts live per-connection limiter states (for `/metrics` and tests).
#[derive(Debug, Default)]
pub(crate) struct LiveCount(AtomicUsize);

impl LiveCount {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The rate limiter of one connection.
pub(crate) struct RateLimiter {
    bucket: TokenBucket,
    close_after: u32,
    /// Limited requests in a row.
    strikes: u32,
    live: Arc<LiveCount>,
}

impl RateLimiter {
    pub(crate) fn new(cfg: &RateLimit, live: Arc<LiveCount>) -> Option<Self> {
        if !cfg.enabled {
            return None;
        }
        live.0.fetch_add(1, Ordering::Relaxed);
        Some(RateLimiter {
            bucket: TokenBucket::new(cfg.rate, cfg.interval, cfg.burst),
            close_after: cfg.close_after,
            strikes: 0,
            live,
        })
    }

    /// Admits one request, or returns the error that answers it.
    pub(crate) fn admit(&mut self) -> Result<(), RpcError> {
        match self.bucket.try_take() {
            Ok(()) => {
                self.strikes = 0;
                Ok(())
            }
            Err(wait) => {
                self.strikes = self.strikes.saturating_add(1);
                Err(RpcError::rate_limited(wait))
            }
        }
    }

    /// Whether the client kept going past the threshold and must be closed.
    pub(crate) fn exhausted(&self) -> bool {
        self.close_after > 0 && self.strikes >= self.close_after
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        self.live.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Connection caps

/// Why a connection was refused by the caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapExceeded {
    Global,
    PerIp,
}

/// Global and per-address connection counts.
#[derive(Debug, Default)]
pub(crate) struct Caps {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
}

/// A reserved connection slot, released when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    caps: Arc<Caps>,
    ip: Option<IpAddr>,
}

impl Caps {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Caps {
            max_total,
            max_per_ip,
            ..Caps::default()
        }
    }

    /// Reserves a slot for a client at `ip`.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, CapExceeded> {
        let n = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_total > 0 && n > self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::Global);
        }
        let mut slot = ConnectionSlot {
            caps: Arc::clone(self),
            ip: None,
        };
        if self.max_per_ip > 0 {
            let key = ip_key(ip);
            let mut count = self.per_ip.entry(key).or_insert(0);
            if *count >= self.max_per_ip {
                // (`count` is at least 1 here, so no empty entry is left;
                // dropping `slot` releases the global count.)
                return Err(CapExceeded::PerIp);
            }
            *count += 1;
            slot.ip = Some(key);
        }
        Ok(slot)
    }

    /// Connections counted now.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Addresses with at least one counted connection.
    pub(crate) fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.caps.per_ip.entry(ip) {
                *e.get_mut() = e.get().saturating_sub(1);
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6
/// included), IPv6 by its `/64`.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

// ---------------------------------------------------------------------------
// Trusted proxies

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `fd00::/8`, or a single address.
    pub fn parse(s: &str) -> Option<IpNet> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.trim(), Some(p.trim().parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as
    /// IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The proxies whose `X-Forwarded-For` header is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDRs; the entry that
    /// does not parse is the error.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            nets.push(IpNet::parse(item).ok_or_else(|| item.to_owned())?);
        }
        Ok(TrustedProxies(nets))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted
    /// proxy, the right-most `X-Forwarded-For` entry that is not a trusted
    /// proxy (port 0). Malformed entries stop the walk.
    pub fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.0.is_empty() || !self.contains(peer.ip()) {
            return peer;
        }
        let mut client = None;
        // Every X-Forwarded-For header, in order, as one list.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded_ip(entry) else {
                break;
            };
            client = Some(ip);
            if !self.contains(ip) {
                break;
            }
        }
        client.map_or(peer, |ip| SocketAddr::new(ip, 0))
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port or in
/// brackets.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

// ---------------------------------------------------------------------------
// Pending handshakes

/// The response written to a TCP connection refused because too many
/// handshakes are in progress.
pub(crate) const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 32\r\n\r\ntoo many handshakes in progress\n";

/// Writes [`BUSY_RESPONSE`] and closes, within a second.
pub(crate) async fn refuse_busy<S: tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(BUSY_RESPONSE).await?;
        stream.shutdown().await
    })
    .await;
}

// ---------------------------------------------------------------------------
// Builder

impl crate::ServerBuilder {
    /// Rate limits every connection to `rate` requests per `interval`,
    /// with bursts of `burst` (like `WS_RATE_LIMIT_ENABLED=true` and
    /// `WS_RATE_LIMIT_RATE`, `_INTERVAL`, `_BURST`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = nbio_ws::Server::builder()
    ///     .rate_limit(100, Duration::from_secs(60), 10)
    ///     .rate_limit_close_after(50)
    ///     .build();
    /// assert!(server.is_ok());
    /// ```
    pub fn rate_limit(mut self, rate: u32, interval: Duration, burst: u32) -> Self {
        let r = &mut self.config.limits.rate_limit;
        r.enabled = true;
        r.rate = rate.max(1);
        r.interval = if interval.is_zero() {
            Duration::from_nanos(1)
        } else {
            interval
        };
        r.burst = burst.max(1);
        self
    }

    /// Closes a connection with 1008 after this many rate-limited requests
    /// in a row (`WS_RATE_LIMIT_CLOSE_AFTER`, default 50; 0 never closes).
    pub fn rate_limit_close_after(mut self, limited_in_a_row: u32) -> Self {
        self.config.limits.rate_limit.close_after = limited_in_a_row;
        self
    }

    /// Most WebSocket connections at once (`WS_MAX_CONNECTIONS`; 0, the
    /// default, for no limit). Past it upgrades get HTTP 503.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.limits.max_connections = n;
        self
    }

    /// Most WebSocket connections from one client address
    /// (`WS_MAX_CONNECTIONS_PER_IP`; 0, the default, for no limit). Past
    /// it upgrades get HTTP 429.
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.config.limits.max_connections_per_ip = n;
        self
    }

    /// Proxies (addresses or CIDRs) whose `X-Forwarded-For` is believed
    /// (`WS_TRUSTED_PROXIES`). An entry that does not parse makes
    /// [`build`](crate::ServerBuilder::build) fail.
    pub fn trusted_proxies<'a>(mut self, proxies: impl IntoIterator<Item = &'a str>) -> Self {
        let list: Vec<&str> = proxies.into_iter().collect();
        match TrustedProxies::parse(&list.join(",")) {
            Ok(p) => self.config.limits.trusted_proxies = p,
            Err(bad) => self.security_error = Some(format!("invalid trusted proxy {bad:?}")),
        }
        self
    }

    /// How long a client may take to send its request headers (TLS
    /// handshake included), and an authenticator to decide
    /// (`WS_HANDSHAKE_TIMEOUT`, default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.handshake_timeout = timeout;
        self
    }

    /// Largest request head, in bytes; at least 8192
    /// (`WS_MAX_HEADER_SIZE`, default 32 KiB). Larger heads get HTTP 431.
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_header_size = bytes;
        self
    }

    /// Most TCP connections accepted and not yet upgraded
    /// (`WS_MAX_PENDING_HANDSHAKES`, default 1024; 0 for no limit). Past
    /// it new connections get HTTP 503 and are closed.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.config.limits.max_pending_handshakes = n;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_response_length_is_right() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_starts_full_and_refills_continuously() {
        // 100 per minute: one token every 600 ms; burst 10.
        let mut b = TokenBucket::new(100, Duration::from_secs(60), 10);
        for _ in 0..10 {
            assert!(b.try_take().is_ok());
        }
        assert_eq!(b.try_take(), Err(Duration::from_millis(600)));
        // Partial intervals are not lost: 4 × 150 ms make one token.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(150)).await;
            assert!(b.try_take().is_err());
        }
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(b.try_take().is_ok());
        assert_eq!(b.try_take(), Err(Duration::from_millis(600)));
        // Retry-after counts what is already refilled.
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(b.try_take(), Err(Duration::from_millis(350)));
        // Never more than the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.available(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_rate_over_a_long_run_is_exact() {
        // 3 per second does not divide a second into whole nanoseconds.
        // From an empty bucket, taking whenever a token is there (so the
        // bucket never overflows), 10 s give exactly 30 tokens, the 30th at
        // exactly 10 s, and nothing is left over.
        let mut b = TokenBucket::new(3, Duration::from_secs(1), 50);
        while b.try_take().is_ok() {}
        let mut taken = 0;
        for ms in 1..=10_000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            if b.try_take().is_ok() {
                taken += 1;
                if taken == 30 {
                    assert_eq!(ms, 10_000);
                }
            }
        }
        assert_eq!(taken, 30);
        assert_eq!(b.try_take(), Err(Duration::from_nanos(333_333_334)));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_counts_strikes_and_resets() {
        let cfg = RateLimit {
            enabled: true,
            rate: 1,
            interval: Duration::from_secs(1),
            burst: 2,
            close_after: 3,
        };
        let live = Arc::new(LiveCount::default());
        let mut l = RateLimiter::new(&cfg, Arc::clone(&live)).unwrap();
        assert_eq!(live.get(), 1);
        assert!(l.admit().is_ok());
        assert!(l.admit().is_ok());
        let e = l.admit().unwrap_err();
        assert_eq!(e.code, crate::jsonrpc::RATE_LIMITED);
        assert_eq!(e.data.as_ref().unwrap()["retry_after_ms"], 1000);
        assert!(l.admit().is_err());
        assert!(!l.exhausted());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.admit().is_ok(), "a token came back; strikes reset");
        for _ in 0..3 {
            assert!(l.admit().is_err());
        }
        assert!(l.exhausted());
        drop(l);
        assert_eq!(live.get(), 0);
        let off = RateLimit::default();
        assert!(RateLimiter::new(&off, live).is_none());
    }

    #[test]
    fn caps_count_and_free_per_address() {
        let caps = Arc::new(Caps::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = caps.acquire(a).unwrap();
        let s2 = caps.acquire(a).unwrap();
        assert_eq!(caps.acquire(a).unwrap_err(), CapExceeded::PerIp);
        let s3 = caps.acquire(b).unwrap();
        assert_eq!(caps.acquire(b).unwrap_err(), CapExceeded::Global);
        assert_eq!(caps.total(), 3);
        drop((s1, s2, s3));
        assert_eq!(caps.total(), 0);
        assert_eq!(caps.tracked_ips(), 0);
        // IPv6 addresses of one /64 share a count.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let _x = caps.acquire(v6a).unwrap();
        let _y = caps.acquire(v6b).unwrap();
        assert_eq!(caps.acquire(v6a).unwrap_err(), CapExceeded::PerIp);
        assert_eq!(caps.tracked_ips(), 1);
    }

    #[test]
    fn networks() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(IpNet::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nope").is_none());
        assert_eq!(TrustedProxies::parse("10.0.0.0/8, x").unwrap_err(), "x");
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.7, 10.1.1.1".parse().unwrap(),
        );
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // Right-most untrusted entry: the spoofable left part is ignored.
        assert_eq!(
            proxies.client_addr(peer, &h),
            "203.0.113.7:0".parse().unwrap()
        );
        let stranger: SocketAddr = "192.0.2.5:5000".parse().unwrap();
        assert_eq!(proxies.client_addr(stranger, &h), stranger);
        assert_eq!(TrustedProxies::default().client_addr(peer, &h), peer);
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(proxies.client_addr(peer, &bad), peer);
        let mut ported = HeaderMap::new();
        ported.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            proxies.client_addr(peer, &ported),
            "[2001:db8::1]:0".parse().unwrap()
        );
    }
}
