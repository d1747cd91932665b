//! Rooms and presence: named groups of clients, fan-out to a room, and
//! who is in it — on this instance and, with a broker, on all of them.
//!
//! ```
//! # async fn demo(client: nbio_ws::Client, hub: nbio_ws::Hub) -> Result<(), nbio_ws::JoinError> {
//! use serde_json::json;
//!
//! client.join_with("lobby", json!({"nick": "ada"}))?; // Err past a limit
//! // Everyone in the lobby but the sender, serialized once:
//! hub.to("lobby").except(client.id()).notify("chat.message", &json!({"text": "hi"})).ok();
//! let members = hub.members("lobby").await;
//! assert!(members.iter().any(|m| m.client == client.id()));
//! client.leave("lobby");
//! # Ok(()) }
//! ```
//!
//! Membership lives on the instance the client is connected to and is
//! dropped when the client disconnects; every join and leave (including
//! those caused by a disconnect) is published as a [`PresenceEvent`] on
//! [`Hub::presence_events`]. Each member carries the JSON `meta` it joined
//! with (a nickname, a user id), which is what [`Hub::members`] reports.
//!
//! ## Across instances
//!
//! With a [broker](crate::broker), rooms span every instance that shares
//! it:
//!
//! - **Messages.** [`Hub::to`] delivers to the local members at once and
//!   publishes the message (serialized once) on the room's own channel,
//!   `{WS_PUBSUB_CHANNEL}.room.{room}`. An instance subscribes to that
//!   channel when the room's first local member joins and unsubscribes when
//!   the last one leaves, so it receives traffic only for rooms it has
//!   members in — one Redis `SUBSCRIBE` (on one shared connection) or one
//!   NATS subscription per such room, not a firehose.
//!   [`Hub::room_ready`] waits until the subscription is confirmed.
//! - **Presence.** Joins and leaves are replicated to every instance on
//!   `{WS_PUBSUB_CHANNEL}.presence` (small entries: room, client id, meta),
//!   with heartbeats and snapshots so that it heals after lost messages and
//!   after an instance crashes (its members expire after the presence TTL,
//!   15 s by default, `WS_PRESENCE_TTL`). So [`Hub::members`] lists the
//!   members of every instance, answered from memory, and
//!   [`Hub::presence_events`] reports remote joins and leaves (and
//!   expiries) too. The model is eventual consistency; see
//!   [`presence`](crate::cluster::presence) for the protocol and its timings.
//!
//! ## Limits
//!
//! Rooms per client (`WS_MAX_ROOMS_PER_CLIENT`), room-name length and
//! presence-data size are checked by [`Rooms::join`] before anything
//! changes; a refusal is a [`JoinError`] (see the crate docs, "Rooms and
//! presence", for the defaults and what the caller sees).
//!
//! ## Concurrency
//!
//! The registry is a sharded map from room name to members (with the
//! room's presence version), plus, per client, the list of its rooms (so a
//! disconnect leaves them all without a scan). A join or leave locks one
//! shard of each: joins, leaves and disconnects of different rooms do not
//! wait for each other, and a room's presence deltas are numbered and
//! queued for the broker under its own lock, so they go out in order.
//! Snapshots for the other instances walk the map one shard at a time,
//! copying reference-counted names and pre-serialized `meta`; they are cut
//! into parts and encoded after the walk, outside every lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::broadcast;

use super::client::{Client, Outbound};
use super::Hub;
use crate::cluster::envelope::{Entry as Wire, Presence, SnapshotMembers};
use crate::cluster::presence::{Replica, Reply};
use crate::cluster::Link;
use crate::deflate::SharedText;
use crate::history::{HistoryError, Position, Recovery};
use crate::jsonrpc::{self, RpcError};
use crate::types::{BroadcastError, ClientId, JoinError, Member, PresenceEvent};

impl From<JoinError> for RpcError {
    fn from(e: JoinError) -> RpcError {
        let mut data = serde_json::json!({ "reason": e.reason(), "detail": e.to_string() });
        if let Some(limit) = e.limit() {
            data["limit"] = limit.into();
        }
        RpcError::new(RpcError::JOIN_REFUSED, "Join refused").with_data(data)
    }
}

/// One local member.
struct Entry {
    client: Client,
    meta: serde_json::Value,
    /// `meta` serialized, as presence entries and snapshots carry it.
    meta_json: Bytes,
}

/// The local members of one room.
#[derive(Default)]
struct Room {
    /// The presence version of the room's last join or leave.
    version: u64,
    members: HashMap<ClientId, Entry>,
}

