//! The per-room sequencer of rooms with history: what reaches the local
//! members of such a room goes through it, in offset order, exactly once.
//!
//! A publication arrives from this instance's own handlers or from the
//! broker, with its offset and the offset before it (`prev`). The
//! sequencer delivers it if `prev` is the last offset it delivered, drops
//! it if it delivered that offset already (the same publication through
//! two paths), and holds it otherwise: a gap. Publications of different
//! instances to one room may arrive out of order, so a gap first waits a
//! moment ([`GAP_GRACE`]) for the missing ones, then reads them from the
//! history. A gap the history cannot fill (trimmed, expired, or more than
//! the recovery limit) closes the room's local members with
//! [`CLOSE_STREAM_GAP`] (4000): they reconnect and recover, and learn
//! `recovered: false` if the history cannot help them either.
//!
//! A publication of another epoch means the room's history was lost and
//! started again (the members' positions mean nothing now: they are
//! closed with 4000), unless the history still has the room's epoch (the
//! publication comes from an instance with a history store of its own: it
//! is delivered as it is). Publications of another epoch are held while
//! the history is asked; one that cannot be asked (unreachable) closes the
//! members too, and the room's state is read again when next needed.
//!
//! Publications can also go missing with nothing after them to show the
//! gap: those sent while this instance's subscription was down. When the
//! broker confirms a room's subscription again after a reconnection, the
//! room *resyncs*: what the history has after the last offset delivered
//! is delivered (or, if the history cannot cover it, the members are
//! closed with 4000). Those the publishing instance could not send at all
//! it sends again once the broker is back (see `cluster::link`).
//!
//! Each room's state starts from the history's latest offset, read once
//! when a member first needs it, and is dropped when the room's last
//! local member leaves (the instance stops receiving the room's traffic
//! then, so the state would go stale).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::watch;

use super::HubInner;
use crate::history::{live_frame, HistoryConfig, HistoryError, HistoryPolicy, HistoryStore};
use crate::types::ClientId;

/// How long a gap waits for the missing publications to arrive by
/// themselves before they are read from the history.
pub const GAP_GRACE: Duration = Duration::from_millis(150);
/// Publications held per room while a gap is open; past that the gap is
/// treated as one the history cannot fill.
pub const MAX_PENDING: usize = 1024;
/// The close code sent to the members of a room whose stream has a gap
/// that cannot be filled, or whose epoch changed: reconnect and recover.
pub const CLOSE_STREAM_GAP: u16 = crate::close::STREAM_GAP;
/// How many times the sequencer asks the history (for a room's epoch, or
/// to fill a gap) before it closes the members anyway.
const HISTORY_ATTEMPTS: u32 = 10;
/// The pause between two of those attempts.
const HISTORY_RETRY: Duration = Duration::from_millis(200);

/// A publication on its way to the local members.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub prev: u64,
    pub except: Option<ClientId>,
    pub frame: Bytes,
}

#[derive(Default)]
struct Stream {
    /// The epoch and the last offset delivered; `None` until initialized.
    state: Option<(Arc<str>, u64)>,
    /// Held publications, by `prev`.
    pending: BTreeMap<u64, Incoming>,
    /// Whether a gap fill is scheduled.
    filling: bool,
    /// Whether the next fill reads the history even with nothing held
    /// (after a resubscription).
    resync: bool,
    /// Publications of another epoch, held while the history is asked
    /// which epoch the room is in (`Some` while it is).
    other_epoch: Option<Vec<Incoming>>,
    /// Set once the state is initialized (for those waiting on it).
    ready: Option<watch::Sender<bool>>,
    /// Whether an initialization is under way.
    initializing: bool,
}

/// The history of a hub: its store, its policies, and one sequencer per
/// room with local members.
pub(crate) struct Streams {
    setup: OnceLock<(Arc<dyn HistoryStore>, HistoryConfig)>,
    rooms: DashMap<Arc<str>, Arc<Mutex<Stream>>>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            setup: OnceLock::new(),
            rooms: DashMap::new(),
        }
    }
}

