//! One WebSocket connection: reading, writing, keepalive, size limits
//! and close codes — in one task per connection.
//!
//! The task owns the upgraded socket and selects over: more bytes from the
//! client (the crate-private `frame` reader is cancel-safe), the
//! client's outbound queue, close requests, and the ping timer. Handlers
//! that finish at once run inline; handlers that wait are spawned, so
//! requests of one connection run concurrently.
//!
//! The framework enforces what fastwebsockets 0.10 leaves open:
//!
//! | condition | answer |
//! |---|---|
//! | a message over the size limit, counting every fragment | close 1009 |
//! | a control frame over 125 bytes (close frames included) | close 1002 |
//! | a malformed close frame or an invalid close code | close 1002 |
//! | an unmasked frame, reserved bits or opcodes | close 1002 |
//! | invalid UTF-8 in a text message or a close reason | close 1007 |
//! | a fragment sequence broken by a new data frame, or a stray continuation | close 1002 |
//! | nothing heard from the peer (not even a pong) for the pong timeout | close 1001 |
//! | outbound queue full (slow consumer) | close 1008, without waiting |
//! | server shutting down | close 1001, after queued messages |

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use crate::client::{Client, OutRx, Outbound};
use crate::frame::{FrameReader, FrameWriter, InFrame, OpCode, Violation};
use crate::hub::Hub;
use crate::jsonrpc::{self, Id, RpcError};
use crate::router::{BoxFuture, Router};

type Io = TokioIo<Upgraded>;

/// A whole message received in raw mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawMessage {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl RawMessage {
    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            RawMessage::Text(b) => std::str::from_utf8(b).ok(),
            RawMessage::Binary(_) => None,
        }
    }

    /// The payload, text or binary.
    pub fn bytes(&self) -> &Bytes {
        match self {
            RawMessage::Text(b) | RawMessage::Binary(b) => b,
        }
    }
}

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
    pub send_buffer: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub close_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_inflight: usize,
}

/// What every connection of a server shares.
pub(crate) struct Shared {
    pub hub: Hub,
    pub mode: Mode,
    pub settings: Settings,
    pub on_connect: Option<Hook>,
    pub on_disconnect: Option<Hook>,
    /// Set when graceful shutdown starts.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Origin, caps, authentication and rate-limit settings.
    pub gate: crate::gate::Gate,
}

/// Runs a connection from the completed upgrade until it is closed.
pub(crate) async fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    shared: Arc<Shared>,
    remote: SocketAddr,
    identity: Option<Arc<str>>,
    // Counted against the connection caps until this function returns.
    _slot: crate::limits::ConnectionSlot,
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
    let (client, rx) = Client::new(hub, remote, identity, shared.settings.send_buffer);
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
    if let Some(hook) = &shared.on_connect {
        run_hook(hook, &client, "on_connect").await;
    }

    let code = Conn {
        io: &mut io,
        client: &client,
        shared: &shared,
        rx,
        reader: FrameReader::new(shared.settings.max_message_size),
        writer: FrameWriter::new(),
        assembler: Assembler::new(shared.settings.max_message_size),
        inflight: Arc::new(Semaphore::new(shared.settings.max_inflight.max(1))),
        limiter: shared.gate.rate_limiter(),
    }
    .drive()
    .await;

    client.close_queue();
    hub.unregister(client.id());
    metrics.disconnected(code);
    tracing::debug!(client = %client.id(), code, "disconnected");
    if let Some(hook) = &shared.on_disconnect {
        run_hook(hook, &client, "on_disconnect").await;
    }
}

