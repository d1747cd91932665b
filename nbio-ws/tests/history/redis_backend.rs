//! History in Redis (`WS_PUBSUB_ADAPTER=redis`), against a real
//! `redis-server` started on a free port (without persistence, so that a
//! restart loses everything): the store on its own (offsets, trims, TTL,
//! a deleted key, concurrent appends), then instances sharing one Redis
//! for both the broker and the history: recovery on another instance, a
//! publication lost on the way filled from the history,
//! races with a rejoin, five publishers, trimmed and expired history, an
//! evicted key, Redis killed and restarted.

use std::time::Duration;

use bytes::Bytes;
use nbio_ws::history::{HistoryPolicy, HistoryStore, Position, RedisHistory};
use nbio_ws::{Hub, Params, RpcError, Server, ServerBuilder};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    broker_killed_mid_stream, expire, join, live, methods, offsets, publish,
    publish_from_every_instance, rejoin_while_publishing, slow_consumer, trim, BULK,
};
use nbio_ws_testkit::broker::{Backend, Kind};
use nbio_ws_testkit::{TestServer, WsClient};

/// An instance on `redis`, keys and channels under `channel`: `room*`
/// keeps 100 for 10 min, `small*` 10, `brief*` 100 for 1 s, `bulk*`
/// [`BULK`]; `note` is a plain (ephemeral) room notification.
fn instance(redis: &Backend, channel: &str) -> ServerBuilder {
    #[derive(Deserialize)]
    struct Note {
        room: String,
        text: String,
    }
    let app = methods(
        Server::builder()
            .send_buffer(1024)
            .history("room*", 100, Duration::from_secs(600))
            .history("small*", 10, Duration::from_secs(600))
            .history("brief*", 100, Duration::from_secs(1))
            .history("bulk*", BULK, Duration::from_secs(600)),
    )
    .method("note", |hub: Hub, Params(p): Params<Note>| async move {
        hub.to(&p.room)
            .notify("note", &json!({ "text": p.text }))
            .map_err(RpcError::internal)
    });
    redis.builder(app, channel)
}

async fn start(redis: &Backend, channel: &str, n: usize) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(TestServer::start(instance(redis, channel)).await);
    }
    for s in &servers {
        assert_eq!(
            s.hub.broker_health().map(|h| h.adapter),
            Some("redis"),
            "the redis adapter is in use"
        );
    }
    servers
}

/// One Redis command; its raw reply, without the final line break.
async fn redis_command(port: u16, args: &[&str]) -> String {
    nbio_ws_testkit::broker::redis_command(port, args)
        .await
        .expect("redis answers")
        .trim_end()
        .to_owned()
}

fn position(v: &Value) -> Position {
    serde_json::from_value(v.clone()).expect("a position")
}

