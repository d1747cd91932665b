//! `RedisBroker`: Redis `PUBLISH`/`SUBSCRIBE` (cargo feature `redis`).
//!
//! Two connections per instance, because a Redis connection in subscribed
//! mode can do nothing else: a multiplexed one for `PUBLISH` and a pub/sub
//! one for `SUBSCRIBE`. Neither is made at construction: the subscriber
//! task connects in the background and keeps doing so, so an instance
//! starts even while Redis is down (`/health` says so).
//!
//! - **Subscriber**: one connection for every channel of the instance
//!   (the shared channel, presence, and one per room with local members).
//!   The channels wanted are a shared set, not a queue of commands: a
//!   subscription adds itself, a dropped one removes itself, and a task
//!   sends `SUBSCRIBE` and `UNSUBSCRIBE` until the connection matches the
//!   set (rooms that come and go while Redis is slow or down cost nothing
//!   but their entries). Another task reads the connection and hands each
//!   message to the subscriptions of its channel without ever waiting:
//!   each subscription holds at most 1024 messages and 64 MiB unread, and
//!   one that is full loses the message (counted in
//!   `nbio_ws_broker_subscription_overflows_total`) while every other
//!   channel goes on. A `PING` every 5 s finds connections that died
//!   silently. When the connection ends it reconnects and resubscribes
//!   every channel with capped exponential backoff (50 ms … 2 s). After
//!   each reconnection it also makes sure the publishing connection
//!   exists, so health comes back without waiting for a broadcast.
//! - **Publisher**: a failed `PUBLISH` drops the connection; the next
//!   publish reconnects at once, and after that only when the backoff
//!   allows, failing fast in between (the hub counts those failures).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{redact_url, Backoff};
use super::{BoxFuture, Broker, BrokerError, BrokerHealth, Subscription, SubscriptionSender};
use crate::env::ConfigError;

/// Connecting (TCP + handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One command (PUBLISH, SUBSCRIBE, PING) may take this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscriber checks its connection.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Payloads one subscription may hold unread (and at most
/// [`Subscription::BUFFER_BYTES`]); past that it loses what arrives.
const SUBSCRIPTION_CAPACITY: usize = 1024;

/// A broker on Redis pub/sub.
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = nbio_ws::broker::RedisBroker::new("redis://127.0.0.1:6379/0")?;
/// let server = nbio_ws::Server::builder().broker(broker).build()?;
/// # Ok(()) }
/// ```
///
/// Usually chosen through the configuration instead:
/// `WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis WS_REDIS_URL=redis://...`.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
    task: TaskHandle,
}

struct Inner {
    client: redis::Client,
    /// The URL with its password masked, for logs.
    url: String,
    publisher: tokio::sync::Mutex<PublishConn>,
    publisher_ok: AtomicBool,
    subscriber_ok: AtomicBool,
    subscribed: AtomicBool,
    next_sub: AtomicU64,
}

/// The subscriber task's registry, once it runs. Kept out of [`Inner`]
/// (which the task holds) so that the task ends when the last broker
/// handle and the last subscription are dropped.
type TaskHandle = Arc<std::sync::Mutex<Option<Arc<Keepalive>>>>;

#[derive(Default)]
struct PublishConn {
    conn: Option<MultiplexedConnection>,
    backoff: Backoff,
    /// No reconnect attempt before this (`None`: try now).
    retry_at: Option<Instant>,
}

