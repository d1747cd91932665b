//! Brokers: how a broadcast reaches the clients of every instance when
//! one machine is not enough.
//!
//! Several instances of a server run behind a load balancer; each knows
//! only its own clients. With a broker configured, every instance
//! publishes what its handlers broadcast on one pub/sub channel and
//! subscribes to it, so a [`Hub::broadcast`](crate::Hub::broadcast) on any
//! instance reaches every client of every instance, and
//! [`Hub::send_to`](crate::Hub::send_to) reaches a client connected
//! elsewhere.
//!
//! | adapter | cargo feature | `WS_PUBSUB_ADAPTER` | backed by |
//! |---|---|---|---|
//! | [`LocalBroker`] | always there | `local` | an in-process channel: one process, no network |
//! | `RedisBroker` | `redis` | `redis` | Redis `PUBLISH`/`SUBSCRIBE` (the `redis` crate on tokio) |
//! | `NatsBroker` | `nats` | `nats` | NATS core pub/sub (`async-nats`) |
//!
//! ```text
//! WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis WS_REDIS_URL=redis://127.0.0.1:6379/0 WS_PORT=8080 server
//! WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis WS_REDIS_URL=redis://127.0.0.1:6379/0 WS_PORT=8081 server
//! ```
//!
//! ## How a broadcast travels
//!
//! 1. The handler calls `hub.broadcast(...)`: the message is serialized
//!    once, queued for every local client at once, and the same bytes are
//!    put on the hub's **publish queue** (bounded, non-blocking). The
//!    handler never waits for the network.
//! 2. One **publisher task** per hub drains that queue in order, packs
//!    whatever is waiting into one compact envelope (origin instance id,
//!    sequence number, the messages) and publishes it. One task and one
//!    queue per hub is what keeps the messages of one publisher in order.
//! 3. One **receiver task** per hub reads the channel. Envelopes from its
//!    own instance are skipped (they were delivered locally in step 1);
//!    the others are fanned out to the local clients, or, for a message
//!    addressed to one client, to that client if it is connected here.
//!
//! So each client sees each broadcast exactly once, and the broadcasts of
//! one instance in the order they were made, as long as the broker is up.
//!
//! ## Rooms and presence
//!
//! [`Hub::to`](crate::Hub::to) travels the same way, on the room's own
//! channel (`{WS_PUBSUB_CHANNEL}.room.{room}`), to which an instance is
//! subscribed only while it has local members in the room: an instance
//! receives the traffic of its rooms, not of every room. Joins and leaves
//! are replicated on `{WS_PUBSUB_CHANNEL}.presence`, with heartbeats, so
//! that [`Hub::members`](crate::Hub::members) lists every instance's
//! members and heals after a crash; see [`rooms`](crate::rooms) and
//! [`presence`](crate::presence).
//!
//! | channel (Redis) / subject (NATS) | carries | subscribed by |
//! |---|---|---|
//! | `websocket.broadcast` | broadcasts, `send_to` | every instance |
//! | `websocket.broadcast.presence` | joins, leaves, heartbeats, snapshots | every instance |
//! | `websocket.broadcast.room.lobby` | messages to room `lobby` | instances with members in `lobby` |
//!
//! Room names other than ASCII letters, digits, `-` and `_` (up to 128
//! bytes) are hashed into the channel name (`….roomh.<hex>`), so that any
//! room name makes a valid NATS subject.
//!
//! ## When the broker is down
//!
//! Local delivery goes on: step 1 does not depend on the broker. What the
//! publisher cannot publish is dropped and counted
//! (`nbio_ws_broker_publish_failures_total` in `/metrics`), `/health`
//! reports `"status":"degraded"` with `"broker":{"connected":false}` (still
//! HTTP 200: the instance serves its own clients, and a load balancer that
//! took every instance out because the shared broker is down would turn a
//! partial outage into a full one), and the backend reconnects and
//! resubscribes with capped exponential backoff (50 ms doubling up to 2 s),
//! so cross-instance delivery resumes by itself.
//!
//! **The guarantee is at-most-once across instances**: messages published
//! while the broker (or the path to it) is down are lost for the other
//! instances — Redis and NATS core pub/sub keep nothing for a subscriber
//! that is not connected. Receivers notice such holes in an origin's
//! sequence numbers and count them in `nbio_ws_broker_messages_lost_total`.
//! An application that needs every message after an outage needs history
//! (a stream or a database), not pub/sub.
//!
//! Limits: a message larger than the broker accepts (NATS: 1 MiB by
//! default, `max_payload`; Redis: 512 MiB) is not published and counts as
//! a publish failure. The publish queue holds 8192 messages; a burst
//! beyond that while the broker is slow is dropped for the other instances
//! (and counted) rather than making handlers wait.
//!
//! ## Writing a backend
//!
//! A backend implements [`Broker`]: `publish` one payload, `subscribe` to a
//! channel (a [`Subscription`] that survives reconnections and is dropped
//! to unsubscribe), and report its `health`. Envelopes, ordering, echo suppression, metrics and
//! shutdown are handled here, once, for every backend; see
//! [`LocalBroker`] for a complete one in a page of code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub(crate) mod envelope;
pub(crate) mod link;
mod local;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;

