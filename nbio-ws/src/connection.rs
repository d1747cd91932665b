//! One WebSocket connection: the reader loop, the writer task, keepalive,
//! size limits and close codes.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so it is never raced
//! in a `select!`: the socket is split, and the read half lives in its own
//! task that only ever awaits the next frame. The write half belongs to
//! the writer loop, which selects over the client's outbound queue, a
//! small control channel from the reader (pongs, close events), close
//! requests from anywhere, and the ping timer. When the writer is done it
//! aborts the reader, which is safe at that point because the socket is
//! being dropped.
//!
//! The framework enforces what fastwebsockets 0.10 leaves open:
//!
//! | condition | answer |
//! |---|---|
//! | a message over the size limit, counting every fragment | close 1009 |
//! | a control frame over 125 bytes (close frames included) | close 1002 |
//! | a malformed close frame or an invalid close code | close 1002 |
//! | invalid UTF-8 in a text message or a close reason | close 1007 |
//! | a fragment sequence broken by a new data frame, or a stray continuation | close 1002 |
//! | nothing heard from the peer (not even a pong) for the pong timeout | close 1001 |
//! | outbound queue full (slow consumer) | close 1008 |
//! | server shutting down | close 1001, after queued messages |

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead, WebSocketWrite};
use futures_util::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Semaphore};

use crate::client::{Client, Outbound};
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
}

