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

/// Entries waiting to be published (their bytes are bounded too: see
/// [`DEFAULT_QUEUE_BYTES`](crate::broker::DEFAULT_QUEUE_BYTES)). A
/// broadcast that finds the queue full (the broker is far slower than the
/// handlers) is not published and is counted as a publish failure; local
/// delivery is not affected.
const QUEUE: usize = 8192;
/// Most entries packed into one broker message.
const BATCH_ENTRIES: usize = 256;
/// Most bytes packed into one broker message, or the broker's
/// `max_payload` if that is smaller. An entry larger than this goes
/// alone, up to `max_payload`.
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
pub(crate) const TOO_LARGE: &str = "broker_messages_too_large";
pub(crate) const OVERFLOWS: &str = "broker_subscription_overflows";
pub(crate) const RESENT: &str = "broker_publications_resent";
pub(crate) const UNANNOUNCED_DROPPED: &str = "broker_publications_unannounced_dropped";

/// Rooms whose latest unsent publication is kept for sending again.
const MAX_UNANNOUNCED: usize = 4096;

/// Publications to rooms with history that did not reach the broker (its
/// publish failed, or the queue was full): stored, so their position is
/// given out, but no other instance heard of them, and nothing may follow
/// to show the gap. The latest of each room is kept and sent again once a
/// publish succeeds (a presence heartbeat at the latest): the other
/// instances drop what they delivered already and read the rest from the
/// history.
#[derive(Default)]
struct Unannounced {
    rooms: Mutex<HashMap<Arc<str>, Entry>>,
    any: std::sync::atomic::AtomicBool,
}

impl Unannounced {
    fn remember(&self, entry: &Entry, metrics: &Metrics) {
        let Entry::Publication {
            room,
            epoch,
            offset,
            ..
        } = entry
        else {
            return;
        };
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        match rooms.get(room) {
            Some(Entry::Publication {
                epoch: e,
                offset: o,
                ..
            }) if e == epoch && o >= offset => return,
            Some(_) => {}
            None if rooms.len() >= MAX_UNANNOUNCED => {
                metrics.incr(UNANNOUNCED_DROPPED);
                return;
            }
            None => {}
        }
        rooms.insert(Arc::clone(room), entry.clone());
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    fn any(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Acquire)
    }

    fn take(&self) -> Vec<Entry> {
        if !self.any.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return Vec::new();
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.drain().map(|(_, e)| e).collect()
    }
}

/// A message that does not fit in one broker payload: refused before it
/// is delivered anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge {
    /// The bytes it would take in an envelope of its own.
    pub size: usize,
    /// The most one payload may take (the broker's `max_payload`, or the
    /// publish queue's byte cap if smaller).
    pub limit: usize,
}

/// Counts a message refused as too large; logs the first one (with its
/// size) as a warning, the others at debug level.
fn refuse_too_large(metrics: &Metrics, logged: &std::sync::atomic::AtomicBool, t: TooLarge) {
    metrics.incr(TOO_LARGE);
    if !logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(size = t.size, limit = t.limit,
            "a message is larger than the broker accepts: it was refused \
             (counted in nbio_ws_broker_messages_too_large_total; further ones are logged at debug level)");
    } else {
        tracing::debug!(
            size = t.size,
            limit = t.limit,
            "a message too large for the broker was refused"
        );
    }
}

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
    rooms: Arc<DashMap<String, RoomSub>>,
    snapshot_wanted: Arc<Notify>,
}

/// The sending end of the publish queue, shared by the link and its tasks.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Entry>,
    /// Bytes of the entries queued and not yet published (bounded by
    /// `cap`; the publisher gives them back once it published them).
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    cap: usize,
    broker: Arc<dyn Broker>,
    /// Set by [`Link::stop`]: presence entries are refused from then on,
    /// so that `Gone` is the last word.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
    /// Whether a message too large for the broker was logged already.
    too_large_logged: Arc<std::sync::atomic::AtomicBool>,
    /// Asks the presence task for a snapshot of this instance.
    snapshot_wanted: Arc<Notify>,
    /// Publications that could not be queued or published.
    unannounced: Arc<Unannounced>,
}

