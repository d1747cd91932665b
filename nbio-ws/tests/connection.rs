//! The connection layer over real sockets: limits, close codes,
//! keepalive, raw mode, hooks and graceful shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbio_ws::{Client, RawMessage, Server};
use nbio_ws_testkit::{RawClient, TestServer, WsClient};
use serde_json::json;

fn echo_builder() -> nbio_ws::ServerBuilder {
    Server::builder()
        .path("/")
        .raw(|c: Client, m: RawMessage| async move {
            let _ = match m {
                RawMessage::Text(t) => c.send_text(t),
                RawMessage::Binary(b) => c.send_binary(b),
            };
        })
}

#[tokio::test]
async fn raw_mode_echoes_text_and_binary_in_order() {
    let s = TestServer::start(echo_builder()).await;
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(true, 1, b"one").await;
    c.send_frame(true, 2, &[0, 1, 2]).await;
    c.send_frame(false, 1, b"fra").await;
    c.send_frame(false, 0, b"gme").await;
    c.send_frame(true, 0, b"nted").await;
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload), (1, b"one".to_vec()));
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload), (2, vec![0, 1, 2]));
    assert_eq!(c.read_text().await, "fragmented");
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let s = TestServer::start(echo_builder().max_message_size(1000)).await;
    // One frame over the limit.
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(true, 1, &vec![b'a'; 1001]).await;
    assert_eq!(c.expect_close().await, Some(1009));
    // Fragments each under the limit, together over it.
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(false, 1, &vec![b'a'; 600]).await;
    c.send_frame(true, 0, &vec![b'a'; 600]).await;
    assert_eq!(c.expect_close().await, Some(1009));
    // Exactly at the limit is fine.
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(false, 1, &vec![b'a'; 500]).await;
    c.send_frame(true, 0, &vec![b'b'; 500]).await;
    assert_eq!(c.read_text().await.len(), 1000);
}

#[tokio::test]
async fn protocol_violations_get_the_right_close_code() {
    let s = TestServer::start(echo_builder()).await;
    type Frames = Vec<(bool, u8, Vec<u8>)>;
    let cases: Vec<(Frames, u16)> = vec![
        // A close frame over 125 bytes.
        (
            vec![(true, 8, [&1000u16.to_be_bytes()[..], &[b'x'; 130]].concat())],
            1002,
        ),
        // A ping over 125 bytes.
        (vec![(true, 9, vec![0; 126])], 1002),
        // Invalid UTF-8, unfragmented and fragmented.
        (vec![(true, 1, b"ok\xff".to_vec())], 1007),
        (
            vec![(false, 1, b"ok".to_vec()), (true, 0, b"\xc3\x28".to_vec())],
            1007,
        ),
        // A continuation with nothing to continue.
        (vec![(true, 0, b"x".to_vec())], 1002),
        // A new message in the middle of a fragmented one.
        (
            vec![(false, 1, b"x".to_vec()), (true, 1, b"y".to_vec())],
            1002,
        ),
        // An invalid close code and a 1-byte close payload.
        (vec![(true, 8, 1005u16.to_be_bytes().to_vec())], 1002),
        (vec![(true, 8, vec![3])], 1002),
        // A reserved opcode.
        (vec![(true, 3, vec![])], 1002),
        // Invalid UTF-8 in a close reason.
        (
            vec![(true, 8, [&1000u16.to_be_bytes()[..], b"\xff"].concat())],
            1007,
        ),
    ];
    for (frames, code) in cases {
        let mut c = RawClient::connect(s.addr, "/").await;
        for (fin, op, payload) in &frames {
            c.send_frame(*fin, *op, payload).await;
        }
        assert_eq!(
            c.expect_close().await,
            Some(code),
            "frames {:?}",
            frames.iter().map(|f| f.1).collect::<Vec<_>>()
        );
        // The server then drops the connection.
        assert!(c.read_frame().await.is_none());
    }
    // The server carries on.
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(true, 1, b"still here").await;
    assert_eq!(c.read_text().await, "still here");
}

