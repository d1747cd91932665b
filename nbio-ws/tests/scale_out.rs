//! Scale-out through a broker: three in-process servers, clients on each,
//! and the same test body for every backend — `local` (an in-process
//! broker, outages simulated), `redis` and `nats` (a real `redis-server`
//! or `nats-server` started by the test on a free loopback port, killed and
//! restarted on the same port).
//!
//! What the body checks:
//! 1. every broadcast from any instance reaches every client of every
//!    instance exactly once, in order per publisher;
//! 2. `Hub::send_to` reaches a client connected to another instance;
//! 3. with the broker down: local delivery goes on, `/health` says
//!    `degraded` with `"connected":false` (HTTP 200), the publish-failure
//!    counter grows;
//! 4. once the broker is back on the same port: the instances reconnect
//!    and resubscribe by themselves, cross-instance delivery resumes
//!    exactly once, and the messages lost meanwhile are counted.
//!
//! And the bounds on what crosses: 300 KB and short broadcasts alternating
//! back to back arrive once each, in order (every backend); a NATS
//! server with a 64 KiB `max_payload` gets no envelope larger than that,
//! and a message too large for it is refused alone (the handler told,
//! `-32021`) while the messages around it arrive; a Redis subscription
//! nobody reads loses messages (counted) without holding up the other
//! channels; the publish queue is bounded in bytes (Redis paused for
//! writes).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use nbio_ws::{Client, ClientId, Hub, Params, RpcError, Server, ServerBuilder};
use nbio_ws_testkit::broker::{Backend, Kind};
use nbio_ws_testkit::{seed, TestServer, WsClient};
use serde::Deserialize;
use serde_json::{json, Value};

const INSTANCES: usize = 3;
const CLIENTS_PER_INSTANCE: usize = 2;
/// Broadcasts per publisher (one publisher per instance) in the first round.
const ROUND1: usize = 100;
/// Broadcasts per publisher after recovery.
const ROUND2: usize = 30;

#[derive(Deserialize)]
struct SendTo {
    to: ClientId,
    text: String,
}

fn app() -> ServerBuilder {
    Server::builder()
        .registered_methods(false)
        .send_buffer(4096)
        .method("broadcast", seed::broadcast)
        .method(
            "whoami",
            |c: Client| async move { Ok::<_, RpcError>(c.id()) },
        )
        .method(
            "send_to",
            |hub: Hub, Params(p): Params<SendTo>| async move {
                hub.send_to(p.to, "direct", &json!({ "text": p.text }))
                    .map_err(RpcError::internal)?;
                Ok::<_, RpcError>(true)
            },
        )
}

/// A client and everything it has received so far.
struct Peer {
    ws: WsClient,
    /// Texts of `broadcast` notifications, in arrival order.
    broadcasts: Vec<String>,
    /// Texts of `direct` notifications.
    directs: Vec<String>,
    /// Responses by id.
    responses: BTreeMap<u64, Value>,
}

impl Peer {
    async fn connect(url: &str) -> Peer {
        Peer {
            ws: WsClient::connect(url).await,
            broadcasts: Vec::new(),
            directs: Vec::new(),
            responses: BTreeMap::new(),
        }
    }

    /// Reads one message (false on timeout).
    async fn pump(&mut self, deadline: tokio::time::Instant) -> bool {
        let Some(v) = self.ws.json_before(deadline).await else {
            return false;
        };
        let param = || v["params"]["text"].as_str().unwrap_or_default().to_owned();
        match v["method"].as_str() {
            Some("broadcast") => self.broadcasts.push(param()),
            Some("direct") => self.directs.push(param()),
            _ => {
                let id = v["id"].as_u64().expect("a response with a numeric id");
                self.responses.insert(id, v);
            }
        }
        true
    }

    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.ws.send_json(&req).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.responses.contains_key(&id) {
            assert!(self.pump(deadline).await, "no response to {method} in time");
        }
        self.responses.remove(&id).unwrap_or_default()
    }

    fn count(&self, prefix: &str) -> usize {
        self.broadcasts
            .iter()
            .filter(|t| t.starts_with(prefix))
            .count()
    }

    /// Reads until `want` broadcasts starting with `prefix` arrived (or 15 s
    /// passed), then `grace` longer to catch duplicates.
    async fn collect(&mut self, prefix: &str, want: usize, grace: Duration) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.count(prefix) < want {
            if !self.pump(deadline).await {
                break;
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.pump(deadline).await {}
    }
}