fn lock(s: &Mutex<Stream>) -> std::sync::MutexGuard<'_, Stream> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Streams {
    /// Sets the store and the policies (once).
    pub(crate) fn attach(&self, store: Arc<dyn HistoryStore>, config: HistoryConfig) {
        let _ = self.setup.set((store, config));
    }

    pub(crate) fn store(&self) -> Option<&Arc<dyn HistoryStore>> {
        self.setup.get().map(|(s, _)| s)
    }

    pub(crate) fn config(&self) -> Option<&HistoryConfig> {
        self.setup.get().map(|(_, c)| c)
    }

    /// The policy of `room`, if it keeps history.
    pub(crate) fn policy(&self, room: &str) -> Option<HistoryPolicy> {
        let (_, cfg) = self.setup.get()?;
        Some(cfg.policy(room)).filter(HistoryPolicy::enabled)
    }

    fn stream(&self, room: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.rooms.get(room) {
            return Arc::clone(s.value());
        }
        Arc::clone(self.rooms.entry(Arc::from(room)).or_default().value())
    }

    /// Runs `f` while no publication of `room` can be delivered, and
    /// returns what it returns with the stream's state then.
    pub(crate) fn with_stream_locked<R>(
        &self,
        room: &str,
        f: impl FnOnce() -> R,
    ) -> (R, Option<(Arc<str>, u64)>) {
        let s = self.stream(room);
        let guard = lock(&s);
        let r = f();
        (r, guard.state.clone())
    }

    /// Drops the state of a room that has no local member any more.
    pub(crate) fn forget(&self, room: &str) {
        self.rooms.remove(room);
    }

    /// Delivers, holds or drops a publication of `room` (see the module
    /// docs). `deliver` sends a frame to the room's local members.
    pub(crate) fn offer(&self, hub: &Arc<HubInner>, room: &str, p: Incoming) {
        let Some(s) = self.rooms.get(room).map(|s| Arc::clone(s.value())) else {
            // No local member has needed this room's stream: nobody here
            // to deliver to.
            return;
        };
        let mut st = lock(&s);
        match st.state.clone() {
            None => {
                hold(&mut st, p);
                let start = !st.initializing;
                st.initializing = true;
                drop(st);
                if start {
                    spawn_init(hub, room);
                }
            }
            Some((epoch, last)) => {
                if epoch != p.epoch {
                    match &mut st.other_epoch {
                        Some(held) if held.len() < MAX_PENDING => held.push(p),
                        Some(_) => {} // the members are closed or get the foreign ones
                        None => {
                            st.other_epoch = Some(vec![p]);
                            drop(st);
                            spawn_epoch_check(hub, room);
                        }
                    }
                    return;
                }
                if p.offset <= last {
                    hub.metrics.incr("history_duplicates_dropped");
                    return;
                }
                if p.prev <= last {
                    deliver(hub, room, &mut st, p);
                    drain(hub, room, &mut st);
                } else {
                    hold(&mut st, p);
                    if st.pending.len() > MAX_PENDING {
                        let s2 = Arc::clone(&s);
                        drop(st);
                        give_up(hub, room, &s2);
                        return;
                    }
                    if !st.filling {
                        st.filling = true;
                        drop(st);
                        spawn_fill(hub, room, GAP_GRACE);
                    }
                }
            }
        }
    }

    /// After the broker confirmed `room`'s subscription again: delivers
    /// what the history has after the last offset delivered (see the
    /// module docs).
    pub(crate) fn resync(&self, hub: &Arc<HubInner>, room: &str) {
        let Some(s) = self.rooms.get(room).map(|s| Arc::clone(s.value())) else {
            return;
        };
        let mut st = lock(&s);
        if st.state.is_none() {
            return; // read from the history when first needed anyway
        }
        st.resync = true;
        if !st.filling {
            st.filling = true;
            drop(st);
            hub.metrics.incr("history_resyncs");
            spawn_fill(hub, room, Duration::ZERO);
        }
    }

    /// The state of `room`, initializing it from the history if needed.
    pub(crate) async fn ensure_init(
        &self,
        hub: &Arc<HubInner>,
        room: &str,
    ) -> Result<(Arc<str>, u64), HistoryError> {
        let s = self.stream(room);
        let (mut ready, start) = {
            let mut st = lock(&s);
            if let Some(state) = st.state.clone() {
                return Ok(state);
            }
            let rx = match &st.ready {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(false);
                    st.ready = Some(tx);
                    rx
                }
            };
            let start = !st.initializing;
            st.initializing = true;
            (rx, start)
        };
        if start {
            init(hub, room).await?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
        let state = lock(&s).state.clone();
        state.ok_or_else(|| HistoryError::Unavailable("the room's stream did not start".into()))
    }
}

fn hold(st: &mut Stream, p: Incoming) {
    st.pending.insert(p.prev, p);
}

