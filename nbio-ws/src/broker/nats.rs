//! `NatsBroker`: NATS core pub/sub (cargo feature `nats`).
//!
//! One `async-nats` client per instance carries both directions.
//! Credentials in `WS_NATS_URL` (`nats://user:password@host:4222`, or
//! `nats://token@host:4222`; those of the first server) are sent when it
//! connects. The
//! client reconnects by itself and resubscribes its subscriptions after a
//! reconnection; it is configured here to retry forever, also when the
//! server is down at startup, with the same capped exponential backoff as
//! the other adapters (50 ms … 2 s), and to ping every 5 s so that a
//! connection that died silently is noticed. After a reconnection each
//! subscription is confirmed again (`ready`) once a round trip to the
//! server shows that it has the resubscriptions.
//!
//! Each subscription has a task that keeps it: it reports the
//! subscription confirmed once the server has the `SUB` (a flush round
//! trip, once connected), hands what arrives to the hub without waiting
//! (a subscription whose buffer is full loses the message, counted), and
//! subscribes again with the same backoff when subscribing fails, the
//! subscription ends, or the server refuses it (`-ERR 'Permissions
//! Violation for Subscription to "…"'`), until the subscription is
//! dropped. Publishing respects the server's `max_payload` (from its
//! `INFO`): the hub packs below it, and a payload over it fails at once
//! with [`BrokerError::TooLarge`].
//!
//! One deliberate difference from the client's defaults: while the client
//! is not connected, `publish` fails at once instead of queueing in the
//! client. The client would otherwise hold up to 2048 messages and send
//! them late after the reconnection (or block the publisher when that
//! buffer is full); failing fast keeps the hub's behaviour the same for
//! every backend — local delivery goes on, the failures are counted, the
//! guarantee across instances is at-most-once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::{redact_url, Backoff};
use super::{BoxFuture, Broker, BrokerError, BrokerHealth, Subscription, SubscriptionSender};
use crate::env::ConfigError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(5);
/// Payloads one subscription may hold unread (and at most
/// [`Subscription::BUFFER_BYTES`]); past that it loses what arrives.
const SUBSCRIPTION_CAPACITY: usize = 1024;
/// NATS's default `max_payload`, assumed until the server says otherwise.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// A broker on NATS core pub/sub.
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = nbio_ws::broker::NatsBroker::new("nats://127.0.0.1:4222")?;
/// let server = nbio_ws::Server::builder().broker(broker).build()?;
/// # Ok(()) }
/// ```
///
/// Usually chosen through the configuration instead:
/// `WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=nats WS_NATS_URL=nats://...`.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Vec<async_nats::ServerAddr>,
    /// The URLs with credentials masked, for logs.
    shown: String,
    client: OnceCell<async_nats::Client>,
    /// Subjects whose subscription the server refused (an `-ERR` such as
    /// a permissions violation), for their tasks to subscribe again.
    refused: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Bumped on every (re)connection of the client.
    connects: tokio::sync::watch::Sender<u64>,
}

/// `WS_PUBSUB_ADAPTER=nats`, at `WS_NATS_URL` (several servers separated
/// by commas).
pub(crate) static ADAPTER: super::AdapterDef = super::AdapterDef {
    aliases: &[],
    url_var: Some("WS_NATS_URL"),
    default_url: "nats://127.0.0.1:4222",
    check_url: |url| {
        for one in url.split(',') {
            super::check_url("WS_NATS_URL", one.trim(), &["nats", "tls"])?;
        }
        Ok(())
    },
    create: |url| Ok(Arc::new(NatsBroker::new(url)?)),
};

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("url", &self.inner.shown)
            .field("connected", &self.health().connected)
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// A broker for the NATS server(s) at `url` (`nats://host:port`, several
    /// separated by commas). Only parses the URLs; the client connects in
    /// the background once the server starts, and keeps retrying.
    pub fn new(url: &str) -> Result<Self, BrokerError> {
        let mut servers = Vec::new();
        for one in url.split(',').map(str::trim) {
            super::check_url("WS_NATS_URL", one, &["nats", "tls"])?;
            let addr = one
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| ConfigError {
                    var: "WS_NATS_URL",
                    value: redact_url(one),
                    reason: e.to_string(),
                })?;
            servers.push(addr);
        }
        let shown = url
            .split(',')
            .map(|u| redact_url(u.trim()))
            .collect::<Vec<_>>()
            .join(",");
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                servers,
                shown,
                client: OnceCell::new(),
                refused: tokio::sync::broadcast::channel(64).0,
                connects: tokio::sync::watch::Sender::new(0),
            }),
        })
    }
}

