//! A hub's connection to its broker: the ordered publish queue, the one
//! publisher task that drains it, and the one receiver task that delivers
//! what other instances published.
//!
//! Both tasks are owned by the hub: dropping the last handle to the hub
//! (or [`Link::stop`] at server shutdown) ends them, and the backend's own
//! tasks end when the subscription they feed is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::envelope::{self, Entry};
use super::{Broker, BrokerStatus, Subscription};
use crate::hub::{Hub, HubInner};
use crate::metrics::Metrics;

/// Entries waiting to be published. A broadcast that finds the queue full
/// (the broker is far slower than the handlers) is not published and is
/// counted as a publish failure; local delivery is not affected.
const QUEUE: usize = 8192;
/// Most entries packed into one broker message.
const BATCH_ENTRIES: usize = 256;
/// Most bytes packed into one broker message (NATS's default limit is
/// 1 MiB; one entry larger than this still goes alone).
const BATCH_BYTES: usize = 256 * 1024;
/// Upper bound on one `publish` call, whatever the backend does.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown spends publishing what is still queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Origins remembered for duplicate and loss detection.
const MAX_ORIGINS: usize = 4096;

pub(crate) const PUBLISHED: &str = "broker_messages_published";
pub(crate) const PUBLISH_FAILURES: &str = "broker_publish_failures";
pub(crate) const RECEIVED: &str = "broker_messages_received";
pub(crate) const LOST: &str = "broker_messages_lost";
pub(crate) const DUPLICATES: &str = "broker_duplicates_dropped";
pub(crate) const INVALID: &str = "broker_invalid_messages";

/// A hub's broker, its queue and its tasks.
pub(crate) struct Link {
    broker: Arc<dyn Broker>,
    channel: Arc<str>,
    /// This instance's id in envelopes.
    origin: u64,
    tx: mpsc::Sender<Entry>,
    /// The queue's receiving end until the publisher task takes it.
    pending: Mutex<Option<mpsc::Receiver<Entry>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Link {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        channel: &str,
        origin: u64,
        metrics: Arc<Metrics>,
    ) -> Link {
        let (tx, rx) = mpsc::channel(QUEUE);
        // Shown as 0 from the start, so dashboards see the series.
        for name in [PUBLISHED, PUBLISH_FAILURES, RECEIVED, LOST] {
            metrics.add(name, 0);
        }
        Link {
            broker,
            channel: Arc::from(channel),
            origin,
            tx,
            pending: Mutex::new(Some(rx)),
            tasks: Mutex::new(Vec::new()),
            cancel: CancellationToken::new(),
            metrics,
        }
    }

    /// Queues an entry for the publisher. Never blocks.
    pub(crate) fn queue(&self, entry: Entry) {
        if let Err(e) = self.tx.try_send(entry) {
            self.metrics.incr(PUBLISH_FAILURES);
            let full = matches!(e, mpsc::error::TrySendError::Full(_));
            tracing::debug!(full, "broker publish queue refused a message");
        }
    }

    /// The adapter and whether it is connected.
    pub(crate) fn status(&self) -> BrokerStatus {
        BrokerStatus {
            adapter: self.broker.adapter(),
            connected: self.broker.health().connected,
        }
    }

    /// Starts the publisher and receiver tasks, once. Needs a tokio
    /// runtime; without one it does nothing (and is called again when the
    /// server starts serving).
    pub(crate) fn start(&self, hub: &Hub) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(rx) = self.pending.lock().ok().and_then(|mut p| p.take()) else {
            return; // already started
        };
        let mut tasks = Vec::with_capacity(2);
        match self.broker.subscribe(&self.channel) {
            Ok(sub) => tasks.push(tokio::spawn(receive_loop(
                sub,
                Arc::downgrade(&hub.0),
                self.origin,
                Arc::clone(&self.metrics),
                self.cancel.clone(),
            ))),
            Err(e) => {
                tracing::error!(adapter = self.broker.adapter(), error = %e,
                    "cannot subscribe to the broker: messages of other instances will not arrive");
            }
        }
        tasks.push(tokio::spawn(publish_loop(
            rx,
            Arc::clone(&self.broker),
            Arc::clone(&self.channel),
            self.origin,
            Arc::clone(&self.metrics),
            self.cancel.clone(),
        )));
        tracing::info!(
            adapter = self.broker.adapter(),
            channel = %self.channel,
            instance = format_args!("{:016x}", self.origin),
            "pub/sub broker started"
        );
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// Stops the tasks: what is still queued is published (within a
    /// bound), then both end.
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT + Duration::from_secs(1), t).await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn publish_loop(
    mut rx: mpsc::Receiver<Entry>,
    broker: Arc<dyn Broker>,
    channel: Arc<str>,
    origin: u64,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut p = Publisher {
        broker,
        channel,
        origin,
        metrics,
        seq: 0,
        failing: false,
        batch: Vec::with_capacity(BATCH_ENTRIES),
    };
    loop {
        let first = tokio::select! {
            biased;
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            _ = cancel.cancelled() => break,
        };
        p.fill(first, &mut rx);
        p.publish().await;
    }
    // Shutdown: what handlers queued before the end still goes out.
    let flush = async {
        while let Ok(first) = rx.try_recv() {
            p.fill(first, &mut rx);
            p.publish().await;
        }
    };
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
}

