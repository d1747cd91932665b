//! Hub fan-out, send-to-one, slow consumers, and the plain HTTP endpoints,
//! over real sockets.

use std::time::Duration;

use nbio_ws::{rpc_method, Hub, Params, RpcError, Server};
use nbio_ws_testkit::{http_request, seed, RawClient, TestServer, WsClient};
use serde::Deserialize;
use serde_json::json;

/// The example server's `broadcast`, registered here with the attribute.
#[rpc_method("broadcast")]
async fn broadcast(hub: Hub, p: seed::Text) -> Result<seed::Broadcasted, RpcError> {
    seed::broadcast(hub, p).await
}

#[derive(Deserialize)]
struct To {
    to: nbio_ws::ClientId,
    text: String,
}

#[rpc_method("direct")]
fn direct(hub: Hub, Params(p): Params<To>) -> Result<bool, RpcError> {
    hub.send_to(p.to, "direct", &json!({"text": p.text}))
        .map_err(|e| RpcError::new(-32004, e.to_string()))?;
    Ok(true)
}

#[rpc_method("whoami")]
fn whoami(client: nbio_ws::Client) -> nbio_ws::ClientId {
    client.id()
}

async fn wait_clients(hub: &Hub, n: usize) {
    for _ in 0..200 {
        if hub.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} clients, have {}", hub.len());
}

#[tokio::test]
async fn broadcast_reaches_everyone_including_the_sender() {
    let s = TestServer::start(Server::builder()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(WsClient::connect(&s.url("/ws")).await);
    }
    wait_clients(&s.hub, 5).await;
    let r = clients[0]
        .call("broadcast", json!({"text": "hello all"}), json!(1))
        .await;
    // The sender's notification may come before or after its result.
    let (result, note) = if r.get("result").is_some() {
        (r, clients[0].recv_json().await)
    } else {
        (clients[0].recv_json().await, r)
    };
    assert_eq!(
        result["result"],
        json!({"status": "broadcasted", "text_length": 9})
    );
    assert_eq!(
        note,
        json!({"jsonrpc": "2.0", "method": "broadcast", "params": {"text": "hello all"}})
    );
    for c in &mut clients[1..] {
        assert_eq!(c.recv_json().await["params"]["text"], "hello all");
    }
}

#[tokio::test]
async fn send_to_one_client() {
    let s = TestServer::start(Server::builder()).await;
    let mut a = WsClient::connect(&s.url("/ws")).await;
    let mut b = WsClient::connect(&s.url("/ws")).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    let idb = b.call("whoami", json!([]), json!(1)).await["result"].clone();
    assert_eq!(idb.as_str().map(str::len), Some(32), "{idb}");
    assert_eq!(
        a.call("direct", json!({"to": idb, "text": "psst"}), json!(2))
            .await["result"],
        true
    );
    assert_eq!(b.recv_json().await["params"]["text"], "psst");
    c.expect_silence(Duration::from_millis(200)).await;
    let r = a
        .call(
            "direct",
            json!({"to": "00000000000000010000000000000001", "text": "x"}),
            json!(3),
        )
        .await;
    assert_eq!(r["error"]["code"], -32004);
    // A number is not a client id.
    let r = a
        .call("direct", json!({"to": 1, "text": "x"}), json!(4))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_1008_and_others_carry_on() {
    let s = TestServer::start(Server::builder().send_buffer(8)).await;
    // The slow client never reads; its socket buffers fill, then its queue.
    let _slow = RawClient::connect(s.addr, "/ws").await;
    let mut fast = WsClient::connect(&s.url("/ws")).await;
    wait_clients(&s.hub, 2).await;
    let big = "x".repeat(64 * 1024);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 200 {
            let v = fast.recv_json().await;
            assert_eq!(v["params"]["n"], n);
            n += 1;
        }
        fast
    });
    for n in 0..200 {
        s.hub
            .broadcast("bulk", &json!({"n": n, "pad": big}))
            .unwrap();
        // Pace the sender so the fast reader keeps up.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _fast = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.hub.metrics().slow_consumer_disconnects(), 1);
    wait_clients(&s.hub, 1).await;
}

#[tokio::test]
async fn health_metrics_and_http_errors() {
    let s = TestServer::start(Server::builder()).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    c.call("whoami", json!([]), json!(1)).await;
    c.call("nope", json!([]), json!(2)).await;

    let (status, head, body) = s.http_get("/health").await;
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["connected_clients"], 1);
    assert!(v["uptime_seconds"].is_u64());

    let (status, head, body) = s.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"));
    for needle in [
        "nbio_ws_connected_clients 1",
        "nbio_ws_connections_total 1",
        "nbio_ws_messages_received_total 2",
        "nbio_ws_errors_total{kind=\"method_not_found\"} 1",
        "nbio_ws_method_calls_total{method=\"whoami\"} 1",
        "nbio_ws_method_duration_seconds_count{method=\"whoami\"} 1",
        "nbio_ws_slow_consumer_disconnects_total 0",
        "nbio_ws_handler_panics_total 0",
        "nbio_ws_broadcasts_total 0",
        "nbio_ws_disconnects_total 0",
        "nbio_ws_messages_sent_total 2",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }

    assert_eq!(s.http_get("/nope").await.0, 404);
    assert_eq!(http_request(s.addr, "POST", "/health").await.0, 405);
    assert_eq!(http_request(s.addr, "DELETE", "/metrics").await.0, 405);
    assert_eq!(http_request(s.addr, "POST", "/ws").await.0, 405);
    // The WebSocket path without the upgrade headers.
    let (status, head, _) = s.http_get("/ws").await;
    assert_eq!(status, 426, "{head}");
}

#[tokio::test]
async fn wrong_websocket_version_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(Server::builder()).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let req = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\nConnection: close\r\n\r\n";
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
}

#[tokio::test]
async fn many_connect_disconnect_cycles_leave_nothing_behind() {
    let s = TestServer::start(Server::builder()).await;
    for _ in 0..200 {
        let mut c = WsClient::connect(&s.url("/ws")).await;
        c.close().await;
    }
    wait_clients(&s.hub, 0).await;
    let (_, _, body) = s.http_get("/metrics").await;
    assert!(body.contains("nbio_ws_connections_total 200"), "{body}");
}