impl Outbox {
    /// The most bytes one entry may take in an envelope of its own: the
    /// broker's limit, or the queue's if smaller.
    fn limit(&self) -> usize {
        self.broker
            .max_payload()
            .unwrap_or(usize::MAX)
            .min(self.cap)
    }

    /// Queues an entry for the publisher: `Ok(true)` if it was taken,
    /// `Ok(false)` if the queue was full (counted as a publish failure),
    /// `Err` if it could never be published (counted, logged once).
    /// Never blocks.
    fn queue(&self, entry: Entry) -> Result<bool, TooLarge> {
        let presence = matches!(entry, Entry::Presence(_));
        if presence && self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(false);
        }
        self.push(entry)
    }

    /// [`queue`](Self::queue), also while stopping.
    fn push(&self, entry: Entry) -> Result<bool, TooLarge> {
        use std::sync::atomic::Ordering::AcqRel;
        let presence = matches!(entry, Entry::Presence(_));
        let len = entry.encoded_len();
        let size = envelope::HEADER + len;
        let limit = self.limit();
        if size > limit {
            refuse_too_large(
                &self.metrics,
                &self.too_large_logged,
                TooLarge { size, limit },
            );
            if presence {
                self.snapshot_wanted.notify_one();
            }
            return Err(TooLarge { size, limit });
        }
        let reserved = self
            .bytes
            .fetch_update(AcqRel, std::sync::atomic::Ordering::Acquire, |b| {
                (b + len <= self.cap).then_some(b + len)
            })
            .is_ok();
        let full = if !reserved {
            self.unannounced.remember(&entry, &self.metrics);
            true
        } else {
            match self.tx.try_send(entry) {
                Ok(()) => return Ok(true),
                Err(e) => {
                    self.bytes.fetch_sub(len, AcqRel);
                    let full = matches!(e, mpsc::error::TrySendError::Full(_));
                    if let mpsc::error::TrySendError::Full(entry) = &e {
                        self.unannounced.remember(entry, &self.metrics);
                    }
                    full
                }
            }
        };
        self.metrics.incr(PUBLISH_FAILURES);
        tracing::debug!(full, "broker publish queue refused a message");
        if presence {
            // The other instances miss a change they cannot see
            // missing: send them everything again (spaced out).
            self.snapshot_wanted.notify_one();
        }
        Ok(false)
    }

    /// How many bytes of members one snapshot part may hold so that the
    /// part fits in one payload.
    fn snapshot_part_bytes(&self) -> usize {
        self.limit()
            .saturating_sub(envelope::HEADER + 64)
            .clamp(1024, SNAPSHOT_PART_BYTES)
    }
}

impl Link {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        channel: &str,
        origin: u64,
        ttl: Duration,
        queue_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Link {
        let (tx, rx) = mpsc::channel(QUEUE);
        let snapshot_wanted = Arc::new(Notify::new());
        // Shown as 0 from the start, so dashboards see the series.
        for name in [
            PUBLISHED,
            PUBLISH_FAILURES,
            RECEIVED,
            LOST,
            TOO_LARGE,
            OVERFLOWS,
        ] {
            metrics.add(name, 0);
        }
        Link {
            broker: Arc::clone(&broker),
            channel: Arc::from(channel),
            presence_channel: Arc::from(format!("{channel}.presence")),
            origin,
            ttl,
            outbox: Outbox {
                tx,
                bytes: Arc::default(),
                cap: queue_bytes.max(1),
                broker,
                stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                metrics: Arc::clone(&metrics),
                too_large_logged: Arc::default(),
                snapshot_wanted: Arc::clone(&snapshot_wanted),
                unannounced: Arc::default(),
            },
            pending: Mutex::new(Some(rx)),
            tasks: Mutex::new(Vec::new()),
            cancel: CancellationToken::new(),
            metrics,
            hub: OnceLock::new(),
            rooms: Arc::new(DashMap::new()),
            snapshot_wanted,
        }
    }