pub use local::LocalBroker;
#[cfg(feature = "nats")]
pub use nats::NatsBroker;
#[cfg(feature = "redis")]
pub use redis::RedisBroker;

use crate::config::{ConfigError, Env};

/// A boxed, sendable future, as [`Broker`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A pub/sub backend that carries broadcasts between instances.
///
/// Implementations must be cheap to call and bounded in time: `publish` is
/// awaited by one publisher task per hub, message after message, so a
/// `publish` that waits for a dead broker holds up the queue behind it. A
/// backend that knows it is disconnected should fail at once with
/// [`BrokerError::Disconnected`].
///
/// ```
/// use nbio_ws::broker::{Broker, BrokerHealth, LocalBroker};
///
/// // Two servers in one process that share an in-process broker see each
/// // other's broadcasts; a real deployment uses the redis or nats adapter.
/// let broker = LocalBroker::new();
/// let a = nbio_ws::Server::builder().broker(broker.clone()).build().unwrap();
/// let b = nbio_ws::Server::builder().broker(broker.clone()).build().unwrap();
/// assert_eq!(broker.health(), BrokerHealth::connected(true));
/// assert_eq!(a.hub().broker_health().map(|h| h.adapter), Some("local"));
/// # drop(b);
/// ```
pub trait Broker: Send + Sync + 'static {
    /// The adapter's name, as written in `WS_PUBSUB_ADAPTER` (`local`,
    /// `redis`, `nats`) and shown by `/health`.
    fn adapter(&self) -> &'static str;

    /// Publishes one payload on `channel`, to every subscriber of every
    /// instance (this one included). Called by one task at a time, in
    /// order; should give up quickly when the broker is unreachable.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Subscribes to `channel`: every payload published on it from now on
    /// (once the backend calls [`SubscriptionSender::ready`]) arrives on
    /// the returned [`Subscription`], across reconnections, until the
    /// subscription is dropped. Called from within a tokio runtime, for
    /// several channels per hub (the shared one, presence, and one per
    /// room with local members), as rooms come and go: subscriptions
    /// should share one connection. The backend may spawn tasks.
    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError>;

    /// Whether the broker is reachable now (for `/health` and metrics).
    fn health(&self) -> BrokerHealth;
}

impl<B: Broker + ?Sized> Broker for Arc<B> {
    fn adapter(&self) -> &'static str {
        (**self).adapter()
    }
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        (**self).publish(channel, payload)
    }
    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        (**self).subscribe(channel)
    }
    fn health(&self) -> BrokerHealth {
        (**self).health()
    }
}

/// The state of a broker, as [`Broker::health`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerHealth {
    /// Whether publishing and receiving work now (as far as the backend
    /// can tell).
    pub connected: bool,
}

impl BrokerHealth {
    /// A health report.
    pub fn connected(connected: bool) -> Self {
        BrokerHealth { connected }
    }
}

/// The state of a hub's broker, as
/// [`Hub::broker_health`](crate::Hub::broker_health) and `/health` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BrokerStatus {
    /// The adapter (`local`, `redis`, `nats`, or a custom backend's name).
    pub adapter: &'static str,
    /// Whether the broker is reachable now.
    pub connected: bool,
}

/// The receiving end of a [`Broker::subscribe`]: the payloads published on
/// the channel, in the order the broker delivered them.
///
/// Backends create one with [`Subscription::channel`], feed it from their
/// own task through the [`SubscriptionSender`], and call
/// [`SubscriptionSender::ready`] once the broker confirmed the
/// subscription. Dropping the subscription unsubscribes: the sender's
/// [`closed`](SubscriptionSender::closed) resolves, and a hook set with
/// [`Subscription::on_drop`] runs.
///
/// ```
/// use nbio_ws::broker::Subscription;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (tx, mut sub) = Subscription::channel(16);
/// tx.ready();
/// sub.ready().await;
/// tx.send("hello".into()).await.unwrap();
/// assert_eq!(sub.next().await.unwrap(), "hello");
/// drop(sub);
/// assert!(tx.is_closed());
/// # }
/// ```
pub struct Subscription {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    ready: tokio::sync::watch::Receiver<bool>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("ready", &*self.ready.borrow())
            .finish_non_exhaustive()
    }
}