/// Publishes `n` broadcasts `"{prefix}{instance}:{seq}"` one after the other
/// (each acknowledged before the next), then collects `want` in total.
async fn publish_and_collect(
    mut peer: Peer,
    publish: Option<usize>,
    prefix: String,
    n: usize,
    want: usize,
) -> Peer {
    if let Some(instance) = publish {
        for seq in 0..n {
            let id = 1_000_000 + seq as u64;
            let r = peer
                .call(
                    id,
                    "broadcast",
                    json!({ "text": format!("{prefix}{instance}:{seq:04}") }),
                )
                .await;
            assert_eq!(r["result"]["status"], "broadcasted", "{r}");
        }
    }
    peer.collect(&prefix, want, Duration::from_millis(300))
        .await;
    peer
}

/// Checks what each peer got for `prefix`: every publisher's `n` messages,
/// once each, in order.
fn check_exactly_once(peers: &[Peer], prefix: &str, publishers: &[usize], n: usize) {
    for (i, p) in peers.iter().enumerate() {
        let got: Vec<&String> = p
            .broadcasts
            .iter()
            .filter(|t| t.starts_with(prefix))
            .collect();
        let unique: HashSet<&&String> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "peer {i} got duplicates for {prefix}: {} of {} unique",
            unique.len(),
            got.len()
        );
        assert_eq!(
            got.len(),
            publishers.len() * n,
            "peer {i} got {} of {} messages for {prefix}",
            got.len(),
            publishers.len() * n
        );
        for &publisher in publishers {
            let mine = format!("{prefix}{publisher}:");
            let seqs: Vec<usize> = got
                .iter()
                .filter_map(|t| t.strip_prefix(&mine))
                .map(|s| s.parse().expect("seq"))
                .collect();
            assert_eq!(
                seqs,
                (0..n).collect::<Vec<_>>(),
                "peer {i}: messages of publisher {publisher} missing or out of order"
            );
        }
    }
}

async fn health(server: &TestServer) -> (u16, Value) {
    let (status, _, body) = server.http_get("/health").await;
    (status, serde_json::from_str(&body).expect("health JSON"))
}

async fn metric(server: &TestServer, name: &str) -> u64 {
    server.metric(name).await.unwrap_or(0)
}

