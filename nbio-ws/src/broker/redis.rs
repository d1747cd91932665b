//! `RedisBroker`: Redis `PUBLISH`/`SUBSCRIBE` (cargo feature `redis`).
//!
//! Two connections per instance, because a Redis connection in subscribed
//! mode can do nothing else: a multiplexed one for `PUBLISH` and a pub/sub
//! one for `SUBSCRIBE`. Neither is made at construction: the subscriber
//! task connects in the background and keeps doing so, so an instance
//! starts even while Redis is down (`/health` says so).
//!
//! - **Subscriber**: one connection and one task for every channel of the
//!   instance (the shared channel, presence, and one per room with local
//!   members): `SUBSCRIBE` and `UNSUBSCRIBE` are sent on it as
//!   subscriptions come and go, and messages are forwarded by channel
//!   name. A `PING` every 5 s finds connections that died silently. When
//!   the connection ends it reconnects and resubscribes every channel with
//!   capped exponential backoff (50 ms … 2 s). After each reconnection it
//!   also makes sure the publishing connection exists, so health comes
//!   back without waiting for a broadcast.
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

/// Commands to the subscriber task, once it runs. Kept out of [`Inner`]
/// (which the task holds) so that the task ends when the last broker
/// handle and the last subscription are dropped.
type TaskHandle = Arc<std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Cmd>>>>;

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

    /// Connects the pub/sub connection and subscribes `channels`.
    async fn subscribe_all(
        &self,
        channels: Vec<String>,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), BrokerError> {
        let pubsub =
            match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(BrokerError::Backend(e.to_string())),
                Err(_) => return Err(BrokerError::Timeout),
            };
        let (mut sink, stream) = pubsub.split();
        if !channels.is_empty() {
            command(sink.subscribe(channels)).await?;
        }
        Ok((sink, stream))
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

/// What the subscriber task is asked to do.
enum Cmd {
    /// A new subscription to a channel.
    Subscribe(String, u64, SubscriptionSender),
    /// A subscription was dropped.
    Unsubscribe(String, u64),
}

/// The subscriptions of one channel.
type Subscribers = Vec<(u64, SubscriptionSender)>;

/// Subscribes, forwards, and reconnects, until the broker is dropped.
async fn subscriber(inner: Arc<Inner>, mut cmds: tokio::sync::mpsc::UnboundedReceiver<Cmd>) {
    let mut channels: std::collections::HashMap<String, Subscribers> = Default::default();
    let mut backoff = Backoff::default();
    let mut was_up = false;
    let mut logged_down = false;
    loop {
        // Wait for something to subscribe to before connecting.
        while channels.is_empty() {
            match cmds.recv().await {
                Some(cmd) => apply(&mut channels, cmd),
                None => return,
            }
        }
        let wanted: Vec<String> = channels.keys().cloned().collect();
        match inner.subscribe_all(wanted).await {
            Ok((mut sink, mut stream)) => {
                backoff.reset();
                logged_down = false;
                inner.subscriber_ok.store(true, Ordering::Release);
                if was_up {
                    tracing::info!(url = %inner.url, channels = channels.len(), "redis: resubscribed");
                } else {
                    tracing::info!(url = %inner.url, channels = channels.len(), "redis: subscribed");
                }
                was_up = true;
                for subs in channels.values() {
                    for (_, tx) in subs {
                        tx.ready();
                    }
                }
                inner.ensure_publisher().await;
                let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
                let lost = loop {
                    tokio::select! {
                        cmd = cmds.recv() => match cmd {
                            None => {
                                inner.subscriber_ok.store(false, Ordering::Release);
                                return;
                            }
                            Some(Cmd::Subscribe(channel, id, tx)) => {
                                let fresh = !channels.contains_key(&channel);
                                if fresh {
                                    if let Err(e) = command(sink.subscribe(&channel)).await {
                                        channels.entry(channel).or_default().push((id, tx));
                                        break e;
                                    }
                                }
                                tx.ready();
                                channels.entry(channel).or_default().push((id, tx));
                            }
                            Some(Cmd::Unsubscribe(channel, id)) => {
                                if let Some(subs) = channels.get_mut(&channel) {
                                    subs.retain(|(i, tx)| *i != id && !tx.is_closed());
                                    if subs.is_empty() {
                                        channels.remove(&channel);
                                        if let Err(e) = command(sink.unsubscribe(&channel)).await {
                                            break e;
                                        }
                                    }
                                }
                            }
                        },
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                let name = msg.get_channel_name();
                                let Some(subs) = channels.get(name) else { continue };
                                let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                                for (_, tx) in subs {
                                    // A dropped subscription is removed by its
                                    // Unsubscribe command.
                                    let _ = tx.send(payload.clone()).await;
                                }
                            }
                            None => break BrokerError::Disconnected,
                        },
                        _ = ping.tick() => {
                            if let Err(e) = command(sink.ping::<redis::Value>()).await {
                                break e;
                            }
                            if !inner.publisher_ok.load(Ordering::Acquire) {
                                inner.ensure_publisher().await;
                            }
                        }
                    }
                };
                inner.subscriber_ok.store(false, Ordering::Release);
                // The publishing connection most likely went with it: drop
                // it so that a fresh one is made when Redis is back.
                inner.drop_publisher();
                tracing::warn!(url = %inner.url, error = %lost,
                    "redis: subscription lost; reconnecting with backoff");
            }
            Err(e) => {
                inner.subscriber_ok.store(false, Ordering::Release);
                if !logged_down {
                    logged_down = true;
                    tracing::warn!(url = %inner.url, error = %e,
                        "redis: cannot subscribe; retrying in the background");
                } else {
                    tracing::debug!(url = %inner.url, error = %e, "redis: still down");
                }
            }
        }
        // Back off, still taking (un)subscriptions so that the set of
        // channels is right when Redis is back.
        let sleep = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => apply(&mut channels, cmd),
                    None => return,
                },
            }
        }
    }
}

/// Records a (un)subscription while not connected.
fn apply(channels: &mut std::collections::HashMap<String, Subscribers>, cmd: Cmd) {
    match cmd {
        Cmd::Subscribe(channel, id, tx) => channels.entry(channel).or_default().push((id, tx)),
        Cmd::Unsubscribe(channel, id) => {
            if let Some(subs) = channels.get_mut(&channel) {
                subs.retain(|(i, tx)| *i != id && !tx.is_closed());
                if subs.is_empty() {
                    channels.remove(&channel);
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
        let (tx, sub) = Subscription::channel(1024);
        let cmds = {
            let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
            match &*task {
                Some(cmds) if !cmds.is_closed() => cmds.clone(),
                _ => {
                    let (cmds, rx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(subscriber(Arc::clone(&self.inner), rx));
                    *task = Some(cmds.clone());
                    cmds
                }
            }
        };
        self.inner.subscribed.store(true, Ordering::Release);
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        cmds.send(Cmd::Subscribe(channel.to_owned(), id, tx))
            .map_err(|_| BrokerError::Disconnected)?;
        let channel = channel.to_owned();
        Ok(sub.on_drop(move || {
            let _ = cmds.send(Cmd::Unsubscribe(channel, id));
        }))
    }

    fn health(&self) -> BrokerHealth {
        let publisher = self.inner.publisher_ok.load(Ordering::Acquire);
        let subscriber = !self.inner.subscribed.load(Ordering::Acquire)
            || self.inner.subscriber_ok.load(Ordering::Acquire);
        BrokerHealth::connected(publisher && subscriber)
    }
}