#[tokio::test]
async fn clean_close_handshake() {
    let s = TestServer::start(echo_builder()).await;
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(true, 8, &[&1000u16.to_be_bytes()[..], b"bye"].concat())
        .await;
    assert_eq!(c.expect_close().await, Some(1000));
    assert!(
        c.read_frame().await.is_none(),
        "server closes TCP after the handshake"
    );
    // An empty close payload is answered with an empty close.
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(true, 8, &[]).await;
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.len()), (8, 0));
    // Hub is empty again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.hub.len(), 0);
}

#[tokio::test]
async fn pings_are_answered_with_pongs() {
    let s = TestServer::start(echo_builder()).await;
    let mut c = RawClient::connect(s.addr, "/").await;
    c.send_frame(true, 9, b"are you there").await;
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload), (10, b"are you there".to_vec()));
}

#[tokio::test]
async fn silent_peers_are_closed_after_the_pong_timeout() {
    let s = TestServer::start(
        echo_builder()
            .ping_interval(Duration::from_millis(100))
            .pong_timeout(Duration::from_millis(500)),
    )
    .await;
    // This client never answers pings.
    let mut silent = RawClient::connect(s.addr, "/").await;
    // This one answers every ping (tungstenite does that while reading).
    let mut alive = WsClient::connect(&s.url("/")).await;
    let alive_task = tokio::spawn(async move {
        alive.expect_silence(Duration::from_millis(1500)).await;
        alive.send_text("still alive").await;
        assert_eq!(alive.recv_text().await, "still alive");
    });
    let mut saw_ping = false;
    loop {
        let f = silent.read_frame().await.expect("frames until the close");
        match f.opcode {
            9 => saw_ping = true,
            8 => {
                assert_eq!(f.close_code(), Some(1001));
                break;
            }
            op => panic!("unexpected opcode {op}"),
        }
    }
    assert!(saw_ping, "the server pings");
    alive_task.await.unwrap();
}

#[tokio::test]
async fn hooks_run_on_connect_and_disconnect() {
    let connects = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (c1, d1) = (connects.clone(), disconnects.clone());
    let s = TestServer::start(
        Server::builder()
            .on_connect(move |client: Client| {
                let c1 = c1.clone();
                async move {
                    c1.fetch_add(1, Ordering::SeqCst);
                    let _ = client.notify("welcome", &json!({"id": client.id()}));
                }
            })
            .on_disconnect(move |_client| {
                let d1 = d1.clone();
                async move {
                    d1.fetch_add(1, Ordering::SeqCst);
                }
            }),
    )
    .await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    let welcome = c.recv_json().await;
    assert_eq!(welcome["method"], "welcome");
    c.close().await;
    for _ in 0..50 {
        if disconnects.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    assert_eq!(disconnects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_close_from_a_handler_hook() {
    let s = TestServer::start(Server::builder().on_connect(|client: Client| async move {
        client.close(4000, "go away");
    }))
    .await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    assert_eq!(c.expect_close().await, 4000);
}

#[tokio::test]
async fn graceful_shutdown_delivers_queued_messages_then_closes_with_1001() {
    let mut s = TestServer::start(Server::builder().shutdown_timeout(Duration::from_secs(5))).await;
    let mut a = RawClient::connect(s.addr, "/ws").await;
    let mut b = WsClient::connect(&s.url("/ws")).await;
    for _ in 0..50 {
        if s.hub.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..100 {
        s.hub.broadcast("tick", &json!({"i": i})).unwrap();
    }
    let stopping = tokio::spawn(async move { s.shutdown().await });
    // Every queued message arrives, in order, before the 1001 close.
    for i in 0..100 {
        let v: serde_json::Value = serde_json::from_str(&a.read_text().await).unwrap();
        assert_eq!(v["params"]["i"], i);
    }
    assert_eq!(a.expect_close().await, Some(1001));
    a.send_frame(true, 8, &1001u16.to_be_bytes()).await;
    for _ in 0..100 {
        b.recv_json().await;
    }
    assert_eq!(b.expect_close().await, 1001);
    stopping.await.unwrap().expect("serve returns Ok");
}