/// Waits until every server reports the broker `connected` (or not).
async fn wait_broker(servers: &[TestServer], connected: bool) {
    for _ in 0..300 {
        let mut all = true;
        for s in servers {
            let (code, h) = health(s).await;
            assert_eq!(code, 200, "{h}");
            all &= h["broker"]["connected"] == connected;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the broker was not reported connected={connected} in time");
}

/// Until every instance has seen a broadcast from every other one:
/// subscriptions are live end to end (a NATS `SUB` may still be on its
/// way after the client reports itself connected).
async fn warm_up(servers: &[TestServer], round: &str) {
    let mut probes = Vec::new();
    for s in servers {
        probes.push(Peer::connect(&s.url("/ws")).await);
    }
    let prefix = format!("warm-{round}:");
    for k in 0..100 {
        for (i, s) in servers.iter().enumerate() {
            s.hub
                .broadcast("broadcast", &json!({ "text": format!("{prefix}{i}:{k}") }))
                .expect("broadcast");
        }
        let mut ready = true;
        for p in &mut probes {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
            while p.pump(deadline).await {}
            let origins: HashSet<&str> = p
                .broadcasts
                .iter()
                .filter_map(|t| t.strip_prefix(&prefix)?.split(':').next())
                .collect();
            ready &= origins.len() == servers.len();
        }
        if ready {
            for p in &mut probes {
                p.ws.close().await;
            }
            return;
        }
    }
    panic!("cross-instance delivery did not start ({round})");
}

async fn scale_out(kind: Kind) {
    let started = Instant::now();
    let mut backend = Backend::start(kind).await;
    let channel = format!("nbio-test.{}.{}", std::process::id(), backend.port);
    let mut servers = Vec::new();
    for _ in 0..INSTANCES {
        servers.push(TestServer::start(backend.builder(app(), &channel)).await);
    }
    wait_broker(&servers, true).await;
    for s in &servers {
        let (_, h) = health(s).await;
        assert_eq!(h["status"], "healthy", "{h}");
        assert_eq!(
            h["broker"]["adapter"],
            format!("{kind:?}").to_lowercase(),
            "{h}"
        );
    }
    warm_up(&servers, "1").await;

    let mut peers = Vec::new();
    for s in &servers {
        for _ in 0..CLIENTS_PER_INSTANCE {
            peers.push(Peer::connect(&s.url("/ws")).await);
        }
    }

    // 1. Exactly once, in order per publisher: the first client of each
    //    instance publishes ROUND1 broadcasts, all at the same time.
    let publishers: Vec<usize> = (0..INSTANCES).collect();
    let peers = run_round(peers, "r1:", ROUND1, &publishers).await;
    check_exactly_once(&peers, "r1:", &publishers, ROUND1);
    let mut peers = peers;

    // 2. send_to a client on another instance.
    let mut ids = Vec::new();
    for (i, p) in peers.iter_mut().enumerate() {
        let r = p.call(i as u64, "whoami", json!([])).await;
        let id: ClientId = serde_json::from_value(r["result"].clone()).expect("an id");
        ids.push(id);
    }
    // Every instance counts its clients from 1: ids stay apart by their
    // instance half.
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    let instances: HashSet<u64> = ids.iter().map(|id| id.instance()).collect();
    assert_eq!(instances.len(), INSTANCES, "{ids:?}");
    let target = INSTANCES * CLIENTS_PER_INSTANCE - 1; // last client of the last instance
    let r = peers[0]
        .call(10, "send_to", json!({"to": ids[target], "text": "d:hello"}))
        .await;
    assert_eq!(r["result"], true, "{r}");
    let r = peers[target]
        .call(11, "send_to", json!({"to": ids[0], "text": "d:back"}))
        .await;
    assert_eq!(r["result"], true, "{r}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for i in [target, 0] {
        while peers[i].directs.is_empty() {
            assert!(peers[i].pump(deadline).await, "send_to did not arrive");
        }
    }
    for p in peers.iter_mut() {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while p.pump(deadline).await {}
    }
    for (i, p) in peers.iter().enumerate() {
        let expected: &[&str] = match i {
            0 => &["d:back"],
            t if t == target => &["d:hello"],
            _ => &[],
        };
        assert_eq!(p.directs, expected, "peer {i}");
    }

    // 3. The broker goes down.
    let failures_before = metric(&servers[0], "nbio_ws_broker_publish_failures_total").await;
    backend.down();
    wait_broker(&servers, false).await;
    for s in &servers {
        let (code, h) = health(s).await;
        assert_eq!((code, h["status"].as_str()), (200, Some("degraded")), "{h}");
    }
    // Local delivery goes on; the other instances do not get it.
    let r = peers[0]
        .call(20, "broadcast", json!({"text": "down:local"}))
        .await;
    assert_eq!(r["result"]["status"], "broadcasted");
    for (i, p) in peers.iter_mut().enumerate() {
        let want = usize::from(i < CLIENTS_PER_INSTANCE);
        p.collect("down:", want, Duration::from_millis(300)).await;
    }
    for (i, p) in peers.iter().enumerate() {
        let local = i < CLIENTS_PER_INSTANCE;
        assert_eq!(p.count("down:"), usize::from(local), "peer {i}");
    }
    let mut failures = 0;
    for _ in 0..100 {
        failures = metric(&servers[0], "nbio_ws_broker_publish_failures_total").await;
        if failures > failures_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failures > failures_before,
        "publish failures were not counted ({failures_before} -> {failures})"
    );

    // 4. The broker comes back on the same port: no restart of anything else.
    backend.up().await;
    wait_broker(&servers, true).await;
    warm_up(&servers, "2").await;
    let peers = run_round(peers, "r2:", ROUND2, &publishers).await;
    check_exactly_once(&peers, "r2:", &publishers, ROUND2);
    // What instance 0 published during the outage is a hole the others saw.
    let lost = metric(&servers[1], "nbio_ws_broker_messages_lost_total").await;
    assert!(lost >= 1, "the outage's lost messages were not counted");

    for mut p in peers {
        p.ws.close().await;
    }
    for s in &mut servers {
        s.shutdown().await.expect("clean shutdown");
    }
    let took = started.elapsed();
    eprintln!("{kind:?} scale-out suite: {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "{kind:?} suite took {took:?}"
    );
}

/// Every peer whose index is a multiple of CLIENTS_PER_INSTANCE (the first
/// client of each instance in `publishers`) publishes `n`; all collect.
async fn run_round(peers: Vec<Peer>, prefix: &str, n: usize, publishers: &[usize]) -> Vec<Peer> {
    let want = publishers.len() * n;
    let mut tasks = Vec::new();
    for (i, p) in peers.into_iter().enumerate() {
        let instance = i / CLIENTS_PER_INSTANCE;
        let publish =
            (i % CLIENTS_PER_INSTANCE == 0 && publishers.contains(&instance)).then_some(instance);
        tasks.push(tokio::spawn(publish_and_collect(
            p,
            publish,
            prefix.to_owned(),
            n,
            want,
        )));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("peer task"));
    }
    out
}

nbio_ws_testkit::per_broker! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    scale_out: scale_out_local, scale_out_redis, scale_out_nats
}

