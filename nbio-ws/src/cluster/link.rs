//! A hub's connection to its broker: the ordered publish queue, the one
//! publisher task that drains it, the receiver tasks that deliver what
//! other instances published (one for the shared channel, one for
//! presence, one per room with local members), and the presence task
//! (heartbeats, expiry, snapshots).
//!
//! Every task is owned by the hub: dropping the last handle to the hub
//! (or [`Link::stop`] at server shutdown) ends them, which drops their
//! subscriptions; a backend's own tasks stop reading a channel when its
//! subscription is dropped (the Redis subscriber task itself ends when the
//! broker handle and every subscription are gone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::envelope::{self, Entry, Presence, Route};
use super::presence::{Reply, SNAPSHOT_PART_BYTES};
use super::Inbound;
use crate::broker::{Broker, BrokerError, BrokerStatus, Subscription};
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
/// Fewest time between two snapshots of this instance's presence.
const SNAPSHOT_SPACING: Duration = Duration::from_millis(100);
/// Longest [`Link::room_ready`] waits.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) const PUBLISHED: &str = "broker_messages_published";
pub(crate) const PUBLISH_FAILURES: &str = "broker_publish_failures";
pub(crate) const RECEIVED: &str = "broker_messages_received";
pub(crate) const LOST: &str = "broker_messages_lost";
pub(crate) const DUPLICATES: &str = "broker_duplicates_dropped";
pub(crate) const INVALID: &str = "broker_invalid_messages";

/// The channel of a room: `{base}.room.{room}` for names made of ASCII
/// letters, digits, `-` and `_` (up to 128 bytes), else
/// `{base}.roomh.{FNV-1a of the name, hex}` — a name valid for every
/// backend (NATS subjects may not hold spaces, `*`, `>` or empty tokens).
/// Two rooms that share a hashed channel cost each other traffic, never
/// messages: entries carry the room name and are delivered by it.
pub(crate) fn room_channel(base: &str, room: &str) -> String {
    let plain = !room.is_empty()
        && room.len() <= 128
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        format!("{base}.room.{room}")
    } else {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{base}.roomh.{h:016x}")
    }
}

/// What a receiver task reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Main,
    Presence,
    Room,
}

/// A room channel this instance is subscribed to, and the rooms with
/// local members that use it (one, unless names hash alike).
struct RoomSub {
    rooms: Vec<Arc<str>>,
    cancel: CancellationToken,
    ready: watch::Receiver<bool>,
}

/// A hub's broker, its queue and its tasks.
pub(crate) struct Link {
    broker: Arc<dyn Broker>,
    channel: Arc<str>,
    presence_channel: Arc<str>,
    /// This instance's id in envelopes.
    origin: u64,
    /// Presence entries of a silent instance are dropped after this.
    ttl: Duration,
    outbox: Outbox,
    /// The queue's receiving end until the publisher task takes it.
    pending: Mutex<Option<mpsc::Receiver<Entry>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    /// The hub and the runtime, once started (room subscriptions need
    /// them, and joins may come from any thread).
    hub: OnceLock<(Weak<dyn Inbound>, tokio::runtime::Handle)>,
    /// Room subscriptions by channel (sharded: rooms that come and go do
    /// not wait for each other).
    rooms: DashMap<String, RoomSub>,
    snapshot_wanted: Arc<Notify>,
}

/// The sending end of the publish queue, shared by the link and its tasks.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Entry>,
    /// Set by [`Link::stop`]: presence entries are refused from then on,
    /// so that `Gone` is the last word.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
    /// Asks the presence task for a snapshot of this instance.
    snapshot_wanted: Arc<Notify>,
}

impl Outbox {
    /// Queues an entry for the publisher; whether it was taken. Never
    /// blocks.
    fn queue(&self, entry: Entry) -> bool {
        let presence = matches!(entry, Entry::Presence(_));
        if presence && self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(e) => {
                self.metrics.incr(PUBLISH_FAILURES);
                let full = matches!(e, mpsc::error::TrySendError::Full(_));
                tracing::debug!(full, "broker publish queue refused a message");
                if presence {
                    // The other instances miss a change they cannot see
                    // missing: send them everything again (spaced out).
                    self.snapshot_wanted.notify_one();
                }
                false
            }
        }
    }
}