/// The feeding end of a [`Subscription`], held by the backend.
#[derive(Debug, Clone)]
pub struct SubscriptionSender {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The [`Subscription`] was dropped: nobody reads this channel any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscription was dropped")]
pub struct SubscriptionClosed;

impl Subscription {
    /// A subscription and the sender a backend feeds it with; `capacity`
    /// payloads may wait unread before [`SubscriptionSender::send`] waits.
    pub fn channel(capacity: usize) -> (SubscriptionSender, Subscription) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        (
            SubscriptionSender {
                tx,
                ready: Arc::new(ready_tx),
            },
            Subscription {
                rx,
                ready: ready_rx,
                on_drop: None,
            },
        )
    }

    /// Runs `hook` when the subscription is dropped (a backend that
    /// multiplexes many channels over one connection uses it to
    /// unsubscribe at once).
    pub fn on_drop(mut self, hook: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Box::new(hook));
        self
    }

    /// The next payload; `None` when the backend stopped for good.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Resolves once the backend has confirmed the subscription (from then
    /// on, what is published on the channel arrives here). Never resolves
    /// for a backend that stopped before confirming: bound it with a
    /// timeout.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        if ready.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A handle that resolves like [`Subscription::ready`] without
    /// borrowing the subscription.
    pub(crate) fn ready_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.rx.close();
        if let Some(hook) = self.on_drop.take() {
            hook();
        }
    }
}

impl SubscriptionSender {
    /// Delivers one payload, waiting while the subscription's buffer is
    /// full.
    pub async fn send(&self, payload: Bytes) -> Result<(), SubscriptionClosed> {
        self.tx.send(payload).await.map_err(|_| SubscriptionClosed)
    }

    /// Marks the subscription confirmed by the broker.
    pub fn ready(&self) {
        self.ready.send_replace(true);
    }

    /// Resolves when the [`Subscription`] is dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Whether the [`Subscription`] was dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Why a broker could not be set up or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The adapter was chosen but its cargo feature is not compiled in.
    #[error(
        "WS_PUBSUB_ADAPTER={adapter}: the {adapter} adapter is not compiled into this binary; \
         build with the `{feature}` cargo feature of nbio-ws (e.g. `cargo build --features nbio-ws/{feature}`)"
    )]
    NotCompiled {
        /// The adapter asked for.
        adapter: &'static str,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
    /// A configuration value (URL, channel) is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker is not connected right now.
    #[error("the broker is not connected")]
    Disconnected,
    /// The operation did not finish in time.
    #[error("the broker did not answer in time")]
    Timeout,
    /// An error from the backend's client library.
    #[error("{0}")]
    Backend(String),
}

/// Which backend `WS_PUBSUB_ADAPTER` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Adapter {
    /// In-process only (no network): one instance.
    #[default]
    Local,
    /// Redis pub/sub (cargo feature `redis`).
    Redis,
    /// NATS core pub/sub (cargo feature `nats`).
    Nats,
}