/// A broker that is down at startup does not prevent startup: the server
/// serves its own clients, says `degraded`, and connects once the broker
/// appears.
async fn starts_without_broker(kind: Kind) {
    let mut backend = Backend::start(kind).await;
    backend.down();
    let channel = format!("nbio-test-late.{}", backend.port);
    let a = TestServer::start(backend.builder(app(), &channel)).await;
    let b = TestServer::start(backend.builder(app(), &channel)).await;
    let (code, h) = health(&a).await;
    assert_eq!((code, h["status"].as_str()), (200, Some("degraded")), "{h}");
    let mut c = Peer::connect(&a.url("/ws")).await;
    let r = c.call(1, "broadcast", json!({"text": "solo"})).await;
    assert_eq!(r["result"]["status"], "broadcasted");
    c.collect("solo", 1, Duration::ZERO).await;
    assert_eq!(c.count("solo"), 1);

    backend.up().await;
    let mut servers = [a, b];
    wait_broker(&servers, true).await;
    warm_up(&servers, "late").await;
    for s in &mut servers {
        s.shutdown().await.expect("shutdown");
    }
}

nbio_ws_testkit::per_broker! {
    #[tokio::test]
    starts_without_broker: local_starts_without_broker, redis_starts_without_broker,
        nats_starts_without_broker
}

/// Without a broker, `send_to` an id that is not here is `NotFound`, and
/// `/health` has no broker field.
#[tokio::test]
async fn no_broker_no_change() {
    let mut s = TestServer::start(app()).await;
    let (code, h) = health(&s).await;
    assert_eq!(code, 200);
    assert_eq!(h["status"], "healthy");
    assert!(h.get("broker").is_none(), "{h}");
    assert!(s.hub.broker_health().is_none());
    assert!(matches!(
        s.hub.send_to(ClientId::from_parts(1, 1), "m", &()),
        Err(nbio_ws::SendError::NotFound(_))
    ));
    s.shutdown().await.expect("shutdown");
}

/// A broker message holds what fits in one broker payload: 300 KB and
/// short broadcasts alternating back to back (so that the publisher finds
/// several waiting at once) each reach the far instance exactly once, in
/// order.
async fn large_and_short_alternating(kind: Kind) {
    const GROUPS: usize = 10;
    const PAIRS: usize = 4;
    let backend = Backend::start(kind).await;
    let channel = format!("nbio-test-large.{}.{}", std::process::id(), backend.port);
    let mut servers = [
        TestServer::start(backend.builder(app(), &channel)).await,
        TestServer::start(backend.builder(app(), &channel)).await,
    ];
    wait_broker(&servers, true).await;
    warm_up(&servers, "large").await;
    let mut far = Peer::connect(&servers[1].url("/ws")).await;
    let pad = "x".repeat(300_000);
    let mut expected = Vec::new();
    for g in 0..GROUPS {
        // A few pairs at once, then wait for them: the far client's queue
        // holds a few megabytes at most.
        for k in 0..PAIRS {
            let i = g * PAIRS + k;
            for text in [format!("ls:{i:03}:big:{pad}"), format!("ls:{i:03}:small")] {
                servers[0]
                    .hub
                    .broadcast("broadcast", &json!({ "text": text }))
                    .expect("fits in one broker payload");
                expected.push(text);
            }
        }
        far.collect("ls:", expected.len(), Duration::ZERO).await;
    }
    far.collect("ls:", expected.len(), Duration::from_millis(300))
        .await;
    let got: Vec<&String> = far
        .broadcasts
        .iter()
        .filter(|t| t.starts_with("ls:"))
        .collect();
    assert_eq!(got.len(), expected.len(), "every one, once");
    assert!(
        got.iter().zip(&expected).all(|(g, e)| *g == e),
        "in order, intact"
    );
    assert_eq!(
        metric(&servers[0], "nbio_ws_broker_messages_too_large_total").await,
        0
    );
    far.ws.close().await;
    for s in &mut servers {
        s.shutdown().await.expect("shutdown");
    }
}

