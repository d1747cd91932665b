//! `NatsBroker`: NATS core pub/sub (cargo feature `nats`).
//!
//! One `async-nats` client per instance carries both directions. The
//! client reconnects by itself and resubscribes its subscriptions after a
//! reconnection; it is configured here to retry forever, also when the
//! server is down at startup, with the same capped exponential backoff as
//! the other adapters (50 ms … 2 s), and to ping every 5 s so that a
//! connection that died silently is noticed.
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
use super::{BoxFuture, Broker, BrokerError, BrokerHealth, Subscription};
use crate::env::ConfigError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(5);

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
                async_nats::ConnectOptions::new()
                    .name("nbio-ws")
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
            match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(channel.to_owned(), payload))
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BrokerError::Backend(e.to_string())),
                Err(_) => Err(BrokerError::Timeout),
            }
        })
    }

    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        let (tx, sub) = Subscription::channel(1024);
        let inner = Arc::clone(&self.inner);
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let client = match inner.client().await {
                Ok(c) => c.clone(),
                Err(e) => {
                    tracing::error!(url = %inner.shown, error = %e, "nats: cannot create the client");
                    return;
                }
            };
            let mut subscriber = match client.subscribe(channel.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(url = %inner.shown, %channel, error = %e, "nats: cannot subscribe");
                    return;
                }
            };
            // The server has the SUB once a flush round trip is done.
            let _ = tokio::time::timeout(PUBLISH_TIMEOUT, client.flush()).await;
            tx.ready();
            tracing::debug!(url = %inner.shown, %channel, "nats: subscribed (the client resubscribes after reconnecting)");
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    msg = subscriber.next() => match msg {
                        Some(msg) => {
                            if tx.send(msg.payload).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        Ok(sub)
    }

    fn health(&self) -> BrokerHealth {
        BrokerHealth::connected(self.inner.connected())
    }
}