/// The room registry of one hub.
pub(crate) struct Rooms {
    rooms: DashMap<Arc<str>, Room>,
    /// Each client's rooms, in the order it joined them. A client's entry
    /// is locked while it joins, so a disconnect ([`Rooms::leave_all`])
    /// comes either after the join (and undoes it) or before (and the
    /// join is refused).
    by_client: DashMap<ClientId, Vec<Arc<str>>>,
    events: broadcast::Sender<PresenceEvent>,
    /// The last presence version taken: every local join and leave takes
    /// the next one, under its room's lock.
    version: AtomicU64,
    /// The highest version queued for the broker (what heartbeats carry):
    /// everything up to it is on its way to the other instances.
    published: AtomicU64,
    max_rooms_per_client: usize,
    /// The other instances' members.
    remote: Replica,
    /// The sequencers of rooms with history.
    pub(crate) streams: super::streams::Streams,
}

impl Default for Rooms {
    fn default() -> Self {
        Rooms::new(Client::DEFAULT_MAX_ROOMS_PER_CLIENT)
    }
}

fn meta_json(meta: &serde_json::Value) -> Bytes {
    serde_json::to_vec(meta)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"null"))
}

impl Rooms {
    pub(crate) fn new(max_rooms_per_client: usize) -> Rooms {
        Rooms {
            rooms: DashMap::new(),
            by_client: DashMap::new(),
            events: broadcast::channel(1024).0,
            version: AtomicU64::new(0),
            published: AtomicU64::new(0),
            max_rooms_per_client: max_rooms_per_client.max(1),
            remote: Replica::default(),
            streams: super::streams::Streams::default(),
        }
    }

    /// Takes the next presence version; call with the room locked.
    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Queues a presence delta for the other instances; call with the
    /// room locked, right after [`Rooms::next_version`].
    fn publish(&self, link: Option<&Link>, version: u64, entry: Wire) {
        if let Some(link) = link {
            if link.queue(entry) == Ok(true) {
                self.published.fetch_max(version, Ordering::AcqRel);
            }
        }
    }

