//! [`Client`]: the handle to one connected WebSocket client.
//!
//! A `Client` is cheap to clone (an `Arc`) and can be kept anywhere: in a
//! handler, in application state, in another task. Sending never blocks:
//! messages go into the client's bounded outbound queue, drained by the
//! connection's writer task. The queue is bounded twice: in messages
//! (`WS_SEND_BUFFER`, default 256) and in bytes (`WS_SEND_BUFFER_BYTES`,
//! default [`Client::DEFAULT_SEND_BUFFER_BYTES`], 8 MiB). A message that
//! would take the queue past either is refused: the client is too slow to
//! keep up, so it is disconnected with close code 1008
//! ([`close::POLICY`](crate::close::POLICY)) and counted in the
//! `nbio_ws_slow_consumer_disconnects_total` metric. One slow reader can
//! never hold up a broadcast or grow the server's memory past what its
//! queue may hold.
//!
//! A message is counted at its full size in each queue it is in (a
//! broadcast's bytes are shared by its recipients, but each of them holds
//! it back). A message that finds the queue empty is always accepted,
//! whatever its size, so a single reply larger than the byte cap still
//! gets through to a client that keeps up.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use std::collections::VecDeque;

use tokio::sync::Notify;

use crate::deflate::SharedText;
use crate::jsonrpc;
use crate::metrics::Metrics;
use crate::types::ClientId;

/// Why a message could not be queued for a client.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("the client is disconnected")]
    Closed,
    /// The outbound queue was full (in messages or in bytes); the client
    /// has been disconnected (1008).
    #[error("the client's outbound queue is full; it was disconnected as a slow consumer")]
    Full,
    /// No client with that id is connected.
    #[error("no client with id {0} is connected")]
    NotFound(ClientId),
    /// The params could not be serialized.
    #[error("cannot serialize the message: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The message, for a client on another instance, is larger than one
    /// broker payload may be: it was not sent (see
    /// [`BroadcastError::TooLarge`](crate::BroadcastError::TooLarge)).
    #[error("the message is {size} bytes as published; the broker accepts at most {limit}")]
    TooLarge {
        /// The bytes it would take in one broker payload.
        size: usize,
        /// The most one payload may take.
        limit: usize,
    },
}

/// A message queued for the writer task.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    Text(Bytes),
    Binary(Bytes),
    /// A text message queued for many clients; its compressed form is
    /// shared too.
    Shared(Arc<SharedText>),
}

impl Outbound {
    /// The payload's size, as the queue counts it.
    fn len(&self) -> usize {
        match self {
            Outbound::Text(b) | Outbound::Binary(b) => b.len(),
            Outbound::Shared(s) => s.bytes().len(),
        }
    }
}

/// The bounds of one client's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendBuffer {
    /// Most messages queued at once.
    pub messages: usize,
    /// Most bytes queued at once (a message that finds the queue empty is
    /// accepted whatever its size).
    pub bytes: usize,
}

impl SendBuffer {
    /// `messages` with the default byte cap.
    #[cfg(any(test, feature = "internal-hooks"))]
    pub(crate) fn messages(messages: usize) -> Self {
        SendBuffer {
            messages,
            bytes: Client::DEFAULT_SEND_BUFFER_BYTES,
        }
    }
}

/// A close request for the writer task.
#[derive(Debug, Clone)]
pub(crate) struct CloseRequest {
    pub code: u16,
    pub reason: String,
    /// Whether queued messages are written before the close frame.
    pub drain: bool,
}

pub(crate) struct ClientInner {
    id: ClientId,
    remote: SocketAddr,
    identity: Option<Arc<str>>,
    queue: Mutex<Queue>,
    queue_cap: SendBuffer,
    queue_notify: Notify,
    closing: AtomicBool,
    close_request: Mutex<Option<CloseRequest>>,
    pub(crate) close_notify: Notify,
    /// Fired for closes that must not wait (slow consumers): interrupts a
    /// write that the peer is not reading.
    pub(crate) abort_notify: Notify,
    extensions: Mutex<HashMap<TypeId, Arc<ExtensionSlot>>>,
    connected_at: Instant,
    /// Milliseconds since `connected_at` when the peer was last heard from.
    pub(crate) last_seen_ms: AtomicU64,
    metrics: Arc<Metrics>,
    /// The hub the client belongs to (weak: the hub holds the client).
    hub: std::sync::Weak<crate::hub::HubInner>,
}

