//! History and recovery over real sockets: publications get positions,
//! a client that reconnects with its last position recovers exactly what
//! it missed (in order, once), gaps it cannot cover are `recovered:
//! false`, and publications of several instances to one room form one
//! gap-free sequence. Memory backend here (one instance, and in-process
//! instances sharing one store and one broker); the Redis and JetStream
//! backends have their own tests (Redis: `history/redis_backend.rs`, run
//! with this file under the `redis` feature).

#[cfg(feature = "redis")]
#[path = "history/redis_backend.rs"]
mod redis_backend;

use std::time::Duration;

use nbio_ws::broker::LocalBroker;
use nbio_ws::history::{MemoryHistory, Position, Recovery};
use nbio_ws::{Client, Hub, Params, RpcError, Server, ServerBuilder};
use nbio_ws_testkit::{TestServer, WsClient};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct JoinParams {
    room: String,
    since: Option<Position>,
}

#[derive(Deserialize)]
struct PubParams {
    room: String,
    text: String,
}

fn builder() -> ServerBuilder {
    methods(Server::builder().history("room*", 100, Duration::from_secs(600)))
}

/// `join` (with recovery) and `pub`, and nothing else.
fn methods(builder: ServerBuilder) -> ServerBuilder {
    builder
        .registered_methods(false)
        .method(
            "join",
            |c: Client, Params(p): Params<JoinParams>| async move {
                c.join_recover(&p.room, Value::Null, p.since)
                    .await
                    .map_err(RpcError::from)
            },
        )
        .method("pub", |hub: Hub, Params(p): Params<PubParams>| async move {
            hub.to(&p.room)
                .publish("msg", &json!({ "text": p.text }))
                .await
                .map_err(RpcError::from)
        })
}

/// Calls `join` and returns the recovery, setting aside live publications
/// that arrive before the reply (as a client must).
async fn join(c: &mut WsClient, room: &str, since: Option<&Position>) -> (Recovery, Vec<Value>) {
    c.send_json(&json!({"jsonrpc": "2.0", "method": "join", "params": {"room": room, "since": since}, "id": "j"}))
        .await;
    let mut early = Vec::new();
    loop {
        let v = c.recv_json().await;
        if v["id"] == "j" {
            assert!(v["error"].is_null(), "{v}");
            return (serde_json::from_value(v["result"].clone()).unwrap(), early);
        }
        early.push(v);
    }
}

/// Live publications until `n` have arrived (replies to calls are skipped).
async fn live(c: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = tokio::time::timeout(Duration::from_secs(10), c.recv_json())
            .await
            .expect("publications arrive");
        if v["method"] == "msg" {
            out.push(v);
        }
    }
    out
}

async fn publish(c: &mut WsClient, room: &str, text: &str) -> Value {
    let r = c
        .call("pub", json!({"room": room, "text": text}), json!(text))
        .await;
    assert!(r["error"].is_null(), "{r}");
    r["result"].clone()
}

