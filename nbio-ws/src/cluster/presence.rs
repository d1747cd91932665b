//! Presence across instances: who is in which room on the *other*
//! instances, replicated through the broker.
//!
//! Each instance owns the memberships of its own clients (see
//! [`rooms`](crate::hub::rooms)) and tells the others about them on the presence
//! channel (`{WS_PUBSUB_CHANNEL}.presence`); each instance keeps a replica
//! of every other instance's memberships, so that
//! [`Hub::members`](crate::Hub::members) answers from memory, for any
//! room, without a round trip. The scheme is the one of Phoenix's
//! presence tracker, simplified to one writer per entry:
//!
//! - **Deltas.** Every join and leave on an instance bumps its *presence
//!   version* and is published with it (`Join`/`Leave`). A replica applies
//!   a delta that is next in line; one that skips versions (or a hole in
//!   the presence channel's sequence numbers) means something was lost on
//!   the way (pub/sub is at-most-once), so it is applied and the replica
//!   asks for a snapshot — again at every heartbeat (at most every
//!   `ttl / 3`) until one is applied.
//! - **Heartbeats.** Every `ttl / 3` an instance publishes its version and
//!   its TTL. A replica whose version differs asks for a snapshot; one that
//!   hears nothing from an instance for `ttl` drops everything that
//!   instance had (it crashed or lost the broker), which heals presence
//!   after a crash.
//! - **Snapshots.** On request (`SyncRequest`, also sent by every instance
//!   when it starts), an instance publishes all its memberships, in
//!   numbered parts of at most 256 KiB; a replica that received every part
//!   in order replaces what it had for that instance and emits the
//!   differences as events (so a member who was there all along but unknown
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::envelope::{Presence, SnapshotMembers};
use crate::broker::DEFAULT_PRESENCE_TTL as DEFAULT_TTL;
use crate::types::{ClientId, Member, PresenceEvent};

/// Most bytes of members in one snapshot part.
pub(crate) const SNAPSHOT_PART_BYTES: usize = 256 * 1024;

/// What the replica asks its caller to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Nothing.
    None,
    /// Ask this origin for its snapshot.
    AskSnapshot(u64),
    /// Publish our own snapshot.
    SendSnapshot,
}

/// What one other instance has, as far as this one knows.
struct Origin {
    /// The last version applied.
    version: u64,
    /// Whether any versioned entry (delta or snapshot) was applied.
    seen: bool,
    /// Whether a snapshot was ever applied (deltas alone may miss some).
    synced: bool,
    /// Whether something may be missing since (a skipped version, a hole
    /// in the channel, a broken snapshot): heartbeats keep asking for a
    /// snapshot until one is applied.
    needs_sync: bool,
    expires: Instant,
    ttl: Duration,
    rooms: HashMap<Arc<str>, HashMap<ClientId, serde_json::Value>>,
    /// A snapshot being received.
    pending: Option<Pending>,
    /// When a snapshot was last asked for.
    asked: Option<Instant>,
}

/// The parts of a snapshot received so far, in order.
struct Pending {
    version: u64,
    next_part: u32,
    members: SnapshotMembers,
}

impl Origin {
    fn new(ttl: Duration, now: Instant) -> Origin {
        Origin {
            version: 0,
            seen: false,
            synced: false,
            needs_sync: false,
            expires: now + ttl,
            ttl,
            rooms: HashMap::new(),
            pending: None,
            asked: None,
        }
    }

    /// Asks for a snapshot unless one was asked for recently.
    fn ask(&mut self, origin: u64, now: Instant) -> Reply {
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        if self.asked.is_some_and(|at| now < at + every) {
            return Reply::None;
        }
        self.asked = Some(now);
        Reply::AskSnapshot(origin)
    }

    fn count(&self) -> usize {
        self.rooms.values().map(HashMap::len).sum()
    }

    /// Whether deltas are trusted to be complete.
    fn complete(&self) -> bool {
        self.synced && !self.needs_sync
    }

    /// Bookkeeping of a delta's version; `false` if it was seen already.
    fn take_version(&mut self, version: u64) -> bool {
        if self.seen && version <= self.version {
            return false;
        }
        if self.version.checked_add(1) != Some(version) {
            self.needs_sync = true; // something in between was lost
        }
        self.version = self.version.max(version);
        self.seen = true;
        true
    }