#[tokio::test]
async fn redis_store_assigns_offsets_and_bounds_what_it_keeps() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let store = RedisHistory::new(&redis.url(), "t.store").unwrap();
    let p = HistoryPolicy::new(10, Duration::from_secs(600));

    let mut epoch = None;
    for i in 1..=5u64 {
        let a = store
            .append("r", p, Bytes::from(format!("{{\"i\":{i}}}")))
            .await
            .unwrap();
        assert_eq!((a.offset, a.prev), (i, i - 1));
        assert_eq!(*epoch.get_or_insert_with(|| a.epoch.clone()), a.epoch);
    }
    let epoch = epoch.unwrap();
    let r = store.read("r", p, Some(2), 100).await.unwrap();
    assert_eq!((r.epoch.clone(), r.top), (epoch.clone(), 5));
    assert_eq!(
        r.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(&r.entries[0].data[..], b"{\"i\":3}");
    assert_eq!(r.entries[0].prev, 2);
    assert!(r.covers(2));
    assert!(!store.read("r", p, Some(0), 2).await.unwrap().covers(0));
    let latest = store.read("r", p, None, 2).await.unwrap();
    assert_eq!(
        latest.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [4, 5]
    );
    let top_only = store.read("r", p, None, 0).await.unwrap();
    assert!(top_only.entries.is_empty());
    assert_eq!(top_only.top, 5);
    assert!(store.read("r", p, Some(5), 10).await.unwrap().covers(5));

    // Trimmed by size: only the last 10 of 25.
    for _ in 6..=25 {
        store.append("r", p, Bytes::from("{}")).await.unwrap();
    }
    let r = store.read("r", p, Some(0), 100).await.unwrap();
    assert_eq!(
        r.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (16..=25).collect::<Vec<_>>()
    );
    assert!(!r.covers(0));
    assert!(r.covers(15));

    // Another room has its own offsets and epoch; no history, no append.
    let q = store.append("q", p, Bytes::from("{}")).await.unwrap();
    assert_eq!(q.offset, 1);
    assert_ne!(q.epoch, epoch);
    assert!(store
        .append(
            "z",
            HistoryPolicy::new(0, Duration::from_secs(1)),
            "x".into()
        )
        .await
        .is_err());

    // Older than the TTL: skipped on read, the epoch and top stay.
    let brief = HistoryPolicy {
        size: 10,
        ttl: Duration::from_millis(200),
    };
    for _ in 0..3 {
        store.append("b", brief, Bytes::from("{}")).await.unwrap();
    }
    let before = store.read("b", brief, Some(0), 10).await.unwrap();
    assert_eq!(before.entries.len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = store.read("b", brief, Some(1), 10).await.unwrap();
    assert!(after.entries.is_empty());
    assert_eq!((after.epoch.clone(), after.top), (before.epoch.clone(), 3));
    assert!(!after.covers(1));
    assert_eq!(
        redis_command(redis.port, &["EXISTS", &store.log_key("b")]).await,
        ":0",
        "the log of an idle room expires with its TTL"
    );

    // An entry past the TTL while the room is still active is skipped on
    // read (the margins are 1.4 s either way).
    let ttl3 = HistoryPolicy {
        size: 10,
        ttl: Duration::from_secs(3),
    };
    store.append("c", ttl3, Bytes::from("{}")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    store.append("c", ttl3, Bytes::from("{}")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = store.read("c", ttl3, Some(0), 10).await.unwrap();
    assert_eq!(r.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), [2]);
    assert!(!r.covers(0));
    assert!(r.covers(1));

    // The entries lost (log key evicted): same epoch, not covered.
    assert_eq!(
        redis_command(redis.port, &["DEL", &store.log_key("r")]).await,
        ":1"
    );
    let r = store.read("r", p, Some(20), 100).await.unwrap();
    assert_eq!((r.epoch.clone(), r.top), (epoch.clone(), 25));
    assert!(r.entries.is_empty());
    assert!(!r.covers(20));
    // The meta lost (evicted, expired): a new epoch from offset 1, and
    // nothing of the old one.
    store.append("r", p, Bytes::from("{}")).await.unwrap();
    assert_eq!(
        redis_command(redis.port, &["DEL", &store.meta_key("r")]).await,
        ":1"
    );
    let a = store.append("r", p, Bytes::from("{}")).await.unwrap();
    assert_ne!(a.epoch, epoch);
    assert_eq!((a.offset, a.prev), (1, 0));
    let r = store.read("r", p, Some(0), 100).await.unwrap();
    assert_eq!(r.entries.len(), 1);
    assert!(r.covers(0));

    // Any room name makes keys of its own.
    let odd = "room with spaces, braces {} and % signs";
    let o = store.append(odd, p, Bytes::from("{}")).await.unwrap();
    assert_eq!(o.offset, 1);
    assert_eq!(store.read("room%20with", p, None, 0).await.unwrap().top, 0);
}

#[tokio::test]
async fn redis_offsets_are_unique_across_stores_appending_concurrently() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let p = HistoryPolicy::new(1000, Duration::from_secs(600));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        // A store per "instance": each has its own connection.
        let store = std::sync::Arc::new(RedisHistory::new(&redis.url(), "t.conc").unwrap());
        for _ in 0..5 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..20 {
                    let a = store.append("r", p, Bytes::from("{}")).await.unwrap();
                    assert_eq!(a.prev + 1, a.offset);
                    got.push((a.epoch, a.offset));
                }
                got
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let epoch = all[0].0.clone();
    assert!(all.iter().all(|(e, _)| *e == epoch), "one epoch");
    let mut offsets: Vec<u64> = all.into_iter().map(|(_, o)| o).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=400).collect::<Vec<_>>());
}

