//! [`Hub`]: the registry of connected clients, broadcast and send-to-one.
//!
//! The registry is a sharded map (`dashmap`), so connects, disconnects and
//! look-ups from many tasks do not contend on one lock. A broadcast is
//! serialized **once** into a reference-counted [`Bytes`] buffer that every
//! recipient's queue shares; fanning out costs one atomic increment and one
//! non-blocking queue push per client. A client whose queue is full is
//! disconnected (close 1008) rather than waited for.
//!
//! With a [`broker`](crate::broker) attached, a broadcast is also put on
//! the hub's ordered publish queue (never waiting for the network) and
//! reaches the clients of the other instances; [`Hub::send_to`] reaches a
//! client connected to another instance the same way.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;

pub(crate) mod client;
pub(crate) mod rooms;
pub(crate) mod streams;

pub use client::{Client, SendError};
pub use rooms::RoomSender;

pub(crate) use client::{CloseRequest, OutRx, Outbound, SendBuffer};

use crate::cluster::envelope::{Entry, Presence, SnapshotMembers};
use crate::cluster::presence::Reply;
use crate::cluster::{Inbound, Link, Publication};
use crate::deflate::SharedText;
use crate::jsonrpc;
use crate::metrics::Metrics;
use crate::types::{BroadcastError, ClientId};

impl From<BroadcastError> for jsonrpc::RpcError {
    /// `-32021` for a message too large for the broker, `-32603` for one
    /// that could not be serialized.
    fn from(e: BroadcastError) -> Self {
        match e {
            BroadcastError::TooLarge { size, limit } => {
                jsonrpc::RpcError::message_too_large(size, limit)
            }
            other => jsonrpc::RpcError::internal(other),
        }
    }
}

impl From<crate::cluster::link::TooLarge> for BroadcastError {
    fn from(t: crate::cluster::link::TooLarge) -> Self {
        BroadcastError::TooLarge {
            size: t.size,
            limit: t.limit,
        }
    }
}

/// What a hub lets one client hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HubLimits {
    /// Rooms one client may be in at once.
    pub max_rooms_per_client: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_rooms_per_client: Client::DEFAULT_MAX_ROOMS_PER_CLIENT,
        }
    }
}

/// The registry of this server's connected clients.
///
/// Cloning a `Hub` is cheap; every clone is the same hub. Handlers get one
/// with the [`Hub`] extractor; the server exposes it as
/// [`Server::hub`](crate::Server::hub).
///
/// ```
/// use nbio_ws::{rpc_method, Hub, Params, RpcError};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Say { text: String }
///
/// #[rpc_method("shout")]
/// fn shout(hub: Hub, Params(p): Params<Say>) -> Result<usize, RpcError> {
///     // A text too large for the broker is the error -32021.
///     Ok(hub.broadcast("shouted", &serde_json::json!({ "text": p.text }))?)
/// }
/// ```
#[derive(Clone)]
pub struct Hub(pub(crate) Arc<HubInner>);