/// `WS_PUBSUB_ADAPTER=redis`, at `WS_REDIS_URL`; history in the same
/// Redis ([`RedisHistory`](crate::history::RedisHistory)).
pub(crate) static ADAPTER: super::AdapterDef = super::AdapterDef {
    aliases: &[],
    url_var: Some("WS_REDIS_URL"),
    default_url: "redis://127.0.0.1:6379/0",
    check_url: |url| super::check_url("WS_REDIS_URL", url, &["redis", "rediss"]),
    create: |url| Ok(Arc::new(RedisBroker::new(url)?)),
};

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.url)
            .field("connected", &self.health().connected)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// The largest payload published in one `PUBLISH`: Redis's own limit
    /// on one argument (`proto-max-bulk-len`, 512 MiB by default). What
    /// an instance can hand the broker at once is also bounded by its
    /// publish queue (`WS_PUBSUB_QUEUE_BYTES`, 64 MiB by default), which
    /// is what usually decides.
    pub const MAX_PAYLOAD: usize = 512 << 20;

    /// A broker for the Redis at `url` (`redis://[:password@]host[:port][/db]`
    /// or `rediss://` with TLS support compiled into the redis crate). Only
    /// parses the URL; connecting happens in the background once the
    /// server starts.
    pub fn new(url: &str) -> Result<Self, BrokerError> {
        super::check_url("WS_REDIS_URL", url, &["redis", "rediss"])?;
        let client = redis::Client::open(url).map_err(|e| ConfigError {
            var: "WS_REDIS_URL",
            value: redact_url(url),
            reason: e.to_string(),
        })?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                client,
                url: redact_url(url),
                publisher: tokio::sync::Mutex::new(PublishConn::default()),
                publisher_ok: AtomicBool::new(false),
                subscriber_ok: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                next_sub: AtomicU64::new(0),
            }),
            task: TaskHandle::default(),
        })
    }
}

impl Inner {
    async fn connect(&self) -> Result<MultiplexedConnection, BrokerError> {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(BrokerError::Backend(e.to_string())),
            Err(_) => Err(BrokerError::Timeout),
        }
    }

    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let mut st = self.publisher.lock().await;
        if st.conn.is_none() {
            if st.retry_at.is_some_and(|at| Instant::now() < at) {
                return Err(BrokerError::Disconnected);
            }
            match self.connect().await {
                Ok(c) => {
                    st.conn = Some(c);
                    st.backoff.reset();
                    st.retry_at = None;
                }
                Err(e) => {
                    st.retry_at = Some(Instant::now() + st.backoff.next_delay());
                    self.publisher_ok.store(false, Ordering::Release);
                    return Err(e);
                }
            }
        }
        let Some(conn) = st.conn.as_mut() else {
            return Err(BrokerError::Disconnected);
        };
        let sent = tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(conn),
        )
        .await;
        let err = match sent {
            Ok(Ok(_receivers)) => {
                self.publisher_ok.store(true, Ordering::Release);
                return Ok(());
            }
            Ok(Err(e)) => BrokerError::Backend(e.to_string()),
            Err(_) => BrokerError::Timeout,
        };
        // The connection is suspect: drop it; reconnect on the next publish.
        st.conn = None;
        st.retry_at = None;
        self.publisher_ok.store(false, Ordering::Release);
        Err(err)
    }

    /// Makes the publishing connection if there is none (called by the
    /// subscriber once Redis answers again). Never waits for a publish in
    /// progress.
    async fn ensure_publisher(&self) {
        let Ok(mut st) = self.publisher.try_lock() else {
            return;
        };
        if st.conn.is_some() {
            return;
        }
        if let Ok(c) = self.connect().await {
            st.conn = Some(c);
            st.backoff.reset();
            st.retry_at = None;
            self.publisher_ok.store(true, Ordering::Release);
        }
    }

    fn drop_publisher(&self) {
        if let Ok(mut st) = self.publisher.try_lock() {
            st.conn = None;
            st.retry_at = None;
            self.publisher_ok.store(false, Ordering::Release);
        }
    }

    /// Makes the pub/sub connection.
    async fn pubsub(
        &self,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), BrokerError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok(p.split()),
            Ok(Err(e)) => Err(BrokerError::Backend(e.to_string())),
            Err(_) => Err(BrokerError::Timeout),
        }
    }
}

/// One Redis command, bounded in time.
async fn command<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BrokerError::Backend(e.to_string())),
        Err(_) => Err(BrokerError::Timeout),
    }
}

/// The channels this instance wants, shared by the broker's handles, its
/// subscriptions and the subscriber task. Nothing here is a queue: a
/// subscription adds itself and a dropped one removes itself, and the
/// task makes the connection's subscriptions match — so what the task has
/// to catch up on is bounded by the live subscriptions, however many come
/// and go while it waits for Redis.
struct Registry {
    wanted: std::sync::Mutex<Wanted>,
    /// Something changed in `wanted` (or the broker is gone).
    changed: tokio::sync::Notify,
    /// Every broker handle and subscription is gone: the task ends.
    closed: AtomicBool,
    /// The task runs (false once it ended, also when its runtime went).
    running: AtomicBool,
}

#[derive(Default)]
struct Wanted {
    channels: std::collections::HashMap<String, Channel>,
}