#[tokio::test]
async fn redis_a_client_recovers_on_another_instance() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.other", 2).await;
    let (a, b) = (&servers[0], &servers[1]);
    let mut c = WsClient::connect(&a.url("/ws")).await;
    let mut publisher = WsClient::connect(&b.url("/ws")).await;

    let (first, _) = join(&mut c, "room1", None).await;
    assert_eq!(first.position.offset, 0);
    for i in 1..=3 {
        publish(&mut publisher, "room1", &format!("m{i}")).await;
    }
    let got = live(&mut c, 3).await;
    assert_eq!(offsets(&got), [1, 2, 3]);
    let last = position(&got[2]["position"]);
    assert_eq!(last.epoch, first.position.epoch);

    // Gone from A while 50 publications go to its room from B.
    c.close().await;
    for i in 4..=53 {
        publish(&mut publisher, "room1", &format!("m{i}")).await;
    }
    // Back, on B.
    let mut c = WsClient::connect(&b.url("/ws")).await;
    let (rec, early) = join(&mut c, "room1", Some(&last)).await;
    assert!(rec.recovered, "{rec:?}");
    assert!(early.is_empty());
    assert_eq!(rec.position.offset, 53);
    assert_eq!(
        rec.publications
            .iter()
            .map(|p| p.position.offset)
            .collect::<Vec<_>>(),
        (4..=53).collect::<Vec<_>>()
    );
    assert_eq!(rec.publications[0].params.get(), r#"{"text":"m4"}"#);
    assert_eq!(rec.publications[49].params.get(), r#"{"text":"m53"}"#);
    // Then live, once, from either instance.
    a.hub
        .to("room1")
        .publish("msg", &json!({"text": "m54"}))
        .await
        .unwrap();
    assert_eq!(offsets(&live(&mut c, 1).await), [54]);
    c.expect_silence(Duration::from_millis(300)).await;
    // Both instances read the same position without joining.
    for s in &servers {
        let pos = s.hub.position("room1").await.unwrap().unwrap();
        assert_eq!((pos.epoch.as_str(), pos.offset), (last.epoch.as_str(), 54));
    }
}

#[tokio::test]
async fn redis_publications_racing_with_a_rejoin_on_another_instance_arrive_once() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.race", 2).await;
    // The first instance publishes while the client rejoins on the second
    // (the room is alone in its store: offsets 1, 2, 3...).
    rejoin_while_publishing(&servers[0], &servers[1], "room2", 120).await;
}

#[tokio::test]
async fn redis_five_instances_publishing_concurrently_give_one_gap_free_sequence() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.five", 5).await;
    publish_from_every_instance(&servers, "room3", 60).await;
}

#[tokio::test]
async fn redis_trimmed_or_expired_history_is_not_recovered() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.trim", 2).await;
    let (a, b) = (&servers[0], &servers[1]);
    // Trimmed by size (10 kept).
    trim(a, b, "small1").await;
    // Expired (TTL 1 s): same epoch, the room's offset stays.
    let (since, rec) = expire(a, b, "brief1").await;
    assert_eq!(rec.position.offset, 3);
    assert_eq!(rec.position.epoch, since.epoch);
}

#[tokio::test]
async fn redis_a_slow_consumer_recovers_on_another_instance() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let a = TestServer::start(instance(&redis, "t.slow").send_buffer(16)).await;
    let b = TestServer::start(instance(&redis, "t.slow")).await;
    slow_consumer(&a, &b, &b.hub, "bulk1").await;
}

#[tokio::test]
async fn redis_killed_mid_stream_fails_publications_then_starts_a_new_epoch() {
    nbio_ws_testkit::require_tools!("redis-server");
    let mut redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.mid", 2).await;
    let o = broker_killed_mid_stream(&mut redis, &servers[0], &servers[1], "room7").await;
    // Redis came back empty (no persistence): what follows is a new
    // epoch, which nobody can recover across.
    let (first, last) = (&o.published[0], o.published.last().unwrap());
    assert_ne!(first.epoch, last.epoch);
    assert!(o.member_closed, "the member is told to recover");
    assert!(!o.rejoined.recovered);
}

#[tokio::test]
async fn redis_an_evicted_key_changes_the_epoch() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.evict", 2).await;
    let (a, b) = (&servers[0], &servers[1]);
    let mut m = WsClient::connect(&a.url("/ws")).await;
    let mut p = WsClient::connect(&b.url("/ws")).await;
    join(&mut m, "room4", None).await;
    publish(&mut p, "room4", "before").await;
    let got = live(&mut m, 1).await;
    let old = position(&got[0]["position"]);

    // Evicted (as by maxmemory): the next publication starts a new epoch.
    let keys = RedisHistory::new(&redis.url(), "t.evict").unwrap();
    assert_eq!(
        redis_command(redis.port, &["DEL", &keys.meta_key("room4")]).await,
        ":1"
    );
    let new = position(&publish(&mut p, "room4", "after").await);
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.offset, 1);
    // A's member is told to reconnect and recover...
    assert_eq!(m.expect_close().await, 4000);
    // ...and learns that it cannot.
    let mut m = WsClient::connect(&a.url("/ws")).await;
    let (rec, _) = join(&mut m, "room4", Some(&old)).await;
    assert!(!rec.recovered);
    assert_eq!(rec.position, new);
    assert_eq!(rec.publications.len(), 1);
    assert_eq!(rec.publications[0].params.get(), r#"{"text":"after"}"#);
}