pub(crate) struct HubInner {
    clients: DashMap<ClientId, Client>,
    pub(crate) metrics: Arc<Metrics>,
    /// The counter of the next client id.
    next_id: AtomicU64,
    /// Random id of this instance: the high half of its client ids, and
    /// its origin in broker envelopes.
    instance_id: u64,
    started: Instant,
    pub(crate) rooms: rooms::Rooms,
    pub(crate) broker: std::sync::OnceLock<Link>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.len())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A new, empty hub with its own metrics.
    pub fn new() -> Self {
        Self::with_metrics(Arc::new(Metrics::default()))
    }

    pub(crate) fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self::with_limits(metrics, HubLimits::default())
    }

    pub(crate) fn with_limits(metrics: Arc<Metrics>, limits: HubLimits) -> Self {
        // 64 random bits: the process's random hasher keys (from the OS),
        // mixed with the pid and the time.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        // Never 0: envelopes use 0 for "no client".
        let instance_id = h.finish().max(1);
        Hub(Arc::new(HubInner {
            clients: DashMap::new(),
            metrics,
            next_id: AtomicU64::new(1),
            instance_id,
            started: Instant::now(),
            rooms: rooms::Rooms::new(limits.max_rooms_per_client),
            broker: std::sync::OnceLock::new(),
        }))
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// When the hub was created.
    pub fn started_at(&self) -> Instant {
        self.0.started
    }

    /// This instance's random id: the high half of every
    /// [`ClientId`] it issues, and the tag of what it publishes through
    /// the broker (so that it can skip its own messages when they come
    /// back).
    pub fn instance_id(&self) -> u64 {
        self.0.instance_id
    }

    /// The broker's adapter and state, if one is attached (`/health`
    /// shows it).
    pub fn broker_health(&self) -> Option<crate::broker::BrokerStatus> {
        self.0.broker.get().map(|l| l.status())
    }

    /// The broker link, if a broker is attached.
    pub(crate) fn link(&self) -> Option<&Link> {
        self.0.broker.get()
    }

    /// Room channels this instance is subscribed to, with a broker.
    pub(crate) fn room_subscriptions(&self) -> Option<usize> {
        self.link().map(Link::room_subscriptions)
    }

    /// Members of other instances replicated here.
    pub(crate) fn remote_members(&self) -> usize {
        self.0.rooms.remote_members()
    }

    /// Other instances whose members are replicated here.
    pub(crate) fn remote_instances(&self) -> usize {
        self.0.rooms.remote_instances()
    }

    /// Attaches the history store and policies (once).
    pub(crate) fn attach_history(
        &self,
        store: Arc<dyn crate::history::HistoryStore>,
        config: crate::history::HistoryConfig,
    ) {
        self.0.rooms.streams.attach(store, config);
    }

    /// Attaches a broker (once; later calls are ignored) and starts its
    /// tasks if a tokio runtime is running. `ttl`: how long others keep
    /// this instance's presence without a heartbeat; `queue_bytes`: the
    /// publish queue's byte cap.
    pub(crate) fn attach_broker(
        &self,
        broker: Arc<dyn crate::broker::Broker>,
        channel: &str,
        ttl: std::time::Duration,
        queue_bytes: usize,
    ) {
        let link = Link::new(
            broker,
            channel,
            self.0.instance_id,
            ttl,
            queue_bytes,
            Arc::clone(&self.0.metrics),
        );
        if self.0.broker.set(link).is_ok() {
            self.start_broker();
        }
    }

    /// Starts the broker's tasks if they are not running yet.
    pub(crate) fn start_broker(&self) {
        if let Some(link) = self.0.broker.get() {
            let inbound: std::sync::Weak<dyn Inbound> = Arc::downgrade(&self.0) as _;
            link.start(inbound);
        }
    }

    /// Publishes what is still queued (within a bound) and stops the
    /// broker's tasks.
    pub(crate) async fn stop_broker(&self) {
        if let Some(link) = self.0.broker.get() {
            link.stop().await;
        }
    }

    pub(crate) fn next_client_id(&self) -> ClientId {
        // 64 bits: never wraps in practice (584 years at 10^9 a second).
        let n = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        ClientId::from_parts(self.0.instance_id, n)
    }

    pub(crate) fn register(&self, client: Client) {
        self.0.clients.insert(client.id(), client);
    }

    /// Removes a client and its room memberships.
    pub(crate) fn unregister(&self, id: ClientId) -> Option<Client> {
        let client = self.0.clients.remove(&id).map(|(_, c)| c);
        self.0.rooms.leave_all(self.link(), id);
        client
    }

    /// How many clients are connected to this instance.
    pub fn len(&self) -> usize {
        self.0.clients.len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.0.clients.is_empty()
    }

    /// The connected client with this id, if it is on this instance.
    pub fn get(&self, id: ClientId) -> Option<Client> {
        self.0.clients.get(&id).map(|c| c.value().clone())
    }

    /// A snapshot of the connected clients.
    pub fn clients(&self) -> Vec<Client> {
        self.0.clients.iter().map(|c| c.value().clone()).collect()
    }

    /// Calls `f` for every connected client.
    ///
    /// `f` runs while a shard of the registry is read-locked: keep it short
    /// and do not connect or disconnect clients from inside it.
    pub fn for_each(&self, mut f: impl FnMut(&Client)) {
        for c in self.0.clients.iter() {
            f(c.value());
        }
    }

    /// Sends the notification `method(params)` to every connected client,
    /// serialized once. Returns how many clients of this instance it was
    /// queued for; with a broker it is also queued for publishing to the
    /// other instances (without waiting for the network).
    ///
    /// With a broker, a message larger than one broker payload may be
    /// (NATS: its `max_payload`, 1 MiB by default) is refused with
    /// [`BroadcastError::TooLarge`] and reaches nobody, here or elsewhere.
    /// One the publish queue has no room for (the broker is far slower
    /// than the handlers) still reaches this instance's clients: the other
    /// instances miss it, and it is counted.
    pub fn broadcast<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<usize, BroadcastError> {
        let bytes = jsonrpc::encode_notification(method, params)?;
        self.broadcast_text(bytes)
    }

    /// Queues an already encoded text message for every connected client
    /// (and, with a broker, publishes it for the clients of the other
    /// instances). Returns how many local clients it was queued for;
    /// refused as [`broadcast`](Hub::broadcast) says.
    pub fn broadcast_text(&self, bytes: Bytes) -> Result<usize, BroadcastError> {
        if let Some(link) = self.0.broker.get() {
            link.queue(Entry::Broadcast(bytes.clone()))?;
        }
        Ok(self.deliver_local(bytes))
    }

    /// Fans a message out to this instance's clients only.
    pub(crate) fn deliver_local(&self, bytes: Bytes) -> usize {
        self.0.deliver_local(bytes)
    }

    /// Sends the notification `method(params)` to one client.
    ///
    /// Without a broker the client must be connected to this instance
    /// ([`SendError::NotFound`] otherwise). With a broker, a client that is
    /// not here but may be on another instance (its id was not issued by
    /// this one: [`ClientId::instance`] differs) is reached through the broker: `Ok(())` then means
    /// "published", and a message for a client connected nowhere is
    /// dropped silently; one larger than one broker payload may be is
    /// [`SendError::TooLarge`].
    pub fn send_to<P: Serialize + ?Sized>(
        &self,
        id: ClientId,
        method: &str,
        params: &P,
    ) -> Result<(), SendError> {
        if let Some(client) = self.get(id) {
            return client.notify(method, params);
        }
        match self.0.broker.get() {
            Some(link) if id.instance() != self.0.instance_id => {
                let bytes = jsonrpc::encode_notification(method, params)?;
                link.queue(Entry::Direct(id, bytes))
                    .map_err(|t| SendError::TooLarge {
                        size: t.size,
                        limit: t.limit,
                    })?;
                Ok(())
            }
            _ => Err(SendError::NotFound(id)),
        }
    }

    /// Closes every connected client with the given code and reason,
    /// after the messages already queued for it.
    pub fn close_all(&self, code: u16, reason: &str) {
        for c in self.0.clients.iter() {
            c.value().close(code, reason);
        }
    }
}

