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
//! - **Deltas.** Every join and leave on an instance takes the next
//!   *presence version* of that instance and is published with it
//!   (`Join`/`Leave`). Versions are taken under the room's own lock, so
//!   the deltas of one room go out in version order, while those of
//!   different rooms may interleave. A replica keeps, per room, the version
//!   of the last delta it applied, and ignores a delta that is not newer.
//!   A hole in the presence channel's sequence numbers means something was
//!   lost on the way (pub/sub is at-most-once): the replica asks for a
//!   snapshot — again at every heartbeat (at most every `ttl / 3`) until
//!   one is applied. A delta the instance could not even queue (its
//!   publish queue was full) makes it publish a snapshot by itself.
//! - **Heartbeats.** Every `ttl / 3` an instance publishes the highest
//!   version it has queued, and its TTL. A replica that has not seen that
//!   version asks for a snapshot; one that hears nothing from an instance
//!   for `ttl` drops everything that instance had (it crashed or lost the
//!   broker), which heals presence after a crash.
//! - **Snapshots.** On request (`SyncRequest`, also sent by every instance
//!   when it starts), an instance publishes all its memberships, in
//!   numbered parts of at most 256 KiB, without stopping joins: each
//!   member carries its room's version, and the snapshot the version
//!   before it was taken (`since`). A replica that received every part in
//!   order merges it room by room: a room it knows at a newer version than
//!   the snapshot's (a delta that came after that room was read) is kept,
//!   every other room is replaced, and a room missing from the snapshot is
//!   dropped unless a delta newer than `since` touched it. Rooms emptied by
//!   a leave are remembered (as versions) for `ttl`, so that a snapshot
//!   read before the leave cannot bring the member back. The differences
//!   are emitted as events (a member who was there all along but unknown
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

/// A room of another instance, as far as this one knows.
#[derive(Default)]
struct RoomReplica {
    /// The version of the last delta (or snapshot) applied to it.
    version: u64,
    members: HashMap<ClientId, serde_json::Value>,
    /// When a leave emptied it: an empty room is kept (for its version)
    /// until `ttl` after that.
    emptied: Option<Instant>,
}

/// What one other instance has, as far as this one knows.
struct Origin {
    /// The highest version applied (deltas, and the `since` of snapshots).
    version: u64,
    /// Whether any versioned entry (delta or snapshot) was applied.
    seen: bool,
    /// Whether a snapshot was ever applied (deltas alone may miss some).
    synced: bool,
    /// Whether something may be missing since (a hole in the channel, a
    /// broken snapshot): heartbeats keep asking for a snapshot until one
    /// is applied.
    needs_sync: bool,
    expires: Instant,
    ttl: Duration,
    rooms: HashMap<Arc<str>, RoomReplica>,
    /// A snapshot being received.
    pending: Option<Pending>,
    /// When a snapshot was last asked for.
    asked: Option<Instant>,
}

