//! One WebSocket connection: reading, writing, keepalive, size limits
//! and close codes — in one task per connection.
//!
//! The task owns the upgraded socket and selects over: more bytes from the
//! client (the [`frame`](super::frame) reader is cancel-safe), the
//! client's outbound queue, close requests, its handler tasks, shutdown,
//! the ping timer and, for credentials that expire, their expiry. Nothing in that loop waits for a handler: handlers
//! that finish at once run inline; handlers that wait become tasks of the
//! connection ([`InFlight`]), so requests of one connection run
//! concurrently, up to the concurrency limit.
//!
//! At that limit the connection stops dispatching messages, and soon
//! stops reading them: it reads on only while the messages held back stay
//! under [`MAX_HELD`] and the message size limit in bytes, so that pings,
//! pongs and close frames sent behind them are still seen. Everything
//! else goes on: pings on the timer, the pong timeout, the outbound queue,
//! close requests and shutdown. A client that keeps sending past that is
//! simply not read (TCP pushes back) until a request finishes.
//!
//! The connect hook runs inside that loop too: while it runs, what is sent
//! to the client is written as it comes (a hook that waits never makes the
//! queue overflow), pings and close requests are handled, and messages
//! from the client are read and held back, as at the concurrency limit,
//! until it returns. If the connection ends first, the hook still runs to
//! its end (its sends fail) before the disconnect hook starts.
//!
//! Handler tasks belong to their connection: when it ends, those still
//! running are cancelled (aborted). On graceful shutdown the connection
//! first stops reading, waits (within the shutdown timeout) for its
//! handlers and writes their replies, then closes with 1001.
//!
//! The framework enforces what fastwebsockets 0.10 leaves open:
//!
//! | condition | answer |
//! |---|---|
//! | a message over the size limit, counting every fragment | close 1009 |
//! | a compressed message that inflates past the size limit (checked while inflating) | close 1009 |
//! | compressed data that does not inflate | close 1007 |
//! | RSV1 without permessage-deflate, or on a control or continuation frame | close 1002 |
//! | a control frame over 125 bytes (close frames included) | close 1002 |
//! | a malformed close frame or an invalid close code | close 1002 |
//! | an unmasked frame, reserved bits or opcodes | close 1002 |
//! | invalid UTF-8 in a text message or a close reason | close 1007 |
//! | a fragment sequence broken by a new data frame, or a stray continuation | close 1002 |
//! | nothing heard from the peer (not even a pong) for the pong timeout | close 1001 |
//! | outbound queue full, in messages or in bytes (slow consumer) | close 1008, without waiting: the close frame when the socket has room for it, else (a write to the full socket is cut short) the connection is dropped |
//! | its credentials expire (a JWT's `exp`, or [`Authenticated::with_expiry`](crate::auth::Authenticated::with_expiry)) | close 4001, after queued messages |
//! | server shutting down | close 1001, after running handlers (within the shutdown timeout) and queued messages |

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use super::frame::{FrameReader, FrameWriter, InFrame, OpCode, Violation};
use super::message::{close_event, compressed_limit, Assembler, RawMessage};
use crate::auth::Credentials;
use crate::close::CREDENTIALS_EXPIRED;
use crate::deflate::{CompressionConfig, Deflate};
use crate::hub::{Client, CloseRequest, Hub, OutRx, Outbound, SendBuffer};
use crate::jsonrpc::RpcError;
use crate::limits::{ConnectionSlot, RateLimiter};
use crate::router::{BoxFuture, InFlight, Router};

type Io = TokioIo<Upgraded>;

/// A raw-mode message handler.
pub(crate) type RawHandler = Arc<dyn Fn(Client, RawMessage) -> BoxFuture<()> + Send + Sync>;
/// A connect or disconnect hook.
pub(crate) type Hook = Arc<dyn Fn(Client) -> BoxFuture<()> + Send + Sync>;

/// What the server does with whole messages.
pub(crate) enum Mode {
    Rpc(Router),
    Raw(RawHandler),
}

/// Per-connection limits and timers.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub max_message_size: usize,
    pub send_buffer: SendBuffer,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub close_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_inflight: usize,
    /// permessage-deflate settings; negotiated per connection.
    pub compression: CompressionConfig,
}

/// Messages held back, at most, while a connection is at its concurrency
/// limit (and at most the message size limit in bytes).
pub(crate) const MAX_HELD: usize = 64;