    fn join(
        &self,
        hub: &Hub,
        client: &Client,
        room: &str,
        meta: serde_json::Value,
    ) -> Result<bool, JoinError> {
        if room.len() > Client::MAX_ROOM_NAME_BYTES {
            return Err(JoinError::RoomNameTooLong {
                max: Client::MAX_ROOM_NAME_BYTES,
            });
        }
        let json = meta_json(&meta);
        if json.len() > Client::MAX_META_BYTES {
            return Err(JoinError::MetaTooLarge {
                max: Client::MAX_META_BYTES,
            });
        }
        let id = client.id();
        let link = hub.link();
        let mut mine = self.by_client.entry(id).or_default();
        let refused = if hub.get(id).is_none() {
            // Disconnected (or never registered): its memberships were
            // dropped, or would never be.
            Some(JoinError::Disconnected)
        } else if !mine.iter().any(|r| &**r == room) && mine.len() >= self.max_rooms_per_client {
            Some(JoinError::TooManyRooms {
                limit: self.max_rooms_per_client,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            let empty = mine.is_empty();
            drop(mine);
            if empty {
                self.by_client.remove_if(&id, |_, rooms| rooms.is_empty());
            }
            return Err(e);
        }
        let member = Entry {
            client: client.clone(),
            meta,
            meta_json: json,
        };
        // The common case, a room that exists, costs no allocation.
        let (name, fresh) = match self.rooms.get_mut(room) {
            Some(mut r) => {
                let name = Arc::clone(r.key());
                let fresh = self.add_member(link, &name, &mut r, member);
                (name, fresh)
            }
            None => match self.rooms.entry(Arc::from(room)) {
                MapEntry::Occupied(mut e) => {
                    let name = Arc::clone(e.key());
                    let fresh = self.add_member(link, &name, e.get_mut(), member);
                    (name, fresh)
                }
                MapEntry::Vacant(e) => {
                    let name = Arc::clone(e.key());
                    let mut r = e.insert(Room::default());
                    // Under the room's lock: ordered with the unsubscribe
                    // of its last leave.
                    if let Some(link) = link {
                        link.room_subscribe(&name);
                    }
                    let fresh = self.add_member(link, &name, &mut r, member);
                    (name, fresh)
                }
            },
        };
        if fresh {
            mine.push(name);
        }
        Ok(fresh)
    }

    /// Adds (or updates) a member of a locked room; whether it is new.
    fn add_member(&self, link: Option<&Link>, name: &Arc<str>, room: &mut Room, e: Entry) -> bool {
        let id = e.client.id();
        let json = e.meta_json.clone();
        let meta = e.meta.clone();
        let previous = room.members.insert(id, e);
        let fresh = previous.is_none();
        // A repeated join with other data tells the other instances (no
        // event: the member did not change).
        if fresh || previous.is_some_and(|p| p.meta_json != json) {
            let version = self.next_version();
            room.version = version;
            self.publish(link, version, Wire::presence_join(version, name, id, json));
        }
        if fresh {
            let _ = self.events.send(PresenceEvent::Joined {
                room: name.to_string(),
                member: Member { client: id, meta },
                remote: false,
            });
        }
        fresh
    }

    fn leave(&self, link: Option<&Link>, id: ClientId, room: &str) -> bool {
        let Some(mut mine) = self.by_client.get_mut(&id) else {
            return false;
        };
        let Some(at) = mine.iter().position(|r| &**r == room) else {
            return false;
        };
        let name = mine.remove(at);
        let removed = self.remove_member(link, id, name);
        let empty = mine.is_empty();
        drop(mine);
        if empty {
            self.by_client.remove_if(&id, |_, rooms| rooms.is_empty());
        }
        removed
    }

    /// Removes a member under its room's lock (and the room, and its
    /// subscription, with the last one).
    fn remove_member(&self, link: Option<&Link>, id: ClientId, name: Arc<str>) -> bool {
        let MapEntry::Occupied(mut e) = self.rooms.entry(name) else {
            return false;
        };
        let Some(gone) = e.get_mut().members.remove(&id) else {
            return false;
        };
        let version = self.next_version();
        e.get_mut().version = version;
        self.publish(link, version, Wire::presence_leave(version, e.key(), id));
        let _ = self.events.send(PresenceEvent::Left {
            room: e.key().to_string(),
            member: Member {
                client: id,
                meta: gone.meta,
            },
            remote: false,
        });
        if e.get().members.is_empty() {
            self.streams.forget(e.key());
            if let Some(link) = link {
                link.room_unsubscribe(e.key());
            }
            e.remove();
        }
        true
    }

    /// Drops every membership of a client (on disconnect).
    pub(crate) fn leave_all(&self, link: Option<&Link>, id: ClientId) {
        if let Some((_, rooms)) = self.by_client.remove(&id) {
            for room in rooms {
                self.remove_member(link, id, room);
            }
        }
    }

    fn rooms_of(&self, id: ClientId) -> Vec<String> {
        self.by_client
            .get(&id)
            .map(|r| r.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }

    fn members(&self, room: &str) -> Vec<Member> {
        let mut out: Vec<Member> = self
            .rooms
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .map(|(id, e)| Member {
                        client: *id,
                        meta: e.meta.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.remote.members(room, &mut out);
        out.sort_by_key(|m| m.client);
        out.dedup_by_key(|m| m.client);
        out
    }

    /// Queues an encoded message for the local members of `room`.
    pub(crate) fn send(&self, room: &str, except: Option<ClientId>, bytes: &Bytes) -> usize {
        let Some(r) = self.rooms.get(room) else {
            return 0;
        };
        let shared = Arc::new(SharedText::new(bytes.clone()));
        r.members
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, e)| e.client.send(Outbound::Shared(Arc::clone(&shared))).is_ok())
            .count()
    }

    /// The local members of `room`.
    pub(crate) fn local_members(&self, room: &str) -> Vec<Client> {
        self.rooms
            .get(room)
            .map(|r| r.members.values().map(|e| e.client.clone()).collect())
            .unwrap_or_default()
    }

    /// How many rooms have members (for tests and metrics).
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The highest presence version queued for the other instances.
    pub(crate) fn presence_version(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Calls `f` for every room that has local members, with the room's
    /// shard locked (so that a subscription made by `f` is ordered with
    /// the unsubscribe of the room's last leave).
    pub(crate) fn local_rooms(&self, f: &mut dyn FnMut(&Arc<str>)) {
        for room in self.rooms.iter() {
            f(room.key());
        }
    }

    /// Hands this instance's memberships to `part`, in parts of about
    /// `part_bytes` (`part(since, members, index, count)`): `since` is
    /// the presence version before the walk, each member carries its
    /// room's version. The walk locks one shard at a time and copies
    /// reference-counted data only; `part` runs after it, outside every
    /// lock, so joins and leaves go on meanwhile.
    pub(crate) fn snapshot(
        &self,
        part_bytes: usize,
        part: &mut dyn FnMut(u64, SnapshotMembers, u32, u32),
    ) {
        let since = self.version.load(Ordering::Acquire);
        let mut parts = vec![Vec::new()];
        let mut bytes = 0;
        for room in self.rooms.iter() {
            for (id, e) in &room.members {
                let size = Wire::snapshot_member_len(room.key(), &e.meta_json);
                if bytes + size > part_bytes && bytes > 0 {
                    parts.push(Vec::new());
                    bytes = 0;
                }
                bytes += size;
                if let Some(last) = parts.last_mut() {
                    last.push((
                        Arc::clone(room.key()),
                        room.version,
                        *id,
                        e.meta_json.clone(),
                    ));
                }
            }
        }
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        for (i, members) in parts.into_iter().enumerate() {
            part(since, members, u32::try_from(i).unwrap_or(u32::MAX), count);
        }
    }

    /// Notes a hole in `origin`'s presence messages.
    pub(crate) fn remote_gap(&self, origin: u64) {
        self.remote.mark_gap(origin);
    }

    /// Applies a presence entry from another instance.
    pub(crate) fn apply_remote(&self, me: u64, origin: u64, entry: Presence) -> Reply {
        self.remote.apply(me, origin, entry, &self.events)
    }

    /// Drops the members of instances that went silent.
    pub(crate) fn expire_remote(&self) {
        self.remote.expire(&self.events);
    }

    /// Members of other instances known here.
    pub(crate) fn remote_members(&self) -> usize {
        self.remote.len()
    }

    /// Other instances known here.
    pub(crate) fn remote_instances(&self) -> usize {
        self.remote.instances()
    }
}

impl Client {
    /// The longest room name [`Client::join`] accepts, in bytes of UTF-8.
    pub const MAX_ROOM_NAME_BYTES: usize = 256;
    /// The largest presence data [`Client::join_with`] accepts, in bytes
    /// of serialized JSON (4 KiB).
    pub const MAX_META_BYTES: usize = 4096;
    /// The default of `WS_MAX_ROOMS_PER_CLIENT`: how many rooms one client
    /// may be in at once.
    pub const DEFAULT_MAX_ROOMS_PER_CLIENT: usize = 100;

    /// Joins `room` (no presence data). `Ok(false)` if the client was
    /// already a member. See [`Client::join_with`] for the errors.
    ///
    /// ```
    /// use nbio_ws::{rpc_method, Client, Params, RpcError};
    ///
    /// #[rpc_method("room.join")]
    /// fn join(client: Client, Params((room,)): Params<(String,)>) -> Result<bool, RpcError> {
    ///     // A refused join is the JSON-RPC error -32020 for the caller.
    ///     Ok(client.join(&room)?)
    /// }
    /// ```
    pub fn join(&self, room: &str) -> Result<bool, JoinError> {
        self.join_with(room, serde_json::Value::Null)
    }

    /// Joins `room` with presence data (`meta`, e.g. `{"nick": "ada"}`),
    /// which [`Hub::members`] reports. `Ok(false)` if the client was
    /// already a member: joining again updates the data, without a new
    /// [`PresenceEvent::Joined`] (with a broker the other instances get
    /// the new data too).
    ///
    /// Refused, with the memberships unchanged, when the client is in
    /// the most rooms it may be in ([`JoinError::TooManyRooms`]), the name
    /// is longer than [`Client::MAX_ROOM_NAME_BYTES`], `meta` serializes
    /// to more than [`Client::MAX_META_BYTES`], or the client is
    /// disconnected ([`JoinError::Disconnected`]).
    ///
    /// With a broker, the first local member of a room makes this instance
    /// subscribe to the room's channel; await [`Hub::room_ready`] before
    /// telling the client it is in (so that it gets every message sent
    /// from other instances after that).
    pub fn join_with(&self, room: &str, meta: serde_json::Value) -> Result<bool, JoinError> {
        match self.hub() {
            Some(hub) => hub.0.rooms.join(&hub, self, room, meta),
            None => Err(JoinError::Disconnected),
        }
    }

    /// Leaves `room`. Returns `false` if the client was not a member.
    pub fn leave(&self, room: &str) -> bool {
        match self.hub() {
            Some(hub) => hub.0.rooms.leave(hub.link(), self.id(), room),
            None => false,
        }
    }

    /// The rooms this client is in, in the order it joined them.
    pub fn rooms(&self) -> Vec<String> {
        self.hub()
            .map(|hub| hub.0.rooms.rooms_of(self.id()))
            .unwrap_or_default()
    }

    /// Joins `room` (a room with history, see [`history`](crate::history))
    /// with presence data `meta`, and recovers what the client missed
    /// since `since`, the last position it saw there.
    ///
    /// The answer holds the publications after `since` up to
    /// [`Recovery::position`], in order; every later publication reaches
    /// the client live, so it gets each one exactly once. Live ones may
    /// arrive before the handler's reply: a client buffers them until it
    /// has the reply. Without `since`, or when the history cannot cover
    /// the gap, `recovered` is `false` and `publications` holds the latest
    /// ones (at most `WS_HISTORY_MAX_RECOVER`).
    ///
    /// ```
    /// use nbio_ws::{history::Position, Client, RpcError};
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Join { room: String, since: Option<Position> }
    ///
    /// #[nbio_ws::rpc_method("room.join")]
    /// async fn join(client: Client, nbio_ws::Params(p): nbio_ws::Params<Join>)
    ///     -> Result<nbio_ws::history::Recovery, RpcError>
    /// {
    ///     Ok(client.join_recover(&p.room, serde_json::Value::Null, p.since).await?)
    /// }
    /// ```
    pub async fn join_recover(
        &self,
        room: &str,
        meta: serde_json::Value,
        since: Option<Position>,
    ) -> Result<Recovery, HistoryError> {
        let Some(hub) = self.hub() else {
            return Err(JoinError::Disconnected.into());
        };
        let streams = &hub.0.rooms.streams;
        let (Some(store), Some(policy), Some(cfg)) = (
            streams.store().cloned(),
            streams.policy(room),
            streams.config(),
        ) else {
            return Err(HistoryError::NoHistory(room.to_owned()));
        };
        let max = cfg.max_recover;
        // Joined while no publication of the room can be delivered: the
        // client gets live exactly those after the state read here.
        let (joined, state) =
            streams.with_stream_locked(room, || hub.0.rooms.join(&hub, self, room, meta));
        // A join past a membership limit (or after the disconnect): the
        // same typed refusal as `join_with`.
        joined?;
        hub.room_ready(room).await;
        let (epoch, top) = match state {
            Some(s) => s,
            None => streams.ensure_init(&hub.0, room).await?,
        };
        let wanted = since
            .as_ref()
            .filter(|s| *s.epoch == *epoch && s.offset <= top)
            .map(|s| s.offset);
        let mut recovered = false;
        let mut entries = Vec::new();
        if let Some(after) = wanted {
            let range = store.read(room, policy, Some(after), max + 1).await?;
            if *range.epoch == *epoch {
                let upto: Vec<_> = range
                    .entries
                    .into_iter()
                    .filter(|e| e.offset <= top)
                    .collect();
                let complete = match (upto.first(), upto.last()) {
                    (Some(first), Some(last)) => first.prev == after && last.offset == top,
                    _ => after == top,
                };
                if complete && upto.len() <= max {
                    recovered = true;
                    entries = upto;
                }
            }
        }
        if !recovered {
            let range = store.read(room, policy, None, max).await?;
            entries = range
                .entries
                .into_iter()
                .filter(|e| e.offset <= top)
                .collect();
        }
        hub.metrics().incr(if recovered {
            "history_recoveries"
        } else {
            "history_recoveries_incomplete"
        });
        Ok(Recovery {
            recovered,
            position: Position {
                epoch: epoch.to_string(),
                offset: top,
            },
            publications: crate::history::publications(room, &epoch, &entries),
        })
    }

    /// Whether this client is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.hub().is_some_and(|hub| {
            hub.0
                .rooms
                .rooms
                .get(room)
                .is_some_and(|r| r.members.contains_key(&self.id()))
        })
    }
}

/// Sends to the members of one room; made by [`Hub::to`].
#[derive(Debug, Clone)]
pub struct RoomSender<'h> {
    hub: &'h Hub,
    /// Shared with the entry published for other instances.
    room: Arc<str>,
    except: Option<ClientId>,
    local: bool,
}