async fn run_hook(hook: &Hook, client: &Client, name: &str) {
    if AssertUnwindSafe(hook(client.clone()))
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(client = %client.id(), hook = name, "hook panicked");
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
    inflight: Arc<Semaphore>,
    /// The connection's rate limit, if rate limiting is on.
    limiter: Option<crate::limits::RateLimiter>,
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
        loop {
            // Everything already buffered is handled before waiting again.
            loop {
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
            tokio::select! {
                biased;
                _ = self.client.0.close_notify.notified() => {
                    if let Some(req) = self.client.take_close_request() {
                        return Box::pin(self.close(req)).await;
                    }
                }
                msg = self.rx.recv() => {
                    if Box::pin(self.write_queued(Some(msg))).await.is_err() {
                        return None;
                    }
                }
                read = self.reader.fill(self.io) => match read {
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
        abortable(client, async {
            let mut next = first;
            if next.is_none() {
                next = rx.try_recv();
            }
            while let Some(msg) = next {
                // Counted before the write so a client that sees the message
                // also sees it counted.
                metrics.messages_out(1);
                match &msg {
                    Outbound::Text(b) => writer.frame(io, OpCode::Text, b).await?,
                    Outbound::Binary(b) => writer.frame(io, OpCode::Binary, b).await?,
                }
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
                        on_message(
                            msg,
                            self.client,
                            self.shared,
                            &self.inflight,
                            &mut self.limiter,
                        )
                        .await;
                        // A burst of requests must not overflow the client's own
                        // queue with its replies: write them as they pile up.
                        if self.rx.len() >= 32 {
                            self.write_queued(None).await?;
                        }
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

    /// Closes at the request of the application, the hub or shutdown.
    async fn close(&mut self, req: crate::client::CloseRequest) -> Option<u16> {
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
        match tokio::time::timeout(settings.drain_timeout, self.write_queued(None)).await {
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

/// Validates a close frame's payload: the peer's code (`None` for an empty
/// payload), or the violation.
pub(crate) fn close_event(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Violation(1002, "close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                Err(Violation(1002, "invalid close code"))
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                Err(Violation(1007, "invalid UTF-8 in the close reason"))
            } else {
                Ok(Some(code))
            }
        }
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4 and the IANA registry).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Reassembles fragmented messages, enforcing the size limit on the whole
/// message and validating UTF-8 as fragments arrive (so an invalid text
/// message fails fast).
pub(crate) struct Assembler {
    max: usize,
    partial: Option<Partial>,
}

struct Partial {
    text: bool,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

const INVALID_UTF8: Violation = Violation(1007, "invalid UTF-8 in a text message");

impl Assembler {
    pub(crate) fn new(max: usize) -> Self {
        Assembler { max, partial: None }
    }

    pub(crate) fn push(&mut self, frame: InFrame) -> Result<Option<RawMessage>, Violation> {
        let payload = frame.payload;
        match (frame.opcode, self.partial.as_mut()) {
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                Err(Violation(1002, "new data frame before the last fragment"))
            }
            (OpCode::Continuation, None) => {
                Err(Violation(1002, "continuation frame without a message"))
            }
            (opcode, None) => {
                if payload.len() > self.max {
                    return Err(Violation(1009, "message too big"));
                }
                let text = opcode == OpCode::Text;
                if frame.fin {
                    if text && std::str::from_utf8(&payload).is_err() {
                        return Err(INVALID_UTF8);
                    }
                    let b = payload.freeze();
                    return Ok(Some(if text {
                        RawMessage::Text(b)
                    } else {
                        RawMessage::Binary(b)
                    }));
                }
                let mut p = Partial {
                    text,
                    buf: payload,
                    checked: 0,
                };
                if text {
                    check_utf8(&mut p, false)?;
                }
                self.partial = Some(p);
                Ok(None)
            }
            (_, Some(p)) => {
                if p.buf.len() + payload.len() > self.max {
                    self.partial = None;
                    return Err(Violation(1009, "message too big"));
                }
                p.buf.extend_from_slice(&payload);
                if p.text {
                    check_utf8(p, frame.fin)?;
                }
                if !frame.fin {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Ok(None);
                };
                let b = p.buf.freeze();
                Ok(Some(if p.text {
                    RawMessage::Text(b)
                } else {
                    RawMessage::Binary(b)
                }))
            }
        }
    }
}

fn check_utf8(p: &mut Partial, fin: bool) -> Result<(), Violation> {
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => {
            p.checked = p.buf.len();
            Ok(())
        }
        Err(e) if e.error_len().is_some() || fin => Err(INVALID_UTF8),
        Err(e) => {
            // An incomplete sequence at the end: it may complete later.
            p.checked += e.valid_up_to();
            Ok(())
        }
    }
}

async fn on_message(
    msg: RawMessage,
    client: &Client,
    shared: &Shared,
    inflight: &Arc<Semaphore>,
    limiter: &mut Option<crate::limits::RateLimiter>,
) {
    shared.hub.metrics().message_in();
    // Every request (each element of a batch) costs a token; see `limits`.
    let mut admit = |metrics: &crate::metrics::Metrics| -> Option<RpcError> {
        let e = limiter.as_mut()?.admit().err()?;
        metrics.incr("rate_limited_requests");
        Some(e)
    };
    on_message_inner(msg, client, shared, inflight, &mut admit).await;
    if limiter.as_ref().is_some_and(|l| l.exhausted()) && !client.is_closed() {
        shared.hub.metrics().incr("rate_limit_disconnects");
        tracing::debug!(client = %client.id(), "rate limit exceeded repeatedly: closing (1008)");
        client.close(1008, "rate limit exceeded");
    }
}

async fn on_message_inner(
    msg: RawMessage,
    client: &Client,
    shared: &Shared,
    inflight: &Arc<Semaphore>,
    admit: &mut (dyn FnMut(&crate::metrics::Metrics) -> Option<RpcError> + Send),
) {
    let metrics = shared.hub.metrics();
    match &shared.mode {
        Mode::Raw(_) if admit(metrics).is_some() => {
            // A rate-limited raw message is dropped.
        }
        Mode::Raw(handler) => {
            let outcome = AssertUnwindSafe(handler(client.clone(), msg))
                .catch_unwind()
                .await;
            if outcome.is_err() {
                shared.hub.metrics().handler_panic();
                tracing::error!(client = %client.id(), "raw handler panicked");
            }
        }
        Mode::Rpc(router) => {
            let text = match &msg {
                RawMessage::Text(b) => match std::str::from_utf8(b) {
                    Ok(t) => t,
                    Err(_) => return,
                },
                RawMessage::Binary(_) => {
                    let e = admit(metrics).unwrap_or_else(|| {
                        RpcError::invalid_request(
                            "binary frames are not accepted: send JSON-RPC in text frames",
                        )
                    });
                    shared.hub.metrics().error(e.kind());
                    let _ = client.send_text(jsonrpc::encode_error(&Id::null(), &e));
                    return;
                }
            };
            let (_count, fut) =
                router.dispatch_with(text, client, &shared.hub, &mut || admit(metrics));
            let mut fut = Box::pin(fut);
            // Most handlers finish without waiting: poll once here and only
            // spawn a task for those that do wait. Requests that wait run
            // concurrently, up to `max_inflight` per connection.
            let polled = {
                let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
                fut.as_mut().poll(&mut cx)
            };
            match polled {
                Poll::Ready(reply) => {
                    if let Some(bytes) = reply {
                        let _ = client.send_text(bytes);
                    }
                }
                Poll::Pending => {
                    let Ok(permit) = Arc::clone(inflight).acquire_owned().await else {
                        return;
                    };
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Some(bytes) = fut.await {
                            let _ = client.send_text(bytes);
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: OpCode, data: &[u8]) -> InFrame {
        InFrame {
            fin,
            opcode,
            payload: BytesMut::from(data),
        }
    }

    fn fail_code(r: Result<Option<RawMessage>, Violation>) -> u16 {
        match r {
            Err(v) => v.0,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn reassembles_fragments() {
        let mut a = Assembler::new(10);
        assert!(a.push(frame(false, OpCode::Text, b"he")).unwrap().is_none());
        assert!(a
            .push(frame(false, OpCode::Continuation, b"ll"))
            .unwrap()
            .is_none());
        let msg = a
            .push(frame(true, OpCode::Continuation, b"o"))
            .unwrap()
            .unwrap();
        assert_eq!(msg.as_text(), Some("hello"));
    }

    #[test]
    fn limit_applies_to_the_whole_message() {
        let mut a = Assembler::new(4);
        assert!(a
            .push(frame(false, OpCode::Binary, b"abc"))
            .unwrap()
            .is_none());
        assert_eq!(
            fail_code(a.push(frame(true, OpCode::Continuation, b"de"))),
            1009
        );
        assert_eq!(
            fail_code(Assembler::new(4).push(frame(true, OpCode::Text, b"abcde"))),
            1009
        );
    }

    #[test]
    fn utf8_is_checked_across_fragments() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        assert!(a
            .push(frame(false, OpCode::Text, &euro[..1]))
            .unwrap()
            .is_none());
        let msg = a
            .push(frame(true, OpCode::Continuation, &euro[1..]))
            .unwrap()
            .unwrap();
        assert_eq!(msg.as_text(), Some("€"));

        let mut a = Assembler::new(100);
        assert_eq!(
            fail_code(a.push(frame(false, OpCode::Text, b"a\xff"))),
            1007
        );
        let mut a = Assembler::new(100);
        assert!(a
            .push(frame(false, OpCode::Text, &euro[..2]))
            .unwrap()
            .is_none());
        assert_eq!(
            fail_code(a.push(frame(true, OpCode::Continuation, b""))),
            1007
        );
        assert_eq!(
            fail_code(Assembler::new(100).push(frame(true, OpCode::Text, b"\xc3\x28"))),
            1007
        );
    }

    #[test]
    fn broken_fragment_sequences() {
        let mut a = Assembler::new(100);
        assert_eq!(
            fail_code(a.push(frame(true, OpCode::Continuation, b"x"))),
            1002
        );
        let mut a = Assembler::new(100);
        a.push(frame(false, OpCode::Text, b"x")).unwrap();
        assert_eq!(fail_code(a.push(frame(true, OpCode::Text, b"y"))), 1002);
    }

    #[test]
    fn close_frames() {
        assert_eq!(close_event(&[]), Ok(None));
        assert_eq!(close_event(&[3]).unwrap_err().0, 1002);
        assert_eq!(close_event(&1000u16.to_be_bytes()), Ok(Some(1000)));
        assert_eq!(close_event(&4999u16.to_be_bytes()), Ok(Some(4999)));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000] {
            assert_eq!(
                close_event(&bad.to_be_bytes()).unwrap_err().0,
                1002,
                "{bad}"
            );
        }
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(b"\xff");
        assert_eq!(close_event(&bad).unwrap_err().0, 1007);
    }
}