/// A connected client, as handlers and hooks see it.
///
/// ```
/// use nbio_ws::{rpc_method, Client, RpcError};
///
/// #[rpc_method("whoami")]
/// fn whoami(client: Client) -> String {
///     format!("client {} from {}", client.id(), client.remote_addr())
/// }
///
/// #[rpc_method("nudge")]
/// fn nudge(client: Client) -> Result<(), RpcError> {
///     client
///         .notify("nudged", &serde_json::json!({"by": "server"}))
///         .map_err(|e| RpcError::internal(e))
/// }
/// ```
#[derive(Clone)]
pub struct Client(pub(crate) Arc<ClientInner>);

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.0.id)
            .field("remote", &self.0.remote)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The default of `WS_SEND_BUFFER`: how many messages a client's
    /// outbound queue holds.
    pub const DEFAULT_SEND_BUFFER: usize = 256;
    /// The default of `WS_SEND_BUFFER_BYTES`: how many bytes a client's
    /// outbound queue holds (8 MiB: twice the default largest reply,
    /// `WS_MAX_RESPONSE_SIZE`, so that such a reply fits behind a
    /// backlog; eight 1 MiB messages, not 256).
    pub const DEFAULT_SEND_BUFFER_BYTES: usize = 8 << 20;

    pub(crate) fn new(
        hub: &crate::hub::Hub,
        remote: SocketAddr,
        identity: Option<Arc<str>>,
        queue: SendBuffer,
    ) -> (Client, OutRx) {
        let id = hub.next_client_id();
        let metrics = Arc::clone(hub.metrics());
        let inner = ClientInner {
            id,
            remote,
            identity,
            queue: Mutex::new(Queue::default()),
            queue_cap: SendBuffer {
                messages: queue.messages.max(1),
                bytes: queue.bytes.max(1),
            },
            queue_notify: Notify::new(),
            closing: AtomicBool::new(false),
            close_request: Mutex::new(None),
            close_notify: Notify::new(),
            abort_notify: Notify::new(),
            extensions: Mutex::new(HashMap::new()),
            connected_at: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            metrics,
            hub: Arc::downgrade(&hub.0),
        };
        let client = Client(Arc::new(inner));
        (client.clone(), OutRx(client))
    }

    /// The hub this client is connected to, while the server lives.
    pub fn hub(&self) -> Option<crate::hub::Hub> {
        self.0.hub.upgrade().map(crate::hub::Hub)
    }

    /// The client's id.
    pub fn id(&self) -> ClientId {
        self.0.id
    }

    /// The peer's address (the TCP peer, or the forwarded address when the
    /// server trusts a proxy).
    pub fn remote_addr(&self) -> SocketAddr {
        self.0.remote
    }

    /// The identity the authenticator gave this client, if any.
    pub fn identity(&self) -> Option<&str> {
        self.0.identity.as_deref()
    }

    /// When the connection was established.
    pub fn connected_at(&self) -> Instant {
        self.0.connected_at
    }

    /// Whether the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.0.closing.load(Ordering::Acquire)
    }

    /// Sends a JSON-RPC notification to this client.
    pub fn notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> Result<(), SendError> {
        let bytes = jsonrpc::encode_notification(method, params)?;
        self.send_text(bytes)
    }

    /// Queues an already encoded text message (it must be valid UTF-8; a
    /// JSON-RPC server sends JSON). Never blocks.
    pub fn send_text(&self, text: impl Into<Bytes>) -> Result<(), SendError> {
        self.send(Outbound::Text(text.into()))
    }

    /// Queues a binary message (raw mode). Never blocks.
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send(Outbound::Binary(data.into()))
    }

    pub(crate) fn send(&self, msg: Outbound) -> Result<(), SendError> {
        if self.0.closing.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let pushed = {
            let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.closed {
                Err(SendError::Closed)
            } else if q.would_overflow(msg.len(), self.0.queue_cap) {
                Err(SendError::Full)
            } else {
                q.bytes += msg.len();
                q.items.push_back(msg);
                Ok(())
            }
        };
        match pushed {
            Ok(()) => {
                self.0.queue_notify.notify_one();
                Ok(())
            }
            Err(SendError::Full) => {
                if self.request_close(1008, "outbound queue full (slow consumer)", false) {
                    self.0.metrics.slow_consumer();
                    tracing::warn!(client = %self.0.id, "slow consumer disconnected (1008)");
                }
                Err(SendError::Full)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the close handshake with the given code and reason. Messages
    /// already queued are written first. Further sends fail with
    /// [`SendError::Closed`].
    ///
    /// The reason is cut to fit a control frame (123 bytes).
    pub fn close(&self, code: u16, reason: &str) {
        self.request_close(code, reason, true);
    }

    /// Returns whether this call initiated the close.
    pub(crate) fn request_close(&self, code: u16, reason: &str, drain: bool) -> bool {
        if self.0.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        let reason = truncate_utf8(reason, 123).to_owned();
        if let Ok(mut slot) = self.0.close_request.lock() {
            *slot = Some(CloseRequest {
                code,
                reason,
                drain,
            });
        }
        self.0.close_notify.notify_one();
        if !drain {
            self.0.abort_notify.notify_one();
        }
        true
    }

    pub(crate) fn take_close_request(&self) -> Option<CloseRequest> {
        self.0.close_request.lock().ok().and_then(|mut s| s.take())
    }

    pub(crate) fn mark_closing(&self) {
        self.0.closing.store(true, Ordering::Release);
    }

    /// Marks the queue closed and frees what is left in it.
    pub(crate) fn close_queue(&self) {
        self.mark_closing();
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        q.items = VecDeque::new();
        q.bytes = 0;
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.0.connected_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn silent_for(&self) -> std::time::Duration {
        let last = self.0.last_seen_ms.load(Ordering::Relaxed);
        self.0
            .connected_at
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }

    /// Stores a typed value on this connection (one per type), replacing
    /// and returning any previous one.
    ///
    /// ```
    /// # fn demo(client: nbio_ws::Client) {
    /// #[derive(Clone)]
    /// struct Nick(String);
    /// client.insert_extension(Nick("ada".into()));
    /// assert_eq!(client.extension::<Nick>().unwrap().0, "ada");
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a [`with_extension`](Client::with_extension) closure for the
    /// same `T` (see there).
    pub fn insert_extension<T: Send + Sync + 'static>(&self, value: T) -> Option<T> {
        let slot = self.extension_slot::<T>(true)?;
        let mut v = slot.lock::<T>();
        v.replace(Box::new(value))
            .and_then(|old| old.downcast::<T>().ok().map(|b| *b))
    }

    /// A clone of the stored value of type `T`, if any.
    ///
    /// # Panics
    ///
    /// Inside a [`with_extension`](Client::with_extension) closure for the
    /// same `T` (see there).
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        let slot = self.extension_slot::<T>(false)?;
        let v = slot.lock::<T>();
        v.as_ref().and_then(|v| v.downcast_ref::<T>()).cloned()
    }

    /// Removes and returns the stored value of type `T`, if any.
    ///
    /// # Panics
    ///
    /// Inside a [`with_extension`](Client::with_extension) closure for the
    /// same `T` (see there).
    pub fn remove_extension<T: Send + Sync + 'static>(&self) -> Option<T> {
        let slot = self.extension_slot::<T>(false)?;
        let mut v = slot.lock::<T>();
        v.take()
            .and_then(|old| old.downcast::<T>().ok().map(|b| *b))
    }

    /// Runs `f` with mutable access to the stored value of type `T`,
    /// inserting `T::default()` first if there is none.
    ///
    /// Each type has a lock of its own, held while `f` runs: calls for the
    /// same type from other tasks wait their turn (no update is lost),
    /// and `f` may use the client's other extensions freely.
    ///
    /// ```
    /// # fn demo(client: nbio_ws::Client) {
    /// #[derive(Default)]
    /// struct Sent(u64);
    /// #[derive(Clone)]
    /// struct Nick(String);
    /// client.insert_extension(Nick("ada".into()));
    /// let n = client.with_extension(|sent: &mut Sent| {
    ///     // Another type's extension, inside the closure.
    ///     let nick = client.extension::<Nick>().unwrap();
    ///     sent.0 += 1;
    ///     format!("{} sent {}", nick.0, sent.0)
    /// });
    /// assert_eq!(n, "ada sent 1");
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If `f` uses the extension of the same type `T` on this client again
    /// (`extension::<T>`, `insert_extension::<T>`, `remove_extension::<T>`
    /// or a nested `with_extension::<T>`): the value is already borrowed
    /// mutably, so that call panics with a message naming `T` — like a
    /// `RefCell` borrowed twice — instead of waiting for itself forever. In
    /// a handler that panic is answered with -32603.
    pub fn with_extension<T, R>(&self, f: impl FnOnce(&mut T) -> R) -> R
    where
        T: Default + Send + Sync + 'static,
    {
        let Some(slot) = self.extension_slot::<T>(true) else {
            unreachable!("extension_slot creates the slot when asked to")
        };
        let mut v = slot.lock::<T>();
        let _borrowed = slot.borrow();
        let value = v.get_or_insert_with(|| Box::new(T::default()));
        match value.downcast_mut::<T>() {
            Some(v) => f(v),
            None => unreachable!("extensions are keyed by their TypeId"),
        }
    }

    /// The slot of type `T`'s extension (created if `create`).
    fn extension_slot<T: 'static>(&self, create: bool) -> Option<Arc<ExtensionSlot>> {
        let mut map = self.0.extensions.lock().unwrap_or_else(|p| p.into_inner());
        let id = TypeId::of::<T>();
        if create {
            Some(Arc::clone(map.entry(id).or_default()))
        } else {
            map.get(&id).cloned()
        }
    }
}