    /// What to reply after a delta.
    fn after_delta(&mut self, origin: u64, now: Instant) -> Reply {
        if self.complete() {
            Reply::None
        } else {
            self.ask(origin, now)
        }
    }
}

/// The replica of the other instances' memberships.
pub(crate) struct Replica {
    origins: Mutex<HashMap<u64, Origin>>,
    /// The TTL assumed for an instance until its heartbeat tells.
    default_ttl: Duration,
}

impl Default for Replica {
    fn default() -> Self {
        Replica::new(DEFAULT_TTL)
    }
}

fn meta_of(json: &[u8]) -> serde_json::Value {
    serde_json::from_slice(json).unwrap_or(serde_json::Value::Null)
}

fn joined(room: &Arc<str>, client: ClientId, meta: serde_json::Value) -> PresenceEvent {
    PresenceEvent::Joined {
        room: room.to_string(),
        member: Member { client, meta },
        remote: true,
    }
}

fn left(room: &Arc<str>, client: ClientId, meta: serde_json::Value) -> PresenceEvent {
    PresenceEvent::Left {
        room: room.to_string(),
        member: Member { client, meta },
        remote: true,
    }
}

impl Replica {
    pub(crate) fn new(default_ttl: Duration) -> Replica {
        Replica {
            origins: Mutex::new(HashMap::new()),
            default_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Origin>> {
        self.origins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one presence entry from `origin`; events for what changed
    /// go to `events`.
    pub(crate) fn apply(
        &self,
        me: u64,
        origin: u64,
        entry: Presence,
        events: &broadcast::Sender<PresenceEvent>,
    ) -> Reply {
        let now = Instant::now();
        let mut origins = self.lock();
        if let Presence::SyncRequest { target } = entry {
            // Hearing from an instance says nothing about its members.
            return if target == 0 || target == me {
                Reply::SendSnapshot
            } else {
                Reply::None
            };
        }
        if matches!(entry, Presence::Gone) {
            if let Some(o) = origins.remove(&origin) {
                emit_all_left(o, events);
            }
            return Reply::None;
        }
        let o = origins
            .entry(origin)
            .or_insert_with(|| Origin::new(self.default_ttl, now));
        o.expires = now + o.ttl;
        match entry {
            Presence::Join {
                version,
                room,
                client,
                meta,
            } => {
                if !o.take_version(version) {
                    return Reply::None; // seen already
                }
                let meta = meta_of(&meta);
                let members = o.rooms.entry(Arc::clone(&room)).or_default();
                if members.insert(client, meta.clone()).is_none() {
                    let _ = events.send(joined(&room, client, meta));
                }
                o.after_delta(origin, now)
            }
            Presence::Leave {
                version,
                room,
                client,
            } => {
                if !o.take_version(version) {
                    return Reply::None;
                }
                if let Some(members) = o.rooms.get_mut(&room) {
                    if let Some(meta) = members.remove(&client) {
                        let _ = events.send(left(&room, client, meta));
                    }
                    if members.is_empty() {
                        o.rooms.remove(&room);
                    }
                }
                o.after_delta(origin, now)
            }
            Presence::Heartbeat { version, ttl_ms } => {
                o.ttl = Duration::from_millis(u64::from(ttl_ms.max(100)));
                o.expires = now + o.ttl;
                if !o.seen && version == 0 && o.pending.is_none() {
                    // An instance with no members yet: nothing to fetch.
                    o.seen = true;
                    o.synced = true;
                }
                if o.complete() && version == o.version {
                    Reply::None
                } else {
                    o.ask(origin, now)
                }
            }
            Presence::Snapshot {
                version,
                part,
                parts,
                members,
            } => {
                if o.seen && version < o.version {
                    // Older than deltas already applied.
                    o.pending = None;
                    return o.after_delta(origin, now);
                }
                let pending = match o.pending.take() {
                    _ if part == 0 => Pending {
                        version,
                        next_part: 1,
                        members,
                    },
                    Some(mut p) if p.version == version && p.next_part == part => {
                        p.members.extend(members);
                        p.next_part += 1;
                        p
                    }
                    _ => {
                        // A part is missing: this snapshot is unusable.
                        o.needs_sync = true;
                        return o.ask(origin, now);
                    }
                };
                if pending.next_part < parts {
                    o.pending = Some(pending);
                    return Reply::None;
                }
                let mut fresh: HashMap<Arc<str>, HashMap<ClientId, serde_json::Value>> =
                    HashMap::new();
                for (room, client, meta) in pending.members {
                    fresh
                        .entry(room)
                        .or_default()
                        .insert(client, meta_of(&meta));
                }
                // Events for the differences, leaves first.
                for (room, members) in &o.rooms {
                    for (client, meta) in members {
                        if !fresh.get(room).is_some_and(|m| m.contains_key(client)) {
                            let _ = events.send(left(room, *client, meta.clone()));
                        }
                    }
                }
                for (room, members) in &fresh {
                    for (client, meta) in members {
                        if !o.rooms.get(room).is_some_and(|m| m.contains_key(client)) {
                            let _ = events.send(joined(room, *client, meta.clone()));
                        }
                    }
                }
                o.rooms = fresh;
                o.version = version;
                o.seen = true;
                o.synced = true;
                o.needs_sync = false;
                o.asked = None; // answered
                Reply::None
            }
            Presence::SyncRequest { .. } | Presence::Gone => Reply::None,
        }
    }

    /// Notes that something from `origin` was lost on the way (a hole in
    /// the presence channel's sequence numbers): its heartbeats will ask
    /// for a snapshot until one is applied.
    pub(crate) fn mark_gap(&self, origin: u64) {
        if let Some(o) = self.lock().get_mut(&origin) {
            o.needs_sync = true;
        }
    }

    /// Drops the instances not heard from within their TTL.
    pub(crate) fn expire(&self, events: &broadcast::Sender<PresenceEvent>) -> usize {
        let now = Instant::now();
        let mut origins = self.lock();
        let dead: Vec<u64> = origins
            .iter()
            .filter(|(_, o)| o.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            if let Some(o) = origins.remove(id) {
                tracing::info!(
                    instance = format_args!("{id:016x}"),
                    members = o.count(),
                    "presence: instance silent for its TTL; dropping its members"
                );
                emit_all_left(o, events);
            }
        }
        dead.len()
    }

    /// The members of `room` on the other instances (live ones only).
    pub(crate) fn members(&self, room: &str, out: &mut Vec<Member>) {
        let now = Instant::now();
        for o in self.lock().values() {
            if o.expires <= now {
                continue;
            }
            if let Some(members) = o.rooms.get(room) {
                out.extend(members.iter().map(|(client, meta)| Member {
                    client: *client,
                    meta: meta.clone(),
                }));
            }
        }
    }

    /// How many members of other instances the replica holds.
    pub(crate) fn len(&self) -> usize {
        self.lock().values().map(Origin::count).sum()
    }

    /// How many other instances the replica knows.
    pub(crate) fn instances(&self) -> usize {
        self.lock().len()
    }
}

fn emit_all_left(o: Origin, events: &broadcast::Sender<PresenceEvent>) {
    for (room, members) in o.rooms {
        for (client, meta) in members {
            let _ = events.send(left(&room, client, meta));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn join(version: u64, room: &str, client: u64) -> Presence {
        Presence::Join {
            version,
            room: Arc::from(room),
            client: ClientId::from_parts(9, client),
            meta: Bytes::from_static(br#"{"nick":"x"}"#),
        }
    }

    fn names(replica: &Replica, room: &str) -> Vec<u64> {
        let mut out = Vec::new();
        replica.members(room, &mut out);
        let mut ids: Vec<u64> = out.iter().map(|m| m.client.counter()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn deltas_snapshots_and_gaps() {
        let r = Replica::new(Duration::from_secs(10));
        let (events, mut rx) = broadcast::channel(64);
        // A first delta from an unknown instance is applied, and a
        // snapshot asked for.
        assert_eq!(
            r.apply(1, 9, join(1, "a", 100), &events),
            Reply::AskSnapshot(9)
        );
        assert_eq!(names(&r, "a"), [100]);
        // The snapshot replaces: 100 left, 101 is there.
        let snap = Presence::Snapshot {
            version: 2,
            part: 0,
            parts: 1,
            members: vec![(
                Arc::from("a"),
                ClientId::from_parts(9, 101),
                Bytes::from_static(b"null"),
            )],
        };
        assert_eq!(r.apply(1, 9, snap, &events), Reply::None);
        assert_eq!(names(&r, "a"), [101]);
        // In line: applied, nothing asked.
        assert_eq!(r.apply(1, 9, join(3, "a", 102), &events), Reply::None);
        // Stale: ignored.
        assert_eq!(r.apply(1, 9, join(3, "a", 103), &events), Reply::None);
        assert_eq!(names(&r, "a"), [101, 102]);
        // A gap: applied, and a snapshot asked for (once in a while).
        assert_eq!(
            r.apply(1, 9, join(5, "a", 104), &events),
            Reply::AskSnapshot(9)
        );
        assert_eq!(r.apply(1, 9, join(6, "a", 105), &events), Reply::None);
        // Until a snapshot is applied, heartbeats keep asking (at most every
        // ttl / 3: not again yet); sync requests for us or all ask for our
        // snapshot.
        let hb = Presence::Heartbeat {
            version: 6,
            ttl_ms: 10_000,
        };
        assert_eq!(r.apply(1, 9, hb, &events), Reply::None);
        let q = |target| Presence::SyncRequest { target };
        assert_eq!(r.apply(1, 9, q(0), &events), Reply::SendSnapshot);
        assert_eq!(r.apply(1, 9, q(1), &events), Reply::SendSnapshot);
        assert_eq!(r.apply(1, 9, q(2), &events), Reply::None);
        // Goodbye: everything of 9 leaves.
        assert_eq!(r.apply(1, 9, Presence::Gone, &events), Reply::None);
        assert!(names(&r, "a").is_empty());
        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            seen.push(match e {
                PresenceEvent::Joined { member, .. } => format!("+{}", member.client.counter()),
                PresenceEvent::Left { member, .. } => format!("-{}", member.client.counter()),
            });
        }
        assert_eq!(seen[..6], ["+100", "-100", "+101", "+102", "+104", "+105"]);
        let mut gone = seen[6..].to_vec();
        gone.sort();
        assert_eq!(gone, ["-101", "-102", "-104", "-105"]);
        assert_eq!(seen.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_instances_expire() {
        let r = Replica::new(Duration::from_secs(3));
        let (events, mut rx) = broadcast::channel(64);
        r.apply(1, 9, join(1, "a", 100), &events);
        let hb = Presence::Heartbeat {
            version: 1,
            ttl_ms: 1_000,
        };
        r.apply(1, 9, hb, &events);
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(r.expire(&events), 0);
        assert_eq!(names(&r, "a"), [100]);
        tokio::time::advance(Duration::from_millis(200)).await;
        // Not served once expired, even before the sweep.
        assert!(names(&r, "a").is_empty());
        assert_eq!(r.expire(&events), 1);
        assert_eq!(r.instances(), 0);
        let _ = rx.try_recv(); // +100
        assert!(matches!(rx.try_recv(), Ok(PresenceEvent::Left { .. })));
    }

    #[tokio::test]
    async fn snapshots_in_parts() {
        let r = Replica::new(Duration::from_secs(10));
        let (events, _rx) = broadcast::channel(64);
        let part = |part, client| Presence::Snapshot {
            version: 4,
            part,
            parts: 2,
            members: vec![(
                Arc::from("a"),
                ClientId::from_parts(9, client),
                Bytes::from_static(b"{}"),
            )],
        };
        r.apply(1, 9, part(0, 1), &events);
        assert!(
            names(&r, "a").is_empty(),
            "not applied before the last part"
        );
        r.apply(1, 9, part(1, 2), &events);
        assert_eq!(names(&r, "a"), [1, 2]);
        assert_eq!(r.len(), 2);
        // A last part without the first is refused, and a snapshot asked for.
        let r = Replica::new(Duration::from_secs(10));
        assert_eq!(r.apply(1, 9, part(1, 2), &events), Reply::AskSnapshot(9));
        assert!(names(&r, "a").is_empty());
    }
}
