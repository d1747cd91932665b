//! WebSocket clients for tests.
//!
//! [`WsClient`] is tokio-tungstenite, an implementation independent of the
//! server's, so that a test checks the server against someone else's
//! reading of RFC 6455. [`RawClient`] writes frames byte for byte, for
//! what well-behaved clients never send (bad opcodes, oversized frames,
//! fragments out of order) and for a client that never reads.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::http::{ACCEPT, KEY};
use crate::TIMEOUT;

/// A tokio-tungstenite client stream.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A JSON-RPC client over a real WebSocket.
///
/// Two ways to call: [`call`](WsClient::call) sends a request with the id
/// given and returns the next message, whatever it is (for tests of the
/// protocol itself); [`request`](WsClient::request) numbers requests
/// itself and returns the response with its id, keeping the notifications
/// that arrive meanwhile for [`notification`](WsClient::notification).
pub struct WsClient {
    /// The underlying stream, for tests that need frames of their own.
    pub ws: Ws,
    next_id: u64,
    inbox: VecDeque<Value>,
}

impl WsClient {
    /// Connects to `url` (`ws://…`); fails the test if that does not
    /// succeed within [`TIMEOUT`].
    pub async fn connect(url: &str) -> WsClient {
        WsClient::connect_with(url, &[]).await.0
    }