/// The subscriptions of one channel.
#[derive(Default)]
struct Channel {
    subs: Vec<(u64, SubscriptionSender)>,
    /// Subscribed on the current connection.
    live: bool,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            wanted: Default::default(),
            changed: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            running: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, channel: &str, id: u64, tx: SubscriptionSender) {
        {
            let mut w = self.lock();
            let ch = w.channels.entry(channel.to_owned()).or_default();
            if ch.live {
                tx.ready();
            }
            ch.subs.push((id, tx));
        }
        self.changed.notify_one();
    }

    fn remove(&self, channel: &str, id: u64) {
        {
            let mut w = self.lock();
            if let Some(ch) = w.channels.get_mut(channel) {
                ch.subs.retain(|(i, tx)| *i != id && !tx.is_closed());
                if ch.subs.is_empty() && !ch.live {
                    w.channels.remove(channel);
                }
            }
        }
        self.changed.notify_one();
    }

    /// Whether any channel has a subscription.
    fn wants_any(&self) -> bool {
        self.lock().channels.values().any(|c| !c.subs.is_empty())
    }

    /// The connection is gone: nothing is subscribed on it any more.
    fn disconnected(&self) {
        let mut w = self.lock();
        w.channels.retain(|_, c| {
            c.live = false;
            !c.subs.is_empty()
        });
    }

    /// Hands a message to every subscription of its channel, never
    /// waiting: a subscription whose buffer is full loses it (and counts
    /// it), the others get it.
    fn deliver(&self, msg: &redis::Msg) {
        let w = self.lock();
        let Some(ch) = w.channels.get(msg.get_channel_name()) else {
            return;
        };
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
        for (_, tx) in &ch.subs {
            // A dropped subscription removes itself.
            let _ = tx.offer(payload.clone());
        }
    }

    /// Subscribes and unsubscribes on `sink` until the connection matches
    /// what is wanted.
    async fn sync(&self, sink: &mut redis::aio::PubSubSink) -> Result<(), BrokerError> {
        loop {
            let (subscribe, unsubscribe) = {
                let mut w = self.lock();
                let subscribe: Vec<String> = w
                    .channels
                    .iter()
                    .filter(|(_, c)| !c.live && !c.subs.is_empty())
                    .map(|(name, _)| name.clone())
                    .collect();
                let unsubscribe: Vec<String> = w
                    .channels
                    .iter()
                    .filter(|(_, c)| c.live && c.subs.is_empty())
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in &unsubscribe {
                    w.channels.remove(name);
                }
                (subscribe, unsubscribe)
            };
            if subscribe.is_empty() && unsubscribe.is_empty() {
                return Ok(());
            }
            if !unsubscribe.is_empty() {
                command(sink.unsubscribe(&unsubscribe)).await?;
            }
            if !subscribe.is_empty() {
                command(sink.subscribe(&subscribe)).await?;
                let mut w = self.lock();
                for name in subscribe {
                    // Emptied meanwhile: stays live with no subscription,
                    // so that the next round unsubscribes it.
                    let ch = w.channels.entry(name).or_default();
                    ch.live = true;
                    for (_, tx) in &ch.subs {
                        tx.ready();
                    }
                }
            }
        }
    }
}

/// What keeps the subscriber task alive: held by every broker handle and
/// every subscription; the last one dropped ends the task.
struct Keepalive(Arc<Registry>);

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.changed.notify_one();
    }
}