fn offsets(pubs: &[Value]) -> Vec<u64> {
    pubs.iter()
        .map(|p| p["position"]["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_reconnecting_client_recovers_exactly_what_it_missed() {
    let server = TestServer::start(builder()).await;
    let url = server.url("/ws");
    let mut publisher = WsClient::connect(&url).await;
    let mut a = WsClient::connect(&url).await;

    let (first, _) = join(&mut a, "room1", None).await;
    assert!(!first.recovered, "no position given");
    assert_eq!(first.position.offset, 0);
    assert!(first.publications.is_empty());

    for i in 1..=10 {
        let pos = publish(&mut publisher, "room1", &format!("m{i}")).await;
        assert_eq!(pos["offset"], i);
        assert_eq!(pos["epoch"], first.position.epoch.as_str());
    }
    let got = live(&mut a, 10).await;
    assert_eq!(offsets(&got), (1..=10).collect::<Vec<_>>());
    assert_eq!(got[0]["position"]["room"], "room1");
    assert_eq!(got[0]["params"]["text"], "m1");
    let last = Position {
        epoch: first.position.epoch.clone(),
        offset: 10,
    };

    // Gone while 50 publications go to its room.
    a.close().await;
    for i in 11..=60 {
        publish(&mut publisher, "room1", &format!("m{i}")).await;
    }
    let mut a = WsClient::connect(&url).await;
    let (rec, early) = join(&mut a, "room1", Some(&last)).await;
    assert!(rec.recovered);
    assert!(early.is_empty());
    assert_eq!(rec.position.offset, 60);
    let recovered: Vec<u64> = rec.publications.iter().map(|p| p.position.offset).collect();
    assert_eq!(recovered, (11..=60).collect::<Vec<_>>());
    assert_eq!(rec.publications[0].method, "msg");
    assert_eq!(rec.publications[0].params.get(), r#"{"text":"m11"}"#);
    // Then live, once.
    publish(&mut publisher, "room1", "m61").await;
    let got = live(&mut a, 1).await;
    assert_eq!(offsets(&got), [61]);
    a.expect_silence(Duration::from_millis(200)).await;

    // The position can be read without joining.
    let hub = server.hub.clone();
    let pos = hub.position("room1").await.unwrap().unwrap();
    assert_eq!(pos.offset, 61);
    assert_eq!(hub.position("other").await.unwrap(), None);
}

#[tokio::test]
async fn trimmed_or_foreign_positions_are_not_recovered() {
    let server = TestServer::start(methods(
        Server::builder()
            .history("room*", 10, Duration::from_secs(600))
            .history_max_recover(5),
    ))
    .await;
    let url = server.url("/ws");
    let mut p = WsClient::connect(&url).await;
    let mut a = WsClient::connect(&url).await;
    let (start, _) = join(&mut a, "room2", None).await;
    a.close().await;
    for i in 0..50 {
        publish(&mut p, "room2", &format!("x{i}")).await;
    }
    let mut a = WsClient::connect(&url).await;
    // Trimmed (only 10 kept): not recovered; the latest (at most 5) instead.
    let since = Position {
        epoch: start.position.epoch.clone(),
        offset: 0,
    };
    let (rec, _) = join(&mut a, "room2", Some(&since)).await;
    assert!(!rec.recovered);
    assert_eq!(rec.position.offset, 50);
    let got: Vec<u64> = rec.publications.iter().map(|p| p.position.offset).collect();
    assert_eq!(got, [46, 47, 48, 49, 50]);
    // Within the history but more than the recovery limit: not recovered.
    let since = Position {
        epoch: start.position.epoch.clone(),
        offset: 42,
    };
    let (rec, _) = join(&mut a, "room2", Some(&since)).await;
    assert!(!rec.recovered);
    // Within both: recovered.
    let since = Position {
        epoch: start.position.epoch.clone(),
        offset: 46,
    };
    let (rec, _) = join(&mut a, "room2", Some(&since)).await;
    assert!(rec.recovered, "{rec:?}");
    assert_eq!(rec.publications.len(), 4);
    // Another epoch (as after a restart of a memory backend): not recovered.
    let since = Position {
        epoch: "elsewhere".into(),
        offset: 46,
    };
    let (rec, _) = join(&mut a, "room2", Some(&since)).await;
    assert!(!rec.recovered);
    assert_eq!(rec.position.epoch, start.position.epoch);
}

#[tokio::test]
async fn a_restarted_memory_backend_changes_the_epoch() {
    let mut one = TestServer::start(builder()).await;
    let mut c = WsClient::connect(&one.url("/ws")).await;
    publish(&mut c, "room3", "before").await;
    let (rec, _) = join(&mut c, "room3", None).await;
    let before = rec.position;
    c.close().await;
    one.shutdown().await.unwrap();

    let two = TestServer::start(builder()).await;
    let mut c = WsClient::connect(&two.url("/ws")).await;
    let (rec, _) = join(&mut c, "room3", Some(&before)).await;
    assert!(!rec.recovered);
    assert_ne!(rec.position.epoch, before.epoch);
    assert_eq!(rec.position.offset, 0);
}

#[tokio::test]
async fn publications_racing_with_a_rejoin_arrive_once_in_order() {
    let server = TestServer::start(builder()).await;
    let url = server.url("/ws");
    let mut a = WsClient::connect(&url).await;
    let (start, _) = join(&mut a, "room4", None).await;
    a.close().await;

    // A publisher keeps going while the client rejoins.
    rejoin_while_publishing(server.hub.clone(), &url, "room4", &start.position, 90).await;
}

/// `hub` publishes `n` to `room` while a client rejoins at `url` with
/// `since`: it gets each offset after `since` once, in order, recovered
/// or live.
async fn rejoin_while_publishing(hub: Hub, url: &str, room: &str, since: &Position, n: usize) {
    let target = room.to_owned();
    let publishing = tokio::spawn(async move {
        for i in 0..n {
            hub.to(&target)
                .publish("msg", &json!({ "i": i }))
                .await
                .unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(2)).await;
    let mut a = WsClient::connect(url).await;
    let (rec, early) = join(&mut a, room, Some(since)).await;
    assert!(rec.recovered, "{rec:?}");
    publishing.await.unwrap();
    let mut seen: Vec<u64> = rec.publications.iter().map(|p| p.position.offset).collect();
    let live_expected = n - seen.len() - early.len();
    let mut rest = early;
    rest.extend(live(&mut a, live_expected).await);
    seen.extend(offsets(&rest));
    let first = since.offset + 1;
    assert_eq!(seen, (first..first + n as u64).collect::<Vec<_>>());
    a.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn instances_publishing_concurrently_give_one_gap_free_sequence() {
    // Three instances in one process sharing a broker and a history store.
    let broker = LocalBroker::new();
    let store = std::sync::Arc::new(MemoryHistory::new());
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            TestServer::start(
                builder()
                    .send_buffer(1024)
                    .broker(broker.clone())
                    .history_store(store.clone()),
            )
            .await,
        );
    }
    // Each instance publishes 100, all at once.
    publish_from_every_instance(&servers, "room5", 100).await;
}

/// With a reader on each of `servers` (joined first), every instance
/// publishes `per` to `room` at once: each reader sees one gap-free
/// sequence from offset 1, once.
async fn publish_from_every_instance(servers: &[TestServer], room: &str, per: usize) {
    let mut readers = Vec::new();
    for s in servers {
        let mut c = WsClient::connect(&s.url("/ws")).await;
        let (rec, _) = join(&mut c, room, None).await;
        assert_eq!(rec.position.offset, 0);
        readers.push(c);
    }
    let mut tasks = Vec::new();
    for s in servers {
        let hub = s.hub.clone();
        let room = room.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                hub.to(&room)
                    .publish("msg", &json!({ "i": i }))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = (servers.len() * per) as u64;
    for c in &mut readers {
        let got = live(c, total as usize).await;
        assert_eq!(offsets(&got), (1..=total).collect::<Vec<_>>());
        c.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn notify_stays_ephemeral_and_plain_rooms_are_unchanged() {
    let server = TestServer::start(builder()).await;
    let url = server.url("/ws");
    let mut a = WsClient::connect(&url).await;
    join(&mut a, "room6", None).await;
    let hub = server.hub.clone();
    hub.to("room6").notify("tick", &json!({})).unwrap();
    let v = a.recv_json().await;
    assert_eq!(v["method"], "tick");
    assert!(v.get("position").is_none(), "{v}");
    // A room without history: publish is a notify, no position.
    let r = a.call("join", json!({"room": "plain"}), json!(1)).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(
        hub.to("plain").publish("m", &json!({})).await.unwrap(),
        None
    );
}
