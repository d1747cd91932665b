//! Test support: a server on a free loopback port, a WebSocket client
//! (tokio-tungstenite, an independent implementation) and a raw frame
//! client for sending what well-behaved clients never send.
#![allow(dead_code)]

pub mod broker;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: nbio_ws::Hub,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), nbio_ws::ServeError>>>,
}

impl TestServer {
    pub async fn start(builder: nbio_ws::ServerBuilder) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = builder.build().expect("server builds");
        let hub = server.hub().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_listener(listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            hub,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) -> Result<(), nbio_ws::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("not shut down yet");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown in time")
            .expect("serve task")
    }

    pub async fn http_get(&self, path: &str) -> (u16, String, String) {
        http_request(self.addr, "GET", path).await
    }
}

/// A minimal HTTP/1.1 request over a real socket: (status, headers, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct WsClient {
    pub ws: Ws,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        WsClient { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Next text message, parsed; panics on timeout or close.
    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
    }

    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("stream open")
                .expect("no error");
            match msg {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// Calls a method and returns the whole response object.
    pub async fn call(&mut self, method: &str, params: Value, id: Value) -> Value {
        self.send_json(
            &serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}),
        )
        .await;
        self.recv_json().await
    }

    /// Waits for the close frame from the server; returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Asserts nothing arrives within `wait`.
    /// Reading keeps answering pings meanwhile.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }

    pub async fn close(&mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// A raw WebSocket client: sends frames byte for byte (masked), reads
/// unmasked server frames.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub struct RawFrame {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        Self::connect_with(addr, path, "").await.0
    }

    /// Connects with extra request header lines (each ending in `\r\n`);
    /// returns the client and the response head.
    pub async fn connect_with(addr: SocketAddr, path: &str, headers: &str) -> (RawClient, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "eof during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "handshake failed: {head}");
                assert!(
                    head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                    "bad accept key: {head}"
                );
                buf.drain(..pos + 4);
                return (RawClient { stream, buf }, head);
            }
        }
    }

    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_first((if fin { 0x80 } else { 0 }) | opcode, payload)
            .await
    }

    /// Sends a frame whose first byte (FIN, RSV bits, opcode) is `first`.
    pub async fn send_first(&mut self, first: u8, payload: &[u8]) {
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.unwrap();
    }

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
        let fin = self.buf[0] & 0x80 != 0;
        let rsv1 = self.buf[0] & 0x40 != 0;
        let opcode = self.buf[0] & 0x0f;
        let mut len = (self.buf[1] & 0x7f) as usize;
        let mut head = 2;
        if len == 126 {
            self.fill(4).await;
            len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            head = 4;
        } else if len == 127 {
            self.fill(10).await;
            len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize;
            head = 10;
        }
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

    /// Reads frames until a close frame (skipping pings); returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let f = self.read_frame().await.expect("a close frame before EOF");
            if f.opcode == 8 {
                return f.close_code();
            }
        }
    }

    /// Next data frame's payload as text (skipping pings).
    pub async fn read_text(&mut self) -> String {
        loop {
            let f = self.read_frame().await.expect("a frame");
            if f.opcode == 1 {
                return String::from_utf8(f.payload).unwrap();
            }
            assert!(
                f.opcode == 9 || f.opcode == 10,
                "unexpected opcode {}",
                f.opcode
            );
        }
    }
}