/// Marks the registry's task as ended, however it ends.
struct Running(Arc<Registry>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// Subscribes, forwards, and reconnects, until the broker is dropped.
///
/// Reading never waits for anything but the connection: messages are
/// handed to the subscriptions without waiting (see
/// [`Registry::deliver`]), and `SUBSCRIBE`, `UNSUBSCRIBE` and `PING` are
/// sent by a task of their own on a clone of the connection's sink.
async fn subscriber(inner: Arc<Inner>, reg: Arc<Registry>) {
    let _running = Running(Arc::clone(&reg));
    let mut backoff = Backoff::default();
    let mut was_up = false;
    let mut logged_down = false;
    loop {
        // Wait for something to subscribe to before connecting.
        loop {
            if reg.closed.load(Ordering::Acquire) {
                return;
            }
            if reg.wants_any() {
                break;
            }
            reg.changed.notified().await;
        }
        let lost = match inner.pubsub().await {
            Err(e) => Err(e),
            Ok((mut sink, mut stream)) => match reg.sync(&mut sink).await {
                Err(e) => Ok(e),
                Ok(()) => {
                    backoff.reset();
                    logged_down = false;
                    inner.subscriber_ok.store(true, Ordering::Release);
                    let channels = reg.lock().channels.len();
                    if was_up {
                        tracing::info!(url = %inner.url, channels, "redis: resubscribed");
                    } else {
                        tracing::info!(url = %inner.url, channels, "redis: subscribed");
                    }
                    was_up = true;
                    inner.ensure_publisher().await;
                    let mut control =
                        tokio::spawn(control(Arc::clone(&inner), Arc::clone(&reg), sink));
                    let lost = loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => reg.deliver(&msg),
                                None => break Some(BrokerError::Disconnected),
                            },
                            ended = &mut control => break match ended {
                                Ok(lost) => lost,
                                Err(e) => Some(BrokerError::Backend(e.to_string())),
                            },
                        }
                    };
                    control.abort();
                    match lost {
                        None => {
                            inner.subscriber_ok.store(false, Ordering::Release);
                            return;
                        }
                        Some(e) => Ok(e),
                    }
                }
            },
        };
        inner.subscriber_ok.store(false, Ordering::Release);
        reg.disconnected();
        match lost {
            Ok(lost) => {
                // The publishing connection most likely went with it: drop
                // it so that a fresh one is made when Redis is back.
                inner.drop_publisher();
                tracing::warn!(url = %inner.url, error = %lost,
                    "redis: subscription lost; reconnecting with backoff");
            }
            Err(e) if !logged_down => {
                logged_down = true;
                tracing::warn!(url = %inner.url, error = %e,
                    "redis: cannot subscribe; retrying in the background");
            }
            Err(e) => tracing::debug!(url = %inner.url, error = %e, "redis: still down"),
        }
        // Back off; (un)subscriptions meanwhile only change the registry.
        let sleep = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = reg.changed.notified() => {
                    if reg.closed.load(Ordering::Acquire) {
                        return;
                    }
                }
            }
        }
    }
}

/// Keeps the connection's subscriptions in step with the registry and
/// pings Redis. Ends with the error that lost the connection, or `None`
/// once the broker is gone.
async fn control(
    inner: Arc<Inner>,
    reg: Arc<Registry>,
    mut sink: redis::aio::PubSubSink,
) -> Option<BrokerError> {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            _ = reg.changed.notified() => {
                if reg.closed.load(Ordering::Acquire) {
                    return None;
                }
                if let Err(e) = reg.sync(&mut sink).await {
                    return Some(e);
                }
            }
            _ = ping.tick() => {
                if let Err(e) = command(sink.ping::<redis::Value>()).await {
                    return Some(e);
                }
                if !inner.publisher_ok.load(Ordering::Acquire) {
                    inner.ensure_publisher().await;
                }
            }
        }
    }
}

impl Broker for RedisBroker {
    fn adapter(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move { self.inner.publish(channel, &payload).await })
    }

    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        let (tx, sub) = Subscription::channel(SUBSCRIPTION_CAPACITY);
        let keep = {
            let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
            match &*task {
                Some(keep) if keep.0.running.load(Ordering::Acquire) => Arc::clone(keep),
                _ => {
                    let reg = Arc::new(Registry::new());
                    tokio::spawn(subscriber(Arc::clone(&self.inner), Arc::clone(&reg)));
                    let keep = Arc::new(Keepalive(reg));
                    *task = Some(Arc::clone(&keep));
                    keep
                }
            }
        };
        self.inner.subscribed.store(true, Ordering::Release);
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        keep.0.add(channel, id, tx);
        let channel = channel.to_owned();
        Ok(sub.on_drop(move || keep.0.remove(&channel, id)))
    }

    fn max_payload(&self) -> Option<usize> {
        Some(RedisBroker::MAX_PAYLOAD)
    }

    fn health(&self) -> BrokerHealth {
        let publisher = self.inner.publisher_ok.load(Ordering::Acquire);
        let subscriber = !self.inner.subscribed.load(Ordering::Acquire)
            || self.inner.subscriber_ok.load(Ordering::Acquire);
        BrokerHealth::connected(publisher && subscriber)
    }
}