nbio_ws_testkit::per_broker! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    large_and_short_alternating: large_and_short_local, large_and_short_redis,
        large_and_short_nats
}

/// A NATS server whose `max_payload` is 64 KiB: the publisher packs below
/// it; a message too large for it is refused alone — the handler is told
/// (`BroadcastError::TooLarge`, `-32021` over the wire), nobody receives
/// it, here or elsewhere, it is counted — and the messages around it
/// arrive.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_refuses_a_message_too_large_alone() {
    nbio_ws_testkit::require_tools!("nats-server");
    const MAX: usize = 65536;
    let nats =
        nbio_ws_testkit::broker::Nats::start_with_config(&format!("max_payload: {MAX}\n")).await;
    let channel = format!("nbio-test-max.{}", nats.port());
    let pubsub = nbio_ws::broker::PubSubConfig::nats(nats.url()).channel(&channel);
    let mut servers = [
        TestServer::start(app().pubsub(pubsub.clone())).await,
        TestServer::start(app().pubsub(pubsub)).await,
    ];
    wait_broker(&servers, true).await;
    warm_up(&servers, "max").await;
    let mut near = Peer::connect(&servers[0].url("/ws")).await;
    let mut far = Peer::connect(&servers[1].url("/ws")).await;

    // Back to back: small, too large, small, 40 KB, small, 60 KB, small.
    let sizes = [10, 100_000, 10, 40_000, 10, 60_000, 10];
    let mut expected = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let mut text = format!("mx:{i}:");
        text.extend(std::iter::repeat_n('x', size));
        let sent = servers[0]
            .hub
            .broadcast("broadcast", &json!({ "text": text }));
        if size > MAX {
            match sent {
                Err(nbio_ws::BroadcastError::TooLarge { size, limit }) => {
                    assert_eq!(limit, MAX);
                    assert!(size > 100_000, "{size}");
                }
                other => panic!("a message over max_payload was not refused: {other:?}"),
            }
        } else {
            sent.expect("fits");
            expected.push(text);
        }
    }
    for p in [&mut near, &mut far] {
        p.collect("mx:", expected.len(), Duration::from_millis(300))
            .await;
        let got: Vec<&String> = p
            .broadcasts
            .iter()
            .filter(|t| t.starts_with("mx:"))
            .collect();
        assert_eq!(got, expected.iter().collect::<Vec<_>>());
    }
    assert_eq!(
        metric(&servers[0], "nbio_ws_broker_messages_too_large_total").await,
        1
    );

    // Through a handler: the caller gets -32021 with the limit; then a
    // small one from the same instance arrives far away, with nothing
    // before it.
    let r = near
        .call(
            1,
            "broadcast",
            json!({ "text": format!("mx:big:{}", "y".repeat(100_000)) }),
        )
        .await;
    assert_eq!(r["error"]["code"], -32021, "{r}");
    assert_eq!(r["error"]["data"]["limit"], MAX, "{r}");
    let r = near
        .call(2, "broadcast", json!({ "text": "mx:after" }))
        .await;
    assert_eq!(r["result"]["status"], "broadcasted", "{r}");
    let want = expected.len() + 1;
    for p in [&mut near, &mut far] {
        p.collect("mx:", want, Duration::ZERO).await;
        assert_eq!(p.count("mx:"), want, "the refused one reached nobody");
        assert_eq!(p.broadcasts.last().map(String::as_str), Some("mx:after"));
    }
    assert_eq!(
        metric(&servers[0], "nbio_ws_broker_messages_too_large_total").await,
        2
    );
    for s in &mut servers {
        s.shutdown().await.expect("shutdown");
    }
}

