//! A minimal WebSocket client for load generation, built on
//! `fastwebsockets::handshake::client` over a tokio `TcpStream`.
//!
//! Only `ws://` URLs on loopback addresses are accepted.

use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{handshake, WebSocket, WebSocketError};
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A client WebSocket as returned by [`connect`].
pub type Ws = WebSocket<TokioIo<Upgraded>>;

/// A parsed `ws://host:port/path` target, resolved to a loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    /// The URL as given.
    pub url: String,
    /// Resolved socket address (always loopback).
    pub addr: SocketAddr,
    /// Value of the `Host` header (`host:port` as written in the URL).
    pub authority: String,
    /// Request path, e.g. `/ws`.
    pub path: String,
}

impl WsTarget {
    /// Parses and resolves `ws://host[:port]/path`. Refuses anything that
    /// does not resolve to a loopback address.
    ///
    /// ```
    /// use nbio_ws_benches::ws::WsTarget;
    /// let t = WsTarget::parse("ws://127.0.0.1:9001/ws").unwrap();
    /// assert_eq!(t.addr.port(), 9001);
    /// assert_eq!(t.path, "/ws");
    /// assert!(WsTarget::parse("ws://10.0.0.1:80/ws").is_err());
    /// assert!(WsTarget::parse("wss://127.0.0.1/ws").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url}: missing host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .copied()
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| {
                format!("{url}: refusing a non-loopback target ({addrs:?}); this tool only measures local servers")
            })?;
        Ok(Self {
            url: url.to_string(),
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// The `http://` URL of `path` on the same server (e.g. `/health`).
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.authority, path)
    }
}

/// Why a connection attempt failed, classified for reporting.
#[derive(Debug)]
pub enum ConnectError {
    /// `connect(2)` or `socket(2)` failed.
    Io(std::io::Error),
    /// The HTTP upgrade failed (non-101 status, reset, bad headers).
    Handshake(WebSocketError),
    /// Connect + handshake did not finish within the timeout.
    Timeout,
}

impl ConnectError {
    /// A short, stable label used as a key in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Io(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                "client_emfile (loadgen out of file descriptors)"
            }
            ConnectError::Io(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                "client_eaddrnotavail (out of ephemeral ports)"
            }
            ConnectError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection_refused"
            }
            ConnectError::Io(_) => "connect_io_error",
            ConnectError::Handshake(WebSocketError::InvalidStatusCode(_)) => "handshake_bad_status",
            ConnectError::Handshake(_) => "handshake_error (reset/closed by server?)",
            ConnectError::Timeout => "timeout (server not accepting: backlog full or EMFILE?)",
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
            ConnectError::Timeout => write!(f, "connect timed out"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Runs hyper's client connection futures on the ambient tokio runtime.
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

/// Opens a TCP connection to `target` (with `TCP_NODELAY`) and performs the
/// WebSocket client handshake, all within `timeout`.
pub async fn connect(target: &WsTarget, timeout: Duration) -> Result<Ws, ConnectError> {
    match tokio::time::timeout(timeout, connect_inner(target)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn connect_inner(target: &WsTarget) -> Result<Ws, ConnectError> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(ConnectError::Io)?;
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    let req = Request::builder()
        .method("GET")
        .uri(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .expect("static request is valid");
    let (mut ws, _resp) = handshake::client(&SpawnExecutor, req, stream)
        .await
        .map_err(ConnectError::Handshake)?;
    // Small frames dominate: never use writev for them.
    ws.set_writev(false);
    Ok(ws)
}

/// `GET path` on the target's server and parse the body as JSON (used for
/// `/health`). Returns `None` on any failure.
pub async fn get_json(target: &WsTarget, path: &str) -> Option<serde_json::Value> {
    let fut = async {
        let stream = TcpStream::connect(target.addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method("GET")
            .uri(path)
            .header(HOST, target.authority.as_str())
            .body(Empty::<Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// Result of [`connect_many`].
pub struct ConnectOutcome {
    /// Established sockets with their index `i` (target `i % targets.len()`),
    /// in index order.
    pub sockets: Vec<(usize, Ws)>,
    /// Failed attempts by [`ConnectError::kind`].
    pub failures: std::collections::BTreeMap<String, u64>,
    /// The first failure's message, for the report.
    pub first_error: Option<String>,
    /// Wall time of the whole connection phase.
    pub elapsed: Duration,
}

impl ConnectOutcome {
    /// Total failed attempts.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Opens `n` WebSocket connections, connection `i` to `targets[i % len]`,
/// at most `concurrency` handshakes at a time, each bounded by `timeout`.
pub async fn connect_many(
    targets: &[WsTarget],
    n: usize,
    concurrency: usize,
    timeout: Duration,
) -> ConnectOutcome {
    assert!(!targets.is_empty(), "at least one target");
    let started = std::time::Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let target = targets[i % targets.len()].clone();
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore never closed");
            connect(&target, timeout).await
        }));
    }
    let mut out = ConnectOutcome {
        sockets: Vec::with_capacity(n),
        failures: Default::default(),
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(Ok(ws)) => out.sockets.push((i, ws)),
            Ok(Err(e)) => {
                *out.failures.entry(e.kind().to_string()).or_default() += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                *out.failures.entry("task_panicked".into()).or_default() += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out.elapsed = started.elapsed();
    out
}