impl Inner {
    /// The client, created on first use (inside the runtime). Creating it
    /// does not wait for the server.
    async fn client(&self) -> Result<&async_nats::Client, BrokerError> {
        self.client
            .get_or_try_init(|| async {
                let refused = self.refused.clone();
                let connects = self.connects.clone();
                let mut options = async_nats::ConnectOptions::new();
                // The client does not read credentials from the URL itself.
                if let Some(first) = self.servers.first() {
                    match (first.username(), first.password()) {
                        (Some(user), Some(pass)) => {
                            options = options.user_and_password(unescape(user), unescape(pass));
                        }
                        (Some(token), None) => options = options.token(unescape(token)),
                        _ => {}
                    }
                }
                options
                    .name("nbio-ws")
                    .event_callback(move |event| {
                        if matches!(event, async_nats::Event::Connected) {
                            connects.send_modify(|n| *n += 1);
                        }
                        if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) =
                            &event
                        {
                            if let Some(subject) = refused_subject(e) {
                                let _ = refused.send(Arc::from(subject));
                            }
                        }
                        async {}
                    })
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .ping_interval(PING_EVERY)
                    .reconnect_delay_callback(|attempts| {
                        Backoff::delay_for(
                            u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX),
                        )
                    })
                    .connect(self.servers.clone())
                    .await
                    .map_err(|e| BrokerError::Backend(e.to_string()))
            })
            .await
    }

    fn connected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|c| c.connection_state() == State::Connected)
    }

    /// Keeps `channel` subscribed for `tx` until the subscription is
    /// dropped: subscribes, calls `ready` once the server has the `SUB`,
    /// forwards what arrives, and subscribes again, with backoff, when
    /// subscribing fails, the subscription ends or the server refuses it.
    async fn follow(self: Arc<Self>, channel: String, tx: SubscriptionSender) {
        let mut backoff = Backoff::default();
        let mut refused = self.refused.subscribe();
        let mut logged = false;
        loop {
            let why = match self.subscribe_once(&channel, &tx, &mut backoff).await {
                Err(e) => e,
                Ok(None) => return, // the subscription was dropped
                Ok(Some(mut subscriber)) => {
                    let mut connects = self.connects.subscribe();
                    connects.mark_unchanged();
                    let why = loop {
                        tokio::select! {
                            _ = tx.closed() => break None,
                            Ok(()) = connects.changed() => {
                                // Reconnected: the client resubscribed
                                // before anything sent after this flush.
                                if let Some(client) = self.client.get() {
                                    let flushed = tokio::time::timeout(PUBLISH_TIMEOUT, client.flush()).await;
                                    if let Ok(Ok(())) = flushed {
                                        tx.ready();
                                    }
                                }
                            }
                            msg = subscriber.next() => match msg {
                                Some(msg) => {
                                    // Delivered: the subscription works.
                                    backoff.reset();
                                    logged = false;
                                    if tx.offer(msg.payload).is_err() {
                                        break None;
                                    }
                                }
                                None => break Some("the subscription ended".to_owned()),
                            },
                            r = refused.recv() => match r {
                                Ok(subject) if *subject == *channel => {
                                    break Some("the server refused it".to_owned())
                                }
                                Ok(_) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                    break Some("the server refused subscriptions".to_owned())
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                            },
                        }
                    };
                    let _ = subscriber.unsubscribe().await;
                    match why {
                        None => return,
                        Some(why) => why,
                    }
                }
            };
            if !logged {
                logged = true;
                tracing::warn!(url = %self.shown, %channel, error = %why,
                    "nats: subscription failed; subscribing again with backoff");
            } else {
                tracing::debug!(url = %self.shown, %channel, error = %why, "nats: subscribing again");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = tx.closed() => return,
            }
        }
    }

    /// One subscription of `channel`, confirmed (`ready`) once the server
    /// has it: `Ok(None)` if `tx` was dropped meanwhile.
    async fn subscribe_once(
        &self,
        channel: &str,
        tx: &SubscriptionSender,
        backoff: &mut Backoff,
    ) -> Result<Option<async_nats::Subscriber>, String> {
        let client = self.client().await.map_err(|e| e.to_string())?.clone();
        let subscriber = client
            .subscribe(channel.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        // The server has the SUB once a flush round trip is done, which
        // needs a connection.
        loop {
            if tx.is_closed() {
                return Ok(None);
            }
            if client.connection_state() == State::Connected
                && matches!(
                    tokio::time::timeout(PUBLISH_TIMEOUT, client.flush()).await,
                    Ok(Ok(()))
                )
            {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = tx.closed() => return Ok(None),
            }
        }
        tx.ready();
        tracing::debug!(url = %self.shown, %channel, "nats: subscribed (the client resubscribes after reconnecting)");
        Ok(Some(subscriber))
    }
}

