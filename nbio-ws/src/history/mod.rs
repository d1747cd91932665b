//! History and recovery: rooms that keep their recent publications, so a
//! client that reconnects gets exactly what it missed.
//!
//! A room matched by a history policy (see [`HistoryConfig`]) is a
//! *stream*. [`RoomSender::publish`](crate::RoomSender::publish) stores a
//! publication in the room's stream before delivering it, and the stream
//! gives it a **position**: an `epoch` (a string that changes whenever the
//! room's history is lost: a memory backend restarted, a Redis key evicted
//! or expired, a JetStream stream recreated) and an `offset` that strictly
//! increases within an epoch. Every recipient sees the position of each
//! publication; a client that rejoins with the last position it saw
//! ([`Client::join_recover`](crate::Client::join_recover)) gets the
//! publications after it, in order, then the live ones — exactly once.
//! When the history cannot cover the gap (another epoch, trimmed by size
//! or age, or more than `WS_HISTORY_MAX_RECOVER` publications) the answer
//! says `recovered: false` with the current position, so the application
//! can reload its state. Plain [`RoomSender::notify`](crate::RoomSender::notify)
//! stays ephemeral.
//!
//! ## Wire format
//!
//! A live publication is a JSON-RPC notification with one more top-level
//! member, `position` (clients that ignore it keep working):
//!
//! ```json
//! {"jsonrpc":"2.0","method":"chat.message","params":{"text":"hi"},
//!  "position":{"room":"lobby","epoch":"k3x9","offset":42}}
//! ```
//!
//! A [`Recovery`], as a join method returns it:
//!
//! ```json
//! {"recovered":true,"position":{"epoch":"k3x9","offset":42},
//!  "publications":[{"method":"chat.message","params":{"text":"hi"},
//!                   "position":{"room":"lobby","epoch":"k3x9","offset":42}}]}
//! ```
//!
//! Offsets are integers below 2^53 (exact in JavaScript). Live
//! publications after the returned `position` may reach the client before
//! the reply to its join: a client buffers them until the reply and then
//! delivers, in order, the recovered publications and the buffered ones.
//!
//! ## Live connections
//!
//! A member that stays connected gets every publication of its rooms,
//! in order, once, or is closed with
//! [`close::STREAM_GAP`](crate::close::STREAM_GAP) (4000: reconnect and
//! recover). Each instance delivers a room's publications in offset
//! order; a publication whose predecessor has not arrived waits briefly,
//! then the missing ones are read from the history. Publications can
//! also go missing with nothing after them to show it; two more rules
//! cover that: when the broker confirms a room's subscription again
//! after a reconnection, the instance reads what the history has after
//! the last offset it delivered; and an instance whose publications did
//! not reach the broker (its publish failed, or its queue to the broker
//! was full) sends the latest of each room again once a publish succeeds
//! (a presence heartbeat, every third of `WS_PRESENCE_TTL`, at the
//! latest). When the history cannot fill a gap (trimmed, expired, more
//! than `WS_HISTORY_MAX_RECOVER`, another epoch, or unreachable), the
//! room's members are closed with 4000. What remains: an instance that
//! dies between storing a publication and handing it to the broker; the
//! next publication to the room shows the gap.
//!
//! ## Settings
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WS_HISTORY_SIZE` | `0` (no history) | publications kept per room, for rooms without a builder rule |
//! | `WS_HISTORY_TTL` | `10m` | how long a publication is kept |
//! | `WS_HISTORY_MAX_RECOVER` | `1000` | most publications one recovery returns; a bigger gap is `recovered: false` |
//!
//! Per-room rules go on the builder:
//! [`ServerBuilder::history`](crate::ServerBuilder::history).
//!
//! ## Backends
//!
//! | store | chosen by | shared by | when it is unreachable |
//! |---|---|---|---|
//! | [`MemoryHistory`] | the default | one instance | never; lost when the process exits (new epochs) |
//! | `RedisHistory` (feature `redis`) | `WS_PUBSUB_ADAPTER=redis` | every instance on that Redis and channel | `publish` fails with [`HistoryError::Unavailable`] (`-32003`), delivered to nobody; `notify` goes on |
//! | `JetStreamHistory` (feature `nats`) | `WS_PUBSUB_ADAPTER=nats` (the server runs with `-js`) | every instance on that NATS server and channel | the same |
//!
//! [`ServerBuilder::history_store`](crate::ServerBuilder::history_store)
//! sets another one. Each store's documentation gives its guarantees and
//! costs.

#[cfg(feature = "nats")]
pub(crate) mod jetstream;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[cfg(feature = "nats")]
pub use jetstream::JetStreamHistory;
pub use memory::{MemoryHistory, DEFAULT_MAX_BYTES};
#[cfg(feature = "redis")]
pub use redis::{RedisHistory, REDIS_META_TTL, REDIS_TIMEOUT};

use crate::env::{parse_duration, ConfigError, Env};
use crate::types::BoxFuture;

/// The history store that goes with the configured pub/sub backend: the
/// backend's own, shared by every instance (Redis: [`RedisHistory`]; NATS:
/// [`JetStreamHistory`]), when pub/sub is enabled; else [`MemoryHistory`].
///
/// History depends on the broker's settings, never the other way round:
/// the broker module knows nothing of history.
pub(crate) fn for_pubsub(
    config: &crate::broker::PubSubConfig,
) -> Result<Arc<dyn HistoryStore>, crate::broker::BrokerError> {
    let adapter = config
        .enabled
        .then(|| crate::broker::find_adapter(&config.adapter))
        .flatten()
        .filter(|r| r.def.is_some())
        .map(|r| r.name);
    match adapter {
        #[cfg(feature = "redis")]
        Some("redis") => {
            let url = config.url();
            crate::broker::check_url("WS_REDIS_URL", url, &["redis", "rediss"])?;
            let store = RedisHistory::new(url, &config.channel)
                .map_err(|e| crate::broker::BrokerError::Backend(e.to_string()))?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "nats")]
        Some("nats") => jetstream::create(config),
        _ => Ok(Arc::new(MemoryHistory::new())),
    }
}

/// Most publications a room may keep, whatever the configuration.
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

/// How much history a room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Publications kept (the oldest go first); 0 keeps none.
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
}

impl HistoryPolicy {
    /// Keeps the last `size` publications for `ttl`.
    pub fn new(size: usize, ttl: Duration) -> Self {
        HistoryPolicy {
            size: size.min(MAX_HISTORY_SIZE),
            ttl: ttl.max(Duration::from_secs(1)),
        }
    }

    /// Whether the policy keeps anything.
    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

/// Which rooms keep history, and how much. Part of
/// [`Config`](crate::Config) (`config.history`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryConfig {
    /// For rooms no rule matches (`WS_HISTORY_SIZE`, `WS_HISTORY_TTL`).
    pub default: HistoryPolicy,
    /// Rules by room name pattern, the first match wins: `lobby` matches
    /// that room only, `chat.*` every room whose name starts with `chat.`,
    /// `*` every room.
    pub rules: Vec<(String, HistoryPolicy)>,
    /// Most publications one recovery returns (`WS_HISTORY_MAX_RECOVER`).
    pub max_recover: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            default: HistoryPolicy {
                size: 0,
                ttl: Duration::from_secs(600),
            },
            rules: Vec::new(),
            max_recover: 1000,
        }
    }
}

impl HistoryConfig {
    /// The policy of `room`: the first rule that matches, else the default.
    pub fn policy(&self, room: &str) -> HistoryPolicy {
        self.rules
            .iter()
            .find(|(pattern, _)| matches(pattern, room))
            .map_or(self.default, |(_, p)| *p)
    }

    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let d = HistoryConfig::default();
        let size = env
            .parse(
                "WS_HISTORY_SIZE",
                "a number of publications per room (0 for none)",
                |v| v.parse::<usize>().ok().filter(|n| *n <= MAX_HISTORY_SIZE),
            )?
            .unwrap_or(d.default.size);
        let ttl = env
            .parse(
                "WS_HISTORY_TTL",
                "a duration of at least 1s such as 10m or 1h",
                |v| parse_duration(v).filter(|d| *d >= Duration::from_secs(1)),
            )?
            .unwrap_or(d.default.ttl);
        let max_recover = env
            .parse(
                "WS_HISTORY_MAX_RECOVER",
                "a positive number of publications",
                |v| v.parse::<usize>().ok().filter(|n| *n > 0),
            )?
            .unwrap_or(d.max_recover);
        Ok(HistoryConfig {
            default: HistoryPolicy::new(size, ttl),
            rules: Vec::new(),
            max_recover,
        })
    }

    /// Whether any room keeps history.
    pub fn any(&self) -> bool {
        self.default.enabled() || self.rules.iter().any(|(_, p)| p.enabled())
    }
}

/// `*` alone matches everything, a trailing `*` a prefix, anything else
/// the exact name.
fn matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// A position in a room's stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
pub struct Position {
    /// Changes whenever the room's history is lost.
    pub epoch: String,
    /// Strictly increases within an epoch (from 1; 0 is "before the
    /// first publication").
    pub offset: u64,
}

/// A position with its room, as a publication carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
pub struct StreamPosition {
    /// The room.
    pub room: String,
    /// See [`Position::epoch`].
    pub epoch: String,
    /// See [`Position::offset`].
    pub offset: u64,
}

/// One stored publication, as a recovery returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
pub struct Publication {
    /// The notification's method.
    pub method: String,
    /// Its params, as published.
    pub params: Box<RawValue>,
    /// Where it is in the room's stream.
    pub position: StreamPosition,
}

impl PartialEq for Publication {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && self.params.get() == other.params.get()
            && self.position == other.position
    }
}

/// The answer to a join with recovery
/// ([`Client::join_recover`](crate::Client::join_recover)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// Whether `publications` holds exactly everything after the position
    /// the client gave. `false` without a position, after an epoch change,
    /// or when the history no longer covers the gap: then `publications`
    /// holds the latest publications (at most the recovery limit).
    pub recovered: bool,
    /// The room's position the live publications continue from: every
    /// later publication reaches the client live.
    pub position: Position,
    /// The publications, in order.
    pub publications: Vec<Publication>,
}

/// Why history could not be stored or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The backend is unreachable; the publication was not delivered.
    #[error("the history backend is unavailable: {0}")]
    Unavailable(String),
    /// The room keeps no history.
    #[error("room {0:?} keeps no history")]
    NoHistory(String),
    /// The publication could not be serialized.
    #[error("invalid publication: {0}")]
    Invalid(String),
    /// The publication is larger than one broker payload may be, so it
    /// could not reach the other instances: it was neither stored nor
    /// delivered (see [`BroadcastError::TooLarge`](crate::BroadcastError::TooLarge)).
    #[error("the publication is {size} bytes as published; the broker accepts at most {limit}")]
    TooLarge {
        /// The bytes it would take in one broker payload (an upper bound).
        size: usize,
        /// The most one payload may take.
        limit: usize,
    },
    /// [`Client::join_recover`](crate::Client::join_recover) was refused
    /// by a membership limit, or the client is disconnected.
    #[error(transparent)]
    Join(#[from] crate::types::JoinError),
}

impl From<HistoryError> for crate::RpcError {
    /// An unavailable backend is `-32003` ("History unavailable", retry
    /// later); a refused join `-32020` (see [`JoinError`](crate::JoinError));
    /// a publication too large for the broker `-32021`; the others
    /// `-32602`.
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::TooLarge { size, limit } => {
                crate::RpcError::message_too_large(size, limit)
            }
            HistoryError::Unavailable(detail) => {
                crate::RpcError::new(-32003, "History unavailable")
                    .with_data(serde_json::json!({ "detail": detail }))
            }
            HistoryError::Join(e) => e.into(),
            other => crate::RpcError::invalid_params(other),
        }
    }
}

/// What [`HistoryStore::append`] assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The publication's offset.
    pub offset: u64,
    /// The offset of the publication before it in this room (0 for the
    /// first). Receivers detect a gap when a publication's `prev` is not
    /// the last offset they delivered.
    pub prev: u64,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// The offset before it in the room (0 for the first).
    pub prev: u64,
    /// What was stored: `{"method":...,"params":...}`.
    pub data: Bytes,
}

/// What [`HistoryStore::read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The offset of the room's latest publication (0: none yet).
    pub top: u64,
    /// Entries after the requested offset, oldest first.
    pub entries: Vec<Stored>,
}