impl Link {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        channel: &str,
        origin: u64,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Link {
        let (tx, rx) = mpsc::channel(QUEUE);
        let snapshot_wanted = Arc::new(Notify::new());
        // Shown as 0 from the start, so dashboards see the series.
        for name in [PUBLISHED, PUBLISH_FAILURES, RECEIVED, LOST] {
            metrics.add(name, 0);
        }
        Link {
            broker,
            channel: Arc::from(channel),
            presence_channel: Arc::from(format!("{channel}.presence")),
            origin,
            ttl,
            outbox: Outbox {
                tx,
                stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                metrics: Arc::clone(&metrics),
                snapshot_wanted: Arc::clone(&snapshot_wanted),
            },
            pending: Mutex::new(Some(rx)),
            tasks: Mutex::new(Vec::new()),
            cancel: CancellationToken::new(),
            metrics,
            hub: OnceLock::new(),
            rooms: DashMap::new(),
            snapshot_wanted,
        }
    }

    /// Queues an entry for the publisher; whether it was taken (a full
    /// queue refuses, and counts a publish failure). Never blocks.
    pub(crate) fn queue(&self, entry: Entry) -> bool {
        self.outbox.queue(entry)
    }

    /// The adapter and whether it is connected.
    pub(crate) fn status(&self) -> BrokerStatus {
        BrokerStatus {
            adapter: self.broker.adapter(),
            connected: self.broker.health().connected,
        }
    }

    /// How many room channels this instance is subscribed to.
    pub(crate) fn room_subscriptions(&self) -> usize {
        self.rooms.len()
    }

    fn spawn_receiver(
        &self,
        sub: Subscription,
        kind: Kind,
        cancel: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let (hub, rt) = self.hub.get()?.clone();
        Some(rt.spawn(receive_loop(
            sub,
            hub,
            self.outbox.clone(),
            self.origin,
            kind,
            Arc::clone(&self.metrics),
            cancel,
        )))
    }

    /// Subscribes to a room's channel (its first local member joined).
    /// Before the link is started this does nothing: [`Link::start`]
    /// subscribes the rooms that have members then.
    pub(crate) fn room_subscribe(&self, room: &Arc<str>) {
        let Some((_, rt)) = self.hub.get() else {
            return;
        };
        if self.cancel.is_cancelled() {
            return;
        }
        let channel = room_channel(&self.channel, room);
        let vacant = match self.rooms.entry(channel) {
            dashmap::Entry::Occupied(mut sub) => {
                if !sub.get().rooms.contains(room) {
                    sub.get_mut().rooms.push(Arc::clone(room));
                }
                return;
            }
            dashmap::Entry::Vacant(v) => v,
        };
        // Backends spawn their tasks: on the server's runtime, whatever
        // thread the join comes from.
        let _entered = rt.enter();
        match self.broker.subscribe(vacant.key()) {
            Ok(sub) => {
                let ready = sub.ready_watch();
                let cancel = self.cancel.child_token();
                // The task ends (and the subscription with it) on cancel.
                let _ = self.spawn_receiver(sub, Kind::Room, cancel.clone());
                vacant.insert(RoomSub {
                    rooms: vec![Arc::clone(room)],
                    cancel,
                    ready,
                });
            }
            Err(e) => {
                tracing::warn!(%room, error = %e, "cannot subscribe to a room's channel: \
                    its messages from other instances will not arrive here");
            }
        }
    }

    /// Drops a room's subscription (its last local member left).
    pub(crate) fn room_unsubscribe(&self, room: &str) {
        let channel = room_channel(&self.channel, room);
        if let dashmap::Entry::Occupied(mut sub) = self.rooms.entry(channel) {
            sub.get_mut().rooms.retain(|r| &**r != room);
            if sub.get().rooms.is_empty() {
                sub.remove().cancel.cancel();
            }
        }
    }

