//! History in JetStream (`WS_PUBSUB_ADAPTER=nats`) across instances: a
//! real `nats-server -js` per test on a free loopback port, in-process
//! instances sharing it for both pub/sub and history: recovery on another
//! instance, races with a rejoin, five publishers, trimmed and expired
//! history, a slow consumer, the server killed and restarted.

use std::time::Duration;

use nbio_ws::history::Position;
use nbio_ws::{Server, ServerBuilder};
use nbio_ws_testkit::broker::Backend;
use nbio_ws_testkit::{TestServer, WsClient};
use serde_json::json;

use super::{
    broker_killed_mid_stream, expire, join, live, methods, offsets, publish,
    publish_from_every_instance, rejoin_while_publishing, slow_consumer, trim, BULK,
};

/// An instance on `nats`, its stream and subjects under `channel`:
/// `room*` keeps 1000 for 10 min, `bulk*` [`BULK`].
fn instance(nats: &Backend, channel: &str) -> ServerBuilder {
    nats.builder(
        methods(
            Server::builder()
                .send_buffer(2048)
                .history("room*", 1000, Duration::from_secs(600))
                .history("bulk*", BULK, Duration::from_secs(600)),
        ),
        channel,
    )
}

async fn start(nats: &Backend, channel: &str, n: usize) -> Vec<TestServer> {
    start_with(n, || instance(nats, channel)).await
}

/// `n` instances built by `builder`, on the NATS adapter.
async fn start_with(n: usize, builder: impl Fn() -> ServerBuilder) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(TestServer::start(builder()).await);
    }
    for s in &servers {
        assert_eq!(s.hub.broker_health().map(|h| h.adapter), Some("nats"));
    }
    servers
}

#[tokio::test]
async fn jetstream_a_client_recovers_on_another_instance() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Backend::start_jetstream().await;
    let servers = start(&nats, "jsrec", 2).await;
    let (one, two) = (&servers[0], &servers[1]);
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

    // Gone while 50 publications go to its room (another room
    // interleaves, so the room's offsets are not consecutive).
    a.close().await;
    let mut sent = Vec::new();
    for i in 1..=50 {
        let p = publish(&mut publisher, "room1", &format!("m{i}")).await;
        sent.push(p["offset"].as_u64().unwrap());
        publish(&mut publisher, "room-other", "noise").await;
    }
    assert!(sent.windows(2).all(|w| w[0] < w[1]));

    // Back, on the other instance.
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
async fn jetstream_publications_racing_with_a_rejoin_on_another_instance_arrive_once() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Backend::start_jetstream().await;
    let servers = start(&nats, "jsrace", 2).await;
    // The first instance publishes while the client rejoins on the second
    // (the room is alone in its store: offsets 1, 2, 3...).
    rejoin_while_publishing(&servers[0], &servers[1], "room2", 120).await;
}

#[tokio::test]
async fn jetstream_five_instances_publishing_concurrently_give_one_gap_free_sequence() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Backend::start_jetstream().await;
    let servers = start(&nats, "jsseq", 5).await;
    publish_from_every_instance(&servers, "room5", 40).await;
}

#[tokio::test]
async fn jetstream_trimmed_history_is_not_recovered() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Backend::start_jetstream().await;
    // The stream's limits are those of the largest policy: only one here.
    let servers = start_with(2, || {
        nats.builder(
            methods(Server::builder().history("small*", 10, Duration::from_secs(600))),
            "jstrim",
        )
    })
    .await;
    trim(&servers[0], &servers[1], "small1").await;
}

#[tokio::test]
async fn jetstream_expired_history_is_not_recovered() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Backend::start_jetstream().await;
    let servers = start_with(2, || {
        nats.builder(
            methods(Server::builder().history("brief*", 100, Duration::from_secs(1))),
            "jsexp",
        )
    })
    .await;
    let (since, rec) = expire(&servers[0], &servers[1], "brief1").await;
    // Same stream, same epoch; with every publication of the room gone,
    // its position reads 0 until the next one.
    assert_eq!(rec.position.epoch, since.epoch);
    assert_eq!(rec.position.offset, 0);
}

#[tokio::test]
async fn jetstream_a_slow_consumer_recovers_on_another_instance() {
    nbio_ws_testkit::require_tools!("nats-server");
    let nats = Backend::start_jetstream().await;
    let a = TestServer::start(instance(&nats, "jsslow").send_buffer(16)).await;
    let b = TestServer::start(instance(&nats, "jsslow")).await;
    slow_consumer(&a, &b, &b.hub, "bulk1").await;
}

#[tokio::test]
async fn jetstream_killed_mid_stream_fails_publications_then_recovers_exactly() {
    nbio_ws_testkit::require_tools!("nats-server");
    let mut nats = Backend::start_jetstream().await;
    let servers = start(&nats, "jsmid", 2).await;
    let o = broker_killed_mid_stream(&mut nats, &servers[0], &servers[1], "room7").await;
    // The stream is on disk: it comes back with the server, same epoch,
    // and nothing is lost.
    let epoch = &o.published[0].epoch;
    assert!(o.published.iter().all(|p| p.epoch == *epoch));
    assert!(!o.member_closed, "the member got every publication live");
    assert!(o.rejoined.recovered);
}
