//! Secrets never reach the logs: every event at TRACE level is captured
//! while clients authenticate (and fail to) with tokens in the header, the
//! subprotocol and the query string; no token appears in the output.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::WsClient;
use nbio_ws::Server;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

const GOOD: &str = "GoodToken-7f3a9c";
const WRONG: [&str; 3] = ["WrongHeader-51b2", "WrongProto-9e0d", "WrongQuery-c4a1"];

async fn raw_status(addr: std::net::SocketAddr, target: &str, extra: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(common::TIMEOUT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs() {
    let buf = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let cfg = nbio_ws::Config::from_lookup(|k| match k {
        "WS_AUTH_ENABLED" => Some("true".into()),
        "WS_BEARER_TOKENS" => Some(format!("alice:{GOOD}")),
        "WS_LOG_LEVEL" => Some("trace".into()),
        _ => None,
    })
    .unwrap();
    // Operators log their configuration; that must be safe too.
    tracing::info!(config = ?cfg, "configuration");
    let mut s = common::TestServer::start(Server::builder().config(cfg)).await;

    // Successes, from each source.
    let mut req = s.url("/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {GOOD}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut a = WsClient { ws };
    let mut req = s.url("/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {GOOD}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut b = WsClient { ws };
    let mut c = WsClient::connect(&s.url(&format!("/ws?token={GOOD}"))).await;
    for ws in [&mut a, &mut b, &mut c] {
        let r = ws.call("no.such.method", json!([]), json!(1)).await;
        assert_eq!(r["error"]["code"], -32601);
        ws.close().await;
    }

    // Failures, from each source.
    let refused = [
        raw_status(
            s.addr,
            "/ws",
            &format!("Authorization: Bearer {}\r\n", WRONG[0]),
        )
        .await,
        raw_status(
            s.addr,
            "/ws",
            &format!("Sec-WebSocket-Protocol: bearer, {}\r\n", WRONG[1]),
        )
        .await,
        raw_status(s.addr, &format!("/ws?token={}", WRONG[2]), "").await,
    ];
    for r in &refused {
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown().await.unwrap();

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    for secret in std::iter::once(GOOD).chain(WRONG) {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
    // The events were captured, with the query string redacted.
    assert!(logs.contains("upgrade refused"), "{logs}");
    assert!(logs.contains("/ws?<redacted>"), "{logs}");
    assert!(logs.contains("authenticated"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
}