fn deliver(hub: &Arc<HubInner>, room: &str, st: &mut Stream, p: Incoming) {
    if let Some((_, last)) = &mut st.state {
        *last = p.offset;
    }
    hub.metrics.broadcast();
    hub.rooms.send(room, p.except, &p.frame);
}

/// Delivers the held publications that now follow the last one.
fn drain(hub: &Arc<HubInner>, room: &str, st: &mut Stream) {
    loop {
        let Some((_, last)) = st.state.clone() else {
            return;
        };
        // Drop what is already delivered.
        let stale: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.offset <= last)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            st.pending.remove(&k);
        }
        let next = st
            .pending
            .keys()
            .next()
            .copied()
            .filter(|prev| *prev <= last);
        match next.and_then(|k| st.pending.remove(&k)) {
            Some(p) => deliver(hub, room, st, p),
            None => return,
        }
    }
}

/// Reads the room's latest position and starts its stream there.
async fn init(hub: &Arc<HubInner>, room: &str) -> Result<(), HistoryError> {
    let streams = &hub.rooms.streams;
    let (Some(store), Some(policy)) = (streams.store(), streams.policy(room)) else {
        return Err(HistoryError::NoHistory(room.to_owned()));
    };
    let read = store.read(room, policy, None, 0).await;
    let s = streams.stream(room);
    let mut st = lock(&s);
    st.initializing = false;
    match read {
        Ok(range) => {
            if st.state.is_none() {
                st.state = Some((Arc::clone(&range.epoch), range.top));
            }
            if let Some(tx) = &st.ready {
                tx.send_replace(true);
            }
            drain(hub, room, &mut st);
            if !st.pending.is_empty() && !st.filling {
                st.filling = true;
                drop(st);
                spawn_fill(hub, room, GAP_GRACE);
            }
            Ok(())
        }
        Err(e) => {
            st.pending.clear();
            Err(e)
        }
    }
}

fn spawn_init(hub: &Arc<HubInner>, room: &str) {
    let weak = Arc::downgrade(hub);
    let room: Arc<str> = Arc::from(room);
    tokio::spawn(async move {
        let Some(hub) = weak.upgrade() else { return };
        if let Err(e) = init(&hub, &room).await {
            tracing::warn!(%room, error = %e, "cannot start a room's stream");
        }
    });
}

/// Publications of another epoch (held in `other_epoch`): either the
/// room's history was lost and started again (the store now has another
/// epoch: positions members hold mean nothing, so they reconnect and
/// recover), or they come from an instance with a store of its own
/// (instances that do not share their history, e.g. memory history behind
/// a real broker: they are delivered as they are, without ordering
/// guarantees, and counted). A store that cannot be asked counts as the
/// first case, and the room's state is read again when next needed.
fn spawn_epoch_check(hub: &Arc<HubInner>, room: &str) {
    let weak = Arc::downgrade(hub);
    let room: Arc<str> = Arc::from(room);
    tokio::spawn(async move {
        let mut current = None;
        for attempt in 0..HISTORY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(HISTORY_RETRY).await;
            }
            let Some(hub) = weak.upgrade() else { return };
            let streams = &hub.rooms.streams;
            let (Some(store), Some(policy)) = (streams.store(), streams.policy(&room)) else {
                return;
            };
            if let Ok(r) = store.read(&room, policy, None, 0).await {
                current = Some((r.epoch, r.top));
                break;
            }
        }
        let Some(hub) = weak.upgrade() else { return };
        let Some(s) = hub
            .rooms
            .streams
            .rooms
            .get(&*room)
            .map(|s| Arc::clone(s.value()))
        else {
            return;
        };
        let mut st = lock(&s);
        let held = st.other_epoch.take().unwrap_or_default();
        let ours = st.state.as_ref().map(|(e, _)| Arc::clone(e));
        match current {
            Some((epoch, _)) if Some(&epoch) == ours.as_ref() => {
                drop(st);
                hub.metrics.incr("history_foreign_epoch");
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(%room, "a publication from an instance with another history store: \
                        instances that share a broker should share their history (Redis or JetStream)");
                });
                for p in held {
                    hub.metrics.broadcast();
                    hub.rooms.send(&room, p.except, &p.frame);
                }
            }
            // Members joining from now on start from what the store has;
            // those here are told to recover.
            current => restart(&hub, &room, st, current),
        }
    });
}