impl Range {
    /// Whether `entries` is exactly everything after `after` up to `top`.
    pub fn covers(&self, after: u64) -> bool {
        match (self.entries.first(), self.entries.last()) {
            (Some(first), Some(last)) => first.prev == after && last.offset == self.top,
            _ => after == self.top,
        }
    }
}

/// Where rooms keep their history. The memory backend is the default
/// with one instance; with `WS_PUBSUB_ADAPTER=redis` history lives in
/// Redis, with `nats` in JetStream, so that every instance shares it.
///
/// Implementations assign offsets atomically (two instances never give
/// one offset twice) and bound what they keep by the policy's size and
/// TTL. They should fail fast when the backend is unreachable.
pub trait HistoryStore: Send + Sync + 'static {
    /// The backend's name (`memory`, `redis`, `jetstream`).
    fn name(&self) -> &'static str;

    /// Stores `data` as the next publication of `room`.
    fn append<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>>;

    /// The publications of `room` after offset `after` (or the latest,
    /// for `None`), at most `limit`, oldest first, with the room's epoch
    /// and latest offset. With `after`, a store may return fewer than
    /// `limit` entries; [`Range::covers`] says whether they are complete.
    fn read<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Range, HistoryError>>;
}

impl<T: HistoryStore + ?Sized> HistoryStore for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn append<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>> {
        (**self).append(room, policy, data)
    }
    fn read<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Range, HistoryError>> {
        (**self).read(room, policy, after, limit)
    }
}