impl RoomSender<'_> {
    /// Leaves one client out (typically the sender).
    pub fn except(mut self, id: ClientId) -> Self {
        self.except = Some(id);
        self
    }

    /// Only the members connected to this instance: nothing is published
    /// to the other instances. For what every instance sends its own
    /// members anyway, such as a notice driven by
    /// [`Hub::presence_events`] (which every instance receives).
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// Sends the notification `method(params)`, serialized once, to every
    /// member: those of this instance at once, those of other instances
    /// through the broker (if any). Returns how many local clients it was
    /// queued for.
    ///
    /// With a broker (and unless [`local`](Self::local)), a message larger
    /// than one broker payload may be is refused with
    /// [`BroadcastError::TooLarge`] and reaches no member, as
    /// [`Hub::broadcast`] says.
    pub fn notify<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<usize, BroadcastError> {
        let bytes = jsonrpc::encode_notification(method, params)?;
        self.send_text(bytes)
    }

    /// Publishes the notification `method(params)` to a room that keeps
    /// history (see [`history`](crate::history)): stores it, which gives
    /// it its position, then delivers it with that position to every
    /// member, on every instance. Returns the position, or `None` for a
    /// room without history (then it is sent like
    /// [`notify`](Self::notify)).
    ///
    /// A publication that cannot be stored (the history backend is
    /// unreachable) is an error and reaches nobody: never a partial
    /// delivery. `notify` keeps working meanwhile. With a broker, one too
    /// large for it is refused before it is stored
    /// ([`HistoryError::TooLarge`]).
    pub async fn publish<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<Option<Position>, HistoryError> {
        let streams = &self.hub.0.rooms.streams;
        let (Some(store), Some(policy)) = (streams.store(), streams.policy(&self.room)) else {
            self.notify(method, params).map_err(|e| match e {
                BroadcastError::TooLarge { size, limit } => HistoryError::TooLarge { size, limit },
                other => HistoryError::Invalid(other.to_string()),
            })?;
            return Ok(None);
        };
        let data = crate::history::encode_data(method, params)
            .map_err(|e| HistoryError::Invalid(e.to_string()))?;
        if !self.local {
            if let Some(link) = self.hub.link() {
                // What the entry can take at most, its position (epoch,
                // offset, the room escaped in JSON) included.
                let bound = data.len() + 7 * self.room.len() + 256;
                link.check(bound).map_err(|t| HistoryError::TooLarge {
                    size: t.size,
                    limit: t.limit,
                })?;
            }
        }
        let appended = store.append(&self.room, policy, data.clone()).await?;
        let frame = crate::history::live_frame(&data, &self.room, &appended.epoch, appended.offset);
        if !self.local {
            if let Some(link) = self.hub.link() {
                // Checked before storing; a queue without room drops it
                // for the other instances (counted).
                let _ = link.queue(Wire::Publication {
                    room: Arc::clone(&self.room),
                    except: self.except,
                    epoch: Arc::clone(&appended.epoch),
                    offset: appended.offset,
                    prev: appended.prev,
                    text: frame.clone(),
                });
            }
        }
        self.hub.metrics().incr("history_publications");
        streams.offer(
            &self.hub.0,
            &self.room,
            super::streams::Incoming {
                epoch: Arc::clone(&appended.epoch),
                offset: appended.offset,
                prev: appended.prev,
                except: self.except,
                frame,
            },
        );
        Ok(Some(Position {
            epoch: appended.epoch.to_string(),
            offset: appended.offset,
        }))
    }

    /// Queues an encoded text message for every member (and publishes it
    /// for the other instances, unless [`local`](Self::local)). Returns how
    /// many local clients it was queued for; refused as
    /// [`notify`](Self::notify) says.
    pub fn send_text(&self, bytes: Bytes) -> Result<usize, BroadcastError> {
        if !self.local {
            if let Some(link) = self.hub.link() {
                link.queue(Wire::Room {
                    room: Arc::clone(&self.room),
                    except: self.except,
                    text: bytes.clone(),
                })?;
            }
        }
        self.hub.metrics().broadcast();
        Ok(self.hub.0.rooms.send(&self.room, self.except, &bytes))
    }
}

