//! Secrets never reach the logs: every event at TRACE level is captured
//! while clients authenticate (and fail to) with tokens in the header, the
//! subprotocol and the query string; no token appears in the output.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbio_ws::Server;
use nbio_ws_testkit::WsClient;
use serde_json::json;

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

/// The head of the answer to a raw upgrade request.
async fn raw_status(addr: std::net::SocketAddr, target: &str, extra: &str) -> String {
    nbio_ws_testkit::upgrade_request(addr, target, extra)
        .await
        .1
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
    let mut s = nbio_ws_testkit::TestServer::start(Server::builder().config(cfg)).await;

    // Successes, from each source.
    let bearer = format!("Bearer {GOOD}");
    let (mut a, _) = WsClient::connect_with(&s.url("/ws"), &[("authorization", &bearer)]).await;
    let protocol = format!("bearer, {GOOD}");
    let (mut b, _) =
        WsClient::connect_with(&s.url("/ws"), &[("sec-websocket-protocol", &protocol)]).await;
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