impl fmt::Debug for dyn HistoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryStore")
            .field("backend", &self.name())
            .finish()
    }
}

/// A random epoch: 8 characters of base 36, from the clock and the
/// process (enough to tell two lifetimes of a stream apart).
pub fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    let mut n = h.finish();
    let mut s = String::with_capacity(8);
    for _ in 0..8 {
        let d = (n % 36) as u8;
        s.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
        n /= 36;
    }
    s
}

/// `{"method":..,"params":..}`: what a stream stores for a publication.
pub(crate) fn encode_data<P: Serialize + ?Sized>(
    method: &str,
    params: &P,
) -> Result<Bytes, serde_json::Error> {
    #[derive(Serialize)]
    struct Data<'a, P: ?Sized> {
        method: &'a str,
        params: &'a P,
    }
    serde_json::to_vec(&Data { method, params }).map(Bytes::from)
}

/// The live frame of a stored publication: the notification with its
/// position, spliced around `data` (serialized once).
pub(crate) fn live_frame(data: &[u8], room: &str, epoch: &str, offset: u64) -> Bytes {
    let inner = data
        .strip_prefix(b"{")
        .and_then(|d| d.strip_suffix(b"}"))
        .unwrap_or(b"");
    let position = position_json(room, epoch, offset);
    let mut out = Vec::with_capacity(inner.len() + position.len() + 32);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","#);
    out.extend_from_slice(inner);
    out.extend_from_slice(br#","position":"#);
    out.extend_from_slice(position.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

fn position_json(room: &str, epoch: &str, offset: u64) -> String {
    serde_json::json!({ "room": room, "epoch": epoch, "offset": offset }).to_string()
}

/// Turns stored entries into publications.
pub(crate) fn publications(room: &str, epoch: &str, entries: &[Stored]) -> Vec<Publication> {
    #[derive(Deserialize)]
    struct Data {
        method: String,
        params: Box<RawValue>,
    }
    entries
        .iter()
        .filter_map(|e| {
            let d: Data = serde_json::from_slice(&e.data).ok()?;
            Some(Publication {
                method: d.method,
                params: d.params,
                position: StreamPosition {
                    room: room.to_owned(),
                    epoch: epoch.to_owned(),
                    offset: e.offset,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let mut cfg = HistoryConfig::default();
        cfg.rules.push((
            "chat.*".into(),
            HistoryPolicy::new(100, Duration::from_secs(60)),
        ));
        cfg.rules.push((
            "lobby".into(),
            HistoryPolicy::new(5, Duration::from_secs(60)),
        ));
        assert_eq!(cfg.policy("chat.a").size, 100);
        assert_eq!(cfg.policy("lobby").size, 5);
        assert_eq!(cfg.policy("lobby2").size, 0);
        assert!(cfg.any());
        assert!(!HistoryConfig::default().any());
    }

    #[test]
    fn frames_carry_the_position() {
        let data = encode_data("chat.message", &serde_json::json!({"text": "hi"})).unwrap();
        let frame = live_frame(&data, "lobby", "e1", 42);
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["method"], "chat.message");
        assert_eq!(v["params"]["text"], "hi");
        assert_eq!(
            v["position"],
            serde_json::json!({"room": "lobby", "epoch": "e1", "offset": 42})
        );
        let pubs = publications(
            "lobby",
            "e1",
            &[Stored {
                offset: 42,
                prev: 41,
                data,
            }],
        );
        assert_eq!(pubs[0].method, "chat.message");
        assert_eq!(pubs[0].position.offset, 42);
    }

    #[test]
    fn env_errors_name_the_variable() {
        for (var, value) in [
            ("WS_HISTORY_SIZE", "lots"),
            ("WS_HISTORY_TTL", "0s"),
            ("WS_HISTORY_MAX_RECOVER", "0"),
        ] {
            let e =
                crate::Config::from_lookup(|k| (k == var).then(|| value.to_owned())).unwrap_err();
            assert_eq!(e.var, var);
        }
        let c = crate::Config::from_lookup(|k| match k {
            "WS_HISTORY_SIZE" => Some("50".into()),
            "WS_HISTORY_TTL" => Some("1h".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.history.default,
            HistoryPolicy::new(50, Duration::from_secs(3600))
        );
        assert_eq!(new_epoch().len(), 8);
    }
}
