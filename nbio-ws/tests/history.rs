//! History and recovery over real sockets: publications get positions,
//! a client that reconnects with its last position recovers exactly what
//! it missed (in order, once; also after it was closed as a slow
//! consumer), gaps it cannot cover are `recovered: false`, and
//! publications of several instances to one room form one gap-free
//! sequence. Memory backend here (one instance, and in-process instances
//! sharing one store and one broker); the Redis and JetStream backends
//! run the same scenarios, and their own, against real servers
//! (`history/redis_backend.rs` with the `redis` feature,
//! `history/jetstream_backend.rs` with `nats`).

#[cfg(feature = "redis")]
#[path = "history/redis_backend.rs"]
mod redis_backend;

#[cfg(feature = "nats")]
#[path = "history/jetstream_backend.rs"]
mod jetstream_backend;

use std::time::Duration;

use nbio_ws::broker::{
    BoxFuture, Broker, BrokerError, BrokerHealth, LocalBroker, PubSubConfig, Subscription,
};
use nbio_ws::history::{HistoryError, MemoryHistory, Position, Recovery};
use nbio_ws::{Client, Hub, Params, RpcError, Server, ServerBuilder};
use nbio_ws_testkit::broker::Backend;
use nbio_ws_testkit::{Ended, TestServer, WsClient};
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

/// `room*` keeps 100 publications, `brief*` 100 for 1 s, `bulk*` 6000
/// (for the slow consumer's flood).
fn builder() -> ServerBuilder {
    methods(
        Server::builder()
            .history("room*", 100, Duration::from_secs(600))
            .history("brief*", 100, Duration::from_secs(1))
            .history("bulk*", BULK, Duration::from_secs(600)),
    )
}

/// Most publications the slow-consumer scenario sends before its reader
/// must have been closed (rooms `bulk*` keep this many).
const BULK: usize = 6000;

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

/// Live publications until `n` have arrived (replies to calls are skipped).
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

/// Calls `pub`: the position it returns.
async fn publish(c: &mut WsClient, room: &str, text: &str) -> Value {
    try_publish(c, room, text)
        .await
        .unwrap_or_else(|e| panic!("pub {text}: {e}"))
}

/// Calls `pub`: the position, or the error object.
async fn try_publish(c: &mut WsClient, room: &str, text: &str) -> Result<Value, Value> {
    let r = c
        .call("pub", json!({"room": room, "text": text}), json!(text))
        .await;
    assert_eq!(r["id"], text, "the reply: {r}");
    match r["error"].is_null() {
        true => Ok(r["result"].clone()),
        false => Err(r["error"].clone()),
    }
}

fn offsets(pubs: &[Value]) -> Vec<u64> {
    pubs.iter()
        .map(|p| p["position"]["offset"].as_u64().unwrap())
        .collect()
}

/// The position a live publication carries.
fn position_of(publication: &Value) -> Position {
    serde_json::from_value(publication["position"].clone()).expect("a position")
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
    rejoin_while_publishing(&server, &server, "room4", 90).await;
}

