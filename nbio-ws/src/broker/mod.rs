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
//! members and heals after a crash; see [Rooms and presence](crate#rooms-and-presence)
//! and [below](#presence-across-instances).
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
//! ## Presence across instances
//!
//! Who is in which room on the *other* instances is replicated through
//! the broker.
//!
//! Each instance owns the memberships of its own clients (see [Rooms and presence](crate#rooms-and-presence)) and tells the others about them on the presence
//! channel (`{WS_PUBSUB_CHANNEL}.presence`); each instance keeps a replica
//! of every other instance's memberships, so that
//! [`Hub::members`](crate::Hub::members) answers from memory, for any
//! room, without a round trip. The scheme is the one of Phoenix's
//! presence tracker, simplified to one writer per entry:
//!
//! - **Deltas.** Every join and leave on an instance takes the next
//!   *presence version* of that instance and is published with it
//!   (`Join`/`Leave`). Versions are taken under the room's own lock, so
//!   the deltas of one room go out in version order, while those of
//!   different rooms may interleave. A replica keeps, per room, the version
//!   of the last delta it applied, and ignores a delta that is not newer.
//!   A hole in the presence channel's sequence numbers means something was
//!   lost on the way (pub/sub is at-most-once): the replica asks for a
//!   snapshot — again at every heartbeat (at most every `ttl / 3`) until
//!   one is applied. A delta the instance could not even queue (its
//!   publish queue was full) makes it publish a snapshot by itself.
//! - **Heartbeats.** Every `ttl / 3` an instance publishes the highest
//!   version it has queued, and its TTL. A replica that has not seen that
//!   version asks for a snapshot; one that hears nothing from an instance
//!   for `ttl` drops everything that instance had (it crashed or lost the
//!   broker), which heals presence after a crash.
//! - **Snapshots.** On request (`SyncRequest`, also sent by every instance
//!   when it starts), an instance publishes all its memberships, in
//!   numbered parts of at most 256 KiB, without stopping joins: each
//!   member carries its room's version, and the snapshot the version
//!   before it was taken (`since`). A replica that received every part in
//!   order merges it room by room: a room it knows at a newer version than
//!   the snapshot's (a delta that came after that room was read) is kept,
//!   every other room is replaced, and a room missing from the snapshot is
//!   dropped unless a delta newer than `since` touched it. Rooms emptied by
//!   a leave are remembered (as versions) for `ttl`, so that a snapshot
//!   read before the leave cannot bring the member back. The differences
//!   are emitted as events (a member who was there all along but unknown
//!   here shows up as a `Joined`); a snapshot with a part missing is
//!   dropped and asked for again.
//! - **Goodbye.** At graceful shutdown an instance publishes `Gone`, so
//!   others drop its entries at once instead of after `ttl`.
//!
//! Consistency: eventual. A join is visible on the other instances one
//! broker hop later (about a millisecond here); after a lost message,
//! within one heartbeat; after a crash, within `ttl` (+ `ttl / 3`). While
//! the broker is down each instance still knows its own members exactly
//! and forgets the others' after `ttl`; when the broker is back, heartbeats
//! trigger snapshots and the replicas converge.
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
//! ## Limits
//!
//! - **The publish queue** holds at most 8192 messages and
//!   `WS_PUBSUB_QUEUE_BYTES` bytes of them ([`DEFAULT_QUEUE_BYTES`],
//!   64 MiB; [`PubSubConfig::queue_bytes`]), counted until they are
//!   published. A message that finds it full (the broker is far slower
//!   than the handlers) still reaches this instance's clients; the other
//!   instances miss it, and it is counted in
//!   `nbio_ws_broker_publish_failures_total`. Handlers never wait.
//! - **Batches fit the broker.** The publisher packs at most 256 messages
//!   and 256 KiB into one broker message, or the broker's
//!   [`max_payload`](Broker::max_payload) if smaller (NATS: what the
//!   server announces, 1 MiB by default; Redis:
//!   `RedisBroker::MAX_PAYLOAD`, 512 MiB); a larger message goes alone.
//! - **A message too large to cross** — larger, in its envelope, than the
//!   broker's `max_payload` or than the whole publish queue — is refused
//!   before it is delivered anywhere: [`Hub::broadcast`](crate::Hub::broadcast)
//!   and [`RoomSender::notify`](crate::RoomSender::notify) return
//!   [`BroadcastError::TooLarge`](crate::BroadcastError::TooLarge)
//!   (`-32021` with `data.size` and `data.limit` when a handler returns it
//!   with `?`), [`Hub::send_to`](crate::Hub::send_to)
//!   [`SendError::TooLarge`](crate::SendError::TooLarge),
//!   [`RoomSender::publish`](crate::RoomSender::publish)
//!   [`HistoryError::TooLarge`](crate::history::HistoryError::TooLarge)
//!   (before storing it). It is counted in
//!   `nbio_ws_broker_messages_too_large_total` and the first one is logged
//!   with its size. It never costs the messages around it: it is never
//!   packed with them, and should the broker's limit shrink after a batch
//!   was packed (NATS reconnected to a server with a smaller one), the
//!   batch is published message by message and only the one too large is
//!   dropped.
//! - **Receiving**: each subscription holds at most 1024 broker messages
//!   and [`Subscription::BUFFER_BYTES`] (64 MiB) unread. The Redis
//!   backend reads every channel from one connection and never waits for
//!   a subscription: one that is full loses the message (counted in
//!   `nbio_ws_broker_subscription_overflows_total`; the receiver also sees
//!   the hole in the sequence numbers) and the other channels go on. The
//!   channels it must subscribe are a set, not a queue of commands, so
//!   rooms coming and going while Redis is slow cost nothing more.
//! - **Subscriptions that fail are retried** with [`Backoff`]: a room
//!   subscription the backend cannot make, or (NATS) one the server
//!   refuses (a permissions violation) or ends, is made again until it
//!   works or the room has no local member left, instead of leaving the
//!   room deaf to the other instances.
//!
//! ## Writing a backend
//!
//! A backend implements [`Broker`]: `publish` one payload, `subscribe` to a
//! channel (a [`Subscription`] that survives reconnections and is dropped
//! to unsubscribe), and report its `health`. Envelopes, ordering, echo suppression, metrics and
//! shutdown are handled here, once, for every backend; see
//! [`LocalBroker`] for a complete one in a page of code.