    /// Resolves once this instance receives `room`'s messages from the
    /// other instances (at once if it is not subscribed to it), or after
    /// a bounded wait.
    pub(crate) async fn room_ready(&self, room: &str) {
        let channel = room_channel(&self.channel, room);
        let ready = self.rooms.get(&channel).map(|s| s.ready.clone());
        if let Some(mut ready) = ready {
            let _ = tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r)).await;
        }
    }

    /// Starts the publisher, receiver and presence tasks, once. Needs a
    /// tokio runtime; without one it does nothing (and is called again
    /// when the server starts serving).
    pub(crate) fn start(&self, hub: Weak<dyn Inbound>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(rx) = self.pending.lock().ok().and_then(|mut p| p.take()) else {
            return; // already started
        };
        let _ = self
            .hub
            .set((hub.clone(), tokio::runtime::Handle::current()));
        let mut tasks = Vec::with_capacity(4);
        for (channel, kind) in [
            (&self.channel, Kind::Main),
            (&self.presence_channel, Kind::Presence),
        ] {
            match self.broker.subscribe(channel) {
                Ok(sub) => {
                    if kind == Kind::Presence {
                        // Once subscribed, ask everyone for their members.
                        let mut ready = sub.ready_watch();
                        let tx = self.outbox.tx.clone();
                        tasks.push(tokio::spawn(async move {
                            if ready.wait_for(|r| *r).await.is_ok() {
                                let _ = tx
                                    .try_send(Entry::Presence(Presence::SyncRequest { target: 0 }));
                            }
                        }));
                    }
                    tasks.extend(self.spawn_receiver(sub, kind, self.cancel.clone()));
                }
                Err(e) => {
                    tracing::error!(adapter = self.broker.adapter(), %channel, error = %e,
                        "cannot subscribe to the broker: messages of other instances will not arrive");
                }
            }
        }
        tasks.push(tokio::spawn(publish_loop(
            rx,
            Arc::clone(&self.broker),
            Arc::clone(&self.channel),
            Arc::clone(&self.presence_channel),
            self.origin,
            Arc::clone(&self.metrics),
            self.cancel.clone(),
        )));
        tasks.push(tokio::spawn(presence_loop(
            hub.clone(),
            self.outbox.clone(),
            self.ttl,
            Arc::clone(&self.snapshot_wanted),
            self.cancel.clone(),
        )));
        // Rooms joined before the start.
        if let Some(hub) = hub.upgrade() {
            hub.local_rooms(&mut |room| self.room_subscribe(room));
        }
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

    /// Stops the tasks: tells the other instances this one is going (so
    /// they drop its presence at once), publishes what is still queued
    /// (within a bound), then ends every task.
    pub(crate) async fn stop(&self) {
        self.outbox
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        // Past `stopping`, only this goes in: nothing follows the goodbye.
        if self
            .outbox
            .tx
            .try_send(Entry::Presence(Presence::Gone))
            .is_err()
        {
            self.metrics.incr(PUBLISH_FAILURES);
        }
        self.cancel.cancel();
        self.rooms.clear();
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

/// Heartbeats, expiry of silent instances, and snapshots on request.
async fn presence_loop(
    hub: Weak<dyn Inbound>,
    link: Outbox,
    ttl: Duration,
    snapshot_wanted: Arc<Notify>,
    cancel: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(50));
    let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_snapshot: Option<tokio::time::Instant> = None;
    loop {
        let snapshot = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tick.tick() => false,
            _ = snapshot_wanted.notified() => true,
        };
        if snapshot {
            if let Some(at) = last_snapshot {
                tokio::time::sleep_until(at + SNAPSHOT_SPACING).await;
            }
            last_snapshot = Some(tokio::time::Instant::now());
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        if snapshot {
            hub.snapshot(SNAPSHOT_PART_BYTES, &mut |since, members, part, parts| {
                link.queue(Entry::Presence(Presence::Snapshot {
                    since,
                    part,
                    parts,
                    members,
                }));
            });
        } else {
            let version = hub.presence_version();
            link.queue(Entry::Presence(Presence::Heartbeat { version, ttl_ms }));
            hub.expire_remote();
        }
    }
}

/// An owned [`Route`], to group entries by channel.
enum RouteKey {
    Main,
    Presence,
    Room(String),
}

impl RouteKey {
    fn matches(&self, route: Route<'_>) -> bool {
        match (self, route) {
            (RouteKey::Main, Route::Main) | (RouteKey::Presence, Route::Presence) => true,
            (RouteKey::Room(a), Route::Room(b)) => a == b,
            _ => false,
        }
    }
}

async fn publish_loop(
    mut rx: mpsc::Receiver<Entry>,
    broker: Arc<dyn Broker>,
    channel: Arc<str>,
    presence_channel: Arc<str>,
    origin: u64,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut p = Publisher {
        broker,
        channel,
        presence_channel,
        origin,
        metrics,
        seqs: [0; 3],
        failing: false,
        batch: Vec::with_capacity(BATCH_ENTRIES),
        taken: Vec::with_capacity(BATCH_ENTRIES),
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
        p.publish_taken().await;
    }
    // Shutdown: what handlers queued before the end still goes out.
    let flush = async {
        while let Ok(first) = rx.try_recv() {
            p.fill(first, &mut rx);
            p.publish_taken().await;
        }
    };
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
}

struct Publisher {
    broker: Arc<dyn Broker>,
    channel: Arc<str>,
    presence_channel: Arc<str>,
    origin: u64,
    metrics: Arc<Metrics>,
    /// Sequence number of the next entry: on the shared channel, on the
    /// presence channel, and on the room channels (one series for all
    /// rooms: receivers of one room see a subset, so they use it only to
    /// drop duplicates).
    seqs: [u64; 3],
    /// Whether the last publish failed (to log transitions only).
    failing: bool,
    /// The entries of one channel, being published.
    batch: Vec<Entry>,
    /// What was taken from the queue, for any channel.
    taken: Vec<Entry>,
}

impl Publisher {
    /// Takes `first` and whatever else is already queued (within the batch
    /// limits).
    fn fill(&mut self, first: Entry, rx: &mut mpsc::Receiver<Entry>) {
        let mut bytes = first.encoded_len();
        self.taken.push(first);
        while self.taken.len() < BATCH_ENTRIES && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(e) => {
                    bytes += e.encoded_len();
                    self.taken.push(e);
                }
                Err(_) => break,
            }
        }
    }

    /// Publishes what was taken: one envelope per channel, channels in the
    /// order they first appear, each channel's entries in queue order (so
    /// busy rooms interleaved in the queue still go out in few messages).
    async fn publish_taken(&mut self) {
        let mut taken = std::mem::take(&mut self.taken);
        while !taken.is_empty() {
            let (same, rest): (Vec<Entry>, Vec<Entry>) = {
                let route = taken[0].route();
                let route = match route {
                    Route::Room(r) => RouteKey::Room(r.to_owned()),
                    Route::Main => RouteKey::Main,
                    Route::Presence => RouteKey::Presence,
                };
                taken.into_iter().partition(|e| route.matches(e.route()))
            };
            self.batch = same;
            self.publish().await;
            taken = rest;
        }
        self.taken = taken; // keeps the allocation
    }

    async fn publish(&mut self) {
        let n = self.batch.len() as u64;
        let (slot, channel): (usize, std::borrow::Cow<'_, str>) = match self.batch[0].route() {
            Route::Main => (0, (&*self.channel).into()),
            Route::Presence => (1, (&*self.presence_channel).into()),
            Route::Room(room) => (2, room_channel(&self.channel, room).into()),
        };
        let payload: Bytes = envelope::encode(self.origin, self.seqs[slot], &self.batch);
        // Numbers are used even when publishing fails: receivers then see
        // the hole and count the loss.
        self.seqs[slot] = self.seqs[slot].wrapping_add(n);
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, self.broker.publish(&channel, payload))
            .await
            .unwrap_or(Err(BrokerError::Timeout));
        drop(channel);
        self.batch.clear();
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
    hub: Weak<dyn Inbound>,
    link: Outbox,
    origin: u64,
    kind: Kind,
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
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let n = env.entries.len() as u64;
        let expected = next_seq.get(&env.origin).copied();
        let mut skip = 0;
        if let Some(exp) = expected {
            if env.first_seq > exp {
                // Room channels carry a subset of one series: a gap there
                // is other rooms' traffic, not a loss.
                if kind != Kind::Room {
                    metrics.add(LOST, env.first_seq - exp);
                }
                if kind == Kind::Presence {
                    hub.presence_gap(env.origin);
                }
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
                Entry::Broadcast(text) => hub.broadcast(text),
                Entry::Direct(id, text) => hub.direct(id, text),
                Entry::Room { room, except, text } => hub.room(&room, except, &text),
                Entry::Publication {
                    room,
                    except,
                    epoch,
                    offset,
                    prev,
                    text,
                } => Arc::clone(&hub).publication(
                    &room,
                    super::Publication {
                        epoch,
                        offset,
                        prev,
                        except,
                        text,
                    },
                ),
                Entry::Presence(p) => match hub.presence(origin, env.origin, p) {
                    Reply::None => {}
                    Reply::AskSnapshot(target) => {
                        link.queue(Entry::Presence(Presence::SyncRequest { target }));
                    }
                    Reply::SendSnapshot => link.snapshot_wanted.notify_one(),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_channels_are_valid_subjects() {
        assert_eq!(room_channel("ws", "lobby"), "ws.room.lobby");
        assert_eq!(room_channel("ws", "team-4_2"), "ws.room.team-4_2");
        for odd in ["a room", "a.b", "*", ">", "", "Zoë", &"x".repeat(200)] {
            let c = room_channel("ws", odd);
            assert!(c.starts_with("ws.roomh."), "{odd:?} -> {c}");
            assert!(
                c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'),
                "{c}"
            );
        }
        assert_eq!(room_channel("ws", "a b"), room_channel("ws", "a b"));
        assert_ne!(room_channel("ws", "a b"), room_channel("ws", "a c"));
    }
}