/// Events from the reader to the writer.
#[derive(Debug)]
enum Control {
    Pong(Bytes),
    /// The peer sent a valid close frame; `None` when it had no code.
    PeerClose(Option<u16>),
    /// A protocol violation: close with this code and reason at once.
    Fail(u16, &'static str),
    /// The socket reached EOF or failed.
    Gone,
}

/// Runs a connection from the completed upgrade until it is closed.
pub(crate) async fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    shared: Arc<Shared>,
    remote: SocketAddr,
    identity: Option<Arc<str>>,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "upgrade failed");
            return;
        }
    };
    let (read, write) = ws.split(tokio::io::split);
    let hub = &shared.hub;
    let metrics = Arc::clone(hub.metrics());
    let (client, rx) = Client::new(
        hub.next_client_id(),
        remote,
        identity,
        shared.settings.send_buffer,
        Arc::clone(&metrics),
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
    if let Some(hook) = &shared.on_connect {
        run_hook(hook, &client, "on_connect").await;
    }

    // Room for a burst of pings; beyond it, pongs are dropped (only the
    // most recent ping needs an answer).
    let (ctrl_tx, ctrl_rx) = mpsc::channel(16);
    let reader = tokio::spawn(read_loop(
        read,
        client.clone(),
        Arc::clone(&shared),
        ctrl_tx,
    ));
    let code = write_loop(write, &client, rx, ctrl_rx, &shared).await;
    reader.abort();
    client.mark_closing();
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

async fn read_loop(
    mut ws: WebSocketRead<ReadHalf<Io>>,
    client: Client,
    shared: Arc<Shared>,
    ctrl: mpsc::Sender<Control>,
) {
    let max = shared.settings.max_message_size;
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // fastwebsockets refuses a single frame of this size or more; the
    // assembler below enforces the limit on whole messages.
    ws.set_max_message_size(max.saturating_add(1));
    let mut assembler = Assembler::new(max);
    let inflight = Arc::new(Semaphore::new(shared.settings.max_inflight.max(1)));
    // Automatic pongs and closes are off, so nothing is ever sent here.
    let mut no_send = |_: Frame<'_>| std::future::ready(Ok::<(), std::io::Error>(()));
    loop {
        let frame = match ws.read_frame(&mut no_send).await {
            Ok(f) => f,
            Err(e) => {
                let _ = ctrl.send(read_error(e)).await;
                return;
            }
        };
        client.touch();
        let event = match frame.opcode {
            OpCode::Ping | OpCode::Pong if frame.payload.len() > 125 => {
                Some(Control::Fail(1002, "control frame over 125 bytes"))
            }
            OpCode::Ping => {
                // If the writer is busy, dropping a pong is allowed: only the
                // most recent ping needs an answer.
                let _ = ctrl.try_send(Control::Pong(Bytes::copy_from_slice(&frame.payload)));
                None
            }
            OpCode::Pong => None,
            OpCode::Close => Some(close_event(&frame.payload)),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => match assembler.push(frame) {
                Ok(None) => None,
                Ok(Some(msg)) => {
                    on_message(msg, &client, &shared, &inflight).await;
                    None
                }
                Err(fail) => Some(fail),
            },
        };
        if let Some(event) = event {
            let _ = ctrl.send(event).await;
            return;
        }
    }
}

fn read_error(e: WebSocketError) -> Control {
    use WebSocketError as E;
    match e {
        E::InvalidUTF8 => Control::Fail(1007, "invalid UTF-8 in a text message"),
        E::FrameTooLarge => Control::Fail(1009, "message too big"),
        E::ReservedBitsNotZero => Control::Fail(1002, "reserved bits set"),
        E::ControlFrameFragmented => Control::Fail(1002, "fragmented control frame"),
        E::PingFrameTooLarge => Control::Fail(1002, "control frame over 125 bytes"),
        E::InvalidValue => Control::Fail(1002, "unknown opcode"),
        E::InvalidFragment | E::InvalidContinuationFrame => {
            Control::Fail(1002, "invalid fragment sequence")
        }
        E::InvalidCloseFrame | E::InvalidCloseCode => Control::Fail(1002, "invalid close frame"),
        _ => Control::Gone,
    }
}

fn close_event(payload: &[u8]) -> Control {
    match payload.len() {
        0 => Control::PeerClose(None),
        1 => Control::Fail(1002, "close frame with a 1-byte payload"),
        n if n > 125 => Control::Fail(1002, "control frame over 125 bytes"),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                Control::Fail(1002, "invalid close code")
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                Control::Fail(1007, "invalid UTF-8 in the close reason")
            } else {
                Control::PeerClose(Some(code))
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
struct Assembler {
    max: usize,
    partial: Option<Partial>,
}

struct Partial {
    text: bool,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

impl Assembler {
    fn new(max: usize) -> Self {
        Assembler { max, partial: None }
    }

    fn push(&mut self, frame: Frame<'_>) -> Result<Option<RawMessage>, Control> {
        let payload = frame.payload;
        match (frame.opcode, self.partial.as_mut()) {
            (OpCode::Text | OpCode::Binary, Some(_)) => Err(Control::Fail(
                1002,
                "new data frame before the last fragment",
            )),
            (OpCode::Continuation, None) => {
                Err(Control::Fail(1002, "continuation frame without a message"))
            }
            (opcode, None) => {
                if payload.len() > self.max {
                    return Err(Control::Fail(1009, "message too big"));
                }
                let text = opcode == OpCode::Text;
                let buf = into_bytes_mut(payload);
                if frame.fin {
                    // fastwebsockets has validated unfragmented text already.
                    let b = buf.freeze();
                    return Ok(Some(if text {
                        RawMessage::Text(b)
                    } else {
                        RawMessage::Binary(b)
                    }));
                }
                let mut p = Partial {
                    text,
                    buf,
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
                    return Err(Control::Fail(1009, "message too big"));
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

fn check_utf8(p: &mut Partial, fin: bool) -> Result<(), Control> {
    let invalid = Control::Fail(1007, "invalid UTF-8 in a text message");
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => {
            p.checked = p.buf.len();
            Ok(())
        }
        Err(e) if e.error_len().is_some() || fin => Err(invalid),
        Err(e) => {
            // An incomplete sequence at the end: it may complete later.
            p.checked += e.valid_up_to();
            Ok(())
        }
    }
}

fn into_bytes_mut(p: Payload<'_>) -> BytesMut {
    match p {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
}

async fn on_message(msg: RawMessage, client: &Client, shared: &Shared, inflight: &Arc<Semaphore>) {
    shared.hub.metrics().message_in();
    match &shared.mode {
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
                    let e = RpcError::invalid_request(
                        "binary frames are not accepted: send JSON-RPC in text frames",
                    );
                    shared.hub.metrics().error(e.kind());
                    let _ = client.send_text(jsonrpc::encode_error(&Id::null(), &e));
                    return;
                }
            };
            let (_count, fut) = router.dispatch(text, client, &shared.hub);
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

/// The writer's half of the socket, with the client whose abort signal
/// interrupts a write the peer is not reading.
struct Writer<'c> {
    ws: WebSocketWrite<WriteHalf<Io>>,
    client: &'c Client,
}

impl Writer<'_> {
    /// Writes one frame; `Err` means the socket is gone or the connection
    /// was aborted (a slow consumer whose socket buffer is full).
    async fn write(&mut self, frame: Frame<'_>) -> Result<(), ()> {
        tokio::select! {
            biased;
            r = self.ws.write_frame(frame) => r.map_err(|_| ()),
            _ = self.client.0.abort_notify.notified() => Err(()),
        }
    }

    async fn write_outbound(&mut self, msg: &Outbound) -> Result<(), ()> {
        match msg {
            Outbound::Text(b) => self.write(Frame::text(Payload::Borrowed(b))).await,
            Outbound::Binary(b) => self.write(Frame::binary(Payload::Borrowed(b))).await,
        }
    }
}

/// Runs the writer until the connection ends; returns the close code the
/// server sent, if any.
async fn write_loop(
    ws: WebSocketWrite<WriteHalf<Io>>,
    client: &Client,
    mut rx: mpsc::Receiver<Outbound>,
    mut ctrl: mpsc::Receiver<Control>,
    shared: &Shared,
) -> Option<u16> {
    let settings = &shared.settings;
    let metrics = shared.hub.metrics();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut w = Writer { ws, client };
    loop {
        tokio::select! {
            biased;
            _ = client.0.close_notify.notified() => {
                let Some(req) = client.take_close_request() else { continue };
                if !req.drain {
                    // A slow consumer: no draining, no waiting for its answer.
                    // Its abort signal was fired too; take it so the close
                    // frame gets a (bounded) chance to be written.
                    let _ = client.0.abort_notify.notified().now_or_never();
                    let close = w.ws.write_frame(Frame::close(req.code, req.reason.as_bytes()));
                    let _ = tokio::time::timeout(Duration::from_millis(100), close).await;
                    return Some(req.code);
                }
                {
                    let drain = async {
                        let mut n = 0;
                        while let Ok(msg) = rx.try_recv() {
                            w.write_outbound(&msg).await?;
                            n += 1;
                        }
                        metrics.messages_out(n);
                        Ok::<(), ()>(())
                    };
                    if !matches!(tokio::time::timeout(settings.drain_timeout, drain).await, Ok(Ok(()))) {
                        return None;
                    }
                }
                if w.write(Frame::close(req.code, req.reason.as_bytes())).await.is_err() {
                    return None;
                }
                // Wait, bounded, for the peer to answer the close.
                let _ = tokio::time::timeout(settings.close_timeout, async {
                    while let Some(ev) = ctrl.recv().await {
                        if !matches!(ev, Control::Pong(_)) {
                            break;
                        }
                    }
                })
                .await;
                return Some(req.code);
            }
            ev = ctrl.recv() => match ev {
                Some(Control::Pong(payload)) => {
                    if w.write(Frame::pong(Payload::Borrowed(&payload))).await.is_err() {
                        return None;
                    }
                }
                Some(Control::PeerClose(code)) => {
                    client.mark_closing();
                    let frame = match code {
                        Some(code) => Frame::close(code, b""),
                        None => Frame::close_raw(Payload::Borrowed(&[])),
                    };
                    let _ = w.write(frame).await;
                    return code;
                }
                Some(Control::Fail(code, reason)) => {
                    client.mark_closing();
                    tracing::debug!(client = %client.id(), code, reason, "closing on protocol error");
                    let _ = w.write(Frame::close(code, reason.as_bytes())).await;
                    return Some(code);
                }
                Some(Control::Gone) | None => {
                    client.mark_closing();
                    return None;
                }
            },
            msg = rx.recv() => {
                let msg = msg?;
                if w.write_outbound(&msg).await.is_err() {
                    return None;
                }
                let mut n = 1;
                // Write what else is queued before going back to select.
                while n < 64 {
                    let Ok(msg) = rx.try_recv() else { break };
                    if w.write_outbound(&msg).await.is_err() {
                        return None;
                    }
                    n += 1;
                }
                metrics.messages_out(n);
            }
            _ = ping.tick() => {
                if client.silent_for() > settings.pong_timeout {
                    client.mark_closing();
                    tracing::debug!(client = %client.id(), "keepalive timeout");
                    let _ = w.write(Frame::close(1001, b"keepalive timeout")).await;
                    return Some(1001);
                }
                if w.write(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await.is_err() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: OpCode, data: &[u8]) -> Frame<'static> {
        Frame::new(fin, opcode, None, Payload::Owned(data.to_vec()))
    }

    fn fail_code(r: Result<Option<RawMessage>, Control>) -> u16 {
        match r {
            Err(Control::Fail(code, _)) => code,
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
        assert!(matches!(close_event(&[]), Control::PeerClose(None)));
        assert!(matches!(close_event(&[3]), Control::Fail(1002, _)));
        assert!(matches!(
            close_event(&1000u16.to_be_bytes()),
            Control::PeerClose(Some(1000))
        ));
        assert!(matches!(
            close_event(&1005u16.to_be_bytes()),
            Control::Fail(1002, _)
        ));
        assert!(matches!(
            close_event(&999u16.to_be_bytes()),
            Control::Fail(1002, _)
        ));
        assert!(matches!(
            close_event(&5000u16.to_be_bytes()),
            Control::Fail(1002, _)
        ));
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(b"\xff");
        assert!(matches!(close_event(&bad), Control::Fail(1007, _)));
        let long = vec![b'a'; 126];
        assert!(matches!(close_event(&long), Control::Fail(1002, _)));
    }
}