/// What every connection of a server shares.
pub(crate) struct Shared {
    pub hub: Hub,
    pub mode: Mode,
    pub settings: Settings,
    pub on_connect: Option<Hook>,
    pub on_disconnect: Option<Hook>,
    /// Set when graceful shutdown starts; then every connection is woken
    /// (through its close notification, see [`begin_shutdown`]) to finish
    /// its handlers and close with 1001.
    pub shutting_down: std::sync::atomic::AtomicBool,
}

/// Starts graceful shutdown of every connection of `shared`.
///
/// A flag and a wake-up per client rather than a shared cancellation
/// future: the connection loop polls its close notification anyway, and a
/// future shared by every connection would be a lock they all take on
/// every turn of their loop.
pub(crate) fn begin_shutdown(shared: &Shared) {
    shared
        .shutting_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    shared
        .hub
        .for_each(|client| client.0.close_notify.notify_one());
}

/// Runs a connection from the completed upgrade until it is closed.
pub(crate) async fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    shared: Arc<Shared>,
    remote: SocketAddr,
    credentials: Credentials,
    // Counted against the connection caps until this function returns.
    _slot: ConnectionSlot,
    limiter: Option<RateLimiter>,
    // What permessage-deflate negotiated, if it did.
    deflate: Option<Deflate>,
) {
    let mut io = match upgrade.await {
        // Only the upgraded socket is kept: frames are read and written by
        // `crate::frame`.
        Ok(ws) => ws.into_inner(),
        Err(e) => {
            tracing::debug!(%remote, error = %e, "upgrade failed");
            return;
        }
    };
    let hub = &shared.hub;
    let metrics = Arc::clone(hub.metrics());
    // On the monotonic clock from here on; too far off to represent: never.
    let expires = credentials.expires_at.and_then(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now().checked_add(left)
    });
    let (client, rx) = Client::new(
        hub,
        remote,
        credentials.identity,
        shared.settings.send_buffer,
    );
    hub.register(client.clone());
    metrics.connected();
    if shared
        .shutting_down
        .load(std::sync::atomic::Ordering::Acquire)
    {
        // Upgraded while shutdown began: close it like the others.
        client.close(1001, "server shutting down");
    }
    tracing::debug!(client = %client.id(), %remote, "connected");
    // The connect hook runs inside the connection loop, which writes what
    // is sent to the client meanwhile (so a hook that waits cannot make the
    // queue overflow) but runs no message before the hook has returned.
    let mut connecting = shared
        .on_connect
        .as_ref()
        .map(|hook| guarded_hook(hook, &client, "on_connect"));

    let max = shared.settings.max_message_size;
    let mut reader = FrameReader::new(max);
    let mut assembler = Assembler::new(max);
    if let Some(d) = &deflate {
        reader.allow_compressed(compressed_limit(max));
        assembler = assembler.with_inflater(d.inflater());
    }
    let code = Conn {
        io: &mut io,
        client: &client,
        shared: &shared,
        rx,
        reader,
        writer: FrameWriter::new(),
        assembler,
        // Raw mode runs one message at a time, in order.
        inflight: InFlight::new(match shared.mode {
            Mode::Rpc(_) => shared.settings.max_inflight,
            Mode::Raw(_) => 1,
        }),
        held: VecDeque::new(),
        held_bytes: 0,
        limiter,
        deflate,
        expires,
        connecting: &mut connecting,
    }
    .drive()
    .await
    // A slow consumer whose write was cut short: the socket had no room
    // for a close frame (and a frame was half written), so the connection
    // was dropped; it ended with 1008 all the same.
    .or_else(|| {
        client
            .take_close_request()
            .filter(|r| !r.drain)
            .map(|r| r.code)
    });

    client.close_queue();
    hub.unregister(client.id());
    metrics.disconnected(code);
    tracing::debug!(client = %client.id(), code, "disconnected");
    if let Some(hook) = connecting {
        // Closed while the connect hook ran: it finishes (its sends fail)
        // before the disconnect hook starts.
        hook.await;
    }
    if let Some(hook) = &shared.on_disconnect {
        guarded_hook(hook, &client, "on_disconnect").await;
    }
}

/// A hook's run for `client`, its panic caught and logged.
fn guarded_hook(hook: &Hook, client: &Client, name: &'static str) -> BoxFuture<()> {
    let id = client.id();
    let run = AssertUnwindSafe(hook(client.clone())).catch_unwind();
    Box::pin(async move {
        if run.await.is_err() {
            tracing::error!(client = %id, hook = name, "hook panicked");
        }
    })
}