/// The parts of a snapshot received so far, in order.
struct Pending {
    since: u64,
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
        self.rooms.values().map(|r| r.members.len()).sum()
    }

    /// Whether deltas are trusted to be complete.
    fn complete(&self) -> bool {
        self.synced && !self.needs_sync
    }

    /// The room a delta of `version` applies to, unless the replica has
    /// it at that version or a newer one already.
    fn room_for(&mut self, room: Arc<str>, version: u64) -> Option<&mut RoomReplica> {
        self.version = self.version.max(version);
        self.seen = true;
        let r = self.rooms.entry(room).or_default();
        if r.version >= version {
            return None; // seen already, or older than a snapshot
        }
        r.version = version;
        Some(r)
    }

    /// What to reply after a delta.
    fn after_delta(&mut self, origin: u64, now: Instant) -> Reply {
        if self.complete() {
            Reply::None
        } else {
            self.ask(origin, now)
        }
    }

    /// Forgets the emptied rooms older than `ttl` (and those a snapshot
    /// newer than them made moot).
    fn prune(&mut self, now: Instant, covered_by: Option<u64>) {
        let ttl = self.ttl;
        self.rooms.retain(|_, r| match r.emptied {
            None => !r.members.is_empty(),
            Some(at) => now < at + ttl && covered_by.is_none_or(|since| r.version > since),
        });
    }

    /// Merges a complete snapshot (see the module docs); events for what
    /// changed go to `events`.
    fn merge(
        &mut self,
        since: u64,
        members: SnapshotMembers,
        now: Instant,
        events: &broadcast::Sender<PresenceEvent>,
    ) {
        let mut fresh: HashMap<Arc<str>, RoomReplica> = HashMap::new();
        for (room, version, client, meta) in members {
            let r = fresh.entry(room).or_default();
            r.version = r.version.max(version);
            r.members.insert(client, meta_of(&meta));
        }
        let mut merged: HashMap<Arc<str>, RoomReplica> = HashMap::with_capacity(fresh.len());
        // Leaves first, then joins.
        let mut joins = Vec::new();
        for (room, cur) in std::mem::take(&mut self.rooms) {
            match fresh.remove(&room) {
                Some(new) if new.version >= cur.version => {
                    for (client, meta) in &cur.members {
                        if !new.members.contains_key(client) {
                            let _ = events.send(left(&room, *client, meta.clone()));
                        }
                    }
                    for (client, meta) in &new.members {
                        if !cur.members.contains_key(client) {
                            joins.push(joined(&room, *client, meta.clone()));
                        }
                    }
                    merged.insert(room, new);
                }
                // The replica's is newer: a delta after that room was read.
                Some(_) => {
                    merged.insert(room, cur);
                }
                None if cur.version > since => {
                    merged.insert(room, cur);
                }
                None => {
                    for (client, meta) in cur.members {
                        let _ = events.send(left(&room, client, meta));
                    }
                }
            }
        }
        for (room, new) in fresh {
            for (client, meta) in &new.members {
                joins.push(joined(&room, *client, meta.clone()));
            }
            merged.insert(room, new);
        }
        for e in joins {
            let _ = events.send(e);
        }
        self.rooms = merged;
        self.prune(now, Some(since));
        self.version = self.version.max(since);
        self.seen = true;
        self.synced = true;
        self.needs_sync = false;
        self.asked = None; // answered
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
                if let Some(r) = o.room_for(Arc::clone(&room), version) {
                    let meta = meta_of(&meta);
                    r.emptied = None;
                    if r.members.insert(client, meta.clone()).is_none() {
                        let _ = events.send(joined(&room, client, meta));
                    }
                }
                o.after_delta(origin, now)
            }
            Presence::Leave {
                version,
                room,
                client,
            } => {
                if let Some(r) = o.room_for(Arc::clone(&room), version) {
                    if let Some(meta) = r.members.remove(&client) {
                        let _ = events.send(left(&room, client, meta));
                    }
                    if r.members.is_empty() {
                        r.emptied = Some(now);
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
                o.prune(now, None);
                if o.complete() && version <= o.version {
                    Reply::None
                } else {
                    o.ask(origin, now)
                }
            }
            Presence::Snapshot {
                since,
                part,
                parts,
                members,
            } => {
                let pending = match o.pending.take() {
                    _ if part == 0 => Pending {
                        since,
                        next_part: 1,
                        members,
                    },
                    Some(mut p) if p.since == since && p.next_part == part => {
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
                o.merge(pending.since, pending.members, now, events);
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
            if let Some(r) = o.rooms.get(room) {
                out.extend(r.members.iter().map(|(client, meta)| Member {
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
    for (room, r) in o.rooms {
        for (client, meta) in r.members {
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

    fn leave(version: u64, room: &str, client: u64) -> Presence {
        Presence::Leave {
            version,
            room: Arc::from(room),
            client: ClientId::from_parts(9, client),
        }
    }

    fn snapshot(since: u64, members: &[(&str, u64, u64)]) -> Presence {
        Presence::Snapshot {
            since,
            part: 0,
            parts: 1,
            members: members
                .iter()
                .map(|(room, version, client)| {
                    (
                        Arc::from(*room),
                        *version,
                        ClientId::from_parts(9, *client),
                        Bytes::from_static(b"null"),
                    )
                })
                .collect(),
        }
    }

    fn seen(rx: &mut broadcast::Receiver<PresenceEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(match e {
                PresenceEvent::Joined { member, room, .. } => {
                    format!("+{room}{}", member.client.counter())
                }
                PresenceEvent::Left { member, room, .. } => {
                    format!("-{room}{}", member.client.counter())
                }
            });
        }
        out
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
        // The snapshot is newer for room a: it replaces (100 left, 101 is
        // there).
        assert_eq!(
            r.apply(1, 9, snapshot(2, &[("a", 2, 101)]), &events),
            Reply::None
        );
        assert_eq!(names(&r, "a"), [101]);
        // Newer for its room: applied, nothing asked.
        assert_eq!(r.apply(1, 9, join(3, "a", 102), &events), Reply::None);
        // Not newer than what room a has: ignored.
        assert_eq!(r.apply(1, 9, join(3, "a", 103), &events), Reply::None);
        assert_eq!(r.apply(1, 9, join(2, "a", 103), &events), Reply::None);
        assert_eq!(names(&r, "a"), [101, 102]);
        // Versions of different rooms interleave: a lower version in
        // another room is applied.
        assert_eq!(r.apply(1, 9, join(5, "a", 104), &events), Reply::None);
        assert_eq!(r.apply(1, 9, join(4, "b", 105), &events), Reply::None);
        assert_eq!(names(&r, "b"), [105]);
        // In sync: a heartbeat at the version seen asks nothing; one ahead
        // of it (the last delta was lost) asks for a snapshot.
        let hb = |version| Presence::Heartbeat {
            version,
            ttl_ms: 10_000,
        };
        assert_eq!(r.apply(1, 9, hb(5), &events), Reply::None);
        assert_eq!(r.apply(1, 9, hb(6), &events), Reply::AskSnapshot(9));
        // A hole in the channel: heartbeats keep asking (at most every
        // ttl / 3: not again yet) until a snapshot is applied.
        r.mark_gap(9);
        assert_eq!(r.apply(1, 9, hb(5), &events), Reply::None);
        // Sync requests for us or all ask for our snapshot.
        let q = |target| Presence::SyncRequest { target };
        assert_eq!(r.apply(1, 9, q(0), &events), Reply::SendSnapshot);
        assert_eq!(r.apply(1, 9, q(1), &events), Reply::SendSnapshot);
        assert_eq!(r.apply(1, 9, q(2), &events), Reply::None);
        // Goodbye: everything of 9 leaves.
        assert_eq!(r.apply(1, 9, Presence::Gone, &events), Reply::None);
        assert!(names(&r, "a").is_empty());
        let events = seen(&mut rx);
        assert_eq!(
            events[..6],
            ["+a100", "-a100", "+a101", "+a102", "+a104", "+b105"]
        );
        let mut gone = events[6..].to_vec();
        gone.sort();
        assert_eq!(gone, ["-a101", "-a102", "-a104", "-b105"]);
    }

    /// A snapshot is read while joins and leaves go on: what a delta
    /// changed after its room was read survives the merge.
    #[tokio::test]
    async fn snapshots_merge_with_newer_deltas() {
        let r = Replica::new(Duration::from_secs(10));
        let (events, mut rx) = broadcast::channel(64);
        r.apply(1, 9, snapshot(0, &[]), &events);
        // Before the next snapshot arrives: 1 joins a (v11), 2 leaves b
        // (v12, after b was read with 2 in it at v3), 3 joins c (v13,
        // after the walk began at 10, c read empty).
        r.apply(1, 9, join(1, "b", 2), &events);
        r.apply(1, 9, join(2, "old", 4), &events);
        r.apply(1, 9, join(11, "a", 1), &events);
        r.apply(1, 9, leave(12, "b", 2), &events);
        r.apply(1, 9, join(13, "c", 3), &events);
        let _ = seen(&mut rx);
        // The snapshot (walk began at version 10) read a at v5 without 1,
        // b at v3 with 2, no c, and d at v9; room "old" (v2 here) was gone
        // by then.
        let snap = snapshot(10, &[("a", 5, 7), ("b", 3, 2), ("d", 9, 8)]);
        assert_eq!(r.apply(1, 9, snap, &events), Reply::None);
        assert_eq!(names(&r, "a"), [1], "a's delta is newer than the read");
        assert!(names(&r, "b").is_empty(), "the leave is not undone");
        assert_eq!(names(&r, "c"), [3], "c's join came after the walk began");
        assert_eq!(names(&r, "d"), [8]);
        assert!(names(&r, "old").is_empty(), "covered by the snapshot");
        let mut got = seen(&mut rx);
        got.sort();
        assert_eq!(got, ["+d8", "-old4"]);
        // A later snapshot that has a again at a newer version wins.
        r.apply(1, 9, snapshot(20, &[("a", 15, 7)]), &events);
        assert_eq!(names(&r, "a"), [7]);
        assert!(names(&r, "c").is_empty() && names(&r, "d").is_empty());
        assert_eq!(r.len(), 1);
    }

    /// Rooms emptied by a leave are remembered for the TTL only.
    #[tokio::test(start_paused = true)]
    async fn emptied_rooms_are_forgotten_after_the_ttl() {
        let r = Replica::new(Duration::from_secs(1));
        let (events, _rx) = broadcast::channel(1024);
        r.apply(1, 9, snapshot(0, &[]), &events);
        for i in 0..100 {
            let room = format!("r{i}");
            r.apply(1, 9, join(2 * i + 1, &room, i), &events);
            r.apply(1, 9, leave(2 * i + 2, &room, i), &events);
        }
        let rooms = |r: &Replica| r.lock().get(&9).map_or(0, |o| o.rooms.len());
        assert_eq!(rooms(&r), 100);
        tokio::time::advance(Duration::from_millis(1100)).await;
        let hb = Presence::Heartbeat {
            version: 200,
            ttl_ms: 1000,
        };
        assert_eq!(r.apply(1, 9, hb, &events), Reply::None);
        assert_eq!(rooms(&r), 0);
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
            since: 4,
            part,
            parts: 2,
            members: vec![(
                Arc::from("a"),
                3,
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
