//! [`Config`]: the settings of a server, composed of each concern's own
//! settings (`pubsub`, `auth`, `limits`, `tls`), with the `WS_*` variables
//! they read.

use std::time::Duration;

use crate::env::ConfigError;
use crate::env::{parse_duration, Env};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Server settings, and [`Config::from_env`] for the `WS_*`
/// environment variables (the same names as the Go server nbio-ws grew
/// from, so its deployments move over unchanged).
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `WS_HOST` | `127.0.0.1` | address to listen on (`0.0.0.0` for all interfaces) |
/// | `WS_PORT` | `8080` | TCP port |
/// | `WS_PATH` | `/ws` | path of the WebSocket endpoint |
/// | `WS_SEND_BUFFER` | `256` | outbound queue per client, in messages (a client whose queue is full is closed with 1008) |
/// | `WS_SEND_BUFFER_BYTES` | `8MiB` | outbound queue per client, in bytes (the same: closed with 1008); a message that finds the queue empty is accepted whatever its size |
/// | `WS_MAX_ROOMS_PER_CLIENT` | `100` | rooms one client may be in at once (a join past it is refused with `-32020`) |
/// | `WS_PING_INTERVAL` | `10s` | how often the server pings each client |
/// | `WS_PONG_TIMEOUT` | `60s` | a client silent this long is closed |
/// | `WS_MAX_MESSAGE_SIZE` | `1048576` | largest message accepted, in bytes (after reassembly) |
/// | `WS_SHUTDOWN_TIMEOUT` | `10s` | how long graceful shutdown waits for handlers and queues |
/// | `WS_MAX_BATCH` | `100` | most requests in one batch (a larger one is refused whole with -32600) |
/// | `WS_MAX_CONCURRENT_REQUESTS` | `64` | requests of one connection running at once, batch elements included (past it the connection stops reading) |
/// | `WS_REQUEST_TIMEOUT` | off | a handler running longer is cancelled and answered with -32008 (`0` or `off`: no timeout) |
/// | `WS_MAX_RESPONSE_SIZE` | `4MiB` | most bytes of results in the reply to one message (past it -32603 "Response too large") |
/// | `WS_ADMIN_ADDR` | — | serve `/health` and `/metrics` on this address instead of the public port (e.g. `127.0.0.1:9090`) |
/// | `WS_LOG_LEVEL` | `info` | `trace`, `debug`, `info`, `warn`, `error`, or a `tracing` filter |
/// | `WS_LOG_FORMAT` | `text` | `text` or `json` |
/// | `WS_PUBSUB_ENABLED` | `false` | use a broker to reach the clients of other instances |
/// | `WS_PUBSUB_ADAPTER` | `local` | `local`, `redis` (feature `redis`) or `nats` (feature `nats`) |
/// | `WS_REDIS_URL` | `redis://127.0.0.1:6379/0` | the Redis of the `redis` adapter |
/// | `WS_NATS_URL` | `nats://127.0.0.1:4222` | the NATS server(s) of the `nats` adapter |
/// | `WS_PUBSUB_CHANNEL` | `websocket.broadcast` | the channel/subject the instances share |
/// | `WS_PRESENCE_TTL` | `15s` | room members of an instance silent this long are dropped (crash healing) |
///
/// See [`broker`](crate::broker) for what the pub/sub settings do.
///
/// Security (see [`auth`](crate::auth), [`limits`](crate::limits),
/// [`tls`](crate::tls) for the details and what a refused client sees):
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `WS_AUTH_ENABLED` | `false` | require a bearer token before the upgrade (401 without) |
/// | `WS_BEARER_TOKENS` | — | accepted tokens, comma-separated; `name:token` names the identity |
/// | `WS_JWT_SECRET` | — | HS256 secret for JWTs (feature `jwt`) |
/// | `WS_JWT_PUBLIC_KEY` | — | PEM file of the RS256 public key for JWTs (feature `jwt`) |
/// | `WS_JWT_AUDIENCE` | — | accepted JWT audiences, comma-separated |
/// | `WS_JWT_ISSUER` | — | required JWT issuer |
/// | `WS_ALLOWED_ORIGINS` | `*` | origins allowed to connect (403 otherwise); no `Origin` is allowed |
/// | `WS_RATE_LIMIT_ENABLED` | `false` | per-connection token bucket |
/// | `WS_RATE_LIMIT_RATE` | `100` | requests per interval |
/// | `WS_RATE_LIMIT_INTERVAL` | `1m` | refill interval |
/// | `WS_RATE_LIMIT_BURST` | `10` | bucket size |
/// | `WS_RATE_LIMIT_CLOSE_AFTER` | `50` | limited requests in a row before close 1008 (0: never) |
/// | `WS_MAX_CONNECTIONS` | `0` (none) | connections at once (503 past it) |
/// | `WS_MAX_CONNECTIONS_PER_IP` | `0` (none) | connections per address (429 past it) |
/// | `WS_TRUSTED_PROXIES` | — | IPs/CIDRs whose `X-Forwarded-For` is believed |
/// | `WS_HANDSHAKE_TIMEOUT` | `10s` | time allowed for the request headers (and TLS) |
/// | `WS_MAX_HEADER_SIZE` | `32KiB` | largest request head (431 past it; at least 8KiB) |
/// | `WS_MAX_PENDING_HANDSHAKES` | `1024` | connections not yet upgraded (503 past it; 0: none) |
/// | `WS_TLS_ENABLED` | `false` | serve TLS (feature `tls`) |
/// | `WS_TLS_CERT` / `WS_TLS_KEY` | — | PEM certificate chain / private key |
///
/// Compression (permessage-deflate, see [`CompressionConfig`](crate::CompressionConfig)):
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `WS_COMPRESSION` | `false` | accept clients' `permessage-deflate` offers |
/// | `WS_COMPRESSION_LEVEL` | `6` | deflate level, 0 (store) to 9 (smallest) |
/// | `WS_COMPRESSION_THRESHOLD` | `256` | messages shorter than this go uncompressed |
///
/// Durations are written `500ms`, `10s`, `1m`, `1h` (a bare number is
/// seconds). Sizes accept a plain byte count or a `KiB`/`MiB` suffix.
/// Booleans are `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`. An invalid
/// value stops startup with an error that names the variable and the value.
///
/// Build one with [`Config::default`] and change fields, or read the
/// `WS_*` variables with [`Config::from_env`].
///
/// ```
/// let cfg = nbio_ws::Config::from_lookup(|k| match k {
///     "WS_PORT" => Some("9000".into()),
///     "WS_PING_INTERVAL" => Some("5s".into()),
///     _ => None,
/// })
/// .unwrap();
/// assert_eq!(cfg.port, 9000);
/// assert_eq!(cfg.ping_interval, std::time::Duration::from_secs(5));
///
/// let err = nbio_ws::Config::from_lookup(|k| (k == "WS_PORT").then(|| "eighty".into())).unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid WS_PORT="eighty": expected a port number (0-65535)"#);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on.
    pub host: String,
    /// TCP port (0 picks a free one).
    pub port: u16,
    /// Path of the WebSocket endpoint.
    pub path: String,
    /// Outbound queue capacity per client, in messages; a client whose
    /// queue is full is closed with 1008 (slow consumer).
    pub send_buffer: usize,
    /// Outbound queue capacity per client, in bytes of payload; a message
    /// that would take the queue past it closes the client with 1008 like
    /// a full queue. A message that finds the queue empty is accepted
    /// whatever its size.
    pub send_buffer_bytes: usize,
    /// Rooms one client may be in at once; a join past it is refused
    /// ([`JoinError::TooManyRooms`](crate::JoinError::TooManyRooms)).
    pub max_rooms_per_client: usize,
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is closed.
    pub pong_timeout: Duration,
    /// Largest accepted message, in bytes, after fragments are reassembled.
    pub max_message_size: usize,
    /// How long graceful shutdown waits for running handlers and queued
    /// messages.
    pub shutdown_timeout: Duration,
    /// Most requests in one batch; a larger batch is answered with one
    /// -32600 error and none of it runs.
    pub max_batch: usize,
    /// Requests of one connection that may run at once (each element of a
    /// batch counts); at the limit the connection stops reading.
    pub max_concurrent_requests: usize,
    /// A handler that runs longer is cancelled and its request answered
    /// with -32008 ([`RpcError::REQUEST_TIMEOUT`](crate::RpcError::REQUEST_TIMEOUT));
    /// `None` for no timeout.
    pub request_timeout: Option<Duration>,
    /// Most bytes of results in the reply to one message (a batch's
    /// elements together); a result past it is answered with -32603
    /// "Response too large" instead.
    pub max_response_size: usize,
    /// Where `/health` and `/metrics` are served when set: a listener of
    /// their own, and the public port answers 404 for them.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Log filter (`info`, `debug`, or a full `tracing` filter).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Pub/sub broker for scale-out (`WS_PUBSUB_*`, `WS_REDIS_URL`,
    /// `WS_NATS_URL`).
    pub pubsub: crate::broker::PubSubConfig,
    /// Authentication and allowed origins (`WS_AUTH_*`, `WS_BEARER_TOKENS`,
    /// `WS_JWT_*`, `WS_ALLOWED_ORIGINS`). Secrets print as `<redacted>`.
    pub auth: crate::auth::AuthConfig,
    /// Rate limits, connection caps, trusted proxies, handshake limits.
    pub limits: crate::limits::LimitsConfig,
    /// TLS (`WS_TLS_*`).
    pub tls: crate::tls::TlsConfig,
    /// History of rooms (`WS_HISTORY_*`); see [`history`](crate::history).
    pub history: crate::history::HistoryConfig,
    /// permessage-deflate (`WS_COMPRESSION`, `WS_COMPRESSION_LEVEL`,
    /// `WS_COMPRESSION_THRESHOLD`).
    pub compression: crate::deflate::CompressionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8080,
            path: "/ws".into(),
            send_buffer: crate::hub::Client::DEFAULT_SEND_BUFFER,
            send_buffer_bytes: crate::hub::Client::DEFAULT_SEND_BUFFER_BYTES,
            max_rooms_per_client: crate::hub::Client::DEFAULT_MAX_ROOMS_PER_CLIENT,
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(60),
            max_message_size: 1 << 20,
            shutdown_timeout: Duration::from_secs(10),
            max_batch: 100,
            max_concurrent_requests: 64,
            request_timeout: None,
            max_response_size: 4 << 20,
            admin_addr: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            pubsub: crate::broker::PubSubConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            history: crate::history::HistoryConfig::default(),
            compression: crate::deflate::CompressionConfig::default(),
        }
    }
}