/// Waits for the connect hook, if it is still running.
async fn hook_done(hook: &mut Option<BoxFuture<()>>) {
    match hook {
        Some(run) => run.await,
        None => std::future::pending().await,
    }
}

/// How the connection ended, or that it goes on.
enum Flow {
    Continue,
    /// Closed; the close code the server sent, if any.
    Done(Option<u16>),
}

struct Conn<'a> {
    io: &'a mut Io,
    client: &'a Client,
    shared: &'a Shared,
    rx: OutRx,
    reader: FrameReader,
    writer: FrameWriter,
    assembler: Assembler,
    /// The connection's handler tasks; dropped (aborting them) when the
    /// connection ends.
    inflight: InFlight,
    /// Whole messages read while at the concurrency limit, not yet run.
    held: VecDeque<RawMessage>,
    held_bytes: usize,
    /// The connection's rate limit, if rate limiting is on.
    limiter: Option<RateLimiter>,
    /// permessage-deflate, when negotiated.
    deflate: Option<Deflate>,
    /// When the credentials expire, if they do.
    expires: Option<tokio::time::Instant>,
    /// The connect hook while it runs; no message is dispatched before it
    /// returns (they are held back, as at the concurrency limit).
    connecting: &'a mut Option<BoxFuture<()>>,
}

/// The socket failed or the connection was aborted.
struct Gone;