    /// Connects with extra request headers; returns the client and the
    /// headers of the server's 101 response.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> (WsClient, HeaderMap) {
        let mut req = url.into_client_request().expect("a ws:// URL");
        for (k, v) in headers {
            req.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                v.parse().expect("a valid header value"),
            );
        }
        let (ws, res) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("connect");
        (WsClient::new(ws), res.headers().clone())
    }

    /// A client on a stream connected some other way (TLS, say).
    pub fn new(ws: Ws) -> WsClient {
        WsClient {
            ws,
            next_id: 1,
            inbox: VecDeque::new(),
        }
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends a JSON value as a text message.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// The next text message; pings and pongs are skipped. Fails the test
    /// on a timeout, a close or another kind of message.
    pub async fn recv_text(&mut self) -> String {
        self.text_before(Instant::now() + TIMEOUT)
            .await
            .expect("a message in time")
    }

    /// The next text message, parsed as JSON.
    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        parse(&text)
    }

    /// The next text message parsed as JSON, or `None` if none arrives by
    /// `deadline`. Pings and pongs are skipped; anything but text fails.
    pub async fn json_before(&mut self, deadline: Instant) -> Option<Value> {
        let text = self.text_before(deadline).await?;
        Some(parse(&text))
    }

    async fn text_before(&mut self, deadline: Instant) -> Option<String> {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
                .expect("stream open")
                .expect("no error");
            match msg {
                Message::Text(t) => {
                    if std::env::var_os("NBIO_WS_TEST_TRACE").is_some() {
                        eprintln!("<{:p} {t}", self);
                    }
                    return Some(t.to_string());
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// Sends a request with this `id` and returns the next message (the
    /// response, unless something else comes first).
    pub async fn call(&mut self, method: &str, params: Value, id: Value) -> Value {
        self.send_json(&json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}))
            .await;
        self.recv_json().await
    }

    /// Sends a request with the next id of this client's own and returns
    /// the response with that id (`result` or `error`). Notifications that
    /// arrive first are kept, in order, for
    /// [`notification`](WsClient::notification); any other message fails.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_json(&json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}))
            .await;
        loop {
            let v = self.recv_json().await;
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
            assert!(
                v.get("method").is_some(),
                "neither ours nor a notification: {v}"
            );
            self.inbox.push_back(v);
        }
    }

    /// The `result` of a [`request`](WsClient::request) that must succeed.
    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let v = self.request(method, params.clone()).await;
        match v.get("result") {
            Some(r) => r.clone(),
            None => panic!("{method} {params} failed: {v}"),
        }
    }

    /// The `error` of a [`request`](WsClient::request) that must fail.
    pub async fn err(&mut self, method: &str, params: Value) -> Value {
        let v = self.request(method, params.clone()).await;
        match v.get("error") {
            Some(e) => e.clone(),
            None => panic!("{method} {params} should have failed: {v}"),
        }
    }

    /// The next message: a notification kept by
    /// [`request`](WsClient::request), or else the next one to arrive.
    pub async fn next_message(&mut self) -> Value {
        match self.inbox.pop_front() {
            Some(v) => v,
            None => self.recv_json().await,
        }
    }

    /// The next notification (method and params): a kept one, or the next
    /// message, which must be one.
    pub async fn notification(&mut self) -> (String, Value) {
        let v = self.next_message().await;
        let method = v["method"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a notification, got {v}"))
            .to_owned();
        assert!(v.get("id").is_none(), "notifications have no id: {v}");
        (method, v["params"].clone())
    }

    /// The notifications kept by [`request`](WsClient::request) and not
    /// taken yet.
    pub fn inbox(&self) -> &VecDeque<Value> {
        &self.inbox
    }

    /// Waits for the server's close frame; returns its code (1005 for a
    /// close frame without one).
    pub async fn expect_close(&mut self) -> u16 {
        self.expect_close_frame().await.0
    }

    /// Waits for the server's close frame; returns its code (1005 for a
    /// close frame without one) and reason.
    pub async fn expect_close_frame(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// The next text message parsed as JSON, or how the connection ended:
    /// [`Ended::Closed`] with the code of the server's close frame (1005
    /// without one), or [`Ended::Dropped`] when the stream ended or broke
    /// without a close frame (as when the server drops a slow consumer in
    /// the middle of a frame). Pings and pongs are skipped; fails the test
    /// if nothing arrives within [`TIMEOUT`].
    pub async fn recv_or_end(&mut self) -> Result<Value, Ended> {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a message or the end in time");
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(parse(&t)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Closed(frame.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Ok(other)) => panic!("expected text, got {other:?}"),
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    /// Asserts that nothing but pings and pongs arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }

    /// Sends a normal (1000) close frame.
    pub async fn close(&mut self) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// How a connection ended, as [`WsClient::recv_or_end`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The server's close frame, with its code (1005 without one).
    Closed(u16),
    /// The stream ended or broke without a close frame.
    Dropped,
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
}

/// A WebSocket client that writes frames byte for byte (masked, as a
/// client must) and reads the server's frames as they come.
pub struct RawClient {
    /// The socket, after the handshake.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame as the server sent it.
pub struct RawFrame {
    /// The FIN bit.
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong, 0 continuation).
    pub opcode: u8,
    /// The payload (servers do not mask).
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame that has one.
    pub fn close_code(&self) -> Option<u16> {
        match (self.opcode, self.payload.as_slice()) {
            (8, [hi, lo, ..]) => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

impl RawClient {
    /// Connects to `addr` and upgrades `path`, checking the 101 and its
    /// `Sec-WebSocket-Accept`.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        RawClient::connect_with(addr, path, "").await.0
    }

    /// Connects with extra request header lines (each ending in `\r\n`);
    /// returns the client and the response head.
    pub async fn connect_with(addr: SocketAddr, path: &str, headers: &str) -> (RawClient, String) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient::handshake(stream, addr, path, headers).await
    }

    /// Connects with the smallest receive buffer the kernel allows, for a
    /// client that never reads: what the server sends it then backs up in
    /// the server (as behind a slow link) rather than in the megabytes of
    /// socket buffer loopback grants a peer.
    pub async fn connect_small_window(addr: SocketAddr, path: &str) -> RawClient {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("a socket");
        // Set before connecting, so that the window is small from the start.
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        RawClient::handshake(stream, addr, path, "").await.0
    }

    async fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &str,
    ) -> (RawClient, String) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("send");
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(pos) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let had = client.buf.len();
            assert!(client.fill(had + 1).await, "eof during handshake");
        };
        let head = String::from_utf8_lossy(&client.buf[..end - 4]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "handshake failed: {head}");
        assert!(head.contains(ACCEPT), "bad accept key: {head}");
        client.buf.drain(..end);
        (client, head)
    }

    /// Sends one frame: FIN bit, opcode and payload, masked.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_first((u8::from(fin) << 7) | opcode, payload)
            .await
    }

    /// Sends a frame whose first byte (FIN, RSV bits, opcode) is `first`.
    pub async fn send_first(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first];
        // Payload length: 7 bits, or 126 + 16 bits, or 127 + 64 bits; the
        // high bit says the payload is masked.
        match u16::try_from(payload.len()) {
            Ok(n) if n < 126 => frame.push(0x80 | n as u8),
            Ok(n) => frame.extend([0x80 | 126].into_iter().chain(n.to_be_bytes())),
            Err(_) => frame.extend(
                [0x80 | 127]
                    .into_iter()
                    .chain((payload.len() as u64).to_be_bytes()),
            ),
        }
        frame.extend(mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.stream.write_all(&frame).await.expect("send a frame");
    }

    /// Reads until at least `n` bytes are buffered; false at EOF (or a
    /// read error). Fails the test on a timeout.
    async fn fill(&mut self, n: usize) -> bool {
        let mut chunk = [0u8; 8192];
        while self.buf.len() < n {
            let read = match tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk)).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => 0,
                Err(_) => panic!("timed out waiting for a frame"),
            };
            if read == 0 {
                return false;
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
        true
    }

    /// The next frame, or `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        if !self.fill(2).await {
            return None;
        }
        let (fin, rsv1, opcode) = (
            self.buf[0] & 0x80 != 0,
            self.buf[0] & 0x40 != 0,
            self.buf[0] & 0x0f,
        );
        let (head, len) = match self.buf[1] & 0x7f {
            126 => {
                self.fill(4).await;
                (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
            }
            127 => {
                self.fill(10).await;
                let mut n = [0u8; 8];
                n.copy_from_slice(&self.buf[2..10]);
                (10, u64::from_be_bytes(n) as usize)
            }
            n => (2, n as usize),
        };
        if !self.fill(head + len).await {
            return None;
        }
        let payload = self.buf[head..head + len].to_vec();
        self.buf.drain(..head + len);
        Some(RawFrame {
            fin,
            rsv1,
            opcode,
            payload,
        })
    }

    /// Reads frames until a close frame; returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let f = self.read_frame().await.expect("a close frame before EOF");
            if f.opcode == 8 {
                return f.close_code();
            }
        }
    }

    /// The next text frame's payload (pings and pongs skipped).
    pub async fn read_text(&mut self) -> String {
        loop {
            let f = self.read_frame().await.expect("a frame");
            if f.opcode == 1 {
                return String::from_utf8(f.payload).expect("UTF-8 text");
            }
            assert!(
                f.opcode == 9 || f.opcode == 10,
                "unexpected opcode {}",
                f.opcode
            );
        }
    }
}