/// A URL's user or password, percent-decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The subject of a refused subscription, from the server's error
/// (`Permissions Violation for Subscription to "a.b"`).
fn refused_subject(error: &str) -> Option<&str> {
    const MARK: &str = "subscription to \"";
    let at = error.to_ascii_lowercase().find(MARK)? + MARK.len();
    let rest = error.get(at..)?;
    rest.split('"').next().filter(|s| !s.is_empty())
}

impl Broker for NatsBroker {
    fn adapter(&self) -> &'static str {
        "nats"
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            if client.connection_state() != State::Connected {
                return Err(BrokerError::Disconnected);
            }
            let (size, limit) = (payload.len(), client.max_payload());
            if size > limit {
                return Err(BrokerError::TooLarge { size, limit });
            }
            match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(channel.to_owned(), payload))
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    Err(BrokerError::TooLarge { size, limit })
                }
                Ok(Err(e)) => Err(BrokerError::Backend(e.to_string())),
                Err(_) => Err(BrokerError::Timeout),
            }
        })
    }

    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        let (tx, sub) = Subscription::channel(SUBSCRIPTION_CAPACITY);
        tokio::spawn(Arc::clone(&self.inner).follow(channel.to_owned(), tx));
        Ok(sub)
    }

    fn max_payload(&self) -> Option<usize> {
        // What the server announced (its default until it did).
        Some(
            self.inner
                .client
                .get()
                .map_or(DEFAULT_MAX_PAYLOAD, async_nats::Client::max_payload),
        )
    }

    fn health(&self) -> BrokerHealth {
        BrokerHealth::connected(self.inner.connected())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_subjects_are_read_from_server_errors() {
        let e = "Permissions Violation for Subscription to \"ws.room.lobby\"";
        assert_eq!(super::refused_subject(e), Some("ws.room.lobby"));
        let e = "permissions violation for subscription to \"a.b\" using queue \"q\"";
        assert_eq!(super::refused_subject(e), Some("a.b"));
        assert_eq!(super::refused_subject("maximum subscriptions exceeded"), None);
    }

    #[test]
    fn credentials_are_unescaped() {
        assert_eq!(super::unescape("p%40ss%2Fw"), "p@ss/w");
        assert_eq!(super::unescape("plain"), "plain");
        assert_eq!(super::unescape("100%"), "100%");
    }
}