/// The Redis subscriber reads every channel from one connection: a
/// subscription nobody reads keeps what fits in its buffer (1024
/// messages), loses the rest (counted), and holds up no other channel.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_slow_subscription_holds_up_no_other() {
    use nbio_ws::broker::Broker;
    nbio_ws_testkit::require_tools!("redis-server");
    const N: usize = 3000;
    let redis = nbio_ws_testkit::broker::Redis::start().await;
    let broker = nbio_ws::broker::RedisBroker::new(&redis.url()).expect("a broker");
    let mut slow = broker.subscribe("slow").expect("subscribed");
    let mut fast = broker.subscribe("fast").expect("subscribed");
    for sub in [&slow, &fast] {
        tokio::time::timeout(nbio_ws_testkit::TIMEOUT, sub.ready())
            .await
            .expect("confirmed by Redis");
    }
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N {
            let m = tokio::time::timeout(nbio_ws_testkit::TIMEOUT, fast.next())
                .await
                .expect("`fast` is not held up by `slow`")
                .expect("a message");
            got.push(m);
        }
        got
    });
    for i in 0..N {
        for channel in ["slow", "fast"] {
            broker
                .publish(channel, format!("{channel}{i}").into())
                .await
                .expect("published");
        }
    }
    let got = reader.await.expect("reader");
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, m)| *m == format!("fast{i}").as_bytes()),
        "`fast` got everything, in order"
    );
    // Redis delivered `slow`'s last message before `fast`'s.
    assert_eq!(slow.dropped(), (N - 1024) as u64);
    for i in 0..1024 {
        let m = slow.next().await.expect("kept");
        assert_eq!(m, format!("slow{i}").as_bytes());
    }
}

/// The publish queue is bounded in bytes: while Redis takes no writes
/// (`CLIENT PAUSE … WRITE`), a burst of 100 KB broadcasts fills a 1 MiB
/// queue with ten of them; the others are dropped for the other
/// instances (counted), not refused. Once Redis takes writes again, what
/// was queued goes out.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_queue_is_bounded_in_bytes() {
    nbio_ws_testkit::require_tools!("redis-server");
    const BURST: usize = 100;
    let redis = nbio_ws_testkit::broker::Redis::start().await;
    let channel = format!("nbio-test-qbytes.{}", redis.port());
    let pubsub = nbio_ws::broker::PubSubConfig::redis(redis.url())
        .channel(&channel)
        .queue_bytes(1 << 20);
    let mut servers = [
        TestServer::start(app().pubsub(pubsub.clone())).await,
        TestServer::start(app().pubsub(pubsub)).await,
    ];
    wait_broker(&servers, true).await;
    warm_up(&servers, "qbytes").await;
    let mut far = Peer::connect(&servers[1].url("/ws")).await;

    let failures = |s: &TestServer| s.hub.metrics().counter("broker_publish_failures");
    assert_eq!(
        redis.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]).await,
        "+OK\r\n"
    );
    let before = failures(&servers[0]);
    let pad = "x".repeat(100_000);
    for i in 0..BURST {
        servers[0]
            .hub
            .broadcast("broadcast", &json!({ "text": format!("qb:{i:03}:{pad}") }))
            .expect("queued or dropped, never refused");
    }
    let dropped = (failures(&servers[0]) - before) as usize;
    assert_eq!(
        redis.cmd(&["CLIENT", "UNPAUSE"]).await,
        "+OK\r\n",
        "Redis takes writes again"
    );
    // 1 MiB holds ten 100 KB messages: the other ninety are dropped.
    assert!(dropped >= BURST - 10, "only {dropped} of {BURST} dropped");

    // The far one gets what was queued, once Redis takes writes: a marker
    // after the burst shows that it is all through.
    let mut k = 0;
    while !far.broadcasts.iter().any(|t| t.starts_with("qbend:")) {
        assert!(k < 300, "nothing crossed after the pause");
        servers[0]
            .hub
            .broadcast("broadcast", &json!({ "text": format!("qbend:{k}") }))
            .expect("broadcast");
        k += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while far.pump(deadline).await {}
    }
    let crossed = far.count("qb:");
    assert!(
        (1..=BURST - dropped).contains(&crossed),
        "{crossed} crossed, {} were queued",
        BURST - dropped
    );
    for s in &mut servers {
        s.shutdown().await.expect("shutdown");
    }
}