impl Adapter {
    /// The name used in `WS_PUBSUB_ADAPTER`.
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Local => "local",
            Adapter::Redis => "redis",
            Adapter::Nats => "nats",
        }
    }

    /// Whether this binary was built with the adapter's cargo feature.
    pub fn is_compiled(self) -> bool {
        match self {
            Adapter::Local => true,
            Adapter::Redis => cfg!(feature = "redis"),
            Adapter::Nats => cfg!(feature = "nats"),
        }
    }

    fn parse(v: &str) -> Option<Adapter> {
        match v.to_ascii_lowercase().as_str() {
            "local" | "memory" | "none" => Some(Adapter::Local),
            "redis" => Some(Adapter::Redis),
            "nats" => Some(Adapter::Nats),
            _ => None,
        }
    }
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Pub/sub settings: the seed's `WS_PUBSUB_*`, `WS_REDIS_URL` and
/// `WS_NATS_URL` variables (part of [`Config`](crate::Config), field
/// `pubsub`).
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `WS_PUBSUB_ENABLED` | `false` | use a broker at all |
/// | `WS_PUBSUB_ADAPTER` | `local` | `local`, `redis` or `nats` |
/// | `WS_REDIS_URL` | `redis://127.0.0.1:6379/0` | Redis to use with `redis` |
/// | `WS_NATS_URL` | `nats://127.0.0.1:4222` | NATS server(s) to use with `nats` (comma-separated) |
/// | `WS_PUBSUB_CHANNEL` | `websocket.broadcast` | the channel (Redis) or subject (NATS) every instance shares |
/// | `WS_PRESENCE_TTL` | `15s` | the members of an instance not heard from this long are dropped (see [`presence`](crate::presence)) |
///
/// ```
/// use nbio_ws::broker::{Adapter, PubSubConfig};
///
/// let server = nbio_ws::Server::builder()
///     .pubsub(PubSubConfig::new(Adapter::Local).channel("chat.broadcast"))
///     .build()
///     .unwrap();
/// assert_eq!(server.config().pubsub.channel, "chat.broadcast");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubConfig {
    /// Whether a broker is used (`WS_PUBSUB_ENABLED`). Without one, a hub
    /// reaches only its own clients.
    pub enabled: bool,
    /// The backend (`WS_PUBSUB_ADAPTER`).
    pub adapter: Adapter,
    /// The Redis URL (`WS_REDIS_URL`), e.g. `redis://:password@host:6379/0`.
    pub redis_url: String,
    /// The NATS URL(s) (`WS_NATS_URL`), e.g. `nats://host:4222`.
    pub nats_url: String,
    /// The channel or subject shared by the instances (`WS_PUBSUB_CHANNEL`).
    /// Rooms and presence use channels named after it
    /// (`{channel}.room.{room}`, `{channel}.presence`).
    pub channel: String,
    /// How long the other instances keep this one's room members without
    /// hearing from it (`WS_PRESENCE_TTL`); it sends a heartbeat every
    /// third of that.
    pub presence_ttl: Duration,
}

/// The default `WS_PUBSUB_CHANNEL`.
pub const DEFAULT_CHANNEL: &str = "websocket.broadcast";

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            enabled: false,
            adapter: Adapter::Local,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            channel: DEFAULT_CHANNEL.into(),
            presence_ttl: crate::presence::DEFAULT_TTL,
        }
    }
}

impl PubSubConfig {
    /// Enabled, with the given adapter and the default URLs and channel.
    pub fn new(adapter: Adapter) -> Self {
        PubSubConfig {
            enabled: true,
            adapter,
            ..PubSubConfig::default()
        }
    }

    /// Redis at `url`, enabled.
    pub fn redis(url: impl Into<String>) -> Self {
        PubSubConfig {
            redis_url: url.into(),
            ..PubSubConfig::new(Adapter::Redis)
        }
    }

    /// NATS at `url`, enabled.
    pub fn nats(url: impl Into<String>) -> Self {
        PubSubConfig {
            nats_url: url.into(),
            ..PubSubConfig::new(Adapter::Nats)
        }
    }

    /// The channel (Redis) or subject (NATS) shared by the instances.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How long other instances keep this one's room members without a
    /// heartbeat (at least 300 ms).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_millis(300));
        self
    }

    /// Reads the pub/sub variables (used by
    /// [`Config::from_lookup`](crate::Config::from_lookup)).
    pub(crate) fn from_env(env: &Env<'_>) -> Result<PubSubConfig, ConfigError> {
        let d = PubSubConfig::default();
        let cfg = PubSubConfig {
            enabled: env.boolean("WS_PUBSUB_ENABLED")?.unwrap_or(d.enabled),
            adapter: env
                .parse("WS_PUBSUB_ADAPTER", "local, redis or nats", Adapter::parse)?
                .unwrap_or(d.adapter),
            redis_url: env.string("WS_REDIS_URL")?.unwrap_or(d.redis_url),
            nats_url: env.string("WS_NATS_URL")?.unwrap_or(d.nats_url),
            channel: env.string("WS_PUBSUB_CHANNEL")?.unwrap_or(d.channel),
            presence_ttl: env
                .duration_nonzero("WS_PRESENCE_TTL")?
                .unwrap_or(d.presence_ttl),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what can be checked without the network: the channel name
    /// and, when enabled, the URL of the chosen adapter and that the
    /// adapter is compiled in. Errors name the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_channel(&self.channel)?;
        if self.presence_ttl < Duration::from_millis(300) {
            return Err(ConfigError {
                var: "WS_PRESENCE_TTL",
                value: format!("{:?}", self.presence_ttl),
                reason: "expected at least 300ms (heartbeats go out every third of it)".into(),
            });
        }
        if !self.enabled {
            return Ok(());
        }
        match self.adapter {
            Adapter::Local => Ok(()),
            Adapter::Redis => {
                check_url("WS_REDIS_URL", &self.redis_url, &["redis", "rediss"])?;
                check_compiled(self.adapter)
            }
            Adapter::Nats => {
                for url in self.nats_url.split(',') {
                    check_url("WS_NATS_URL", url.trim(), &["nats", "tls"])?;
                }
                check_compiled(self.adapter)
            }
        }
    }
}