use std::sync::Arc;

use bytes::Bytes;

mod backoff;
mod config;
mod url;

pub use backoff::Backoff;
pub use config::{PubSubConfig, DEFAULT_CHANNEL, DEFAULT_PRESENCE_TTL, DEFAULT_QUEUE_BYTES};
pub use url::{check_url, redact_url};

use crate::env::ConfigError;

/// The backends `WS_PUBSUB_ADAPTER` can name: one line per backend, the
/// module that implements it and, for an optional one, its cargo feature.
/// A backend module provides `pub(crate) static ADAPTER: AdapterDef` and
/// its broker type; see [`AdapterDef`].
macro_rules! adapters {
    ($($module:ident $(if $feature:literal)?),* $(,)?) => {
        $( $(#[cfg(feature = $feature)])? mod $module; )*
        /// Every adapter known to this build, compiled in or not.
        pub(crate) static ADAPTERS: &[Registered] = &[$(
            Registered {
                name: stringify!($module),
                feature: adapters!(@feature $($feature)?),
                def: {
                    $(#[cfg(not(feature = $feature))] let def = None;)?
                    $(#[cfg(feature = $feature)])? let def = Some(&self::$module::ADAPTER);
                    def
                },
            }
        ),*];
    };
    (@feature) => { None };
    (@feature $f:literal) => { Some($f) };
}

adapters! {
    local,
    redis if "redis",
    nats if "nats",
}

pub use self::local::LocalBroker;
#[cfg(feature = "nats")]
pub use self::nats::NatsBroker;
#[cfg(feature = "redis")]
pub use self::redis::RedisBroker;

/// How a backend that `WS_PUBSUB_ADAPTER` can name is configured and made.
pub(crate) struct AdapterDef {
    /// Other names accepted in `WS_PUBSUB_ADAPTER`.
    pub aliases: &'static [&'static str],
    /// The variable holding the backend's URL (`WS_REDIS_URL`), if it has one.
    pub url_var: Option<&'static str>,
    /// The URL used when the variable is not set.
    pub default_url: &'static str,
    /// Checks a URL without the network; errors name `url_var`.
    pub check_url: fn(&str) -> Result<(), ConfigError>,
    /// Creates the broker (it connects in the background once started).
    pub create: fn(&str) -> Result<Arc<dyn Broker>, BrokerError>,
}

/// An entry of [`ADAPTERS`].
pub(crate) struct Registered {
    pub name: &'static str,
    /// The cargo feature that compiles it in (`None`: always there).
    pub feature: Option<&'static str>,
    /// `None` when its feature is not compiled in.
    pub def: Option<&'static AdapterDef>,
}

/// The adapter `name` names (case-insensitive, aliases included).
pub(crate) fn find_adapter(name: &str) -> Option<&'static Registered> {
    let name = name.trim();
    ADAPTERS.iter().find(|r| {
        r.name.eq_ignore_ascii_case(name)
            || r.def
                .is_some_and(|d| d.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
    })
}

/// The names `WS_PUBSUB_ADAPTER` accepts, for messages (`local, redis or nats`).
pub(crate) fn adapter_names() -> String {
    let names: Vec<&str> = ADAPTERS.iter().map(|r| r.name).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

pub use crate::types::BoxFuture;

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
    /// subscription is dropped; after each reconnection the backend calls
    /// `ready` again once it has resubscribed. Called from within a tokio runtime, for
    /// several channels per hub (the shared one, presence, and one per
    /// room with local members), as rooms come and go: subscriptions
    /// should share one connection. The backend may spawn tasks.
    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError>;

    /// Whether the broker is reachable now (for `/health` and metrics).
    fn health(&self) -> BrokerHealth;

    /// The largest payload [`publish`](Broker::publish) accepts now, in
    /// bytes; `None` (the default) for a backend without a limit.
    ///
    /// The hub never publishes more in one payload: it packs its batches
    /// below it and refuses, before delivering it anywhere, a message
    /// that would not fit alone (see [Limits](self#limits)). Called for
    /// every message queued, so keep it cheap; it may change (NATS learns
    /// it from the server it connects to).
    fn max_payload(&self) -> Option<usize> {
        None
    }
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
    fn max_payload(&self) -> Option<usize> {
        (**self).max_payload()
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
/// What waits unread is bounded twice: in payloads (the `capacity` given
/// to [`Subscription::channel`]) and in bytes
/// ([`Subscription::BUFFER_BYTES`]; a larger payload waits for an empty
/// buffer and then goes alone). A backend that reads many channels from
/// one connection delivers with [`SubscriptionSender::offer`], which never
/// waits: a subscription whose buffer is full loses the payload (counted
/// in [`Subscription::dropped`]) and the other channels go on.
///
/// ```
/// use nbio_ws::broker::Subscription;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (tx, mut sub) = Subscription::channel(1);
/// tx.ready();
/// sub.ready().await;
/// tx.send("hello".into()).await.unwrap();
/// assert_eq!(tx.offer("full".into()), Ok(false)); // dropped: one payload waits already
/// assert_eq!(sub.next().await.unwrap(), "hello");
/// assert_eq!(sub.dropped(), 1);
/// drop(sub);
/// assert!(tx.is_closed());
/// # }
/// ```
pub struct Subscription {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    ready: tokio::sync::watch::Receiver<bool>,
    budget: Arc<Budget>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// The bytes a subscription may hold unread, and what it lost.
#[derive(Debug)]
struct Budget {
    /// One permit per byte that may still be buffered.
    bytes: tokio::sync::Semaphore,
    /// Payloads [`SubscriptionSender::offer`] dropped.
    dropped: std::sync::atomic::AtomicU64,
}

impl Budget {
    /// The permits a payload of `len` bytes holds (a payload larger than
    /// the whole budget holds all of it).
    fn cost(len: usize) -> u32 {
        // BUFFER_BYTES < u32::MAX.
        len.min(Subscription::BUFFER_BYTES) as u32
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("ready", &*self.ready.borrow())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The feeding end of a [`Subscription`], held by the backend.
#[derive(Debug, Clone)]
pub struct SubscriptionSender {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
    budget: Arc<Budget>,
}

/// The [`Subscription`] was dropped: nobody reads this channel any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscription was dropped")]
pub struct SubscriptionClosed;

impl Subscription {
    /// Most bytes of payloads a subscription holds unread (64 MiB),
    /// whatever its capacity in payloads.
    pub const BUFFER_BYTES: usize = 64 << 20;

    /// A subscription and the sender a backend feeds it with; `capacity`
    /// payloads (and at most [`BUFFER_BYTES`](Self::BUFFER_BYTES)) may
    /// wait unread before [`SubscriptionSender::send`] waits and
    /// [`SubscriptionSender::offer`] drops.
    pub fn channel(capacity: usize) -> (SubscriptionSender, Subscription) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        let budget = Arc::new(Budget {
            bytes: tokio::sync::Semaphore::new(Subscription::BUFFER_BYTES),
            dropped: std::sync::atomic::AtomicU64::new(0),
        });
        (
            SubscriptionSender {
                tx,
                ready: Arc::new(ready_tx),
                budget: Arc::clone(&budget),
            },
            Subscription {
                rx,
                ready: ready_rx,
                budget,
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
        let payload = self.rx.recv().await?;
        self.budget
            .bytes
            .add_permits(Budget::cost(payload.len()) as usize);
        Some(payload)
    }

    /// How many payloads were dropped so far because this subscription's
    /// buffer was full when they arrived (see
    /// [`SubscriptionSender::offer`]).
    pub fn dropped(&self) -> u64 {
        self.budget
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
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
    /// full (in payloads or in bytes).
    pub async fn send(&self, payload: Bytes) -> Result<(), SubscriptionClosed> {
        let permit = tokio::select! {
            p = self.budget.bytes.acquire_many(Budget::cost(payload.len())) => p,
            _ = self.tx.closed() => return Err(SubscriptionClosed),
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else {
            return Err(SubscriptionClosed);
        };
        permit.forget();
        self.tx.send(payload).await.map_err(|e| {
            self.budget
                .bytes
                .add_permits(Budget::cost(e.0.len()) as usize);
            SubscriptionClosed
        })
    }

    /// Delivers one payload if the subscription's buffer has room for it
    /// (`Ok(true)`), else drops it and counts it in
    /// [`Subscription::dropped`] (`Ok(false)`). Never waits: a backend
    /// that reads several channels from one connection uses it, so that
    /// one subscription that is not read cannot hold up the others.
    pub fn offer(&self, payload: Bytes) -> Result<bool, SubscriptionClosed> {
        if self.tx.is_closed() {
            return Err(SubscriptionClosed);
        }
        let cost = Budget::cost(payload.len());
        let Ok(permit) = self.budget.bytes.try_acquire_many(cost) else {
            self.count_drop();
            return Ok(false);
        };
        permit.forget();
        match self.tx.try_send(payload) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.budget.bytes.add_permits(cost as usize);
                match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => {
                        self.count_drop();
                        Ok(false)
                    }
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => Err(SubscriptionClosed),
                }
            }
        }
    }

    fn count_drop(&self) {
        self.budget
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks the subscription confirmed by the broker. Call it again each
    /// time the backend has subscribed again after a reconnection: the hub
    /// then catches up what the channel may have carried meanwhile (rooms
    /// with history read what they missed from the history).
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
    /// The payload is larger than the broker accepts.
    #[error("the payload is {size} bytes; the broker accepts at most {limit}")]
    TooLarge {
        /// The payload's size, in bytes.
        size: usize,
        /// The most the broker accepts, in bytes.
        limit: usize,
    },
    /// An error from the backend's client library.
    #[error("{0}")]
    Backend(String),
}

/// Creates the backend that `config` names (it does not connect yet:
/// backends connect in the background once started, and keep retrying).
pub fn from_config(config: &PubSubConfig) -> Result<Arc<dyn Broker>, BrokerError> {
    config.validate()?;
    let reg = find_adapter(&config.adapter).ok_or_else(|| config.unknown_adapter())?;
    match reg.def {
        Some(def) => (def.create)(config.url()),
        None => Err(BrokerError::NotCompiled {
            adapter: reg.name,
            feature: reg.feature.unwrap_or(reg.name),
        }),
    }
}