/// One type's extension on one client, locked on its own: a
/// [`Client::with_extension`] closure holds only its type's lock, never the
/// map of them.
#[derive(Default)]
struct ExtensionSlot {
    value: Mutex<Option<Box<dyn Any + Send + Sync>>>,
    /// The thread running a `with_extension` closure on this slot (its
    /// [`thread_token`]), 0 when none is: a call for the same type from
    /// that thread would wait for itself.
    borrowed_by: AtomicU64,
}

impl ExtensionSlot {
    /// Locks the value; panics instead of deadlocking when this thread is
    /// inside a `with_extension` closure of the same slot.
    fn lock<T>(&self) -> std::sync::MutexGuard<'_, Option<Box<dyn Any + Send + Sync>>> {
        if self.borrowed_by.load(Ordering::Acquire) == thread_token() {
            panic!(
                "Client extension {} used inside its own with_extension closure \
                 (it is already borrowed mutably)",
                std::any::type_name::<T>()
            );
        }
        self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the slot borrowed by this thread until the guard drops (also
    /// when the closure panics). Call with the value locked.
    fn borrow(&self) -> impl Drop + '_ {
        struct Borrowed<'a>(&'a AtomicU64);
        impl Drop for Borrowed<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        self.borrowed_by.store(thread_token(), Ordering::Release);
        Borrowed(&self.borrowed_by)
    }
}