fn check_compiled(adapter: Adapter) -> Result<(), ConfigError> {
    if adapter.is_compiled() {
        return Ok(());
    }
    Err(ConfigError {
        var: "WS_PUBSUB_ADAPTER",
        value: adapter.name().into(),
        reason: format!(
            "the {0} adapter is not compiled into this binary; build with the `{0}` cargo \
             feature of nbio-ws (e.g. `cargo build --features nbio-ws/{0}`)",
            adapter.name()
        ),
    })
}

fn check_channel(channel: &str) -> Result<(), ConfigError> {
    let bad = channel.is_empty()
        || channel.len() > 255
        || channel
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        || channel.starts_with('.')
        || channel.ends_with('.')
        || channel.contains("..");
    if bad {
        return Err(ConfigError {
            var: "WS_PUBSUB_CHANNEL",
            value: channel.into(),
            reason: "expected a channel name such as websocket.broadcast (no spaces or \
                     wildcards, no empty dot-separated parts)"
                .into(),
        });
    }
    Ok(())
}

/// Checks the shape of a broker URL: a known scheme and a host, with a
/// numeric port if there is one. The value in the error has its password
/// masked.
pub(crate) fn check_url(var: &'static str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError {
        var,
        value: redact_url(url),
        reason,
    };
    let expected = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(err(format!("expected a URL starting with {expected}")));
    };
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(err(format!(
            "unsupported scheme {scheme:?}: expected {expected}"
        )));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(err("unterminated [IPv6] host".into())),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(err("the URL has no host".into()));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("the host contains spaces".into()));
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(err(format!(
                "the port {p:?} is not a number between 0 and 65535"
            )));
        }
    }
    Ok(())
}

/// The URL with any password (or bare token) replaced by `***`, for
/// errors and logs.
///
/// ```
/// use nbio_ws::broker::redact_url;
///
/// assert_eq!(redact_url("redis://:s3cret@db:6379/0"), "redis://:***@db:6379/0");
/// assert_eq!(redact_url("nats://token@host:4222"), "nats://***@host:4222");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') || !user.is_empty() {
                // `user:pass@` or a bare token `secret@` (NATS): mask it.
                let masked = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    "***".to_owned()
                };
                format!("{scheme}://{masked}@{host}{tail}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

/// Creates the backend that `config` names (it does not connect yet:
/// backends connect in the background once started, and keep retrying).
pub fn from_config(config: &PubSubConfig) -> Result<Arc<dyn Broker>, BrokerError> {
    config.validate()?;
    match config.adapter {
        Adapter::Local => Ok(Arc::new(LocalBroker::new())),
        Adapter::Redis => {
            #[cfg(feature = "redis")]
            {
                Ok(Arc::new(RedisBroker::new(&config.redis_url)?))
            }
            #[cfg(not(feature = "redis"))]
            {
                Err(BrokerError::NotCompiled {
                    adapter: "redis",
                    feature: "redis",
                })
            }
        }
        Adapter::Nats => {
            #[cfg(feature = "nats")]
            {
                Ok(Arc::new(NatsBroker::new(&config.nats_url)?))
            }
            #[cfg(not(feature = "nats"))]
            {
                Err(BrokerError::NotCompiled {
                    adapter: "nats",
                    feature: "nats",
                })
            }
        }
    }
}

/// Capped exponential backoff with a little jitter: 50 ms, 100 ms, …, 2 s.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // nats uses only `delay_for`
pub(crate) struct Backoff {
    attempt: u32,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))] // nats uses only `delay_for`
impl Backoff {
    pub(crate) const MIN: Duration = Duration::from_millis(50);
    pub(crate) const MAX: Duration = Duration::from_secs(2);

