//! [`LocalBroker`]: pub/sub inside one process, no network.
//!
//! It is what `WS_PUBSUB_ADAPTER=local` gives (one instance: every
//! broadcast is delivered locally anyway), and a way to run several
//! [`Server`](crate::Server)s in one process that see each other's
//! broadcasts — in tests, or to split one process's clients over several
//! listeners. It is also the smallest complete [`Broker`]: a template for
//! a new backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use super::{BoxFuture, Broker, BrokerError, BrokerHealth, Subscription};

/// `WS_PUBSUB_ADAPTER=local` (also `memory` or `none`).
pub(crate) static ADAPTER: super::AdapterDef = super::AdapterDef {
    aliases: &["memory", "none"],
    url_var: None,
    default_url: "",
    check_url: |_| Ok(()),
    create: |_| Ok(Arc::new(LocalBroker::new())),
};

/// Messages a slow subscriber may fall behind by before it loses some.
const CAPACITY: usize = 16 * 1024;

/// An in-process broker. Clones share the same channels.
///
/// [`LocalBroker::set_connected`] simulates an outage: while
/// "disconnected", publishing fails and subscribers receive nothing, just
/// as with a real broker that is down.
///
/// ```
/// use nbio_ws::broker::{Broker, LocalBroker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let broker = LocalBroker::new();
/// let mut sub = broker.subscribe("news").unwrap();
/// broker.publish("news", "hello".into()).await.unwrap();
/// assert_eq!(sub.next().await.unwrap(), "hello");
///
/// broker.set_connected(false);
/// assert!(broker.publish("news", "lost".into()).await.is_err());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct LocalBroker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    down: AtomicBool,
    /// Bumped when the broker comes back: every subscription is confirmed
    /// again, as a real backend does after resubscribing.
    reconnects: watch::Sender<u64>,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker")
            .field("connected", &!self.inner.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl LocalBroker {
    /// A new broker with no channels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates the broker going down (`false`) or coming back (`true`).
    /// Coming back confirms every subscription again (as a real backend
    /// does once it has resubscribed after a reconnection).
    pub fn set_connected(&self, connected: bool) {
        let was_down = self.inner.down.swap(!connected, Ordering::AcqRel);
        if connected && was_down {
            self.inner.reconnects.send_modify(|n| *n += 1);
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Bytes>>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The channel's sender, made on first subscription.
    fn sender(&self, channel: &str) -> broadcast::Sender<Bytes> {
        self.channels()
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .clone()
    }

    /// The channel's sender if anyone subscribes to it; a channel whose
    /// subscribers are all gone is forgotten (room channels come and go).
    fn subscribed(&self, channel: &str) -> Option<broadcast::Sender<Bytes>> {
        let mut channels = self.channels();
        match channels.get(channel) {
            Some(tx) if tx.receiver_count() > 0 => Some(tx.clone()),
            Some(_) => {
                channels.remove(channel);
                None
            }
            None => None,
        }
    }
}

impl Broker for LocalBroker {
    fn adapter(&self) -> &'static str {
        "local"
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if self.inner.down.load(Ordering::Acquire) {
                return Err(BrokerError::Disconnected);
            }
            // No subscriber is not an error: pub/sub drops the message.
            if let Some(tx) = self.subscribed(channel) {
                let _ = tx.send(payload);
            }
            Ok(())
        })
    }

    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        let mut rx = self.sender(channel).subscribe();
        let (tx, sub) = Subscription::channel(1024);
        tx.ready(); // in-process: subscribed as soon as `rx` exists
        let inner = Arc::clone(&self.inner);
        let mut reconnects = inner.reconnects.subscribe();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    Ok(()) = reconnects.changed() => {
                        tx.ready();
                        continue;
                    }
                    m = rx.recv() => m,
                };
                match msg {
                    Ok(m) => {
                        if inner.down.load(Ordering::Acquire) {
                            continue; // "disconnected": lost, like real pub/sub
                        }
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    // The receiver counts the hole through sequence numbers.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(sub)
    }

    fn health(&self) -> BrokerHealth {
        BrokerHealth::connected(!self.inner.down.load(Ordering::Acquire))
    }
}