#[tokio::test]
async fn redis_down_fails_publications_and_a_restart_changes_the_epoch() {
    nbio_ws_testkit::require_tools!("redis-server");
    let mut redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.down", 1).await;
    let url = servers[0].url("/ws");
    let mut m = WsClient::connect(&url).await;
    let mut p = WsClient::connect(&url).await;
    join(&mut m, "room5", None).await;
    publish(&mut p, "room5", "before").await;
    let old = position(&live(&mut m, 1).await[0]["position"]);

    redis.down();
    for i in 0..3 {
        let r = p
            .call("pub", json!({"room": "room5", "text": "lost"}), json!(i))
            .await;
        assert_eq!(r["error"]["code"], -32003, "{r}");
        assert_eq!(r["error"]["message"], "History unavailable");
    }
    // Ephemeral notifications still reach this instance's members; the
    // failed publications reached nobody (the note is the next message).
    let r = p
        .call(
            "note",
            json!({"room": "room5", "text": "still here"}),
            json!("n"),
        )
        .await;
    assert_eq!(r["result"], 1, "{r}");
    let v = m.recv_json().await;
    assert_eq!(v["method"], "note", "{v}");
    assert_eq!(v["params"]["text"], "still here");
    let mut q = WsClient::connect(&url).await;
    let r = q.call("join", json!({"room": "room5"}), json!("j")).await;
    assert_eq!(r["error"]["code"], -32003, "recovery fails too: {r}");
    drop(q);

    // Back, empty (no persistence): publishing works again, in a new epoch.
    redis.up().await;
    let mut new = None;
    for i in 0..100 {
        let r = p
            .call("pub", json!({"room": "room5", "text": "after"}), json!(i))
            .await;
        if r["error"].is_null() {
            new = Some(position(&r["result"]));
            break;
        }
        assert_eq!(r["error"]["code"], -32003, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = new.expect("publishing works once Redis is back");
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.offset, 1);
    // The member's positions mean nothing now: it is told to recover, and
    // learns that it cannot.
    assert_eq!(m.expect_close().await, 4000);
    let mut m = WsClient::connect(&url).await;
    let (rec, _) = join(&mut m, "room5", Some(&old)).await;
    assert!(!rec.recovered);
    assert_eq!(rec.position, new);
    publish(&mut p, "room5", "live again").await;
    assert_eq!(offsets(&live(&mut m, 1).await), [2]);
}

#[tokio::test]
async fn redis_a_publication_lost_on_the_way_is_filled_from_the_history() {
    nbio_ws_testkit::require_tools!("redis-server");
    let redis = Backend::start(Kind::Redis).await;
    let servers = start(&redis, "t.gap", 2).await;
    let mut reader = WsClient::connect(&servers[0].url("/ws")).await;
    join(&mut reader, "room6", None).await;
    // Stored by an instance whose PUBLISH never went out (it crashed
    // between the two, or pub/sub dropped the message).
    let store = RedisHistory::new(&redis.url(), "t.gap").unwrap();
    let policy = HistoryPolicy::new(100, Duration::from_secs(600));
    let stored = store
        .append(
            "room6",
            policy,
            Bytes::from(r#"{"method":"msg","params":{"text":"lost"}}"#),
        )
        .await
        .unwrap();
    assert_eq!(stored.offset, 1);
    // The next publication shows the gap; the reader's instance fills it
    // from Redis before delivering what follows.
    servers[1]
        .hub
        .to("room6")
        .publish("msg", &json!({"text": "next"}))
        .await
        .unwrap();
    let got = live(&mut reader, 2).await;
    assert_eq!(offsets(&got), [1, 2]);
    assert_eq!(got[0]["params"]["text"], "lost");
    assert_eq!(got[1]["params"]["text"], "next");
    assert_eq!(got[0]["position"]["epoch"], stored.epoch.as_ref());
    reader.expect_silence(Duration::from_millis(300)).await;
}