    /// The delay before attempt `attempt` (0-based), without jitter.
    pub(crate) fn delay_for(attempt: u32) -> Duration {
        Backoff::MIN
            .saturating_mul(1u32 << attempt.min(16))
            .min(Backoff::MAX)
    }

    /// The next delay (with up to 20% jitter, so instances that lost the
    /// broker together do not reconnect in lockstep).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = Backoff::delay_for(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(self.attempt);
        let jitter = base.mul_f64((h.finish() % 200) as f64 / 1000.0);
        base + jitter
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<crate::Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn seed_variables() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.pubsub, PubSubConfig::default());
        assert!(!c.pubsub.enabled);
        assert_eq!(c.pubsub.channel, "websocket.broadcast");

        let c = cfg(&[
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "local"),
            ("WS_PUBSUB_CHANNEL", "chat.all"),
            ("WS_REDIS_URL", "redis://:pw@10.0.0.1:6380/2"),
        ])
        .unwrap();
        assert!(c.pubsub.enabled);
        assert_eq!(c.pubsub.adapter, Adapter::Local);
        assert_eq!(c.pubsub.channel, "chat.all");
        assert_eq!(c.pubsub.redis_url, "redis://:pw@10.0.0.1:6380/2");
    }

    #[test]
    fn errors_name_the_variable() {
        for (vars, var) in [
            (vec![("WS_PUBSUB_ENABLED", "maybe")], "WS_PUBSUB_ENABLED"),
            (vec![("WS_PUBSUB_ADAPTER", "kafka")], "WS_PUBSUB_ADAPTER"),
            (vec![("WS_PUBSUB_CHANNEL", "a b")], "WS_PUBSUB_CHANNEL"),
            (vec![("WS_PUBSUB_CHANNEL", "a.*")], "WS_PUBSUB_CHANNEL"),
            (
                vec![
                    ("WS_PUBSUB_ENABLED", "1"),
                    ("WS_PUBSUB_ADAPTER", "redis"),
                    ("WS_REDIS_URL", "http://127.0.0.1:6379"),
                ],
                "WS_REDIS_URL",
            ),
            (
                vec![
                    ("WS_PUBSUB_ENABLED", "1"),
                    ("WS_PUBSUB_ADAPTER", "redis"),
                    ("WS_REDIS_URL", "redis://127.0.0.1:port/0"),
                ],
                "WS_REDIS_URL",
            ),
            (
                vec![
                    ("WS_PUBSUB_ENABLED", "1"),
                    ("WS_PUBSUB_ADAPTER", "nats"),
                    ("WS_NATS_URL", "127.0.0.1:4222"),
                ],
                "WS_NATS_URL",
            ),
        ] {
            let e = cfg(&vars).unwrap_err();
            assert_eq!(e.var, var, "{e}");
            assert!(e.to_string().starts_with(&format!("invalid {var}=")), "{e}");
        }
        // A disabled broker's URL is not checked.
        assert!(cfg(&[("WS_REDIS_URL", "nonsense")]).is_ok());
    }

    #[test]
    fn passwords_are_masked_in_errors() {
        let e = cfg(&[
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "redis"),
            ("WS_REDIS_URL", "redis://user:hunter2@127.0.0.1:notaport/0"),
        ])
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("user:***@127.0.0.1"), "{e}");
        assert_eq!(
            redact_url("nats://s3cr3t@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn an_adapter_not_compiled_names_its_feature() {
        let e = cfg(&[
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "redis"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "WS_PUBSUB_ADAPTER");
        assert!(e.to_string().contains("`redis` cargo feature"), "{e}");
        let e = crate::Server::builder()
            .pubsub(PubSubConfig::redis("redis://127.0.0.1:6379"))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("`redis` cargo feature"), "{e}");
    }

    #[cfg(not(feature = "nats"))]
    #[test]
    fn nats_not_compiled_names_its_feature() {
        let e = cfg(&[("WS_PUBSUB_ENABLED", "true"), ("WS_PUBSUB_ADAPTER", "nats")]).unwrap_err();
        assert!(e.to_string().contains("`nats` cargo feature"), "{e}");
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(Backoff::delay_for(0), Duration::from_millis(50));
        assert_eq!(Backoff::delay_for(1), Duration::from_millis(100));
        assert_eq!(Backoff::delay_for(10), Backoff::MAX);
        assert_eq!(Backoff::delay_for(u32::MAX), Backoff::MAX);
        let mut b = Backoff::default();
        for _ in 0..100 {
            assert!(b.next_delay() <= Backoff::MAX.mul_f64(1.2));
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(61));
    }
}