/// A number unique to the calling thread, never 0.
fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// The outbound queue: bounded in messages and in bytes, and
/// allocation-free while empty (an idle connection holds no queue memory).
#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// The payload bytes of `items`.
    bytes: usize,
    closed: bool,
}

impl Queue {
    /// Whether a message of `len` bytes would take the queue past `cap`.
    /// A message that finds the queue empty always fits.
    fn would_overflow(&self, len: usize, cap: SendBuffer) -> bool {
        self.items.len() >= cap.messages
            || (!self.items.is_empty() && self.bytes.saturating_add(len) > cap.bytes)
    }
}

/// The connection's end of a client's outbound queue.
pub(crate) struct OutRx(Client);

impl OutRx {
    /// The next queued message, if any.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let mut q = self.0 .0.queue.lock().unwrap_or_else(|p| p.into_inner());
        let msg = q.items.pop_front();
        if let Some(m) = &msg {
            q.bytes -= m.len();
        }
        if q.items.is_empty() && q.items.capacity() > 64 {
            // Give back what a burst grew.
            q.items = VecDeque::new();
        }
        msg
    }

    /// Waits for the next queued message. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Outbound {
        loop {
            if let Some(msg) = self.try_recv() {
                return msg;
            }
            self.0 .0.queue_notify.notified().await;
        }
    }

    /// How many messages are queued.
    pub(crate) fn len(&self) -> usize {
        self.0 .0.queue.lock().map_or(0, |q| q.items.len())
    }
}

pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(queue: usize) -> (Client, OutRx) {
        let hub = crate::hub::Hub::new();
        Client::new(
            &hub,
            "127.0.0.1:1".parse().unwrap(),
            None,
            SendBuffer::messages(queue),
        )
    }

    #[test]
    fn full_queue_disconnects_once() {
        let (c, _rx) = client(2);
        c.send_text("a").unwrap();
        c.send_text("b").unwrap();
        assert!(matches!(c.send_text("c"), Err(SendError::Full)));
        assert!(c.is_closed());
        let req = c.take_close_request().unwrap();
        assert_eq!(req.code, 1008);
        assert!(!req.drain);
        assert!(matches!(c.send_text("d"), Err(SendError::Closed)));
        assert_eq!(c.0.metrics.slow_consumer_disconnects(), 1);
    }

    /// A client whose queue holds 100 messages, 10 bytes.
    fn ten_bytes() -> (Client, OutRx) {
        let hub = crate::hub::Hub::new();
        let cap = SendBuffer {
            messages: 100,
            bytes: 10,
        };
        Client::new(&hub, "127.0.0.1:1".parse().unwrap(), None, cap)
    }

    #[test]
    fn the_byte_cap_disconnects_like_a_full_queue() {
        let (c, mut rx) = ten_bytes();
        c.send_text("12345").unwrap();
        c.send_text("12345").unwrap();
        // Taking one out makes room for as many bytes.
        assert!(rx.try_recv().is_some());
        c.send_text("123").unwrap();
        assert!(matches!(c.send_text("123"), Err(SendError::Full)));
        let req = c.take_close_request().unwrap();
        assert_eq!((req.code, req.drain), (crate::close::POLICY, false));
        assert_eq!(c.0.metrics.slow_consumer_disconnects(), 1);
    }

    #[test]
    fn a_message_larger_than_the_byte_cap_fits_an_empty_queue() {
        let (c, mut rx) = ten_bytes();
        c.send_text("x".repeat(50)).unwrap();
        assert!(rx.try_recv().is_some());
        c.send_text("x".repeat(50)).unwrap();
        assert!(matches!(c.send_text("x"), Err(SendError::Full)));
    }

    #[test]
    fn extensions_are_typed() {
        let (c, _rx) = client(1);
        assert_eq!(c.extension::<u32>(), None);
        c.insert_extension(5u32);
        c.with_extension::<u32, _>(|v| *v += 1);
        assert_eq!(c.extension::<u32>(), Some(6));
        assert_eq!(c.remove_extension::<u32>(), Some(6));
        assert_eq!(c.extension::<u32>(), None);
    }

    /// Runs `f` on a thread of its own; fails the test if it has not
    /// returned after 10 s (it deadlocked) or panicked.
    fn without_deadlock<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the call returned (no deadlock, no panic)")
    }

    #[test]
    fn with_extension_may_use_the_other_extensions() {
        let (c, _rx) = client(1);
        c.insert_extension(String::from("ada"));
        let got = without_deadlock(move || {
            let got = c.with_extension(|n: &mut u32| {
                *n += 1;
                // Another type: read, write, remove, and a nested closure.
                let name = c.extension::<String>().unwrap();
                c.insert_extension(7u8);
                c.with_extension(|v: &mut Vec<u32>| v.push(*n));
                assert_eq!(c.remove_extension::<u8>(), Some(7));
                format!("{name} {n}")
            });
            (got, c.extension::<u32>(), c.extension::<Vec<u32>>())
        });
        assert_eq!(got, ("ada 1".to_string(), Some(1), Some(vec![1])));
    }

    #[test]
    fn with_extension_of_the_same_type_inside_panics_instead_of_deadlocking() {
        let (c, _rx) = client(1);
        c.insert_extension(1u32);
        let d = c.clone();
        let outcome = without_deadlock(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                d.with_extension(|n: &mut u32| {
                    *n += 1;
                    d.extension::<u32>()
                })
            }))
            .map_err(|p| p.downcast_ref::<String>().cloned().unwrap_or_default())
        });
        let msg = outcome.unwrap_err();
        assert!(
            msg.contains("u32") && msg.contains("with_extension"),
            "{msg}"
        );
        // The value and its lock survive the panic.
        let d = c.clone();
        assert_eq!(
            without_deadlock(move || d.with_extension(|n: &mut u32| *n)),
            2
        );
        let d = c.clone();
        let nested = without_deadlock(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                d.with_extension(|_: &mut u32| d.with_extension(|_: &mut u32| ()))
            }))
            .is_err()
        });
        assert!(nested);
        assert_eq!(c.extension::<u32>(), Some(2));
    }

    #[test]
    fn with_extension_from_many_threads_loses_no_update() {
        let (c, _rx) = client(1);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.with_extension(|n: &mut u64| {
                            let v = *n;
                            std::hint::black_box(&c);
                            *n = v + 1;
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.extension::<u64>(), Some(8000));
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let s = "é".repeat(100);
        let t = truncate_utf8(&s, 123);
        assert!(t.len() <= 123);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