impl Conn<'_> {
    async fn drive(mut self) -> Option<u16> {
        let settings = &self.shared.settings;
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Only for credentials that expire (boxed: connections without
        // stay small); a disabled branch is never polled.
        let mut expiry = self
            .expires
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        loop {
            // Messages held back at the limit (or while the connect hook
            // runs) go first, as room frees.
            while self.may_dispatch() {
                let Some(msg) = self.held.pop_front() else {
                    break;
                };
                self.held_bytes -= msg.bytes().len();
                if Box::pin(self.dispatch(msg)).await.is_err() {
                    return None;
                }
            }
            // Everything already buffered is handled before waiting again.
            while self.may_read() {
                match self.reader.next_frame() {
                    Ok(Some(frame)) => {
                        self.client.touch();
                        // Boxed: keeps the idle connection's task small.
                        match Box::pin(self.on_frame(frame)).await {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::Done(code)) => return code,
                            Err(Gone) => return None,
                        }
                    }
                    Ok(None) => break,
                    Err(v) => return Box::pin(self.fail(v)).await,
                }
            }
            self.reader.shrink_if_idle();
            let read = self.may_read();
            let busy = !self.inflight.is_idle();
            let expiring = expiry.is_some();
            let connecting = self.connecting.is_some();
            tokio::select! {
                biased;
                _ = self.client.0.close_notify.notified() => {
                    if let Some(req) = self.client.take_close_request() {
                        let until = tokio::time::Instant::now() + settings.drain_timeout;
                        return Box::pin(self.close(req, until)).await;
                    }
                    if self.shared.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                        return Box::pin(self.shut_down()).await;
                    }
                }
                _ = async {
                    match expiry.as_mut() {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                }, if expiring => {
                    expiry = None;
                    tracing::debug!(client = %self.client.id(), "credentials expired");
                    // Closed like an application close: the queue first.
                    self.client.close(CREDENTIALS_EXPIRED, "credentials expired");
                }
                msg = self.rx.recv() => {
                    if Box::pin(self.write_queued(Some(msg))).await.is_err() {
                        return None;
                    }
                }
                _ = self.inflight.progress(), if busy => {}
                _ = hook_done(self.connecting), if connecting => {
                    *self.connecting = None;
                }
                read = self.reader.fill(self.io), if read => match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                _ = ping.tick() => {
                    if self.client.silent_for() > settings.pong_timeout {
                        tracing::debug!(client = %self.client.id(), "keepalive timeout");
                        return Box::pin(self.fail(Violation(1001, "keepalive timeout"))).await;
                    }
                    if Box::pin(self.send_control(OpCode::Ping, &[])).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Whether to read more from the client: always below the concurrency
    /// limit; at it, while what is held back stays small.
    fn may_read(&self) -> bool {
        self.held.len() < MAX_HELD && self.held_bytes < self.shared.settings.max_message_size
    }

    /// Whether a message may run now: the connect hook has returned and
    /// the concurrency limit has room.
    fn may_dispatch(&self) -> bool {
        self.connecting.is_none() && self.inflight.has_room()
    }

    /// Runs a whole message now, or holds it back while the connection is
    /// at its concurrency limit or its connect hook runs.
    async fn on_whole_message(&mut self, msg: RawMessage) -> Result<(), Gone> {
        if self.held.is_empty() && self.may_dispatch() {
            self.dispatch(msg).await
        } else {
            self.held_bytes += msg.bytes().len();
            self.held.push_back(msg);
            Ok(())
        }
    }

    async fn dispatch(&mut self, msg: RawMessage) -> Result<(), Gone> {
        on_message(
            msg,
            self.client,
            self.shared,
            &mut self.inflight,
            &mut self.limiter,
        );
        // A burst of requests must not overflow the client's own queue
        // with its replies: write them as they pile up (unless the client
        // is closing: the loop's close request takes it from here).
        if self.rx.len() >= 32 && !self.client.is_closed() {
            self.write_queued(None).await?;
        }
        Ok(())
    }

    /// Graceful shutdown: read nothing more, give the handlers still
    /// running (and the connect hook) until the drain timeout to finish
    /// (writing what they send), then close with 1001 after the queue.
    async fn shut_down(&mut self) -> Option<u16> {
        let until = tokio::time::Instant::now() + self.shared.settings.drain_timeout;
        while !self.inflight.is_idle() || self.connecting.is_some() {
            let busy = !self.inflight.is_idle();
            let connecting = self.connecting.is_some();
            tokio::select! {
                biased;
                _ = self.client.0.close_notify.notified() => {
                    if let Some(req) = self.client.take_close_request() {
                        return self.close(req, until).await;
                    }
                }
                msg = self.rx.recv() => {
                    if self.write_queued(Some(msg)).await.is_err() {
                        return None;
                    }
                }
                _ = self.inflight.progress(), if busy => {}
                _ = hook_done(self.connecting), if connecting => {
                    *self.connecting = None;
                }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        // From here on sends are refused; handlers still running are
        // cancelled when the connection ends.
        self.client
            .request_close(1001, "server shutting down", true);
        let req = self.client.take_close_request().unwrap_or(CloseRequest {
            code: 1001,
            reason: "server shutting down".into(),
            drain: true,
        });
        self.close(req, until).await
    }

    /// Writes a control frame at once.
    async fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Gone> {
        let (io, writer, client) = (&mut *self.io, &mut self.writer, self.client);
        abortable(client, async {
            writer.frame(io, opcode, payload).await?;
            writer.flush(io).await
        })
        .await
    }

    /// Writes `first` and everything else queued, coalesced.
    async fn write_queued(&mut self, first: Option<Outbound>) -> Result<(), Gone> {
        let (io, writer, client, rx) = (&mut *self.io, &mut self.writer, self.client, &mut self.rx);
        let metrics = self.shared.hub.metrics();
        let deflate = self.deflate.as_ref();
        abortable(client, async {
            let mut next = first;
            if next.is_none() {
                next = rx.try_recv();
            }
            while let Some(msg) = next {
                // Counted before the write so a client that sees the message
                // also sees it counted.
                metrics.messages_out(1);
                let owned;
                let (opcode, compressed, payload): (OpCode, bool, &[u8]) = match &msg {
                    // Compressed once for every recipient with this window
                    // (by whichever writer needs it first); the
                    // uncompressed bytes are shared too.
                    Outbound::Shared(s) => match deflate.and_then(|d| s.compressed(d)) {
                        Some(c) => (OpCode::Text, true, c),
                        None => (OpCode::Text, false, s.bytes()),
                    },
                    Outbound::Text(b) | Outbound::Binary(b) => {
                        let opcode = if matches!(msg, Outbound::Text(_)) {
                            OpCode::Text
                        } else {
                            OpCode::Binary
                        };
                        match deflate.and_then(|d| d.compress(b)) {
                            Some(c) => {
                                owned = c;
                                (opcode, true, &owned)
                            }
                            None => (opcode, false, b),
                        }
                    }
                };
                writer.data_frame(io, opcode, compressed, payload).await?;
                next = rx.try_recv();
            }
            writer.flush(io).await
        })
        .await
    }

    async fn on_frame(&mut self, frame: InFrame) -> Result<Flow, Gone> {
        match frame.opcode {
            OpCode::Ping => {
                self.send_control(OpCode::Pong, &frame.payload).await?;
                Ok(Flow::Continue)
            }
            OpCode::Pong => Ok(Flow::Continue),
            OpCode::Close => Ok(match close_event(&frame.payload) {
                Ok(code) => {
                    // Echo the peer's code (or an empty close), then end.
                    self.client.mark_closing();
                    let payload = code.map(u16::to_be_bytes);
                    let _ = self
                        .send_control(OpCode::Close, payload.as_ref().map_or(&[][..], |p| &p[..]))
                        .await;
                    Flow::Done(code)
                }
                Err(v) => self
                    .fail(v)
                    .await
                    .map_or(Flow::Done(None), |c| Flow::Done(Some(c))),
            }),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                match self.assembler.push(frame) {
                    Ok(None) => Ok(Flow::Continue),
                    Ok(Some(msg)) => {
                        self.on_whole_message(msg).await?;
                        Ok(Flow::Continue)
                    }
                    Err(v) => Ok(Flow::Done(self.fail(v).await)),
                }
            }
        }
    }

    /// Fails the connection: a close frame with the code, then the end.
    async fn fail(&mut self, v: Violation) -> Option<u16> {
        self.client.mark_closing();
        tracing::debug!(client = %self.client.id(), code = v.0, reason = v.1, "closing the connection");
        let _ = self.send_close(v.0, v.1).await;
        Some(v.0)
    }

    async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), Gone> {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.send_control(OpCode::Close, &payload).await
    }

    /// Closes at the request of the application, the hub or shutdown;
    /// queued messages are written first, until `until` at the latest.
    async fn close(&mut self, req: CloseRequest, until: tokio::time::Instant) -> Option<u16> {
        let settings = &self.shared.settings;
        if !req.drain {
            // A slow consumer: no draining, no waiting for an answer. Its
            // abort signal fired too; take it so the close frame gets a
            // short, bounded chance to be written.
            let _ = self.client.0.abort_notify.notified().now_or_never();
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                self.send_close(req.code, &req.reason),
            )
            .await;
            return Some(req.code);
        }
        match tokio::time::timeout_at(until, self.write_queued(None)).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
        if self.send_close(req.code, &req.reason).await.is_err() {
            return None;
        }
        // Wait, bounded, for the peer's close frame; data is discarded.
        let wait = async {
            loop {
                match self.reader.next_frame() {
                    Ok(Some(f)) if f.opcode == OpCode::Close => return,
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(_) => return,
                }
                match self.reader.fill(self.io).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(settings.close_timeout, wait).await;
        Some(req.code)
    }
}

/// Runs a write, giving up when the client is aborted (a slow consumer
/// whose socket no longer accepts data).
async fn abortable(
    client: &Client,
    write: impl Future<Output = std::io::Result<()>>,
) -> Result<(), Gone> {
    tokio::select! {
        biased;
        r = write => r.map_err(|_| Gone),
        _ = client.0.abort_notify.notified() => Err(Gone),
    }
}

fn on_message(
    msg: RawMessage,
    client: &Client,
    shared: &Shared,
    inflight: &mut InFlight,
    limiter: &mut Option<RateLimiter>,
) {
    let metrics = shared.hub.metrics();
    metrics.message_in();
    // Every request (each element of a batch) costs a token; see `limits`.
    let mut admit = || -> Option<RpcError> {
        let e = limiter.as_mut()?.admit().err()?;
        metrics.incr("rate_limited_requests");
        Some(e)
    };
    match &shared.mode {
        Mode::Raw(_) if admit().is_some() => {
            // A rate-limited raw message is dropped.
        }
        Mode::Raw(handler) => {
            let metrics = Arc::clone(metrics);
            let id = client.id();
            let mut run = AssertUnwindSafe(handler(client.clone(), msg))
                .catch_unwind()
                .map(move |outcome| {
                    if outcome.is_err() {
                        metrics.handler_panic();
                        tracing::error!(client = %id, "raw handler panicked");
                    }
                });
            let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
            if std::pin::Pin::new(&mut run).poll(&mut cx).is_pending() {
                // One raw message at a time: the next is read when this ends.
                let permit = inflight.try_permit();
                inflight.spawn(async move {
                    run.await;
                    drop(permit);
                });
            }
        }
        Mode::Rpc(router) => {
            let text = match &msg {
                RawMessage::Text(b) => match std::str::from_utf8(b) {
                    Ok(t) => Some(t),
                    Err(_) => return,
                },
                RawMessage::Binary(_) => None,
            };
            router.on_message(text, client, &shared.hub, inflight, &mut admit);
        }
    }
    if limiter.as_ref().is_some_and(|l| l.exhausted()) && !client.is_closed() {
        metrics.incr("rate_limit_disconnects");
        tracing::debug!(client = %client.id(), "rate limit exceeded repeatedly: closing (1008)");
        client.close(1008, "rate limit exceeded");
    }
}
