//! History in JetStream (`WS_PUBSUB_ADAPTER=nats`) across instances: a
//! real `nats-server -js` started by the test on a free loopback port,
//! several in-process instances sharing it for both pub/sub and history.

use std::time::Duration;

use nbio_ws::broker::PubSubConfig;
use nbio_ws::history::{HistoryError, Position, Recovery};
use nbio_ws::{Client, Hub, Params, RpcError, Server, ServerBuilder};
use nbio_ws_testkit::broker::Nats;
use nbio_ws_testkit::{TestServer, WsClient};
use serde::Deserialize;
use serde_json::{json, Value};

/// The pub/sub configuration of an instance on `nats`.
fn pubsub(nats: &Nats, channel: &str) -> PubSubConfig {
    PubSubConfig::nats(nats.url()).channel(channel)
}

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

fn builder(pubsub: PubSubConfig) -> ServerBuilder {
    Server::builder()
        .registered_methods(false)
        .send_buffer(2048)
        .pubsub(pubsub)
        .history("room*", 1000, Duration::from_secs(600))
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

async fn join(c: &mut WsClient, room: &str, since: Option<&Position>) -> (Recovery, Vec<Value>) {
    c.send_json(&json!({"jsonrpc": "2.0", "method": "join", "params": {"room": room, "since": since}, "id": "j"}))
        .await;
    let mut early = Vec::new();
    loop {
        let v = tokio::time::timeout(Duration::from_secs(10), c.recv_json())
            .await
            .expect("the join is answered");
        if v["id"] == "j" {
            assert!(v["error"].is_null(), "{v}");
            return (serde_json::from_value(v["result"].clone()).unwrap(), early);
        }
        early.push(v);
    }
}

async fn live(c: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = tokio::time::timeout(Duration::from_secs(20), c.recv_json())
            .await
            .unwrap_or_else(|_| panic!("publications arrive ({} of {n})", out.len()));
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

/// `a.1 < a.2 < ...`
fn increasing(v: &[u64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test]
async fn a_client_recovers_on_another_instance_what_it_missed() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Nats::start_jetstream().await;
    let one = TestServer::start(builder(pubsub(&nats, "jsrec"))).await;
    let two = TestServer::start(builder(pubsub(&nats, "jsrec"))).await;
    let mut publisher = WsClient::connect(&one.url("/ws")).await;
    let mut a = WsClient::connect(&one.url("/ws")).await;
    let (first, _) = join(&mut a, "room1", None).await;
    assert_eq!(first.position.offset, 0);

    let pos = publish(&mut publisher, "room1", "m0").await;
    let got = live(&mut a, 1).await;
    assert_eq!(got[0]["position"], {
        let mut p = pos.clone();
        p["room"] = json!("room1");
        p
    });
    let last: Position = serde_json::from_value(pos).unwrap();
    assert_eq!(last.epoch, first.position.epoch);

    // Gone while 50 publications go to its room (other rooms interleave,
    // so the room's offsets are not consecutive).
    a.close().await;
    let mut sent = Vec::new();
    for i in 1..=50 {
        let p = publish(&mut publisher, "room1", &format!("m{i}")).await;
        sent.push(p["offset"].as_u64().unwrap());
        publish(&mut publisher, "room-other", "noise").await;
    }
    assert!(increasing(&sent));

    let mut a = WsClient::connect(&two.url("/ws")).await;
    let (rec, early) = join(&mut a, "room1", Some(&last)).await;
    assert!(rec.recovered, "{rec:?}");
    assert!(early.is_empty());
    assert_eq!(rec.position.epoch, last.epoch);
    assert_eq!(rec.position.offset, *sent.last().unwrap());
    let recovered: Vec<u64> = rec.publications.iter().map(|p| p.position.offset).collect();
    assert_eq!(recovered, sent);
    let texts: Vec<String> = rec
        .publications
        .iter()
        .map(|p| p.params.get().to_owned())
        .collect();
    let want: Vec<String> = (1..=50).map(|i| format!(r#"{{"text":"m{i}"}}"#)).collect();
    assert_eq!(texts, want);

    // Then live, once, from the other instance.
    let p = publish(&mut publisher, "room1", "m51").await;
    let got = live(&mut a, 1).await;
    assert_eq!(offsets(&got), [p["offset"].as_u64().unwrap()]);
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn five_instances_publishing_concurrently_give_one_gap_free_sequence() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Nats::start_jetstream().await;
    let mut servers = Vec::new();
    for _ in 0..5 {
        servers.push(TestServer::start(builder(pubsub(&nats, "jsseq"))).await);
    }
    let mut readers = Vec::new();
    for s in &servers {
        let mut c = WsClient::connect(&s.url("/ws")).await;
        let (rec, _) = join(&mut c, "room5", None).await;
        assert_eq!(rec.position.offset, 0);
        readers.push(c);
    }
    let mut tasks = Vec::new();
    for s in &servers {
        let hub = s.hub.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..40 {
                let p = hub
                    .to("room5")
                    .publish("msg", &json!({ "i": i }))
                    .await
                    .expect("publish")
                    .expect("a position");
                got.push(p.offset);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 200, "every publication has its own offset");
    for c in &mut readers {
        let got = live(c, 200).await;
        assert_eq!(offsets(&got), all, "one sequence, no gap, no duplicate");
        c.expect_silence(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_killed_nats_server_makes_publish_fail_with_the_typed_error() {
    nbio_ws_testkit::require_tools!("nats-server");
    let mut nats = Nats::start_jetstream().await;
    let server = TestServer::start(builder(pubsub(&nats, "jsdown"))).await;
    let hub = server.hub.clone();
    let p = hub.to("room9").publish("msg", &json!(1)).await;
    assert!(matches!(p, Ok(Some(_))), "{p:?}");
    nats.down();
    let e = hub
        .to("room9")
        .publish("msg", &json!(2))
        .await
        .expect_err("no history backend");
    assert!(matches!(e, HistoryError::Unavailable(_)), "{e:?}");
    let rpc = RpcError::from(e);
    assert_eq!(rpc.code, -32003);
}