impl Config {
    /// Reads the `WS_*` environment variables over the defaults.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env::new(&lookup);
        let d = Config::default();
        let cfg = Config {
            host: env.string("WS_HOST")?.unwrap_or(d.host),
            port: env
                .parse("WS_PORT", "a port number (0-65535)", |v| v.parse().ok())?
                .unwrap_or(d.port),
            path: match env.string("WS_PATH")? {
                Some(p) if !p.starts_with('/') => {
                    return Err(env.invalid("WS_PATH", &p, "a path starting with '/'"))
                }
                Some(p) => p,
                None => d.path,
            },
            send_buffer: env
                .positive("WS_SEND_BUFFER", "a positive number of messages")?
                .unwrap_or(d.send_buffer),
            send_buffer_bytes: env
                .size("WS_SEND_BUFFER_BYTES")?
                .unwrap_or(d.send_buffer_bytes),
            max_rooms_per_client: env
                .parse(
                    "WS_MAX_ROOMS_PER_CLIENT",
                    "a positive number of rooms",
                    |v| v.parse().ok().filter(|n| *n > 0),
                )?
                .unwrap_or(d.max_rooms_per_client),
            ping_interval: env
                .duration_nonzero("WS_PING_INTERVAL")?
                .unwrap_or(d.ping_interval),
            pong_timeout: env
                .duration_nonzero("WS_PONG_TIMEOUT")?
                .unwrap_or(d.pong_timeout),
            max_message_size: env
                .size("WS_MAX_MESSAGE_SIZE")?
                .unwrap_or(d.max_message_size),
            shutdown_timeout: env
                .parse(
                    "WS_SHUTDOWN_TIMEOUT",
                    "a duration such as 500ms, 10s or 1m",
                    parse_duration,
                )?
                .unwrap_or(d.shutdown_timeout),
            max_batch: env
                .positive("WS_MAX_BATCH", "a positive number of requests")?
                .unwrap_or(d.max_batch),
            max_concurrent_requests: env
                .positive(
                    "WS_MAX_CONCURRENT_REQUESTS",
                    "a positive number of requests",
                )?
                .unwrap_or(d.max_concurrent_requests),
            request_timeout: env
                .parse(
                    "WS_REQUEST_TIMEOUT",
                    "a duration such as 500ms, 30s or 1m, or off",
                    |v| match v.to_ascii_lowercase().as_str() {
                        "off" | "none" => Some(None),
                        _ => parse_duration(v).map(|d| (!d.is_zero()).then_some(d)),
                    },
                )?
                .unwrap_or(d.request_timeout),
            max_response_size: env
                .size("WS_MAX_RESPONSE_SIZE")?
                .unwrap_or(d.max_response_size),
            admin_addr: env
                .parse(
                    "WS_ADMIN_ADDR",
                    "an address and port such as 127.0.0.1:9090",
                    |v| v.parse().ok(),
                )?
                .or(d.admin_addr),
            log_level: match env.string("WS_LOG_LEVEL")? {
                Some(l) => {
                    if tracing_subscriber::EnvFilter::try_new(&l).is_err() {
                        return Err(env.invalid(
                            "WS_LOG_LEVEL",
                            &l,
                            "trace, debug, info, warn, error or a tracing filter",
                        ));
                    }
                    l
                }
                None => d.log_level,
            },
            log_format: env
                .parse("WS_LOG_FORMAT", "text or json", |v| {
                    match v.to_ascii_lowercase().as_str() {
                        "text" | "pretty" | "plain" => Some(LogFormat::Text),
                        "json" => Some(LogFormat::Json),
                        _ => None,
                    }
                })?
                .unwrap_or(d.log_format),
            pubsub: crate::broker::PubSubConfig::from_env(&env)?,
            auth: crate::auth::AuthConfig::from_env(&env)?,
            limits: crate::limits::LimitsConfig::from_env(&env)?,
            tls: crate::tls::TlsConfig::from_env(&env)?,
            history: crate::history::HistoryConfig::from_env(&env)?,
            compression: crate::deflate::CompressionConfig::from_env(&env)?,
        };
        Ok(cfg)
    }

    /// The `host:port` to bind.
    pub fn bind_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.bind_addr(), "127.0.0.1:8080");
    }

    #[test]
    fn seed_variables() {
        let c = cfg(&[
            ("WS_HOST", "0.0.0.0"),
            ("WS_PORT", "9001"),
            ("WS_SEND_BUFFER", "16"),
            ("WS_SEND_BUFFER_BYTES", "2MiB"),
            ("WS_PING_INTERVAL", "1m"),
            ("WS_PONG_TIMEOUT", "90s"),
            ("WS_MAX_MESSAGE_SIZE", "64KiB"),
            ("WS_LOG_LEVEL", "debug"),
            ("WS_LOG_FORMAT", "json"),
            ("WS_MAX_BATCH", "10"),
            ("WS_MAX_CONCURRENT_REQUESTS", "4"),
            ("WS_REQUEST_TIMEOUT", "2s"),
            ("WS_MAX_RESPONSE_SIZE", "1MiB"),
            ("WS_ADMIN_ADDR", "127.0.0.1:9090"),
        ])
        .unwrap();
        assert_eq!(c.max_batch, 10);
        assert_eq!(c.max_concurrent_requests, 4);
        assert_eq!(c.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.max_response_size, 1 << 20);
        assert_eq!(c.admin_addr, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            cfg(&[("WS_REQUEST_TIMEOUT", "off")])
                .unwrap()
                .request_timeout,
            None
        );
        assert_eq!(
            cfg(&[("WS_REQUEST_TIMEOUT", "0")]).unwrap().request_timeout,
            None
        );
        assert_eq!(c.bind_addr(), "0.0.0.0:9001");
        assert_eq!(c.send_buffer, 16);
        assert_eq!(c.send_buffer_bytes, 2 << 20);
        assert_eq!(c.ping_interval, Duration::from_secs(60));
        assert_eq!(c.pong_timeout, Duration::from_secs(90));
        assert_eq!(c.max_message_size, 65536);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_variable() {
        for (var, value) in [
            ("WS_PORT", "70000"),
            ("WS_SEND_BUFFER", "0"),
            ("WS_SEND_BUFFER_BYTES", "0"),
            ("WS_SEND_BUFFER_BYTES", "lots"),
            ("WS_MAX_ROOMS_PER_CLIENT", "0"),
            ("WS_MAX_ROOMS_PER_CLIENT", "many"),
            ("WS_PING_INTERVAL", "soon"),
            ("WS_PONG_TIMEOUT", "0s"),
            ("WS_MAX_MESSAGE_SIZE", "-1"),
            ("WS_LOG_FORMAT", "xml"),
            ("WS_PATH", "ws"),
            ("WS_MAX_BATCH", "0"),
            ("WS_MAX_CONCURRENT_REQUESTS", "many"),
            ("WS_REQUEST_TIMEOUT", "soon"),
            ("WS_MAX_RESPONSE_SIZE", "0"),
            ("WS_ADMIN_ADDR", "localhost"),
        ] {
            let e = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(
                e.to_string().contains(var) && e.to_string().contains(value),
                "{e}"
            );
        }
    }
}
