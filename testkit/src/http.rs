//! HTTP/1.1 over real sockets, written by hand: plain requests to a
//! server's HTTP endpoints, and raw WebSocket upgrade requests whose answer
//! a test wants to see whole (status, headers, body).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TIMEOUT;

/// The example key of RFC 6455 (`Sec-WebSocket-Key`); the server must
/// answer it with [`ACCEPT`].
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The `Sec-WebSocket-Accept` that answers [`KEY`].
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A request `method path` with `Connection: close`, read to the end:
/// `(status, head, body)`. Errors (nothing listening, a timeout, an answer
/// that is not HTTP) are returned, for tests that wait for a server.
pub async fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other(format!("{method} {path}: no answer in time")))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = status_of(head)
        .ok_or_else(|| std::io::Error::other(format!("{method} {path}: not HTTP: {text:?}")))?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// [`try_http_request`], failing the test on any error.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    try_http_request(addr, method, path)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// A raw WebSocket upgrade request for `target` with `extra` header lines
/// (each ending in `\r\n`): `(status, head, body)` of the answer, the body
/// read as far as its `Content-Length` (none on a 101).
pub async fn upgrade_request(addr: SocketAddr, target: &str, extra: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send the request");
    read_response(&mut s).await
}

/// Reads one HTTP response from `s`: `(status, head, body)`, the body as
/// far as its `Content-Length` (none on a 101, whose socket then carries
/// WebSocket frames). Fails the test on EOF before the head or a timeout.
pub async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap_or(0);
        assert!(
            n > 0,
            "EOF before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = status_of(&head).unwrap_or(0);
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while status != 101 && body.len() < len {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .expect("a body in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// The status code of a response head (`HTTP/1.1 200 OK`).
fn status_of(head: &str) -> Option<u16> {
    head.split(' ').nth(1)?.parse().ok()
}

/// The value of header `name` (any case) in a response head.
///
/// ```
/// let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 3";
/// assert_eq!(nbio_ws_testkit::http::header(head, "Content-Length"), Some("3"));
/// assert_eq!(nbio_ws_testkit::http::header(head, "etag"), None);
/// ```
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