    /// Queues an entry for the publisher: `Ok(true)` if it was taken,
    /// `Ok(false)` if the queue was full (counted as a publish failure:
    /// the other instances miss it), `Err` if it is larger than one broker
    /// payload may be (counted, logged once: the caller refuses it).
    /// Never blocks.
    pub(crate) fn queue(&self, entry: Entry) -> Result<bool, TooLarge> {
        self.outbox.queue(entry)
    }

    /// Whether `entry` could be published (it fits in one payload),
    /// without queueing it or counting anything.
    pub(crate) fn check(&self, entry_len: usize) -> Result<(), TooLarge> {
        let size = envelope::HEADER + entry_len;
        let limit = self.outbox.limit();
        if size > limit {
            refuse_too_large(
                &self.metrics,
                &self.outbox.too_large_logged,
                TooLarge { size, limit },
            );
            return Err(TooLarge { size, limit });
        }
        Ok(())
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

    /// What a receiver task needs, once the link is started.
    fn receivers(&self) -> Option<Receivers> {
        let (hub, rt) = self.hub.get()?.clone();
        Some(Receivers {
            hub,
            rt,
            outbox: self.outbox.clone(),
            origin: self.origin,
            metrics: Arc::clone(&self.metrics),
            rooms: Arc::clone(&self.rooms),
        })
    }

    /// Spawns the receiver of `sub`; `room_channel` names the channel of
    /// a room subscription.
    fn spawn_receiver(
        &self,
        sub: Subscription,
        kind: Kind,
        room_channel: Option<String>,
        cancel: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        Some(self.receivers()?.spawn(sub, kind, room_channel, cancel))
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
        let cancel = self.cancel.child_token();
        let ready = match self.broker.subscribe(vacant.key()) {
            Ok(sub) => {
                let ready = sub.ready_watch();
                // The task ends (and the subscription with it) on cancel.
                let _ = self.spawn_receiver(
                    sub,
                    Kind::Room,
                    Some(vacant.key().clone()),
                    cancel.clone(),
                );
                ready
            }
            Err(e) => {
                tracing::warn!(%room, error = %e, "cannot subscribe to a room's channel: \
                    retrying with backoff (until then its messages from other instances \
                    do not arrive here)");
                let (ready_tx, ready) = watch::channel(false);
                if let Some(receivers) = self.receivers() {
                    rt.spawn(retry_subscribe(
                        Arc::clone(&self.broker),
                        vacant.key().clone(),
                        receivers,
                        ready_tx,
                        cancel.clone(),
                    ));
                }
                ready
            }
        };
        vacant.insert(RoomSub {
            rooms: vec![Arc::clone(room)],
            cancel,
            ready,
        });
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
                        let outbox = self.outbox.clone();
                        tasks.push(tokio::spawn(async move {
                            if ready.wait_for(|r| *r).await.is_ok() {
                                let _ = outbox
                                    .queue(Entry::Presence(Presence::SyncRequest { target: 0 }));
                            }
                        }));
                    }
                    tasks.extend(self.spawn_receiver(sub, kind, None, self.cancel.clone()));
                }
                Err(e) => {
                    tracing::error!(adapter = self.broker.adapter(), %channel, error = %e,
                        "cannot subscribe to the broker: messages of other instances will not arrive");
                }
            }
        }
        tasks.push(tokio::spawn(publish_loop(
            rx,
            self.outbox.clone(),
            Arc::clone(&self.channel),
            Arc::clone(&self.presence_channel),
            self.origin,
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
        // Past `stopping`, only this goes in: nothing follows the goodbye
        // (a refusal is counted by `push`).
        let _ = self.outbox.push(Entry::Presence(Presence::Gone));
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

/// What a receiver task is given.
#[derive(Clone)]
struct Receivers {
    hub: Weak<dyn Inbound>,
    rt: tokio::runtime::Handle,
    outbox: Outbox,
    origin: u64,
    metrics: Arc<Metrics>,
    /// The room subscriptions, for the rooms of a channel.
    rooms: Arc<DashMap<String, RoomSub>>,
}

impl Receivers {
    /// Spawns the receiver of `sub`; `room_channel` names the channel of
    /// a room subscription.
    fn spawn(
        self,
        sub: Subscription,
        kind: Kind,
        room_channel: Option<String>,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let rt = self.rt.clone();
        let resync = room_channel.map(|channel| Resync {
            channel,
            rooms: self.rooms,
        });
        rt.spawn(receive_loop(
            sub,
            self.hub,
            self.outbox,
            self.origin,
            kind,
            resync,
            self.metrics,
            cancel,
        ))
    }
}

/// A room channel's receiver tells the hub when the room may have lost
/// messages with nothing after them to show it: the broker confirmed the
/// subscription again (after a reconnection), or the subscription's
/// buffer overflowed. Rooms with history then resync.
struct Resync {
    channel: String,
    rooms: Arc<DashMap<String, RoomSub>>,
}

impl Resync {
    fn rooms(&self, hub: &Arc<dyn Inbound>) {
        let rooms = self.rooms.get(&self.channel).map(|s| s.rooms.clone());
        for room in rooms.unwrap_or_default() {
            Arc::clone(hub).resync(&room);
        }
    }
}

/// Subscribes to a room's channel again and again, with backoff, until
/// the broker accepts (then receives it like any room channel) or the
/// room loses its last local member (`cancel`).
async fn retry_subscribe(
    broker: Arc<dyn Broker>,
    channel: String,
    receivers: Receivers,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut backoff = crate::broker::Backoff::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
        match broker.subscribe(&channel) {
            Ok(sub) => {
                tracing::info!(%channel, "subscribed to a room's channel after retrying");
                let mut confirmed = sub.ready_watch();
                // Detached: it ends (and the subscription with it) on cancel.
                drop(receivers.spawn(sub, Kind::Room, Some(channel.clone()), cancel.clone()));
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    r = confirmed.wait_for(|r| *r) => if r.is_ok() {
                        ready.send_replace(true);
                    },
                }
                return;
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "cannot subscribe to a room's channel yet")
            }
        }
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
            hub.snapshot(
                link.snapshot_part_bytes(),
                &mut |since, members, part, parts| {
                    let _ = link.queue(Entry::Presence(Presence::Snapshot {
                        since,
                        part,
                        parts,
                        members,
                    }));
                },
            );
        } else {
            let version = hub.presence_version();
            let _ = link.queue(Entry::Presence(Presence::Heartbeat { version, ttl_ms }));
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
    outbox: Outbox,
    channel: Arc<str>,
    presence_channel: Arc<str>,
    origin: u64,
    cancel: CancellationToken,
) {
    let mut p = Publisher {
        channel,
        presence_channel,
        origin,
        seqs: [0; 3],
        failing: false,
        resend: false,
        carry: None,
        batch: Vec::with_capacity(BATCH_ENTRIES),
        taken: Vec::with_capacity(BATCH_ENTRIES),
        outbox,
    };
    loop {
        let first = match p.carry.take() {
            Some(e) => e,
            None => tokio::select! {
                biased;
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
                _ = cancel.cancelled() => break,
            },
        };
        p.fill(first, &mut rx);
        p.publish_taken().await;
        p.resend().await;
    }
    // Shutdown: what handlers queued before the end still goes out.
    let flush = async {
        while let Some(first) = p.carry.take().or_else(|| rx.try_recv().ok()) {
            p.fill(first, &mut rx);
            p.publish_taken().await;
        }
    };
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
}

struct Publisher {
    channel: Arc<str>,
    presence_channel: Arc<str>,
    origin: u64,
    /// The queue's sending end: the broker, its byte count (given back
    /// here once published) and the refusal counters.
    outbox: Outbox,
    /// Sequence number of the next entry: on the shared channel, on the
    /// presence channel, and on the room channels (one series for all
    /// rooms: receivers of one room see a subset, so they use it only to
    /// drop duplicates).
    seqs: [u64; 3],
    /// Whether the last publish failed (to log transitions only).
    failing: bool,
    /// Set when a publish succeeded while publications are kept in
    /// [`Unannounced`] for sending again.
    resend: bool,
    /// An entry taken from the queue that did not fit in the last batch:
    /// the first of the next one.
    carry: Option<Entry>,
    /// The entries of one channel, being published.
    batch: Vec<Entry>,
    /// What was taken from the queue, for any channel.
    taken: Vec<Entry>,
}

impl Publisher {
    /// The most bytes one envelope may take now.
    fn max_payload(&self) -> usize {
        self.outbox.broker.max_payload().unwrap_or(usize::MAX)
    }

    /// Takes `first` and whatever else is already queued, within the batch
    /// limits: [`BATCH_ENTRIES`] entries and [`BATCH_BYTES`] bytes (or the
    /// broker's limit if smaller), the envelope's header included. The
    /// entry that does not fit is kept for the next batch.
    fn fill(&mut self, first: Entry, rx: &mut mpsc::Receiver<Entry>) {
        let max_bytes = BATCH_BYTES.min(self.max_payload());
        let mut bytes = envelope::HEADER + first.encoded_len();
        self.taken.push(first);
        while self.taken.len() < BATCH_ENTRIES {
            let Some(e) = self.carry.take().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            let len = e.encoded_len();
            if bytes + len > max_bytes {
                self.carry = Some(e);
                break;
            }
            bytes += len;
            self.taken.push(e);
        }
    }

    /// Sends the kept publications again, once a publish succeeded.
    async fn resend(&mut self) {
        if !std::mem::take(&mut self.resend) {
            return;
        }
        let again = self.outbox.unannounced.take();
        if again.is_empty() {
            return;
        }
        self.outbox.metrics.add(RESENT, again.len() as u64);
        // Counted in the queue's bytes like any entry: the publish gives
        // them back.
        let bytes: usize = again.iter().map(Entry::encoded_len).sum();
        self.outbox
            .bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
        self.taken.extend(again);
        self.publish_taken().await;
        // Those that failed again are kept again, for the next success.
        self.resend = false;
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

    /// Publishes the batch (entries of one channel): in one envelope if
    /// the broker takes it, else each entry alone, so that one entry the
    /// broker refuses as too large costs only itself.
    async fn publish(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len() as u64;
        let (slot, channel): (usize, String) = match batch[0].route() {
            Route::Main => (0, self.channel.to_string()),
            Route::Presence => (1, self.presence_channel.to_string()),
            Route::Room(room) => (2, room_channel(&self.channel, room)),
        };
        let first_seq = self.seqs[slot];
        // Numbers are used even when publishing fails: receivers then see
        // the hole and count the loss.
        self.seqs[slot] = first_seq.wrapping_add(n);
        let bytes: usize = batch.iter().map(Entry::encoded_len).sum();
        match self.send(&channel, first_seq, &batch).await {
            Err(BrokerError::TooLarge { .. }) if batch.len() > 1 => {
                // The broker's limit shrank since the batch was packed.
                for (i, entry) in batch.iter().enumerate() {
                    let seq = first_seq.wrapping_add(i as u64);
                    let result = self.send(&channel, seq, std::slice::from_ref(entry)).await;
                    if matches!(result, Err(ref e) if !matches!(e, BrokerError::TooLarge { .. })) {
                        self.outbox
                            .unannounced
                            .remember(entry, &self.outbox.metrics);
                    }
                    self.record(result, 1);
                }
            }
            result => {
                if matches!(result, Err(ref e) if !matches!(e, BrokerError::TooLarge { .. })) {
                    for entry in &batch {
                        self.outbox
                            .unannounced
                            .remember(entry, &self.outbox.metrics);
                    }
                }
                self.record(result, n)
            }
        }
        self.outbox
            .bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
        self.batch = batch;
        self.batch.clear(); // keeps the allocation
    }

    /// Publishes one envelope of `entries`, unless it is larger than the
    /// broker accepts.
    async fn send(
        &self,
        channel: &str,
        first_seq: u64,
        entries: &[Entry],
    ) -> Result<(), BrokerError> {
        let size = envelope::HEADER + entries.iter().map(Entry::encoded_len).sum::<usize>();
        let limit = self.max_payload();
        if size > limit {
            return Err(BrokerError::TooLarge { size, limit });
        }
        let payload: Bytes = envelope::encode(self.origin, first_seq, entries);
        tokio::time::timeout(
            PUBLISH_TIMEOUT,
            self.outbox.broker.publish(channel, payload),
        )
        .await
        .unwrap_or(Err(BrokerError::Timeout))
    }

    /// Counts the outcome of publishing `n` entries, and logs transitions.
    fn record(&mut self, result: Result<(), BrokerError>, n: u64) {
        let metrics = &self.outbox.metrics;
        let adapter = self.outbox.broker.adapter();
        match result {
            Ok(()) => {
                metrics.add(PUBLISHED, n);
                self.resend |= self.outbox.unannounced.any();
                if self.failing {
                    self.failing = false;
                    tracing::info!(adapter, "publishing to the broker again");
                }
            }
            Err(BrokerError::TooLarge { size, limit }) => {
                refuse_too_large(
                    metrics,
                    &self.outbox.too_large_logged,
                    TooLarge { size, limit },
                );
            }
            Err(e) => {
                metrics.add(PUBLISH_FAILURES, n);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(adapter, error = %e,
                        "broker publish failed: other instances miss these messages until it is back \
                         (local clients still get them)");
                } else {
                    tracing::debug!(error = %e, dropped = n, "broker publish failed");
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn receive_loop(
    mut sub: Subscription,
    hub: Weak<dyn Inbound>,
    link: Outbox,
    origin: u64,
    kind: Kind,
    resync: Option<Resync>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    // Per origin: the sequence number expected next.
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    // What the backend dropped because this subscription was full.
    let mut overflows = 0;
    let mut ready = sub.ready_watch();
    ready.mark_unchanged();
    loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            Ok(()) = ready.changed(), if resync.is_some() => {
                let confirmed = *ready.borrow_and_update();
                if let (true, Some(r), Some(hub)) = (confirmed, &resync, hub.upgrade()) {
                    r.rooms(&hub);
                }
                continue;
            }
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let dropped = sub.dropped();
        if dropped > overflows {
            metrics.add(OVERFLOWS, dropped - overflows);
            overflows = dropped;
            if let (Some(r), Some(hub)) = (&resync, hub.upgrade()) {
                r.rooms(&hub);
            }
        }
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
                        let _ = link.queue(Entry::Presence(Presence::SyncRequest { target }));
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

    /// The in-process broker with a payload limit, as NATS has one.
    struct Limited {
        local: crate::broker::LocalBroker,
        max: usize,
    }

    impl Broker for Limited {
        fn adapter(&self) -> &'static str {
            "limited"
        }
        fn publish<'a>(
            &'a self,
            channel: &'a str,
            payload: Bytes,
        ) -> crate::broker::BoxFuture<'a, Result<(), BrokerError>> {
            assert!(
                payload.len() <= self.max,
                "{} > {}",
                payload.len(),
                self.max
            );
            self.local.publish(channel, payload)
        }
        fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
            self.local.subscribe(channel)
        }
        fn health(&self) -> crate::broker::BrokerHealth {
            self.local.health()
        }
        fn max_payload(&self) -> Option<usize> {
            Some(self.max)
        }
    }

    fn outbox(max: usize, cap: usize) -> (Outbox, mpsc::Receiver<Entry>, Arc<Limited>) {
        let broker = Arc::new(Limited {
            local: crate::broker::LocalBroker::new(),
            max,
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let outbox = Outbox {
            tx,
            bytes: Arc::default(),
            cap,
            broker: Arc::clone(&broker) as _,
            stopping: Arc::default(),
            metrics: Arc::new(Metrics::default()),
            too_large_logged: Arc::default(),
            snapshot_wanted: Arc::new(Notify::new()),
            unannounced: Arc::default(),
        };
        (outbox, rx, broker)
    }

    fn text(n: usize, tag: usize) -> Bytes {
        let mut t = format!("{tag:06}").into_bytes();
        t.resize(n, b'x');
        Bytes::from(t)
    }

    #[tokio::test]
    async fn batches_fit_the_brokers_limit_and_large_messages_go_alone() {
        let max = 64 * 1024;
        let (outbox, rx, broker) = outbox(max, 64 << 20);
        let mut sub = broker.subscribe("ws").unwrap();
        // 40 KB and short messages back to back: never two large ones in
        // one envelope, never an envelope over the limit.
        let mut sent = Vec::new();
        for i in 0..40 {
            let t = text(if i % 2 == 0 { 40_000 } else { 20 }, i);
            assert_eq!(outbox.queue(Entry::Broadcast(t.clone())), Ok(true));
            sent.push(t);
        }
        // One too large even alone: refused, counted, nothing queued.
        let big = Entry::Broadcast(text(max, 99));
        let refused = outbox.queue(big).unwrap_err();
        assert_eq!(refused.limit, max);
        assert!(refused.size > max);
        assert_eq!(outbox.metrics.counter(TOO_LARGE), 1);
        let queued = outbox.bytes.load(std::sync::atomic::Ordering::Acquire);
        assert_eq!(queued, sent.iter().map(|t| 5 + t.len()).sum::<usize>());

        let cancel = CancellationToken::new();
        let publisher = tokio::spawn(publish_loop(
            rx,
            outbox.clone(),
            Arc::from("ws"),
            Arc::from("ws.presence"),
            7,
            cancel.clone(),
        ));
        let mut got = Vec::new();
        let mut envelopes = 0;
        while got.len() < sent.len() {
            let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("published in time")
                .expect("a message");
            assert!(msg.len() <= max);
            let env = envelope::decode(msg).unwrap();
            assert_eq!(env.first_seq, got.len() as u64);
            envelopes += 1;
            for e in env.entries {
                let Entry::Broadcast(t) = e else {
                    panic!("a broadcast")
                };
                got.push(t);
            }
        }
        assert_eq!(got, sent);
        assert!(
            envelopes >= 20,
            "{envelopes} envelopes for 20 large messages"
        );
        cancel.cancel();
        publisher.await.unwrap();
        assert_eq!(outbox.bytes.load(std::sync::atomic::Ordering::Acquire), 0);
        assert_eq!(outbox.metrics.counter(PUBLISHED), 40);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let (outbox, _rx, _broker) = outbox(usize::MAX, 1 << 20);
        let mut taken = 0;
        for i in 0..100 {
            if outbox.queue(Entry::Broadcast(text(100_000, i))) == Ok(true) {
                taken += 1;
            }
        }
        // 10 of 100 KB fit in 1 MiB; the others are dropped and counted.
        assert_eq!(taken, 10);
        assert_eq!(outbox.metrics.counter(PUBLISH_FAILURES), 90);
        // Larger than the whole queue: could never be published.
        let e = outbox
            .queue(Entry::Broadcast(text(2 << 20, 0)))
            .unwrap_err();
        assert_eq!(e.limit, 1 << 20);
        // Small ones still fit beside.
        assert_eq!(outbox.queue(Entry::Broadcast(text(10, 0))), Ok(true));
    }
}