impl Hub {
    /// Addresses the members of `room`, on every instance.
    pub fn to(&self, room: &str) -> RoomSender<'_> {
        RoomSender {
            hub: self,
            room: Arc::from(room),
            except: None,
            local: false,
        }
    }

    /// The members of `room`, sorted by client id: this instance's, and,
    /// with a broker, those of the other instances as replicated here
    /// (eventually consistent: see [`broker`](crate::broker#presence-across-instances)).
    pub async fn members(&self, room: &str) -> Vec<Member> {
        self.0.rooms.members(room)
    }

    /// Resolves once this instance receives what the other instances send
    /// to `room` — that is, once the broker confirmed the room's
    /// subscription, made when its first local member joined. At once
    /// without a broker or when the room has no local member; waits at
    /// most 2 s. The confirmation is remembered: while the broker is
    /// down and the backend resubscribes, this does not wait again (room
    /// messages from other instances are lost meanwhile, as broadcasts
    /// are).
    pub async fn room_ready(&self, room: &str) {
        if let Some(link) = self.link() {
            link.room_ready(room).await;
        }
    }

    /// A stream of joins and leaves (including leaves caused by
    /// disconnects). With a broker it also carries those of the other
    /// instances, and leaves for the members of an instance that went
    /// silent for the presence TTL. A receiver that falls more than 1024
    /// events behind gets `RecvError::Lagged` and skips ahead.
    pub fn presence_events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.0.rooms.events.subscribe()
    }

    /// The current position of `room`'s stream, without joining it
    /// (`None` for a room without history).
    pub async fn position(&self, room: &str) -> Result<Option<Position>, HistoryError> {
        let streams = &self.0.rooms.streams;
        let (Some(store), Some(policy)) = (streams.store(), streams.policy(room)) else {
            return Ok(None);
        };
        let range = store.read(room, policy, None, 0).await?;
        Ok(Some(Position {
            epoch: range.epoch.to_string(),
            offset: range.top,
        }))
    }

    /// How many rooms have at least one member on this instance.
    pub fn room_count(&self) -> usize {
        self.0.rooms.room_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(hub: &Hub) -> Client {
        let (c, rx) = Client::new(
            hub,
            "127.0.0.1:1".parse().unwrap(),
            None,
            crate::hub::SendBuffer::messages(16),
        );
        std::mem::forget(rx);
        hub.register(c.clone());
        c
    }

    #[tokio::test]
    async fn join_leave_and_fan_out() {
        let hub = Hub::new();
        let mut events = hub.presence_events();
        let (a, b, c) = (client(&hub), client(&hub), client(&hub));
        assert_eq!(a.join_with("r", serde_json::json!({"nick": "a"})), Ok(true));
        assert_eq!(a.join("r"), Ok(false));
        assert_eq!(b.join("r"), Ok(true));
        assert_eq!(c.join("other"), Ok(true));
        assert_eq!(hub.to("r").notify("m", &1).unwrap(), 2);
        assert_eq!(hub.to("r").except(a.id()).notify("m", &1).unwrap(), 1);
        assert_eq!(hub.members("r").await.len(), 2);
        assert_eq!(a.rooms(), vec!["r".to_string()]);
        assert!(a.in_room("r") && !a.in_room("other"));
        assert!(b.leave("r"));
        assert!(!b.leave("r"));
        assert_eq!(hub.members("r").await.len(), 1);
        hub.0.rooms.leave_all(None, a.id());
        assert!(hub.members("r").await.is_empty());
        assert_eq!(hub.room_count(), 1);
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(match e {
                PresenceEvent::Joined { room, .. } => format!("+{room}"),
                PresenceEvent::Left { room, .. } => format!("-{room}"),
            });
        }
        assert_eq!(seen, ["+r", "+r", "+other", "-r", "-r"]);
    }

    #[tokio::test]
    async fn a_disconnected_client_joins_nothing() {
        let hub = Hub::new();
        let a = client(&hub);
        assert_eq!(a.join("r"), Ok(true));
        hub.unregister(a.id());
        assert!(hub.members("r").await.is_empty());
        // A handler still running after the disconnect cannot leave a
        // ghost member behind.
        assert_eq!(a.join("r"), Err(JoinError::Disconnected));
        assert!(hub.members("r").await.is_empty());
        assert_eq!(hub.room_count(), 0);
        assert!(hub.0.rooms.by_client.is_empty());
    }

    /// The in-process broker, refusing the first subscriptions to room
    /// channels.
    struct Refusing {
        local: crate::broker::LocalBroker,
        refusals: std::sync::atomic::AtomicUsize,
    }

    impl crate::broker::Broker for Refusing {
        fn adapter(&self) -> &'static str {
            "refusing"
        }
        fn publish<'a>(
            &'a self,
            channel: &'a str,
            payload: Bytes,
        ) -> crate::broker::BoxFuture<'a, Result<(), crate::broker::BrokerError>> {
            self.local.publish(channel, payload)
        }
        fn subscribe(
            &self,
            channel: &str,
        ) -> Result<crate::broker::Subscription, crate::broker::BrokerError> {
            let refuse = channel.contains(".room.")
                && self
                    .refusals
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok();
            if refuse {
                return Err(crate::broker::BrokerError::Disconnected);
            }
            self.local.subscribe(channel)
        }
        fn health(&self) -> crate::broker::BrokerHealth {
            self.local.health()
        }
    }

    #[tokio::test]
    async fn a_refused_room_subscription_is_retried() {
        let hub = Hub::new();
        let broker = Arc::new(Refusing {
            local: crate::broker::LocalBroker::new(),
            refusals: std::sync::atomic::AtomicUsize::new(3),
        });
        hub.attach_broker(
            broker.clone(),
            "t",
            std::time::Duration::from_secs(15),
            crate::broker::DEFAULT_QUEUE_BYTES,
        );
        let (a, mut rx) = Client::new(
            &hub,
            "127.0.0.1:1".parse().unwrap(),
            None,
            crate::hub::SendBuffer::messages(16),
        );
        hub.register(a.clone());
        assert_eq!(a.join("r"), Ok(true));
        // Another instance's message to the room, published until it
        // arrives: once the link subscribed, after three refusals.
        let entry = Wire::Room {
            room: Arc::from("r"),
            except: None,
            text: Bytes::from_static(b"hi"),
        };
        let got = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            let mut seq = 0;
            loop {
                let env = crate::cluster::envelope::encode(42, seq, std::slice::from_ref(&entry));
                seq += 1;
                crate::broker::Broker::publish(&broker.local, "t.room.r", env)
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if let Some(m) = rx.try_recv() {
                    return m;
                }
            }
        })
        .await
        .expect("the room's messages arrive after the retries");
        assert!(
            matches!(&got, Outbound::Shared(t) if t.bytes() == &b"hi"[..]),
            "{got:?}"
        );
        assert_eq!(broker.refusals.load(Ordering::Acquire), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn joins_from_a_thread_without_a_runtime_use_the_servers() {
        let hub = Hub::new();
        hub.attach_broker(
            Arc::new(crate::broker::LocalBroker::new()),
            "t",
            std::time::Duration::from_secs(15),
            crate::broker::DEFAULT_QUEUE_BYTES,
        );
        let a = client(&hub);
        let joined = std::thread::spawn(move || a.join("r")).join();
        assert!(matches!(joined, Ok(Ok(true))), "no panic, joined");
        assert_eq!(hub.members("r").await.len(), 1);
        assert_eq!(hub.link().map(|l| l.room_subscriptions()), Some(1));
    }

    #[tokio::test]
    async fn membership_limits_refuse_and_change_nothing() {
        let hub = Hub::with_limits(
            Arc::new(crate::metrics::Metrics::default()),
            super::super::HubLimits {
                max_rooms_per_client: 3,
            },
        );
        let a = client(&hub);
        for r in ["r0", "r1", "r2"] {
            assert_eq!(a.join(r), Ok(true));
        }
        assert_eq!(a.join("r3"), Err(JoinError::TooManyRooms { limit: 3 }));
        // Joining a room it is in is not one more room.
        assert_eq!(a.join_with("r1", serde_json::json!({"n": 1})), Ok(false));
        let long = "x".repeat(Client::MAX_ROOM_NAME_BYTES + 1);
        assert!(a.leave("r2"));
        assert_eq!(
            a.join(&long),
            Err(JoinError::RoomNameTooLong {
                max: Client::MAX_ROOM_NAME_BYTES
            })
        );
        let meta = serde_json::json!({ "blob": "y".repeat(Client::MAX_META_BYTES) });
        assert_eq!(
            a.join_with("r2", meta),
            Err(JoinError::MetaTooLarge {
                max: Client::MAX_META_BYTES
            })
        );
        assert_eq!(a.rooms(), ["r0", "r1"]);
        assert_eq!(hub.room_count(), 2);
        // Right at the limits is fine.
        let name = "é".repeat(Client::MAX_ROOM_NAME_BYTES / 2);
        assert_eq!(a.join(&name), Ok(true));
        let e = RpcError::from(JoinError::MetaTooLarge { max: 4096 });
        assert_eq!(e.code, -32020);
        assert_eq!(e.data.unwrap()["reason"], "meta_too_large");
    }

    /// Joins, leaves and disconnects from several threads at once, on
    /// overlapping rooms: what is left is exactly what each client did
    /// last, and the per-client lists agree with the rooms.
    #[test]
    fn concurrent_joins_and_leaves_stay_consistent() {
        let hub = Hub::new();
        let clients: Vec<Client> = (0..8).map(|_| client(&hub)).collect();
        std::thread::scope(|s| {
            for (t, c) in clients.iter().enumerate() {
                s.spawn(move || {
                    for i in 0..2000 {
                        let room = format!("r{}", (i * 7 + t) % 13);
                        if i % 3 == 2 {
                            c.leave(&room);
                        } else {
                            let _ = c.join(&room);
                        }
                    }
                });
            }
        });
        let mut total = 0;
        for c in &clients {
            for room in c.rooms() {
                assert!(c.in_room(&room));
                total += 1;
            }
        }
        let in_rooms: usize = hub.0.rooms.rooms.iter().map(|r| r.members.len()).sum();
        assert_eq!(in_rooms, total);
        assert!(hub.0.rooms.rooms.iter().all(|r| !r.members.is_empty()));
        for c in &clients[..4] {
            hub.unregister(c.id());
        }
        let in_rooms: usize = hub.0.rooms.rooms.iter().map(|r| r.members.len()).sum();
        let left: usize = clients[4..].iter().map(|c| c.rooms().len()).sum();
        assert_eq!(in_rooms, left);
    }
}