/// A client leaves `room` on `left`; `left`'s hub publishes `n` to it
/// while the client rejoins on `rejoin` with the position it had: it gets
/// each offset after that once, in order, recovered or live.
async fn rejoin_while_publishing(left: &TestServer, rejoin: &TestServer, room: &str, n: usize) {
    let mut a = WsClient::connect(&left.url("/ws")).await;
    let (start, _) = join(&mut a, room, None).await;
    a.close().await;
    let since = &start.position;
    let url = rejoin.url("/ws");
    let hub = left.hub.clone();
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
    let mut a = WsClient::connect(&url).await;
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
async fn five_instances_publishing_concurrently_give_one_gap_free_sequence() {
    // Five instances in one process sharing a broker and a history store.
    let broker = LocalBroker::new();
    let store = std::sync::Arc::new(MemoryHistory::new());
    let mut servers = Vec::new();
    for _ in 0..5 {
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
            let mut got = Vec::new();
            for i in 0..per {
                let p = hub
                    .to(&room)
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
    // Every publication has its own offset; the room is the only one in
    // its store, so they are 1, 2, 3... (JetStream's too: its offsets are
    // the stream's sequence, shared by the rooms of a channel).
    all.sort_unstable();
    let total = (servers.len() * per) as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
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

#[tokio::test]
async fn expired_history_is_not_recovered() {
    let server = TestServer::start(builder()).await;
    let (since, rec) = expire(&server, &server, "brief1").await;
    assert_eq!(rec.position.offset, 3);
    assert_eq!(rec.position.epoch, since.epoch);
}

/// A client on `a` sees the first of three publications to `room` (whose
/// publications live 1 s), leaves, and comes back to `b` after they all
/// expired: not recovered, nothing to give. Its position, and the answer.
async fn expire(a: &TestServer, b: &TestServer, room: &str) -> (Position, Recovery) {
    let mut p = WsClient::connect(&b.url("/ws")).await;
    let mut c = WsClient::connect(&a.url("/ws")).await;
    join(&mut c, room, None).await;
    let first = publish(&mut p, room, "y1").await;
    assert_eq!(live(&mut c, 1).await[0]["params"]["text"], "y1");
    c.close().await;
    publish(&mut p, room, "y2").await;
    publish(&mut p, room, "y3").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let since: Position = serde_json::from_value(first).unwrap();
    // Expiry is the store's to do (JetStream's server runs it on a timer
    // of its own): the answer is "not recovered" once it has.
    let mut c = WsClient::connect(&b.url("/ws")).await;
    for _ in 0..50 {
        let (rec, _) = join(&mut c, room, Some(&since)).await;
        if !rec.recovered {
            assert!(rec.publications.is_empty(), "{rec:?}");
            return (since, rec);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("publications older than their TTL are still recovered");
}

/// A client on `a` gone at the start of `room` (10 kept) while 50 are
/// published, back on `b`: not recovered, the latest 10 instead; from
/// within what is kept, recovered.
async fn trim(a: &TestServer, b: &TestServer, room: &str) {
    let mut p = WsClient::connect(&b.url("/ws")).await;
    let mut c = WsClient::connect(&a.url("/ws")).await;
    let (start, _) = join(&mut c, room, None).await;
    c.close().await;
    for i in 0..50 {
        publish(&mut p, room, &format!("x{i}")).await;
    }
    let mut c = WsClient::connect(&b.url("/ws")).await;
    let (rec, _) = join(&mut c, room, Some(&start.position)).await;
    assert!(!rec.recovered);
    assert_eq!(rec.position.offset, 50);
    assert_eq!(
        rec.publications
            .iter()
            .map(|p| p.position.offset)
            .collect::<Vec<_>>(),
        (41..=50).collect::<Vec<_>>()
    );
    let since = Position {
        epoch: start.position.epoch.clone(),
        offset: 45,
    };
    let (rec, _) = join(&mut c, room, Some(&since)).await;
    assert!(rec.recovered);
    assert_eq!(rec.publications.len(), 5);
    assert_eq!(rec.publications[0].params.get(), r#"{"text":"x45"}"#);
}

#[tokio::test]
async fn a_slow_consumer_recovers_what_it_missed() {
    let server = TestServer::start(builder().send_buffer(16)).await;
    slow_consumer(&server, &server, &server.hub, "bulk1").await;
}

/// A member of `room` on `reader` stops reading while `publisher`
/// publishes: it is closed as a slow consumer (1008). It reads what had
/// reached it, reconnects to `rejoin` with the last position it saw, and
/// recovers exactly the rest, then gets live ones once.
async fn slow_consumer(reader: &TestServer, rejoin: &TestServer, publisher: &Hub, room: &str) {
    let mut slow = WsClient::connect(&reader.url("/ws")).await;
    let (start, _) = join(&mut slow, room, None).await;
    let pad = "p".repeat(8 * 1024);
    let mut sent = Vec::new();
    // The reader's socket buffers fill, then its queue of 16.
    while reader.hub.metrics().slow_consumer_disconnects() == 0 {
        assert!(sent.len() < BULK, "never closed as a slow consumer");
        let p = publisher
            .to(room)
            .publish("msg", &json!({ "i": sent.len(), "pad": pad }))
            .await
            .expect("publish")
            .expect("a position");
        sent.push(p);
    }
    // More while it is gone.
    for _ in 0..5 {
        let i = sent.len();
        sent.push(
            publisher
                .to(room)
                .publish("msg", &json!({ "i": i, "pad": pad }))
                .await
                .unwrap()
                .unwrap(),
        );
    }

    // What reached it before the end, in order, from the first.
    let mut seen = Vec::new();
    let end = loop {
        match slow.recv_or_end().await {
            Ok(v) => {
                assert_eq!(v["params"]["i"], seen.len(), "in order, none skipped");
                seen.push(position_of(&v));
            }
            Err(end) => break end,
        }
    };
    // The close frame, when the socket had room for it; else just the end.
    assert!(
        matches!(end, Ended::Closed(1008) | Ended::Dropped),
        "{end:?}"
    );
    assert!(seen.len() < sent.len(), "it missed some");
    let last = seen.last().cloned().unwrap_or(start.position);

    let mut again = WsClient::connect(&rejoin.url("/ws")).await;
    let (rec, early) = join(&mut again, room, Some(&last)).await;
    assert!(rec.recovered, "{:?}", rec.position);
    assert!(early.is_empty());
    let recovered: Vec<u64> = rec.publications.iter().map(|p| p.position.offset).collect();
    let missed: Vec<u64> = sent[seen.len()..].iter().map(|p| p.offset).collect();
    assert_eq!(recovered, missed, "exactly what it missed");
    assert_eq!(rec.position, *sent.last().unwrap());
    let i: Value = serde_json::from_str(rec.publications[0].params.get()).unwrap();
    assert_eq!(i["i"], seen.len());
    let next = publisher
        .to(room)
        .publish("msg", &json!({ "i": sent.len() }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offsets(&live(&mut again, 1).await), [next.offset]);
    again.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(reader.hub.metrics().slow_consumer_disconnects(), 1);
}

/// What [`broker_killed_mid_stream`] saw.
struct Outage {
    /// The positions of the publications that succeeded, in order.
    published: Vec<Position>,
    /// Whether the member connected throughout was told to reconnect
    /// (4000) instead of receiving everything live.
    member_closed: bool,
    /// The answer to a client that left before the outage and rejoined
    /// after it.
    rejoined: Recovery,
}

/// The broker is killed while `b` keeps publishing to `room` (one `pub`
/// call every few milliseconds) and restarted: publications during the
/// outage fail in the handler with the typed error (-32003), those after
/// it succeed again; a member on `a` connected throughout gets every
/// publication that succeeded, in order, once — or is closed with 4000
/// and then recovers exactly the rest or is told `recovered: false`;
/// never a silent gap. A client that left before the outage recovers
/// exactly or is told `recovered: false`.
async fn broker_killed_mid_stream(
    broker: &mut Backend,
    a: &TestServer,
    b: &TestServer,
    room: &str,
) -> Outage {
    let mut member = WsClient::connect(&a.url("/ws")).await;
    join(&mut member, room, None).await;
    let mut gone = WsClient::connect(&b.url("/ws")).await;
    let (left, _) = join(&mut gone, room, None).await;
    gone.close().await;
    let mut p = WsClient::connect(&b.url("/ws")).await;

    // `pub` of publication `m{i}`: its text and position, or the error.
    let mut i = 0;
    let mut next = || {
        i += 1;
        format!("m{i}")
    };
    async fn call(p: &mut WsClient, room: &str, text: String) -> Result<(String, Position), Value> {
        let pos = try_publish(p, room, &text).await?;
        Ok((text, serde_json::from_value(pos).expect("a position")))
    }
    let mut published: Vec<(String, Position)> = Vec::new();
    for _ in 0..20 {
        published.push(
            call(&mut p, room, next())
                .await
                .expect("published before the outage"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.down();
    for _ in 0..5 {
        let e = call(&mut p, room, next())
            .await
            .expect_err("no publication while the broker is down");
        assert_eq!(e["code"], -32003, "{e}");
        assert_eq!(e["message"], "History unavailable");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = b.hub.to(room).publish("msg", &json!({})).await.unwrap_err();
    assert!(matches!(e, HistoryError::Unavailable(_)), "{e:?}");
    broker.up().await;
    let mut after = 0;
    for _ in 0..2000 {
        match call(&mut p, room, next()).await {
            Ok(ok) => {
                published.push(ok);
                after += 1;
                if after == 20 {
                    break;
                }
            }
            Err(e) => assert_eq!(e["code"], -32003, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(after, 20, "publishing works again once the broker is back");
    for w in published.windows(2) {
        let ((_, x), (_, y)) = (&w[0], &w[1]);
        assert!(x.epoch != y.epoch || x.offset < y.offset, "{x:?} {y:?}");
    }

    // The member: a prefix of what was published, then either the rest
    // or a close that tells it to recover.
    let mut got = 0;
    let mut member_closed = false;
    while got < published.len() {
        match member.recv_or_end().await {
            Ok(v) if v["method"] == "msg" => {
                let (text, pos) = &published[got];
                assert_eq!(
                    (v["params"]["text"].as_str(), position_of(&v)),
                    (Some(text.as_str()), pos.clone()),
                    "publication {got} of {}",
                    published.len()
                );
                got += 1;
            }
            Ok(other) => panic!("unexpected {other}"),
            Err(end) => {
                assert_eq!(end, Ended::Closed(4000));
                member_closed = true;
                break;
            }
        }
    }
    let top = published.last().unwrap().1.clone();
    if member_closed {
        let since = match got {
            0 => left.position.clone(),
            n => published[n - 1].1.clone(),
        };
        let mut member = WsClient::connect(&a.url("/ws")).await;
        let (rec, early) = join(&mut member, room, Some(&since)).await;
        if rec.recovered {
            let rest: Vec<&Position> = published[got..].iter().map(|(_, p)| p).collect();
            let delivered = recovered_then_live(&mut member, &rec, early, &top).await;
            assert_eq!(delivered.iter().collect::<Vec<_>>(), rest);
        } else {
            // Not recovered: the latest publications, then live ones up to
            // the last published (one still on its way arrives live).
            recovered_then_live(&mut member, &rec, early, &top).await;
        }
    } else {
        member.expect_silence(Duration::from_millis(300)).await;
    }

    let mut back = WsClient::connect(&a.url("/ws")).await;
    let (rejoined, early) = join(&mut back, room, Some(&left.position)).await;
    let published: Vec<Position> = published.into_iter().map(|(_, p)| p).collect();
    if rejoined.recovered {
        let got: Vec<u64> = recovered_then_live(&mut back, &rejoined, early, &top)
            .await
            .iter()
            .map(|p| p.offset)
            .collect();
        let want: Vec<u64> = published.iter().map(|p| p.offset).collect();
        assert_eq!(got, want);
    } else {
        recovered_then_live(&mut back, &rejoined, early, &top).await;
    }
    Outage {
        published,
        member_closed,
        rejoined,
    }
}

/// What a rejoin delivers, in order, up to `top`: the recovered
/// publications, then the live ones (those set aside before the reply
/// first). A publication still on its way to this instance when the join
/// was answered is not in the recovery (its position is not yet the
/// answer's) but arrives live right after it; one that never arrives fails
/// the test.
async fn recovered_then_live(
    c: &mut WsClient,
    rec: &Recovery,
    early: Vec<Value>,
    top: &Position,
) -> Vec<Position> {
    let mut out: Vec<Position> = rec
        .publications
        .iter()
        .map(|p| Position {
            epoch: p.position.epoch.clone(),
            offset: p.position.offset,
        })
        .collect();
    let mut pending: std::collections::VecDeque<Value> = early.into();
    let covers = |out: &Vec<Position>| {
        out.last().map_or(&rec.position, |p| p) == top || &rec.position == top
    };
    while !covers(&out) {
        let v = match pending.pop_front() {
            Some(v) => v,
            None => live(c, 1).await.remove(0),
        };
        out.push(position_of(&v));
    }
    out
}

/// Two in-process instances on `broker` (B's through `b_broker`), sharing
/// one memory history; presence heartbeats every 100 ms.
async fn pair<B: Broker + Clone>(broker: &LocalBroker, b_broker: B) -> (TestServer, TestServer) {
    let store = std::sync::Arc::new(MemoryHistory::new());
    let fast = || PubSubConfig::default().presence_ttl(Duration::from_millis(300));
    let a = builder()
        .pubsub(fast())
        .broker(broker.clone())
        .history_store(store.clone());
    let b = builder()
        .pubsub(fast())
        .broker(b_broker)
        .history_store(store);
    (TestServer::start(a).await, TestServer::start(b).await)
}

/// A member on `a`; `b` publishes one it gets, then (with `outage`
/// started) two more that are stored but do not reach `a` through the
/// broker; `end_outage`; nothing is published after. The member still
/// gets both, in order, once.
async fn tail_after_outage(
    a: &TestServer,
    b: &TestServer,
    outage: impl FnOnce(),
    end_outage: impl FnOnce(),
) {
    let mut m = WsClient::connect(&a.url("/ws")).await;
    join(&mut m, "room8", None).await;
    let send = |text: &'static str| {
        let hub = b.hub.clone();
        async move {
            hub.to("room8")
                .publish("msg", &json!({ "text": text }))
                .await
                .expect("stored")
                .expect("a position")
        }
    };
    send("one").await;
    assert_eq!(offsets(&live(&mut m, 1).await), [1]);
    outage();
    send("two").await;
    send("three").await;
    m.expect_silence(Duration::from_millis(200)).await;
    end_outage();
    let got = live(&mut m, 2).await;
    assert_eq!(offsets(&got), [2, 3]);
    assert_eq!(got[0]["params"]["text"], "two");
    m.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn publications_stored_while_the_broker_was_down_reach_live_members_after_it() {
    // Down both ways: B's publishes fail, A's subscription hears nothing.
    let broker = LocalBroker::new();
    let (a, b) = pair(&broker, broker.clone()).await;
    tail_after_outage(
        &a,
        &b,
        || broker.set_connected(false),
        || broker.set_connected(true),
    )
    .await;
}

/// A broker whose publishes fail while `refuse` is set; its subscriptions
/// go on working (a publishing connection lost, the subscribing one not).
#[derive(Clone)]
struct RefusingPublishes {
    inner: LocalBroker,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Broker for RefusingPublishes {
    fn adapter(&self) -> &'static str {
        "local"
    }
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: bytes::Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        if self.refuse.load(std::sync::atomic::Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(BrokerError::Disconnected)));
        }
        self.inner.publish(channel, payload)
    }
    fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        self.inner.subscribe(channel)
    }
    fn health(&self) -> BrokerHealth {
        self.inner.health()
    }
}

#[tokio::test]
async fn publications_the_broker_refused_are_sent_again_once_it_takes_them() {
    let broker = LocalBroker::new();
    let refusing = RefusingPublishes {
        inner: broker.clone(),
        refuse: Default::default(),
    };
    let (a, b) = pair(&broker, refusing.clone()).await;
    let flag = &refusing.refuse;
    let set = |v: bool| move || flag.store(v, std::sync::atomic::Ordering::Release);
    tail_after_outage(&a, &b, set(true), set(false)).await;
    assert!(b.hub.metrics().counter("broker_publications_resent") >= 1);
}