impl HubInner {
    /// Fans a message out to this instance's clients only.
    fn deliver_local(&self, bytes: Bytes) -> usize {
        self.metrics.broadcast();
        let mut delivered = 0;
        // One allocation for every recipient: the bytes and, made by the
        // first writer that needs it, the compressed form.
        let shared = Arc::new(SharedText::new(bytes));
        for c in self.clients.iter() {
            if c.value()
                .send(Outbound::Shared(Arc::clone(&shared)))
                .is_ok()
            {
                delivered += 1;
            }
        }
        delivered
    }
}

/// What other instances publish arrives here.
impl Inbound for HubInner {
    fn broadcast(&self, text: Bytes) {
        self.deliver_local(text);
    }

    fn direct(&self, id: ClientId, text: Bytes) {
        if let Some(client) = self.clients.get(&id).map(|c| c.value().clone()) {
            let _ = client.send_text(text);
        }
    }

    fn room(&self, room: &str, except: Option<ClientId>, text: &Bytes) {
        self.metrics.broadcast();
        self.rooms.send(room, except, text);
    }

    fn presence(&self, me: u64, origin: u64, entry: Presence) -> Reply {
        self.rooms.apply_remote(me, origin, entry)
    }

    fn presence_gap(&self, origin: u64) {
        self.rooms.remote_gap(origin);
    }

    fn expire_remote(&self) {
        self.rooms.expire_remote();
    }

    fn presence_version(&self) -> u64 {
        self.rooms.presence_version()
    }

    fn snapshot(&self, part_bytes: usize, part: &mut dyn FnMut(u64, SnapshotMembers, u32, u32)) {
        self.rooms.snapshot(part_bytes, part);
    }

    fn local_rooms(&self, f: &mut dyn FnMut(&Arc<str>)) {
        self.rooms.local_rooms(f);
    }

    fn publication(self: Arc<Self>, room: &str, p: Publication) {
        self.rooms.streams.offer(
            &self,
            room,
            streams::Incoming {
                epoch: p.epoch,
                offset: p.offset,
                prev: p.prev,
                except: p.except,
                frame: p.text,
            },
        );
    }

    fn resync(self: Arc<Self>, room: &str) {
        self.rooms.streams.resync(&self, room);
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn broadcast_shares_one_buffer() {
        let hub = Hub::new();
        let mut rxs = Vec::new();
        for _ in 0..3 {
            let (c, rx) = Client::new(
                &hub,
                "127.0.0.1:1".parse().unwrap(),
                None,
                SendBuffer::messages(4),
            );
            hub.register(c);
            rxs.push(rx);
        }
        assert_eq!(hub.broadcast("m", &serde_json::json!({"x": 1})).unwrap(), 3);
        let mut ptrs = Vec::new();
        for rx in &mut rxs {
            match rx.recv().await {
                Outbound::Shared(s) => {
                    assert_eq!(
                        &s.bytes()[..],
                        br#"{"jsonrpc":"2.0","method":"m","params":{"x":1}}"#
                    );
                    ptrs.push(Arc::as_ptr(&s));
                }
                other => panic!("not shared: {other:?}"),
            }
        }
        assert!(ptrs.windows(2).all(|w| w[0] == w[1]), "serialized once");
    }

    #[test]
    fn ids_are_unique_and_carry_the_instance() {
        let hub = Hub::new();
        let a = hub.next_client_id();
        let b = hub.next_client_id();
        assert_ne!(a, b);
        assert_eq!(
            (a.instance(), b.instance()),
            (hub.instance_id(), hub.instance_id())
        );
        assert_eq!((a.counter(), b.counter()), (1, 2));
        assert_ne!(Hub::new().instance_id(), hub.instance_id());
        let other = ClientId::from_parts(hub.instance_id() ^ 1, 7);
        assert!(matches!(
            hub.send_to(other, "m", &()),
            Err(SendError::NotFound(id)) if id == other
        ));
    }
}