struct Publisher {
    broker: Arc<dyn Broker>,
    channel: Arc<str>,
    origin: u64,
    metrics: Arc<Metrics>,
    /// Sequence number of the next entry.
    seq: u64,
    /// Whether the last publish failed (to log transitions only).
    failing: bool,
    batch: Vec<Entry>,
}

impl Publisher {
    /// Packs `first` and whatever else is already queued into the batch.
    fn fill(&mut self, first: Entry, rx: &mut mpsc::Receiver<Entry>) {
        let mut bytes = first.encoded_len();
        self.batch.push(first);
        while self.batch.len() < BATCH_ENTRIES && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(e) => {
                    bytes += e.encoded_len();
                    self.batch.push(e);
                }
                Err(_) => break,
            }
        }
    }

    async fn publish(&mut self) {
        let n = self.batch.len() as u64;
        let payload: Bytes = envelope::encode(self.origin, self.seq, &self.batch);
        // Numbers are used even when publishing fails: receivers then see
        // the hole and count the loss.
        self.seq = self.seq.wrapping_add(n);
        self.batch.clear();
        let result =
            tokio::time::timeout(PUBLISH_TIMEOUT, self.broker.publish(&self.channel, payload))
                .await
                .unwrap_or(Err(super::BrokerError::Timeout));
        match result {
            Ok(()) => {
                self.metrics.add(PUBLISHED, n);
                if self.failing {
                    self.failing = false;
                    tracing::info!(
                        adapter = self.broker.adapter(),
                        "publishing to the broker again"
                    );
                }
            }
            Err(e) => {
                self.metrics.add(PUBLISH_FAILURES, n);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(adapter = self.broker.adapter(), error = %e,
                        "broker publish failed: other instances miss these messages until it is back \
                         (local clients still get them)");
                } else {
                    tracing::debug!(error = %e, dropped = n, "broker publish failed");
                }
            }
        }
    }
}

async fn receive_loop(
    mut sub: Subscription,
    hub: Weak<HubInner>,
    origin: u64,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    // Per origin: the sequence number expected next.
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        if envelope::origin(&msg) == Some(origin) {
            continue; // ours: delivered locally when it was sent
        }
        let env = match envelope::decode(msg) {
            Ok(env) => env,
            Err(e) => {
                metrics.incr(INVALID);
                tracing::debug!(error = %e, "ignoring a broker message");
                continue;
            }
        };
        let Some(hub) = hub.upgrade().map(Hub) else {
            return;
        };
        let n = env.entries.len() as u64;
        let expected = next_seq.get(&env.origin).copied();
        let mut skip = 0;
        if let Some(exp) = expected {
            if env.first_seq > exp {
                metrics.add(LOST, env.first_seq - exp);
            } else if env.first_seq < exp {
                skip = (exp - env.first_seq).min(n);
                metrics.add(DUPLICATES, skip);
            }
        }
        if next_seq.len() >= MAX_ORIGINS && expected.is_none() {
            next_seq.clear();
        }
        let end = env.first_seq.wrapping_add(n);
        next_seq.insert(env.origin, expected.map_or(end, |e| e.max(end)));
        metrics.add(RECEIVED, n - skip);
        for entry in env.entries.into_iter().skip(skip as usize) {
            match entry {
                Entry::Broadcast(text) => {
                    hub.deliver_local(text);
                }
                Entry::Direct(id, text) => {
                    if let Some(client) = hub.get(id) {
                        let _ = client.send_text(text);
                    }
                }
            }
        }
    }
}