/// After `delay`, reads the missing publications from the history.
fn spawn_fill(hub: &Arc<HubInner>, room: &str, delay: Duration) {
    let weak: Weak<HubInner> = Arc::downgrade(hub);
    let room: Arc<str> = Arc::from(room);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let Some(hub) = weak.upgrade() else { return };
        fill(&hub, &room).await;
    });
}

async fn fill(hub: &Arc<HubInner>, room: &str) {
    let streams = &hub.rooms.streams;
    let Some(s) = streams.rooms.get(room).map(|s| Arc::clone(s.value())) else {
        return;
    };
    let done = |st: &mut Stream| st.filling = false;
    let last = {
        let mut st = lock(&s);
        let resync = std::mem::take(&mut st.resync);
        match (&st.state, resync || !st.pending.is_empty()) {
            (Some((_, last)), true) => *last,
            _ => return done(&mut st),
        }
    };
    let (Some(store), Some(policy), Some(cfg)) =
        (streams.store(), streams.policy(room), streams.config())
    else {
        return done(&mut lock(&s));
    };
    hub.metrics.incr("history_gap_fills");
    // A store that just came back may refuse for a moment (its own
    // reconnection backoff): ask again before giving up on the members.
    let mut read = store.read(room, policy, Some(last), cfg.max_recover).await;
    for _ in 1..HISTORY_ATTEMPTS {
        if read.is_ok() {
            break;
        }
        tokio::time::sleep(HISTORY_RETRY).await;
        read = store.read(room, policy, Some(last), cfg.max_recover).await;
    }
    let mut st = lock(&s);
    done(&mut st);
    let Some((epoch, _)) = st.state.clone() else {
        return;
    };
    let range = match read {
        Ok(range) if range.epoch == epoch => range,
        // Lost and started again, or unreadable: start over from what the
        // store has (or read it when next needed).
        other => {
            let current = other.ok().map(|r| (r.epoch, r.top));
            return restart(hub, room, st, current);
        }
    };
    for e in range.entries {
        let Some((_, last)) = st.state.clone() else {
            break;
        };
        if e.offset <= last {
            continue;
        }
        if e.prev > last {
            break; // the history does not have what is missing
        }
        let frame = live_frame(&e.data, room, &epoch, e.offset);
        let except = st.pending.get(&e.prev).and_then(|p| p.except);
        st.pending.remove(&e.prev);
        deliver(
            hub,
            room,
            &mut st,
            Incoming {
                epoch: Arc::clone(&epoch),
                offset: e.offset,
                prev: e.prev,
                except,
                frame,
            },
        );
        drain(hub, room, &mut st);
    }
    drain(hub, room, &mut st);
    // Something held that does not follow, or the history has more than
    // could be delivered (more than the recovery limit, or entries whose
    // predecessors it no longer has): a gap that stays.
    let behind = st.state.as_ref().is_some_and(|(_, last)| *last < range.top);
    if !st.pending.is_empty() || behind {
        drop(st);
        give_up(hub, room, &s);
    } else if st.resync {
        // Asked again while this fill was reading.
        st.filling = true;
        drop(st);
        spawn_fill(hub, room, Duration::ZERO);
    }
}

/// The room's history is not the one its members' positions refer to (or
/// cannot be read): the stream continues from `current` (`None`: read
/// when next needed), and the members reconnect and recover.
fn restart(
    hub: &Arc<HubInner>,
    room: &str,
    mut st: std::sync::MutexGuard<'_, Stream>,
    current: Option<(Arc<str>, u64)>,
) {
    st.state = current;
    st.pending.clear();
    drop(st);
    hub.metrics.incr("history_epoch_changes");
    reset_members(hub, room, "history epoch changed: reconnect and recover");
}

/// A gap the history cannot fill: the members reconnect and recover; the
/// stream continues after what is held.
fn give_up(hub: &Arc<HubInner>, room: &str, s: &Arc<Mutex<Stream>>) {
    {
        let mut st = lock(s);
        let top = st.pending.values().map(|p| p.offset).max();
        if let (Some((_, last)), Some(top)) = (&mut st.state, top) {
            *last = (*last).max(top);
        }
        st.pending.clear();
        st.filling = false;
    }
    hub.metrics.incr("history_gaps_unfilled");
    reset_members(hub, room, "missed publications: reconnect and recover");
}

fn reset_members(hub: &Arc<HubInner>, room: &str, reason: &str) {
    tracing::warn!(%room, reason, "closing a room's members so that they recover");
    for client in hub.rooms.local_members(room) {
        client.close(CLOSE_STREAM_GAP, reason);
    }
}
